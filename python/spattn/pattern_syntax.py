"""A small text syntax for patterns, used by `spattn show` and `spattn bench`.

    parse("window(511, 0)")                    # SlidingWindow(511, 0)
    parse("sink(4) | window(255,0)")           # union
    parse("causal & (strided(64) | window(63,0))")
    parse("perhead(causal; window(127,0))")    # head h uses the h-th pattern
    parse("blocksparse(random=0.1, block=128)", n=4096)   # drawn for the problem size
    parse("topk(8, 64, 64, always=sink(4))")   # TopKBlocks
    parse("layout(@0, 64, 64) | global(@1)", data=[layout, positions])   # data by reference

Grammar (a recursive-descent parser; nothing is evaluated as Python)::

    expr    := term ('|' term)*              union, binds loosest
    term    := factor ('&' factor)*          intersection
    factor  := '(' expr ')' | NAME [ '(' [args] ')' ]
    args    := arg ((',' | ';') arg)*
    arg     := [NAME '='] value
    value   := INT | FLOAT | none | true | false | REF | expr | '(' value (',' value)* ')'
               (expr only inside perhead and as topk's `always`; REF is @i, the i-th array of
               `data`: how torch's custom ops pass a pattern's arrays beside its text)

Names are case-insensitive; see `SYNTAX_HELP` (printed by `spattn show --help`) for the list.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

from . import patterns as _patterns

__all__ = ["parse", "PatternSyntaxError", "KNOWN_NAMES", "SYNTAX_HELP"]


class PatternSyntaxError(ValueError):
    """A ValueError that knows where in the text it happened (`.pos`, 0-based)."""

    def __init__(self, message: str, text: str, pos: int):
        self.text, self.pos, self.reason = text, pos, message
        caret = " " * (pos + 2) + "^"
        super().__init__(f"pattern {text!r}: {message} (at position {pos})\n  {text}\n{caret}")


_REQUIRED = object()


@dataclass
class _Spec:
    cls: str                    # class name in spattn.patterns (looked up when used)
    params: list                # [(name, default or _REQUIRED, kind)], kind: int|optint|bool|float
    doc: str
    variadic: str | None = None  # 'int' (global) or 'pattern' (perhead): all positional args
    aliases: list = field(default_factory=list)


_SPECS: dict[str, _Spec] = {
    "dense": _Spec("Dense", [], "every query sees every key"),
    "causal": _Spec("Causal", [], "rel >= 0"),
    "window": _Spec(
        "SlidingWindow",
        [("left", _REQUIRED, "optint"), ("right", 0, "optint")],
        "window(left, right=0): -right <= rel <= left, none = unbounded; window(W-1,0) = W causal keys",
        aliases=["sliding_window", "slidingwindow", "local"],
    ),
    "dilated": _Spec(
        "Dilated",
        [("left", _REQUIRED, "optint"), ("right", 0, "optint"), ("dilation", 1, "int")],
        "dilated(left, right=0, dilation=1): every dilation-th key, left/right counted in keys",
    ),
    "strided": _Spec(
        "Strided",
        [("stride", _REQUIRED, "int"), ("causal", True, "bool")],
        "strided(stride, causal=true): rel % stride == 0",
    ),
    "fixed": _Spec(
        "Fixed",
        [("block", _REQUIRED, "int"), ("summary", _REQUIRED, "int"), ("causal", True, "bool")],
        "fixed(block, summary, causal=true): own block plus the last `summary` keys of every block",
    ),
    "global": _Spec(
        "Global", [], "global(p0, p1, ...): these key positions see and are seen by all",
        variadic="int", aliases=["globals"],
    ),
    "sink": _Spec("Sink", [("n", _REQUIRED, "int")], "sink(n): the first n keys (attention sinks)"),
    "bigbird": _Spec(
        "BigBird",
        [("block", _REQUIRED, "int"), ("window", 3, "int"), ("globals", 1, "int"),
         ("randoms", 1, "int"), ("seed", 0, "int")],
        "bigbird(block, window=3, globals=1, randoms=1, seed=0): BigBird's block layout (in blocks)",
    ),
    "blocksparse": _Spec(
        "BlockSparse",
        [("random", _REQUIRED, "float"), ("block", 64, "int"), ("seed", 0, "int"),
         ("heads", 1, "int"), ("causal", False, "bool")],
        "blocksparse(random=p, block=64, seed=0, heads=1, causal=false): each block kept with "
        "probability p (a layout drawn for the problem size)",
        aliases=["block_sparse"],
    ),
    "perhead": _Spec(
        "PerHead", [], "perhead(p0; p1; ...): head h uses p_h", variadic="pattern",
        aliases=["per_head"],
    ),
    "topk": _Spec(
        "TopKBlocks",
        [("k", _REQUIRED, "int"), ("bq", 64, "int"), ("bk", None, "optint"), ("causal", True, "bool"),
         ("always", None, "pattern")],
        "topk(k, bq=64, bk=bq, causal=true, always=none): TopKBlocks, the k best key blocks per query block",
        aliases=["topkblocks", "topk_blocks"],
    ),
    "layout": _Spec(
        "BlockSparse",
        [("layout", _REQUIRED, "ref"), ("bq", 64, "int"), ("bk", None, "optint")],
        "layout(@i, bq=64, bk=bq): BlockSparse on the i-th array of `data` (parse(..., data=[...]))",
    ),
}


def _class_specs() -> None:
    """The syntax pattern classes declare themselves (`Pattern._syntax`)."""
    for cls_name in _patterns.__all__:
        cls = getattr(_patterns, cls_name)
        syntax = vars(cls).get("_syntax") if isinstance(cls, type) else None
        if not syntax:
            continue
        key, params, doc, options = (tuple(syntax) + ({},))[:4]
        params = [(n, _REQUIRED if d is ... else d, k) for n, d, k in params]
        _SPECS[key] = _Spec(cls_name, params, doc, variadic=options.get("variadic"),
                            aliases=list(options.get("aliases", [])))


_class_specs()
_ALIASES = {a: name for name, s in _SPECS.items() for a in s.aliases}
KNOWN_NAMES = tuple(_SPECS)

SYNTAX_HELP = """\
pattern syntax (names are case-insensitive; rel = (i + Nk - Nq) - j, see docs/patterns.md):
""" + "\n".join(f"  {s.doc}" for s in _SPECS.values()) + """
  a | b          union          a & b    intersection (binds tighter than |)
  ( ... )        grouping       none, true, false; keyword arguments as name=value
examples:
  'window(511,0)'   'sink(4) | window(1023,0)'   'causal & (strided(128) | window(127,0))'
  'bigbird(64,3,2,3,seed=1)'   'perhead(causal; window(255,0))'
  'blocksparse(random=0.1,block=128,seed=0,heads=8)'   'topk(8,64,always=sink(4)|window(255))'
  'neighborhood((64,64),13)'   'slidingtile((32,32),(8,8),3)'   'longnet((2048,8192),(1,4))'"""

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<ref>@\d+)"
    r"|(?P<op>[()|&,;=]))"
)


@dataclass(frozen=True, repr=False)
class _Ref:
    """@i in the text: the i-th array of `data`."""
    index: int
    pos: int

    def __repr__(self) -> str:
        return f"@{self.index}"


@dataclass
class _Tok:
    kind: str   # num, name, op, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            toks.append(_Tok("end", "", pos))
            return toks
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise PatternSyntaxError(f"unexpected character {text[pos]!r}", text, pos)
        kind = m.lastgroup
        toks.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()


class _Parser:
    def __init__(self, text: str, n, nk, data=None):
        self.text, self.n, self.nk, self.data = text, n, nk, data
        self.toks = _tokenize(text)
        self.i = 0

    # -- helpers ------------------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, message: str, pos: int | None = None):
        raise PatternSyntaxError(message, self.text, self.tok.pos if pos is None else pos)

    def describe(self, tok: _Tok) -> str:
        return "the end of the text" if tok.kind == "end" else repr(tok.text)

    def accept(self, op: str) -> bool:
        if self.tok.kind == "op" and self.tok.text == op:
            self.i += 1
            return True
        return False

    def expect(self, op: str, context: str):
        if not self.accept(op):
            self.error(f"expected {op!r} {context}, found {self.describe(self.tok)}")

    # -- grammar ------------------------------------------------------------------------------
    def parse(self):
        if self.tok.kind == "end":
            self.error("empty pattern; known names: " + ", ".join(KNOWN_NAMES))
        p = self.expr()
        if self.tok.kind != "end":
            self.error(f"expected '|', '&' or the end, found {self.describe(self.tok)}")
        return p

    def expr(self):
        left = self.term()
        while self.tok.kind == "op" and self.tok.text == "|":
            pos = self.tok.pos
            self.i += 1
            left = self.combine(left, self.term(), "|", pos)
        return left

    def term(self):
        left = self.factor()
        while self.tok.kind == "op" and self.tok.text == "&":
            pos = self.tok.pos
            self.i += 1
            left = self.combine(left, self.factor(), "&", pos)
        return left

    def combine(self, a, b, op: str, pos: int):
        try:
            return (a | b) if op == "|" else (a & b)
        except TypeError as e:
            self.error(f"{'union' if op == '|' else 'intersection'} of patterns is not supported by "
                       f"this spattn ({e})", pos)
        except ValueError as e:
            self.error(str(e), pos)

    def factor(self):
        tok = self.tok
        if self.accept("("):
            p = self.expr()
            self.expect(")", f"to close the '(' at position {tok.pos}")
            return p
        if tok.kind != "name":
            self.error(f"expected a pattern name or '(', found {self.describe(tok)}; "
                       f"known names: {', '.join(KNOWN_NAMES)}")
        self.i += 1
        return self.call(tok)

    def call(self, name_tok: _Tok):
        key = name_tok.text.lower()
        key = _ALIASES.get(key, key)
        spec = _SPECS.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, list(_SPECS) + list(_ALIASES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.error(f"unknown pattern {name_tok.text!r}{hint}; known names: {', '.join(KNOWN_NAMES)}",
                       name_tok.pos)
        positional, keywords = [], {}
        if self.accept("("):
            if not self.accept(")"):
                while True:
                    self.argument(spec, key, positional, keywords)
                    if self.accept(")"):
                        break
                    if not (self.accept(",") or self.accept(";")):
                        self.error(f"expected ',' or ')' in the arguments of {key}(...), "
                                   f"found {self.describe(self.tok)}")
        return self.build(spec, key, name_tok, positional, keywords)

    def argument(self, spec: _Spec, key: str, positional: list, keywords: dict):
        tok = self.tok
        if tok.kind == "name" and self.toks[self.i + 1].kind == "op" and self.toks[self.i + 1].text == "=":
            names = [p[0] for p in spec.params]
            if tok.text.lower() not in names:
                known = ", ".join(names) if names else "none"
                self.error(f"{key}() has no argument {tok.text!r} (its keywords: {known})")
            if tok.text.lower() in keywords:
                self.error(f"{key}(): argument {tok.text!r} given twice")
            self.i += 2
            vpos = self.tok.pos
            kind = next(k for n, _, k in spec.params if n == tok.text.lower())
            keywords[tok.text.lower()] = (self.value(spec, key, kind), vpos)
            return
        if keywords:
            self.error(f"{key}(): a positional argument after a keyword argument")
        kind = spec.params[len(positional)][2] if len(positional) < len(spec.params) else None
        positional.append((self.value(spec, key, kind), tok.pos))

    def value(self, spec: _Spec, key: str, kind: str | None = None):
        tok = self.tok
        if spec.variadic == "pattern" or kind == "pattern":
            if tok.kind == "name" and tok.text.lower() == "none" and kind == "pattern":
                self.i += 1
                return None
            return self.expr()
        if kind in ("ints", "bools") and self.accept("("):
            items = []  # a tuple: one value per grid dim (or per segment)
            while True:
                items.append(self.value(spec, key))
                if self.accept(")"):
                    return tuple(items)
                self.expect(",", f"between the values of a tuple in {key}(...)")
                if self.accept(")"):  # (13,)
                    return tuple(items)
        if tok.kind == "ref":
            self.i += 1
            return _Ref(int(tok.text[1:]), tok.pos)
        if tok.kind == "num":
            self.i += 1
            text = tok.text
            if re.fullmatch(r"[-+]?\d+", text):
                return int(text)
            return float(text)
        if tok.kind == "name" and tok.text.lower() in ("none", "inf", "true", "false"):
            self.i += 1
            return {"none": None, "inf": None, "true": True, "false": False}[tok.text.lower()]
        self.error(f"expected a number, none, true, false or @i as an argument of {key}(...), "
                   f"found {self.describe(tok)}")

    # -- construction -------------------------------------------------------------------------
    def coerce(self, value, kind: str, what: str, pos: int):
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "optint": value is None or (isinstance(value, int) and not isinstance(value, bool)),
            "bool": isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "ref": isinstance(value, _Ref),
            "pattern": value is None or isinstance(value, _patterns.Pattern),
            "ints": all(isinstance(x, int) and not isinstance(x, bool)
                        for x in (value if isinstance(value, tuple) else (value,))),
            "bools": all(isinstance(x, bool) for x in (value if isinstance(value, tuple) else (value,))),
        }[kind]
        if not ok:
            want = {"int": "an integer", "optint": "an integer or none", "bool": "true or false",
                    "ints": "an integer or a tuple of integers", "bools": "true, false or a tuple of them",
                    "float": "a number", "ref": "an array reference @i", "pattern": "a pattern or none"}[kind]
            self.error(f"{what}: expected {want}, got {value!r}", pos)
        return float(value) if kind == "float" else value

    def build(self, spec: _Spec, key: str, name_tok: _Tok, positional: list, keywords: dict):
        pos = name_tok.pos
        cls = spec.cls
        if spec.variadic:
            if keywords:
                self.error(f"{key}() takes no keyword arguments", pos)
            if not positional:
                self.error(f"{key}() needs at least one argument", pos)
            if spec.variadic == "int":
                if len(positional) == 1 and isinstance(positional[0][0], _Ref):
                    return self.construct(cls, key, pos, self.resolve(*positional[0]))
                values = [self.coerce(v, "int", f"{key}() position", p) for v, p in positional]
                return self.construct(cls, key, pos, values)
            return self.construct(cls, key, pos, [v for v, _ in positional])
        if len(positional) > len(spec.params):
            self.error(f"{key}() takes at most {len(spec.params)} argument(s) "
                       f"({', '.join(p[0] for p in spec.params) or 'none'}), got {len(positional)}",
                       positional[len(spec.params)][1])
        args = {}
        for (pname, default, kind), (v, p) in zip(spec.params, positional):
            args[pname] = self.coerce(v, kind, f"{key}(): {pname}", p)
        for pname, (v, p) in keywords.items():
            if pname in args:
                self.error(f"{key}(): argument {pname!r} given twice", p)
            kind = next(k for n, _, k in spec.params if n == pname)
            args[pname] = self.coerce(v, kind, f"{key}(): {pname}", p)
        missing = [n for n, d, _ in spec.params if d is _REQUIRED and n not in args]
        if missing:
            sig = ", ".join(n if d is _REQUIRED else f"{n}={d}" for n, d, _ in spec.params)
            self.error(f"{key}({sig}): missing {', '.join(missing)}", pos)
        for n, d, _ in spec.params:
            args.setdefault(n, d)
        if key == "blocksparse":
            return self.blocksparse(cls, pos, **args)
        if key == "layout":
            bk = args["bq"] if args["bk"] is None else args["bk"]
            return self.construct(cls, key, pos, self.resolve(args["layout"], args["layout"].pos), (args["bq"], bk))
        if key == "topk":
            bk = args["bq"] if args["bk"] is None else args["bk"]
            return self.construct(cls, key, pos, args["k"], (args["bq"], bk), args["causal"], args["always"])
        values = [self.resolve(args[n], args[n].pos) if k == "ref" and isinstance(args[n], _Ref) else args[n]
                  for n, _, k in spec.params]
        return self.construct(cls, key, pos, *values)

    def resolve(self, ref: _Ref, pos: int):
        """The array that @i names (numpy, or anything numpy can read)."""
        if not self.data:
            self.error(f"@{ref.index} refers to an array, but no data was given (parse(text, data=[...]))", pos)
        if not 0 <= ref.index < len(self.data):
            self.error(f"@{ref.index} refers to array {ref.index}, but data holds {len(self.data)}", pos)
        return self.data[ref.index]

    def construct(self, cls_name: str, key: str, pos: int, *args):
        cls = getattr(_patterns, cls_name, None)
        if cls is None:
            self.error(f"{key}(...) needs spattn.{cls_name}, which this spattn does not have", pos)
        try:
            return cls(*args)
        except (TypeError, ValueError, OverflowError) as e:
            self.error(f"{key}(...): {e}", pos)

    def blocksparse(self, cls, pos: int, random: float, block: int, seed: int, heads: int, causal: bool):
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
        return self.construct(cls, "blocksparse", pos, layout, (block, block))


def parse(text: str, n: int | None = None, nk: int | None = None, data=None):
    """The pattern that `text` describes (see the module docstring for the syntax).

    `n` (and `nk`, default `n`) is the problem size, needed only by `blocksparse(random=...)`,
    whose layout is drawn for it. `data` is a sequence of arrays that `@i` in the text refers
    to (`layout(@0, 64)`: a BlockSparse on data[0]; `global(@1)`: Global on data[1]). Raises
    ValueError (a PatternSyntaxError, with `.pos`) for text that is not a valid pattern.
    """
    if not isinstance(text, str):
        raise TypeError(f"pattern text: expected a str, got {type(text).__name__}")
    return _Parser(text, n, nk, None if data is None else list(data)).parse()
