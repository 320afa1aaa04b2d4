"""A small text syntax for patterns, used by `spattn show` and `spattn bench`.

    parse("window(511, 0)")                    # SlidingWindow(511, 0)
    parse("sink(4) | window(255,0)")           # union
    parse("causal & (strided(64) | window(63,0))")
    parse("perhead(causal; window(127,0))")    # head h uses the h-th pattern
    parse("blocksparse(random=0.1, block=128)", n=4096)   # drawn for the problem size
    parse("topk(8, 64, 64, always=sink(4))")   # TopKBlocks
    parse("layout(@0, 64, 64) | global(@1)", data=[layout, positions])   # data by reference

Grammar (parsed in C++, cpp/src/syntax/; nothing is evaluated as Python)::

    expr    := term ('|' term)*              union, binds loosest
    term    := factor ('&' factor)*          intersection
    factor  := '(' expr ')' | NAME [ '(' [args] ')' ]
    args    := arg ((',' | ';') arg)*
    arg     := [NAME '='] value
    value   := INT | FLOAT | none | true | false | REF | expr | '(' value (',' value)* ')'
               (expr only inside perhead and as topk's `always`; REF is @i, the i-th array of
               `data`: how torch's custom ops pass a pattern's arrays beside its text)

Names are case-insensitive; see `SYNTAX_HELP` (printed by `spattn show --help`) for the list.

The C++ core parses the text and checks every call against the table of names and parameters
(each kind folder's syntax.inc): what comes back is a tree of names and literal values with the
defaults filled in. This module only maps that tree onto pattern objects: the classes that
declare the name (`Pattern._syntax`), the arrays `@i` names, and blocksparse(random=...) drawn
for the problem size.
"""
from __future__ import annotations

import math

from . import _core
from . import patterns as _patterns

__all__ = ["parse", "PatternSyntaxError", "KNOWN_NAMES", "SYNTAX_HELP"]


class PatternSyntaxError(ValueError):
    """A ValueError that knows where in the text it happened (`.pos`, 0-based)."""

    def __init__(self, message: str, text: str, pos: int):
        self.text, self.pos, self.reason = text, pos, message
        caret = " " * (pos + 2) + "^"
        super().__init__(f"pattern {text!r}: {message} (at position {pos})\n  {text}\n{caret}")


_NAMES = _core.pattern_syntax_names()  # [(name, help line)], in the order of messages
KNOWN_NAMES = tuple(name for name, _ in _NAMES)

SYNTAX_HELP = """\
pattern syntax (names are case-insensitive; rel = (i + Nk - Nq) - j, see docs/patterns.md):
""" + "\n".join(f"  {doc}" for _, doc in _NAMES) + """
  a | b          union          a & b    intersection (binds tighter than |)
  ( ... )        grouping       none, true, false; keyword arguments as name=value
examples:
  'window(511,0)'   'sink(4) | window(1023,0)'   'causal & (strided(128) | window(127,0))'
  'bigbird(64,3,2,3,seed=1)'   'perhead(causal; window(255,0))'
  'blocksparse(random=0.1,block=128,seed=0,heads=8)'   'topk(8,64,always=sink(4)|window(255))'
  'neighborhood((64,64),13)'   'slidingtile((32,32),(8,8),3)'   'longnet((2048,8192),(1,4))'"""


def _classes() -> dict:
    """name -> the class that declares it (`Pattern._syntax`)."""
    out = {}
    for cls_name in _patterns.__all__:
        cls = getattr(_patterns, cls_name)
        name = vars(cls).get("_syntax") if isinstance(cls, type) else None
        if name:
            out[name] = cls
    return out


_CLASSES = _classes()


class _Builder:
    """Pattern objects from the C++ parser's tree (python/src/syntax.cpp says its shape):
    a call is (name, pos, args), a union or intersection (op, op_positions, operands), an array
    reference ('@', pos, i), a tuple value a list."""

    def __init__(self, text: str, n, nk, data):
        self.text, self.n, self.nk, self.data = text, n, nk, data

    def error(self, message: str, pos: int):
        raise PatternSyntaxError(message, self.text, pos)

    def node(self, t):
        tag, pos, args = t
        if tag == "|" or tag == "&":
            p = self.node(args[0])
            for op_pos, operand in zip(pos, args[1:]):
                p = self.combine(p, self.node(operand), tag, op_pos)
            return p
        values = [self.value(a) for a in args]
        special = _SPECIAL.get(tag)
        if special is not None:
            return special(self, pos, *values)
        cls = _CLASSES.get(tag)
        if cls is None:
            self.error(f"{tag}(...) has no class in this spattn's Python package", pos)
        return self.construct(cls, tag, pos, *values)

    def value(self, v):
        t = type(v)
        if t is tuple:
            return self.resolve(v[2], v[1]) if v[0] == "@" else self.node(v)
        if t is list:
            return [self.value(x) for x in v]
        return v

    def combine(self, a, b, op: str, pos: int):
        try:
            return (a | b) if op == "|" else (a & b)
        except TypeError as e:
            self.error(f"{'union' if op == '|' else 'intersection'} of patterns is not supported by "
                       f"this spattn ({e})", pos)
        except ValueError as e:
            self.error(str(e), pos)

    def resolve(self, index: int, pos: int):
        """The array that @i names (numpy, or anything numpy can read)."""
        if not self.data:
            self.error(f"@{index} refers to an array, but no data was given (parse(text, data=[...]))", pos)
        if not 0 <= index < len(self.data):
            self.error(f"@{index} refers to array {index}, but data holds {len(self.data)}", pos)
        return self.data[index]

    def construct(self, cls, key: str, pos: int, *args):
        try:
            return cls(*args)
        except (TypeError, ValueError, OverflowError) as e:
            self.error(f"{key}(...): {e}", pos)

    def layout(self, pos: int, layout, bq: int, bk):
        return self.construct(_patterns.BlockSparse, "layout", pos, layout, (bq, bq if bk is None else bk))

    def topk(self, pos: int, k: int, bq: int, bk, causal: bool, always):
        return self.construct(_patterns.TopKBlocks, "topk", pos, k, (bq, bq if bk is None else bk),
                              causal, always)

    def blocksparse(self, pos: int, random: float, block: int, seed: int, heads: int, causal: bool):
        import numpy as np

        if self.n is None:
            self.error("blocksparse(random=...) draws its layout for the problem size: "
                       "give it, parse(text, n=N) (and nk=Nk if different)", pos)
        if not (0.0 <= random <= 1.0) or math.isnan(random):
            self.error(f"blocksparse(): random is a probability in [0, 1], got {random}", pos)
        if block <= 0 or heads <= 0:
            self.error(f"blocksparse(): block and heads must be positive, got block={block}, heads={heads}", pos)
        nq = int(self.n)
        nk = nq if self.nk is None else int(self.nk)
        nqb, nkb = -(-nq // block), -(-nk // block)
        if heads * nqb * nkb > (1 << 28):
            self.error(f"blocksparse(): {heads}x{nqb}x{nkb} blocks is too many; use a larger block", pos)
        rng = np.random.default_rng(seed)
        layout = rng.random((heads, nqb, nkb)) < random
        if causal:
            # keep only key blocks that start at or before the last query position of the block
            a = np.arange(nqb)[:, None]
            c = np.arange(nkb)[None, :]
            last_p = np.minimum((a + 1) * block, nq) - 1 + (nk - nq)
            layout &= (c * block <= last_p)[None]
        return self.construct(_patterns.BlockSparse, "blocksparse", pos, layout, (block, block))


# The names whose class is not called with the parameters as they are.
_SPECIAL = {"layout": _Builder.layout, "topk": _Builder.topk, "blocksparse": _Builder.blocksparse}


def parse(text: str, n: int | None = None, nk: int | None = None, data=None):
    """The pattern that `text` describes (see the module docstring for the syntax).

    `n` (and `nk`, default `n`) is the problem size, needed only by `blocksparse(random=...)`,
    whose layout is drawn for it. `data` is a sequence of arrays that `@i` in the text refers
    to (`layout(@0, 64)`: a BlockSparse on data[0]; `global(@1)`: Global on data[1]). Raises
    ValueError (a PatternSyntaxError, with `.pos`) for text that is not a valid pattern.
    """
    if not isinstance(text, str):
        raise TypeError(f"pattern text: expected a str, got {type(text).__name__}")
    try:
        tree = _core.parse_pattern_text(text.encode("utf-8", "surrogatepass"))
    except ValueError as e:
        if len(e.args) != 2:
            raise
        raise PatternSyntaxError(e.args[0], text, e.args[1]) from None
    return _Builder(text, n, nk, None if data is None else list(data)).node(tree)
