"""Which keys a range of queries may see, and which queries may see a range of keys, in closed
form per pattern (docs/patterns.md, with Nq == Nk == N so that query i sits at key position i).

The answers are supersets (exact for windows, a hull for periodic patterns), never subsets:
the attention itself applies the exact element rule, so a superset costs bytes, not
correctness. Everything here is proportional to the pattern's description, never to N * N.
"""
from __future__ import annotations

import numpy as np

from .. import patterns as P
from . import _intervals as iv

_INF = 1 << 62


class Unsupported(ValueError):
    """The pattern cannot run in sequence mode (head mode can run it)."""


def _bounds(pattern):
    """(left, right) reach of a window-like leaf in positions (None: unbounded), or None."""
    if isinstance(pattern, P.Dense):
        return None, None
    if isinstance(pattern, P.Causal):
        return None, 0
    if isinstance(pattern, P.SlidingWindow):
        return pattern.left, pattern.right
    if isinstance(pattern, P.Dilated):
        d = pattern.dilation
        return (None if pattern.left is None else pattern.left * d), (None if pattern.right is None else pattern.right * d)
    return None


def check_supported(pattern) -> None:
    """Unsupported (naming the part) unless every leaf can be shifted to a sub-problem."""
    if isinstance(pattern, (P.Union, P.Intersection, P.PerHead)):
        for p in pattern.parts:
            check_supported(p)
        return
    if _bounds(pattern) is not None or isinstance(pattern, (P.Strided, P.Sink, P.Global, P.BlockSparse)):
        return
    raise Unsupported(
        f"pattern: {type(pattern).__name__} has no sequence-mode plan (its blocks depend on the whole "
        f"problem or on the data); use mode='heads'"
    )


def _runs(mask: np.ndarray, block: int, n: int) -> iv.Intervals:
    """Positions covered by the True entries of a 1-D block mask, as intervals clipped to n."""
    m = np.concatenate(([False], mask.astype(bool), [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a) * block, min(int(b) * block, n)) for a, b in zip(edges[0::2], edges[1::2])]


def _points(positions, lo: int, hi: int) -> iv.Intervals:
    return iv.normalize([(x, x + 1) for x in positions if lo <= x < hi])


def global_rows(pattern) -> set:
    """The positions of every Global leaf: query rows that may see every key."""
    if isinstance(pattern, (P.Union, P.Intersection, P.PerHead)):
        return set().union(*(global_rows(p) for p in pattern.parts))
    return set(pattern.positions) if isinstance(pattern, P.Global) else set()


def keys_of(pattern, a: int, b: int, n: int, rows_apart: bool = False) -> iv.Intervals:
    """Keys (in [0, n)) that some query in [a, b) may see. rows_apart: leave out what the
    global_rows see (they are computed apart, against every rank's keys)."""
    if a >= b:
        return []
    bd = _bounds(pattern)
    if bd is not None:
        left, right = bd
        lo = -_INF if left is None else a - left
        hi = _INF if right is None else b + right
        return iv.clip([(lo, hi)], 0, n)
    if isinstance(pattern, P.Strided):
        return iv.clip([(0, b)], 0, n) if pattern.causal else [(0, n)] if n else []
    if isinstance(pattern, P.Sink):
        return iv.clip([(0, pattern.n)], 0, n)
    if isinstance(pattern, P.Global):
        if not rows_apart and any(a <= x < b for x in pattern.positions):
            return [(0, n)] if n else []
        return _points(pattern.positions, 0, n)
    if isinstance(pattern, P.BlockSparse):
        bq, bk = pattern.block_size
        rows = pattern.layout[:, a // bq : (b - 1) // bq + 1, :]
        return iv.clip(_runs(rows.any(axis=(0, 1)), bk, n), 0, n)
    if isinstance(pattern, (P.Union, P.PerHead)):
        return iv.union(*(keys_of(p, a, b, n, rows_apart) for p in pattern.parts))
    if isinstance(pattern, P.Intersection):
        out = keys_of(pattern.parts[0], a, b, n, rows_apart)
        for p in pattern.parts[1:]:
            out = iv.intersect(out, keys_of(p, a, b, n, rows_apart))
        return out
    check_supported(pattern)
    raise AssertionError(type(pattern))  # pragma: no cover


def queries_of(pattern, c: int, d: int, n: int, rows_apart: bool = False) -> iv.Intervals:
    """Queries (in [0, n)) that may see some key in [c, d) (rows_apart: as in keys_of)."""
    if c >= d:
        return []
    bd = _bounds(pattern)
    if bd is not None:
        left, right = bd
        lo = -_INF if right is None else c - right
        hi = _INF if left is None else d + left
        return iv.clip([(lo, hi)], 0, n)
    if isinstance(pattern, P.Strided):
        return iv.clip([(c, n)], 0, n) if pattern.causal else [(0, n)] if n else []
    if isinstance(pattern, P.Sink):
        return [(0, n)] if c < pattern.n and n else []
    if isinstance(pattern, P.Global):
        if any(c <= x < d for x in pattern.positions):
            return [(0, n)] if n else []
        return [] if rows_apart else _points(pattern.positions, 0, n)
    if isinstance(pattern, P.BlockSparse):
        bq, bk = pattern.block_size
        cols = pattern.layout[:, :, c // bk : (d - 1) // bk + 1]
        return iv.clip(_runs(cols.any(axis=(0, 2)), bq, n), 0, n)
    if isinstance(pattern, (P.Union, P.PerHead)):
        return iv.union(*(queries_of(p, c, d, n, rows_apart) for p in pattern.parts))
    if isinstance(pattern, P.Intersection):
        out = queries_of(pattern.parts[0], c, d, n, rows_apart)
        for p in pattern.parts[1:]:
            out = iv.intersect(out, queries_of(p, c, d, n, rows_apart))
        return out
    check_supported(pattern)
    raise AssertionError(type(pattern))  # pragma: no cover
