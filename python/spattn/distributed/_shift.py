"""A pattern evaluated at global positions, rewritten for a sub-problem.

A rank computes queries [j0, j0 + nq) of a sequence against keys [k0, k0 + nk) of it. spattn
aligns a problem bottom-right (docs/patterns.md): local query i sits at local key position
i + nk - nq. The global rule relates query j0 + i to key k0 + j, so relative distances differ
by delta = (j0 + nq) - (k0 + nk), and absolute key / query positions by k0 / j0. Each leaf is
rewritten so that the sub-problem keeps exactly the pairs the global pattern keeps:

- windows move their bounds by delta; Dilated and Strided need delta to be a multiple of their
  period, which `key_padding` arranges by appending a few unseen keys (masked with a Sink);
- Sink keeps its prefix; Global becomes key columns and query rows (BlockSparse, or a shifted
  Global when the alignment allows); BlockSparse is sliced (refined when the shard borders do
  not fall on its block borders).

`None` stands for "keeps nothing" inside this module.
"""
from __future__ import annotations

import math

import numpy as np

from .. import patterns as P
from ._reach import Unsupported, _bounds, check_supported

# A refined BlockSparse layout larger than this many entries is refused (shards whose borders
# do not fall on the layout's block borders need a finer grid).
MAX_REFINED_LAYOUT = 1 << 26


def period(pattern) -> int:
    """The lcm of the periods of the Dilated and Strided leaves (1 if none)."""
    if isinstance(pattern, (P.Union, P.Intersection, P.PerHead)):
        return math.lcm(*(period(p) for p in pattern.parts))
    if isinstance(pattern, P.Dilated) and pattern.dilation > 1:
        return pattern.dilation
    if isinstance(pattern, P.Strided):
        return pattern.stride
    return 1


def key_padding(pattern, j0: int, nq: int, k0: int, nk: int) -> int:
    """Unseen keys to append so that delta becomes a multiple of the pattern's period."""
    return ((j0 + nq) - (k0 + nk)) % period(pattern)


def _sub(x, d):
    return None if x is None else x - d


def _add(x, d):
    return None if x is None else x + d


def _empty(nq: int, nk: int):
    return P.BlockSparse(np.zeros((1, 1, 1), dtype=bool), (max(nq, 1), max(nk, 1)))


def _shift(p, j0, nq, k0, nk_real, nk):
    delta = (j0 + nq) - (k0 + nk)
    if isinstance(p, P.Dilated) and p.dilation > 1:
        d = p.dilation
        m = delta // d
        left, right = _sub(p.left, m), _add(p.right, m)
        if (left is None or left >= 0) and (right is None or right >= 0):
            return P.Dilated(left, right, d)
        return P.Dilated(None, None, d) & P.SlidingWindow(None if left is None else left * d,
                                                          None if right is None else right * d)
    bd = _bounds(p)
    if bd is not None:
        return P.SlidingWindow(_sub(bd[0], delta), _add(bd[1], delta))
    if isinstance(p, P.Strided):
        base = P.Strided(p.stride, causal=False)
        return base & P.SlidingWindow(None, delta) if p.causal else base
    if isinstance(p, P.Sink):
        n = min(p.n - k0, nk_real)
        return P.Sink(n) if n > 0 else None
    if isinstance(p, P.Global):
        return _shift_global(p.positions, j0, nq, k0, nk_real, nk)
    if isinstance(p, P.BlockSparse):
        return _shift_block_sparse(p, j0, nq, k0, nk_real, nk)
    if isinstance(p, P.Union):
        parts = [s for s in (_shift(x, j0, nq, k0, nk_real, nk) for x in p.parts) if s is not None]
        return None if not parts else parts[0] if len(parts) == 1 else P.Union(parts)
    if isinstance(p, P.Intersection):
        parts = [_shift(x, j0, nq, k0, nk_real, nk) for x in p.parts]
        return None if any(s is None for s in parts) else P.Intersection(parts)
    if isinstance(p, P.PerHead):
        parts = [_shift(x, j0, nq, k0, nk_real, nk) for x in p.parts]
        if all(s is None for s in parts):
            return None
        return P.PerHead([_empty(nq, nk) if s is None else s for s in parts])
    check_supported(p)
    raise AssertionError(type(p))  # pragma: no cover


def _shift_global(positions, j0, nq, k0, nk_real, nk):
    cols = sorted({x - k0 for x in positions if k0 <= x < k0 + nk_real})
    rows = sorted({x - j0 for x in positions if j0 <= x < j0 + nq})
    if not cols and not rows:
        return None
    if j0 + nq == k0 + nk and nq <= nk:
        # Aligned: local key position x - k0 is global position x for keys and queries alike.
        return P.Global(cols + [r + nk - nq for r in rows])
    parts = []
    if cols:
        lay = np.zeros((1, 1, nk), dtype=bool)
        lay[0, 0, cols] = True
        parts.append(P.BlockSparse(lay, (max(nq, 1), 1)))
    if rows:
        lay = np.zeros((1, nq, 1), dtype=bool)
        lay[0, rows, 0] = True
        parts.append(P.BlockSparse(lay, (1, max(nk, 1))))
    return parts[0] if len(parts) == 1 else P.Union(parts)


def _shift_block_sparse(p, j0, nq, k0, nk_real, nk):
    bq, bk = p.block_size
    lay = p.layout
    rq, rk = math.gcd(bq, j0), math.gcd(bk, k0)
    nqb, nkb = -(-nq // rq), -(-nk // rk)
    if lay.shape[0] * nqb * nkb > MAX_REFINED_LAYOUT:
        raise Unsupported(
            f"pattern: BlockSparse with blocks ({bq}, {bk}) on a shard starting at query {j0}, key {k0} needs a "
            f"{nqb} x {nkb} layout; start shards at multiples of the block size or use mode='heads'"
        )
    rows = (j0 + np.arange(nqb, dtype=np.int64) * rq) // bq
    keys = k0 + np.arange(nkb, dtype=np.int64) * rk
    cols = keys // bk
    valid = (keys < k0 + nk_real) & (cols < lay.shape[2])
    sub = lay[:, rows[:, None], np.minimum(cols, lay.shape[2] - 1)[None, :]] & valid[None, None, :]
    if not sub.any():
        return None
    return P.BlockSparse(sub, (rq, rk))


def shifted(pattern, j0: int, nq: int, k0: int, nk_real: int, pad: int):
    """The pattern for queries [j0, j0 + nq) against keys [k0, k0 + nk_real) of a sequence,
    with `pad` unseen keys appended (from key_padding); None when it keeps no pair."""
    nk = nk_real + pad
    out = _shift(pattern, j0, nq, k0, nk_real, nk)
    if out is not None and pad:
        out = out & P.Sink(nk_real)
    return out
