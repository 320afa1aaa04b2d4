"""Patterns: which keys each query sees (docs/patterns.md).

Each class is a thin description; the meaning lives in C++ (`spattn::Pattern`), so that
`mask()`, `block_layout()` and every backend share one definition.
"""
from __future__ import annotations

import math
import operator
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from . import _core

__all__ = [
    "Pattern",
    "Dense",
    "Causal",
    "SlidingWindow",
    "BlockSparse",
    "BlockLayout",
    "Dilated",
    "Strided",
    "Fixed",
    "Global",
    "Sink",
    "BigBird",
    "Document",
    "PrefixLM",
    "LogSparse",
    "Union",
    "Intersection",
    "PerHead",
    "TopKBlocks",
    "Neighborhood",
    "SlidingTile",
    "LongNet",
]


def _index(value, what: str, allow_none: bool = False):
    """An exact integer (numpy integers too), or None where allowed; TypeError otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected an integer{' or None' if allow_none else ''}, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{what}: expected an integer{' or None' if allow_none else ''}, "
            f"got {type(value).__name__}"
        ) from None


# Window bounds at or beyond this many keys mean "unbounded" (the C++ kUnbounded); clamping
# here keeps Python's unbounded ints inside int64.
_UNBOUNDED = 1 << 60


def _bound(x: int | None) -> int | None:
    if x is None or x >= _UNBOUNDED:
        return None
    return max(x, -_UNBOUNDED)


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what}: expected an int or a pair (bq, bk), got {value!r}")
        return _index(value[0], what), _index(value[1], what)
    n = _index(value, what)
    return n, n


def _expand_ranges(rowptr: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR over ranges -> CSR over single blocks (indptr int64, indices int32), vectorised."""
    lo = ranges[:, 0].astype(np.int64)
    lens = ranges[:, 1].astype(np.int64) - lo
    cum = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cum[1:])
    indptr = cum[np.asarray(rowptr, dtype=np.int64)]
    idx = np.arange(cum[-1], dtype=np.int64) - np.repeat(cum[:-1] - lo, lens)
    return indptr, idx.astype(np.int32)


@dataclass(frozen=True)
class BlockLayout:
    """A compiled layout: per (head, query block) row r = h * nqb + a, the key blocks to visit,
    split into full blocks (every pair kept) and partial ones (masked per element).

    Stored as ranges, never expanded at compile time:

    - ``full_rowptr``: int64 ``[rows + 1]``; the full ranges of row r are
      ``full_ranges[full_rowptr[r]:full_rowptr[r + 1]]``.
    - ``full_ranges``: int32 ``[n, 2]``; each ``(lo, hi)`` lists key blocks ``lo .. hi - 1``.
      Within a row the ranges are ascending and do not overlap.
    - ``partial_rowptr`` / ``partial_ranges``: the same for partial blocks. A full and a
      partial range never share a block.

    Full blocks are always exactly full, and partial blocks keep some pair, except for a
    periodic pattern (Strided, Dilated, Fixed) on a huge problem, whose exact runs would
    exceed the compile budget: it then lists one partial range over its kept span, which may
    hold blocks that keep nothing (the kernels mask them; the result stays exact).

    Computed lazily on first access and cached (they expand the ranges, or count pairs):
    ``full_indptr`` / ``full_indices`` / ``partial_indptr`` / ``partial_indices`` (CSR over
    single blocks, int64 / int32), ``density`` (kept pairs / all pairs) and ``row()``.
    """

    full_rowptr: np.ndarray
    full_ranges: np.ndarray
    partial_rowptr: np.ndarray
    partial_ranges: np.ndarray
    heads: int
    nqb: int
    nkb: int
    block: tuple[int, int]
    _density: Callable[[], float] = field(repr=False, compare=False, default=lambda: 0.0)

    @cached_property
    def _full_csr(self) -> tuple[np.ndarray, np.ndarray]:
        return _expand_ranges(self.full_rowptr, self.full_ranges)

    @cached_property
    def _partial_csr(self) -> tuple[np.ndarray, np.ndarray]:
        return _expand_ranges(self.partial_rowptr, self.partial_ranges)

    @property
    def full_indptr(self) -> np.ndarray:
        return self._full_csr[0]

    @property
    def full_indices(self) -> np.ndarray:
        return self._full_csr[1]

    @property
    def partial_indptr(self) -> np.ndarray:
        return self._partial_csr[0]

    @property
    def partial_indices(self) -> np.ndarray:
        return self._partial_csr[1]

    @cached_property
    def density(self) -> float:
        """Kept pairs / all pairs (counted on first access)."""
        return float(self._density())

    def row(self, head: int, qblock: int) -> tuple[np.ndarray, np.ndarray]:
        """(full, partial) key blocks of one query block of one head."""
        r = (0 if self.heads == 1 else head) * self.nqb + qblock
        return (
            self.full_indices[self.full_indptr[r] : self.full_indptr[r + 1]],
            self.partial_indices[self.partial_indptr[r] : self.partial_indptr[r + 1]],
        )


def _tracing() -> bool:
    """True while torch.compile traces (torch is never imported here: if the caller has not
    imported it, nothing is being traced)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


class Pattern:
    """Base class. Subclasses build their C++ pattern in `_build()`.

    A pattern kind's class also carries its text form, so that adding a kind touches only its
    C++ folder, its binding and its class:

    - ``_syntax``: its name in the text syntax (`pattern_syntax`). The name's parameters
      (kinds, defaults), aliases and help line are declared once, in C++, in the kind folder's
      ``syntax.inc`` (cpp/src/pattern/kinds/README.md); the parser checks the arguments there
      and this class is called with one value per parameter, in order (a variadic name's
      arguments as one list).
    - ``_text(ref)``: the pattern in that syntax; ``ref(array)`` returns the ``@i`` that names
      an array passed beside the text (how torch's custom operators carry a pattern).
    """

    _compiled: _core.Pattern | None = None
    _syntax: str | None = None

    def _text(self, ref) -> str | None:
        return None

    def _check(self) -> None:
        # Constructors check their arguments at once by building the C++ pattern; a pattern
        # made inside a function torch.compile traces is checked when its operator runs
        # instead (the tracer cannot follow the C++ call).
        if not _tracing():
            self._core()

    def _build(self) -> _core.Pattern:  # pragma: no cover - abstract
        raise NotImplementedError

    def _core(self) -> _core.Pattern:
        if self._compiled is None:
            self._compiled = self._build()
        return self._compiled

    def mask(self, nq: int, nk: int, heads: int = 1) -> np.ndarray:
        """Dense boolean mask [heads, Nq, Nk]: the definition every backend is tested against."""
        return self._core().mask(_index(nq, "Nq"), _index(nk, "Nk"), _index(heads, "heads"))

    def block_layout(self, nq: int, nk: int, block=(64, 64), heads: int = 1) -> BlockLayout:
        """The compiled block layout for an Nq x Nk problem, as ranges of key blocks per row (see
        BlockLayout), in closed form for structured patterns (cost proportional to the ranges
        listed; nothing is expanded or counted until asked for)."""
        nq, nk, heads = _index(nq, "Nq"), _index(nk, "Nk"), _index(heads, "heads")
        bq, bk = _pair(block, "block")
        core = self._core()
        raw = core.block_layout(nq, nk, bq, bk, heads)
        total = float(heads) * nq * nk

        def density() -> float:
            return core.kept_pairs(nq, nk, heads) / total if total else 0.0

        return BlockLayout(
            full_rowptr=raw["full_rowptr"],
            full_ranges=raw["full_ranges"],
            partial_rowptr=raw["partial_rowptr"],
            partial_ranges=raw["partial_ranges"],
            heads=raw["heads"],
            nqb=raw["nqb"],
            nkb=raw["nkb"],
            block=(bq, bk),
            _density=density,
        )

    def __repr__(self) -> str:
        return self._core().describe()

    def __or__(self, other):
        if not isinstance(other, Pattern):
            return NotImplemented
        return Union([self, other])

    def __and__(self, other):
        if not isinstance(other, Pattern):
            return NotImplemented
        return Intersection([self, other])

    def __ror__(self, other):
        return NotImplemented

    def __rand__(self, other):
        return NotImplemented


class Dense(Pattern):
    """Every query sees every key."""

    _syntax = "dense"

    def _build(self):
        return _core.Pattern.dense()


class Causal(Pattern):
    """rel >= 0: each query sees its own position and the past (bottom-right aligned)."""

    _syntax = "causal"

    def _build(self):
        return _core.Pattern.causal()


class SlidingWindow(Pattern):
    """-right <= rel <= left, None meaning unbounded. SlidingWindow(W - 1, 0) is a causal window
    of W keys, self included (FlashAttention's window_size=(W-1, 0))."""

    _syntax = "window"

    def __init__(self, left: int | None, right: int | None = 0):
        self.left = _bound(_index(left, "SlidingWindow: left", allow_none=True))
        self.right = _bound(_index(right, "SlidingWindow: right", allow_none=True))
        self._check()  # check the arguments now, not at the first call

    def _build(self):
        return _core.Pattern.sliding_window(self.left, self.right)


class BlockSparse(Pattern):
    """layout[h, i // bq, j // bk] decides, indexed by query row i (no offset). `layout` is a
    boolean (or 0/1 integer) array [1 or Hq, ceil(Nq/bq), ceil(Nk/bk)]; a 2-D layout is shared
    by all heads."""

    def __init__(self, layout, block_size=(64, 64)):
        self.block_size = _pair(block_size, "BlockSparse: block_size")
        arr = _layout_array(layout)
        self.layout = arr
        self._check()

    def _build(self):
        return _core.Pattern.block_sparse(self.layout, *self.block_size)


def _layout_array(layout) -> np.ndarray:
    if isinstance(layout, (str, bytes)) or layout is None:
        raise TypeError(f"BlockSparse: layout must be a boolean array, got {type(layout).__name__}")
    try:
        arr = np.asarray(layout)
    except Exception as e:  # torch tensors on other devices, ragged lists, ...
        raise TypeError(f"BlockSparse: layout must be a boolean array, got {type(layout).__name__}") from e
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"BlockSparse: layout must hold booleans or 0/1 integers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"BlockSparse: layout must be [heads, query blocks, key blocks] (or 2-D), got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr != 0)


def _nonneg(value, what: str) -> int:
    v = _index(value, what)
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    return v


def _positive(value, what: str) -> int:
    v = _index(value, what)
    if v < 1:
        raise ValueError(f"{what} must be >= 1, got {v}")
    return v


def _flag(value, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what}: expected a bool, got {type(value).__name__}")
    return bool(value)


class Dilated(Pattern):
    """rel % dilation == 0 and -right*dilation <= rel <= left*dilation: `left` keys in the past
    and `right` in the future on a grid of step `dilation` (None: unbounded). Dilated(l, r, 1)
    is SlidingWindow(l, r)."""

    _syntax = "dilated"

    def __init__(self, left: int | None, right: int | None = 0, dilation: int = 1):
        left = _index(left, "Dilated: left", allow_none=True)
        right = _index(right, "Dilated: right", allow_none=True)
        if left is not None and left < 0:
            raise ValueError(f"Dilated: left must be >= 0 or None, got {left}")
        if right is not None and right < 0:
            raise ValueError(f"Dilated: right must be >= 0 or None, got {right}")
        self.left, self.right = _bound(left), _bound(right)
        self.dilation = _positive(dilation, "Dilated: dilation")
        self._check()

    def _build(self):
        return _core.Pattern.dilated(self.left, self.right, self.dilation)


class Strided(Pattern):
    """rel % stride == 0 (and rel >= 0 if causal): the Sparse Transformer's strided heads."""

    _syntax = "strided"

    def __init__(self, stride: int, causal: bool = True):
        self.stride = _positive(stride, "Strided: stride")
        self.causal = _flag(causal, "Strided: causal")
        self._check()

    def _build(self):
        return _core.Pattern.strided(self.stride, self.causal)


class Fixed(Pattern):
    """p // block == j // block or j % block >= block - summary (and rel >= 0 if causal): the
    Sparse Transformer's fixed pattern (own chunk plus the last `summary` keys of every chunk).
    Floor division, so negative positions p (Nq > Nk) fall in negative chunks."""

    _syntax = "fixed"

    def __init__(self, block: int, summary: int, causal: bool = True):
        self.block = _positive(block, "Fixed: block")
        self.summary = _index(summary, "Fixed: summary")
        if not 1 <= self.summary <= self.block:
            raise ValueError(f"Fixed: summary must be in 1..block={self.block}, got {self.summary}")
        self.causal = _flag(causal, "Fixed: causal")
        self._check()

    def _build(self):
        return _core.Pattern.fixed(self.block, self.summary, self.causal)


class Global(Pattern):
    """Key j is global (seen by every query) and query i at position p = i + Nk - Nq is global
    (sees every key) when j or p is in `positions` (key positions, ints >= 0; duplicates fine;
    a position >= Nk is a ValueError when the pattern meets a problem)."""

    _syntax = "global"

    def __init__(self, positions):
        if isinstance(positions, (str, bytes)) or positions is None:
            raise TypeError(f"Global: positions must be a sequence of ints, got {type(positions).__name__}")
        try:
            items = list(np.asarray(positions).reshape(-1)) if isinstance(positions, np.ndarray) else list(positions)
        except TypeError:
            raise TypeError(f"Global: positions must be a sequence of ints, got {type(positions).__name__}") from None
        out = []
        for x in items:
            v = _index(x, "Global: positions")
            if v < 0:
                raise ValueError(f"Global: positions must be >= 0, got {v}")
            if v >= 1 << 62:
                raise ValueError(f"Global: position {v} is too large")
            out.append(v)
        self.positions = tuple(out)
        self._check()

    def _build(self):
        return _core.Pattern.global_(list(self.positions))


class Sink(Pattern):
    """j < n: the first n keys are seen by every query (StreamingLLM attention sinks)."""

    _syntax = "sink"

    def __init__(self, n: int):
        self.n = min(_nonneg(n, "Sink: n"), _UNBOUNDED)
        self._check()

    def _build(self):
        return _core.Pattern.sink(self.n)


class BigBird(Pattern):
    """BigBird's block layout, generated when the problem size is known.

    Query block a = i // block and key block c = j // block (like BlockSparse: no offset).
    The diagonal of row a is d(a) = a + floor((Nk - Nq) / block), so bottom-right alignment
    holds when Nk - Nq is a multiple of block. Row a keeps key block c when
      - d(a) - (window - 1) // 2 <= c <= d(a) + window // 2 (the sliding window of blocks), or
      - a < globals or c < globals (global rows and columns), or
      - c is one of `randoms` distinct key blocks drawn for row a among those not already kept
        (all of them when fewer remain), by splitmix64 seeded from (seed, a): deterministic.
    Inside kept blocks every pair is kept. Shared by all heads.
    """

    _syntax = "bigbird"

    def __init__(self, block: int, window: int = 3, globals: int = 1, randoms: int = 1, seed: int = 0):
        self.block = _positive(block, "BigBird: block")
        self.window = _nonneg(window, "BigBird: window")
        self.globals = _nonneg(globals, "BigBird: globals")
        self.randoms = _nonneg(randoms, "BigBird: randoms")
        self.seed = _nonneg(seed, "BigBird: seed")
        if self.seed >= 1 << 64:
            raise ValueError(f"BigBird: seed must be < 2**64, got {self.seed}")
        for name in ("block", "window", "globals", "randoms"):
            if getattr(self, name) >= 1 << 40:
                raise ValueError(f"BigBird: {name} is too large")
        self._check()

    def _build(self):
        return _core.Pattern.bigbird(self.block, self.window, self.globals, self.randoms, self.seed)


def _parts(parts, what: str) -> list:
    if isinstance(parts, Pattern):
        parts = [parts]
    try:
        parts = list(parts)
    except TypeError:
        raise TypeError(f"{what}: expected a list of spattn patterns, got {type(parts).__name__}") from None
    for p in parts:
        if not isinstance(p, Pattern):
            raise TypeError(f"{what}: expected spattn patterns, got {type(p).__name__}")
    if not parts:
        raise ValueError(f"{what}: expected at least one pattern, got an empty list")
    return parts


# ---- grids (images, video) and LongNet's dilated segments (issue 15) -----------------------


def _ints(value, what: str) -> tuple:
    """A tuple of ints from an int or a sequence of ints (TypeError otherwise)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_index(x, what) for x in value)
    return (_index(value, what),)


def _tuple_text(xs) -> str:
    """A tuple in the text syntax: (1,2), (5,), (true,false)."""
    items = [("true" if x else "false") if isinstance(x, bool) else str(int(x)) for x in xs]
    return "(" + ",".join(items) + ("," if len(items) == 1 else "") + ")"


def _per_dim(value, ndim: int, what: str, kind=_index) -> tuple:
    """One value per dim: a scalar is used for every dim; a sequence must have ndim entries."""
    if isinstance(value, (list, tuple, np.ndarray)):
        out = tuple(kind(x, what) for x in value)
        if len(out) != ndim:
            raise ValueError(f"{what}: expected one value or {ndim} (one per grid dim), got {len(out)}")
        return out
    return (kind(value, what),) * ndim


class Neighborhood(Pattern):
    """NATTEN's neighbourhood attention over tokens laid out row-major on a grid of 1 to 3 dims
    (the last dim fastest), starting at token `start` of the sequence (key positions; queries
    at p = i + Nk - Nq). Per dim, with extent n, window w and dilation d:

    - a query's group is the positions with its residue mod d;
    - it sees the w positions of its group around it: w // 2 before and w - 1 - w // 2 after
      (an even window leans back), shifted at the borders so that it keeps its full size;
    - causal (per dim): the w most recent positions of its group, itself included.

    A key is kept when it is a neighbour in every dim. window, dilation and causal are one
    value for every dim or one per dim; window * dilation <= extent in every dim. Tokens outside
    start .. start + prod(grid) - 1 neither see nor are seen by this pattern (combine it with
    others: see `vision_language`).
    """

    _syntax = "neighborhood"

    def __init__(self, grid, window, dilation=1, causal=False, start: int = 0):
        self.grid = _ints(grid, "Neighborhood: grid")
        nd = len(self.grid)
        self.window = _per_dim(window, nd, "Neighborhood: window")
        self.dilation = _per_dim(dilation, nd, "Neighborhood: dilation")
        self.causal = _per_dim(causal, nd, "Neighborhood: causal", _flag)
        self.start = _index(start, "Neighborhood: start")
        self._check()

    def _build(self):
        return _core.Pattern.neighborhood(list(self.grid), list(self.window), list(self.dilation),
                                          list(self.causal), self.start)

    def _text(self, ref):
        return (f"neighborhood({_tuple_text(self.grid)},{_tuple_text(self.window)},"
                f"{_tuple_text(self.dilation)},{_tuple_text(self.causal)},{self.start})")


class SlidingTile(Pattern):
    """Sliding tile attention (video DiTs): the grid (2 or 3 dims) is cut into tiles of shape
    `tile`, and tokens are numbered tile-major: tiles row-major over the tile grid, tokens
    row-major inside a tile, so one tile is prod(tile) consecutive tokens (permute a row-major
    sequence into this order before the call). Every token of a query tile sees every token of
    the key tiles in its window of `window_tiles` tiles per dim: NATTEN's rule over the tile
    grid (centred, shifted at the borders to keep its size). With prod(tile) equal to the
    block size, every block is full or empty. grid % tile == 0 and window_tiles <= grid / tile
    in every dim; `start` as in Neighborhood.
    """

    _syntax = "slidingtile"

    def __init__(self, grid, tile, window_tiles, start: int = 0):
        self.grid = _ints(grid, "SlidingTile: grid")
        nd = len(self.grid)
        self.tile = _per_dim(tile, nd, "SlidingTile: tile")
        self.window_tiles = _per_dim(window_tiles, nd, "SlidingTile: window_tiles")
        self.start = _index(start, "SlidingTile: start")
        self._check()

    def _build(self):
        return _core.Pattern.sliding_tile(list(self.grid), list(self.tile), list(self.window_tiles),
                                          self.start)

    def _text(self, ref):
        return (f"slidingtile({_tuple_text(self.grid)},{_tuple_text(self.tile)},"
                f"{_tuple_text(self.window_tiles)},{self.start})")

    def tile_order(self) -> np.ndarray:
        """perm [prod(grid)]: token t of the tile-major order is token perm[t] of the row-major
        grid (x_tiled = x[:, perm]; x = x_tiled[:, argsort(perm)])."""
        tg = [g // t for g, t in zip(self.grid, self.tile)]
        idx = np.arange(math.prod(self.grid)).reshape(self.grid)
        shape, axes = [], []
        for d, (n, t) in enumerate(zip(tg, self.tile)):
            shape += [n, t]
        idx = idx.reshape(shape)
        nd = len(self.grid)
        axes = [2 * d for d in range(nd)] + [2 * d + 1 for d in range(nd)]
        return idx.transpose(axes).reshape(-1)


class LongNet(Pattern):
    """LongNet's dilated attention, for Nq = Nk: query i and key j of head h are kept when for
    some k, i // segments[k] == j // segments[k] and i % dilations[k] == j % dilations[k] ==
    h % dilations[k] (and j <= i if causal). Each segment size must be a multiple of its
    dilation. The heads' rules differ (h % r), so the layout is per head.
    """

    _syntax = "longnet"

    def __init__(self, segments, dilations, causal: bool = True):
        self.segments = _ints(segments, "LongNet: segments")
        self.dilations = _ints(dilations, "LongNet: dilations")
        self.causal = _flag(causal, "LongNet: causal")
        self._check()

    def _build(self):
        return _core.Pattern.longnet(list(self.segments), list(self.dilations), self.causal)

    def _text(self, ref):
        return (f"longnet({_tuple_text(self.segments)},{_tuple_text(self.dilations)},"
                f"causal={'true' if self.causal else 'false'})")



def _int_sequence(values, what: str) -> list[int]:
    """A 1-D sequence of exact integers (a list, tuple or numpy/DLPack-able integer array)."""
    if isinstance(values, (str, bytes)) or values is None or isinstance(values, (int, np.integer)):
        raise TypeError(f"{what}: expected a sequence of ints, got {type(values).__name__}")
    if not isinstance(values, (list, tuple)):
        try:
            arr = np.asarray(values)
        except Exception:
            raise TypeError(f"{what}: expected a sequence of ints, got {type(values).__name__}") from None
        if arr.ndim != 1:
            raise ValueError(f"{what}: expected a 1-D sequence, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{what}: expected integers, got dtype {arr.dtype}")
        values = arr.tolist()
    return [_index(x, what) for x in values]


class Document(Pattern):
    """Attention only within a document of one packed sequence: query i (at key position
    p = i + Nk - Nq, bottom-right as everywhere) sees key j when p and j lie in the same
    document. Usually intersected with causality: ``Document(cu) & Causal()``.

    Two ways to give the documents (exactly one):

    - ``Document(cu_seqlens)`` (positional, or ``cu_seqlens=``): the documents' offsets
      ``[0, n_0, n_0 + n_1, ..., total]``, first 0, non-decreasing (a repeated offset is an
      empty document), as FlashAttention's varlen ``cu_seqlens``;
    - ``Document(segment_ids=ids)``: one document id per key position (``len(ids) == total``);
      each document must be one contiguous run of equal ids (ids need not be sorted).

    The pattern fits problems with ``Nk == total`` (ValueError otherwise, when it meets one);
    ``Nq <= Nk`` puts the queries on the last Nq positions (a KV cache); a query with p < 0
    (Nq > Nk) sees nothing. ``cu_seqlens`` keeps the offsets (a tuple) either way.
    """

    _syntax = "document"

    def __init__(self, cu_seqlens=None, *, segment_ids=None):
        if (cu_seqlens is None) == (segment_ids is None):
            raise TypeError("Document: give exactly one of cu_seqlens (document offsets) and "
                            "segment_ids (a document id per position)")
        if cu_seqlens is not None:
            cu = _int_sequence(cu_seqlens, "Document: cu_seqlens")
        else:
            cu = self._offsets(_int_sequence(segment_ids, "Document: segment_ids"))
        if not cu or cu[0] != 0:
            raise ValueError(f"Document: cu_seqlens must start with 0, got "
                             f"{'an empty list' if not cu else cu[0]}")
        for t in range(1, len(cu)):
            if cu[t] < cu[t - 1]:
                raise ValueError(f"Document: cu_seqlens must be non-decreasing, got {cu[t - 1]} "
                                 f"then {cu[t]} at index {t}")
        if cu[-1] >= _UNBOUNDED:
            raise ValueError(f"Document: cu_seqlens end at {cu[-1]}, which is too large")
        self.cu_seqlens = tuple(cu)
        self._check()

    @staticmethod
    def _offsets(ids: list[int]) -> list[int]:
        cu, seen = [0], {}
        for x in range(1, len(ids) + 1):
            if x == len(ids) or ids[x] != ids[x - 1]:
                doc = ids[x - 1]
                if doc in seen:
                    raise ValueError(
                        f"Document: segment_ids: document {doc} appears in two separate runs "
                        f"(positions {seen[doc]} and {cu[-1]}); each document must be contiguous")
                seen[doc] = cu[-1]
                cu.append(x)
        return cu

    def _build(self):
        return _core.Pattern.document(list(self.cu_seqlens))

    def _text(self, ref):
        return f"document({ref(np.asarray(self.cu_seqlens, dtype=np.int64))})"


class PrefixLM(Pattern):
    """Key j is kept when j <= p or j < n (p = i + Nk - Nq): bidirectional attention over the
    first n tokens (the prefix), causal after them, as in prefix language models (the same pairs
    as ``Causal() | Sink(n)``, as one rule)."""

    _syntax = "prefixlm"

    def __init__(self, n: int):
        self.n = min(_nonneg(n, "PrefixLM: n"), _UNBOUNDED)
        self._check()

    def _build(self):
        return _core.Pattern.prefix_lm(self.n)

    def _text(self, ref):
        return f"prefixlm({self.n})"


class LogSparse(Pattern):
    """rel = i + Nk - Nq - j >= 0 and (rel <= local or rel a power of two): each query sees
    itself, its `local` previous keys and keys at distances 1, 2, 4, 8, ... (the LogSparse
    Transformer). About log2(N) + local keys per query; its layout lists O(log N) key blocks
    per query block."""

    _syntax = "logsparse"

    def __init__(self, local: int = 0):
        self.local = min(_nonneg(local, "LogSparse: local"), _UNBOUNDED)
        self._check()

    def _build(self):
        return _core.Pattern.log_sparse(self.local)

    def _text(self, ref):
        return f"logsparse({self.local})"


class Union(Pattern):
    """A pair is kept when any part keeps it (also written a | b)."""

    def __init__(self, parts):
        flat = []
        for p in _parts(parts, "Union"):
            flat.extend(p.parts if type(p) is Union else [p])
        self.parts = tuple(flat)
        self._check()

    def _build(self):
        return _core.Pattern.union([p._core() for p in self.parts])


class Intersection(Pattern):
    """A pair is kept when every part keeps it (also written a & b)."""

    def __init__(self, parts):
        flat = []
        for p in _parts(parts, "Intersection"):
            flat.extend(p.parts if type(p) is Intersection else [p])
        self.parts = tuple(flat)
        self._check()

    def _build(self):
        return _core.Pattern.intersection([p._core() for p in self.parts])


class PerHead(Pattern):
    """Query head h uses patterns[h]; the list must have exactly Hq entries (checked when the
    pattern meets a problem)."""

    _syntax = "perhead"

    def __init__(self, patterns):
        if isinstance(patterns, Pattern):
            raise TypeError("PerHead: expected a list of patterns, one per query head, got a single pattern")
        try:
            self.parts = tuple(_parts(patterns, "PerHead"))
        except ValueError:
            raise ValueError("PerHead: expected a list of patterns, one per query head, got an empty list") from None
        self._check()

    def _build(self):
        return _core.Pattern.per_head([p._core() for p in self.parts])


class TopKBlocks(Pattern):
    """Learned, data-dependent pattern (docs/patterns.md, MoBA-style routing): for every query block of
    every head, the key blocks whose pooled keys score highest against the pooled queries.

    - qm = mean of the query rows of a query block, km = mean of the key rows of a key block
      (rows that exist only; the kv head of the query head under GQA); score s = qm . km.
    - causal (default): the current key blocks (holding the position of one of the block's
      queries) are always kept, the top ``k`` of the blocks entirely in the past are added,
      future blocks never; inside kept blocks ``rel >= 0`` still holds per element. Not causal:
      the top ``k`` of all key blocks. Ties go to the lower block index; NaN scores rank last.
    - ``always`` (any fixed pattern, e.g. ``Sink(64) | SlidingWindow(511, 0)``) is united in
      with its own element rule.

    The choice depends on q and k, so this pattern has no ``mask()`` or ``block_layout()`` of its
    own: ``select(q, k)`` returns, per batch element, the concrete pattern that ``attention``
    then computes exactly. ``attention`` / ``attention_backward`` / ``decode`` select by
    themselves (the backward chooses again from the same q and k, with the same result); the
    choice passes no gradient, the attention on the kept blocks does. It cannot be nested in
    ``|``, ``&`` or ``PerHead``: pass other patterns as ``always``. On CUDA tensors
    ``attention``, ``decode``, ``select`` and ``chosen_blocks`` choose on the GPU, the CPU's
    choice wherever the CPU rounds the same way (docs/patterns.md); ``select`` /
    ``chosen_blocks`` then copy the masks back to the host (one copy; the call waits for the
    stream, so it cannot be captured in a CUDA graph).
    """

    def __init__(self, k: int, block_size=(64, 64), causal: bool = True, always: Pattern | None = None):
        self.k = _nonneg(k, "TopKBlocks: k")
        bq, bk = _pair(block_size, "TopKBlocks: block_size")
        if bq < 1 or bk < 1:
            raise ValueError(f"TopKBlocks: block_size must be positive, got ({bq}, {bk})")
        self.block_size = (bq, bk)
        self.causal = _flag(causal, "TopKBlocks: causal")
        if always is not None and not isinstance(always, Pattern):
            raise TypeError(f"TopKBlocks: always must be a spattn pattern or None, got {type(always).__name__}")
        if isinstance(always, TopKBlocks):
            raise ValueError("TopKBlocks: always must be a fixed pattern (Sink, SlidingWindow, ...), got TopKBlocks")
        self.always = always
        self._check()

    def _build(self):
        bq, bk = self.block_size
        always = None if self.always is None else self.always._core()
        return _core.Pattern.topk_blocks(self.k, bq, bk, self.causal, always)

    def chosen_blocks(self, q, k, cu_seqlens_q=None, cu_seqlens_k=None) -> list[np.ndarray]:
        """Per batch element (or sequence, with cu_seqlens), the chosen key blocks as a boolean
        array [Hq, ceil(Nq/bq), ceil(Nk/bk)] (current blocks included when causal; ``always``
        not included)."""
        from ._device import cuda_call
        from ._interop import detached

        cu = (cu_seqlens_q, cu_seqlens_k)
        if (cu_seqlens_q is None) != (cu_seqlens_k is None):
            raise ValueError("cu_seqlens_q, cu_seqlens_k: a variable-length batch needs both offset arrays")
        if cu_seqlens_q is not None:
            from .api import _offsets

            cu = (_offsets(cu_seqlens_q, "cu_seqlens_q"), _offsets(cu_seqlens_k, "cu_seqlens_k"))
        # torch / cupy on CUDA: chosen on the framework's current stream, workspace from its allocator.
        cc = cuda_call(q)
        stream, workspace = (None, None) if cc is None else (cc.stream, cc.workspace)
        return list(_core.select(detached(q), detached(k), self._core(), *cu, stream, workspace))

    def select(self, q, k, cu_seqlens_q=None, cu_seqlens_k=None) -> list[Pattern]:
        """Per batch element (or sequence), the concrete pattern attention(q, k, v, self)
        computes: ``BlockSparse(chosen, block_size) & Causal()`` (just the BlockSparse when not
        causal), ``| always`` when given."""
        return [self.concrete(m) for m in self.chosen_blocks(q, k, cu_seqlens_q, cu_seqlens_k)]

    def concrete(self, chosen) -> Pattern:
        """The pattern for one sequence whose chosen blocks are ``chosen`` [Hq, nqb, nkb]."""
        p = BlockSparse(chosen, self.block_size)
        if self.causal:
            p = p & Causal()
        if self.always is not None:
            p = p | self.always
        return p
