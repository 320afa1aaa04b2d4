"""Random problems for the differential fuzz tests (test_fuzz_differential.py): pattern trees
with a docs/patterns.md mask written out independently of the library, inputs in every layout DLPack
can carry, and the budget knob of the longer campaign.

A pattern is drawn as a plain tree of tuples, then turned into a spattn pattern (`build`) and,
separately, into its dense mask (`spec_mask`) from the documented rows. Only BigBird's random blocks
are taken from the library (its generator is the definition); its window and global blocks are
checked against the documented rules in test_pattern_family.py.
"""
from __future__ import annotations

import os

import numpy as np
from hypothesis import strategies as st

import spattn
from _helpers import block_mask, window_mask

# The longer campaign multiplies every test's example count (tests/reliability/campaign.sh).
SCALE = max(1, int(os.environ.get("SPATTN_FUZZ_SCALE", "1")))


def examples(n: int) -> int:
    return n * SCALE


# ------------------------------------------------------------------------------------------
# docs/patterns.md, row by row

def _grid(nq, nk):
    i = np.arange(nq, dtype=np.int64)[:, None]
    j = np.arange(nk, dtype=np.int64)[None, :]
    p = i + (nk - nq)
    return j, p, p - j


def _leaf_mask(leaf, nq, nk):
    kind, a = leaf[0], leaf[1:]
    j, p, rel = _grid(nq, nk)
    full = np.ones((nq, nk), bool)
    if kind == "dense":
        return full
    if kind == "causal":
        return full & (rel >= 0)
    if kind == "window":
        return window_mask(nq, nk, a[0], a[1])
    if kind == "dilated":
        left, right, d = a
        m = full & (rel % d == 0)
        if left is not None:
            m &= rel <= left * d
        if right is not None:
            m &= rel >= -right * d
        return m
    if kind == "strided":
        s, causal = a
        m = full & (rel % s == 0)
        return m & (rel >= 0) if causal else m
    if kind == "fixed":
        b, s, causal = a
        m = (p // b == j // b) | (j % b >= b - s)
        m = full & m
        return m & (rel >= 0) if causal else m
    if kind == "global":
        pos = np.asarray(sorted(set(a[0])), dtype=np.int64)
        return full & (np.isin(j, pos) | np.isin(p, pos))
    if kind == "sink":
        return full & (j < a[0])
    if kind == "prefixlm":
        return full & ((j < a[0]) | (rel >= 0))
    if kind == "logsparse":
        local = a[0]
        pow2 = (rel > 0) & ((rel & (rel - 1)) == 0)
        return full & (rel >= 0) & ((rel <= local) | pow2)
    if kind == "document":
        cu = np.asarray(a[0], dtype=np.int64)
        doc = lambda x: np.searchsorted(cu, x, side="right") - 1  # noqa: E731  (b: cu[b] <= x < cu[b+1])
        return full & (p >= 0) & (doc(np.maximum(p, 0)) == doc(j))
    if kind in ("neighborhood", "slidingtile"):
        return _grid_leaf_mask(kind, a, p[:, 0], j[0])
    raise AssertionError(kind)


def _neighbours(n, w, r, causal, x):
    """One dimension of NATTEN's rule (docs/patterns.md, Neighborhood): the coordinates y that
    coordinate x keeps."""
    g, res = x // r, x % r
    m = -(-(n - res) // r)
    if causal:
        idx = range(max(g - w + 1, 0), g + 1)
    else:
        s = min(max(g - w // 2, 0), m - w)
        idx = range(s, s + w)
    return {res + r * t for t in idx}


def _grid_leaf_mask(kind, a, ps, js):
    """Neighborhood: cells are tokens, row-major from `start`; SlidingTile: cells are tiles,
    tile-major tokens (a tile is prod(tile) consecutive tokens), windows over the tile grid."""
    if kind == "neighborhood":
        grid, window, dilation, causal, start = a
        cells, per_cell = tuple(grid), 1
    else:
        grid, tile, window, start = a
        cells = tuple(g // t for g, t in zip(grid, tile))
        per_cell = int(np.prod(tile))
        dilation, causal = (1,) * len(grid), (False,) * len(grid)
    size = int(np.prod(cells)) * per_cell
    m = np.zeros((len(ps), len(js)), bool)
    for qi, pq in enumerate(ps):
        if not (start <= pq < start + size):
            continue
        x = np.unravel_index((pq - start) // per_cell, cells)
        near = [_neighbours(cells[t], window[t], dilation[t], causal[t], int(x[t])) for t in range(len(cells))]
        for kj, jk in enumerate(js):
            if start <= jk < start + size:
                y = np.unravel_index((jk - start) // per_cell, cells)
                m[qi, kj] = all(int(y[t]) in near[t] for t in range(len(cells)))
    return m


def _longnet_mask(a, n, hq):
    """[Hq, N, N]: LongNet's rule (docs/patterns.md) per head."""
    segs, dils, causal = a
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    out = np.zeros((hq, n, n), bool)
    for h in range(hq):
        for w, r in zip(segs, dils):
            k = (i // w == j // w) & (i % r == h % r) & (j % r == h % r)
            out[h] |= k & (j <= i) if causal else k
    return out


def build(tree):
    """The spattn pattern of a drawn tree."""
    kind = tree[0]
    if kind == "dense":
        return spattn.Dense()
    if kind == "causal":
        return spattn.Causal()
    if kind == "window":
        return spattn.SlidingWindow(tree[1], tree[2])
    if kind == "dilated":
        return spattn.Dilated(*tree[1:])
    if kind == "strided":
        return spattn.Strided(tree[1], causal=tree[2])
    if kind == "fixed":
        return spattn.Fixed(tree[1], tree[2], causal=tree[3])
    if kind == "global":
        return spattn.Global(list(tree[1]))
    if kind == "sink":
        return spattn.Sink(tree[1])
    if kind == "bigbird":
        return spattn.BigBird(*tree[1:5], seed=tree[5])
    if kind == "blocksparse":
        return spattn.BlockSparse(tree[1], block_size=tree[2])
    if kind == "prefixlm":
        return spattn.PrefixLM(tree[1])
    if kind == "logsparse":
        return spattn.LogSparse(tree[1])
    if kind == "document":
        return spattn.Document(list(tree[1]))
    if kind == "neighborhood":
        grid, window, dilation, causal, start = tree[1:]
        return spattn.Neighborhood(grid, window, dilation=dilation, causal=causal, start=start)
    if kind == "slidingtile":
        grid, tile, window, start = tree[1:]
        return spattn.SlidingTile(grid, tile, window, start=start)
    if kind == "longnet":
        return spattn.LongNet(tree[1], tree[2], causal=tree[3])
    if kind == "or":
        return spattn.Union([build(c) for c in tree[1]])
    if kind == "and":
        return spattn.Intersection([build(c) for c in tree[1]])
    if kind == "perhead":
        return spattn.PerHead([build(c) for c in tree[1]])
    raise AssertionError(kind)


def spec_mask(tree, nq, nk, hq):
    """[Hq, Nq, Nk] bool: the documented answer for the drawn tree."""
    kind = tree[0]
    if kind == "bigbird":
        return np.broadcast_to(build(tree).mask(nq, nk, heads=1), (hq, nq, nk))
    if kind == "blocksparse":
        layout, (bq, bk) = tree[1], tree[2]
        return np.broadcast_to(block_mask(layout, bq, bk, nq, nk), (hq, nq, nk))
    if kind in ("or", "and"):
        parts = [spec_mask(c, nq, nk, hq) for c in tree[1]]
        return (np.logical_or if kind == "or" else np.logical_and).reduce(parts)
    if kind == "perhead":
        return np.stack([spec_mask(c, nq, nk, 1)[0] for c in tree[1]])
    if kind == "longnet":
        return _longnet_mask(tree[1:], nq, hq)
    return np.broadcast_to(_leaf_mask(tree, nq, nk), (hq, nq, nk))


# ------------------------------------------------------------------------------------------
# Strategies

_bound = st.one_of(st.none(), st.integers(0, 40))


@st.composite
def _window(draw):
    left = draw(st.one_of(st.none(), st.integers(-8, 40)))
    lo = -8 if left is None else max(-left, -8)
    right = draw(st.one_of(st.none(), st.integers(lo, 40)))
    if left is not None and right is not None and left < -right:
        right = -left
    return ("window", left, right)


def leaves(nq, nk, hq, per_head_layouts=True, globals_ok=True, block_layouts=True):
    opts = [
        st.just(("dense",)),
        st.just(("causal",)),
        _window(),
        st.tuples(st.just("dilated"), _bound, _bound, st.integers(1, 6)),
        st.tuples(st.just("strided"), st.integers(1, 9), st.booleans()),
        st.integers(1, 12).flatmap(
            lambda b: st.tuples(st.just("fixed"), st.just(b), st.integers(1, b), st.booleans())),
        st.tuples(st.just("sink"), st.integers(0, 50)),
        st.tuples(st.just("bigbird"), st.integers(1, 16), st.integers(0, 5), st.integers(0, 3),
                  st.integers(0, 3), st.integers(0, 2**32)),
    ]
    if globals_ok and nk > 0:
        opts.append(st.tuples(st.just("global"), st.lists(st.integers(0, nk - 1), max_size=4)))
    if block_layouts:
        opts.append(_block_sparse(nq, nk, hq if per_head_layouts else 1))
    # the kinds of issue 15; those whose checks depend on the problem's sizes (Document: Nk is
    # the last offset; grids fit in Nk; LongNet: Nq == Nk) only where the sizes are fixed (not
    # under varlen or decode, which draw with block_layouts=False)
    opts += [st.tuples(st.just("prefixlm"), st.integers(0, 50)),
             st.tuples(st.just("logsparse"), st.integers(0, 8))]
    if block_layouts:
        opts.append(_document(nk))
        if nk >= 1:
            opts.append(_neighborhood(nk))
        if nk >= 4:
            opts.append(_sliding_tile(nk))
        if nq == nk and per_head_layouts:  # heads differ: not among PerHead's shared leaves
            opts.append(_longnet())
    return st.one_of(opts)


@st.composite
def _document(draw, nk):
    cuts = sorted(draw(st.lists(st.integers(0, nk), max_size=4)))
    return ("document", tuple([0] + cuts + [nk]))


@st.composite
def _neighborhood(draw, nk):
    ndim = draw(st.integers(1, 3))
    grid, window, dilation, causal = [], [], [], []
    room = nk  # >= 1; the grid's cells stay within it
    for _ in range(ndim):
        n = draw(st.integers(1, min(8, room)))
        room //= n
        r = draw(st.integers(1, n))
        w = draw(st.integers(1, max(1, n // r)))
        grid.append(n), window.append(w), dilation.append(r), causal.append(draw(st.booleans()))
    size = int(np.prod(grid))
    start = draw(st.integers(0, max(0, nk - size)))
    return ("neighborhood", tuple(grid), tuple(window), tuple(dilation), tuple(causal), start)


@st.composite
def _sliding_tile(draw, nk):
    ndim = draw(st.integers(2, 3))
    grid, tile, window = [], [], []
    room = nk  # >= 4; the grid's tokens stay within it
    for _ in range(ndim):
        t = draw(st.integers(1, min(2, room)))
        cells = draw(st.integers(1, min(3, room // t)))
        room //= t * cells
        grid.append(t * cells), tile.append(t), window.append(draw(st.integers(1, cells)))
    start = draw(st.integers(0, max(0, nk - int(np.prod(grid)))))
    return ("slidingtile", tuple(grid), tuple(tile), tuple(window), start)


@st.composite
def _longnet(draw):
    branches = draw(st.integers(1, 3))
    dils = [draw(st.integers(1, 3)) for _ in range(branches)]
    segs = [r * draw(st.integers(1, 6)) for r in dils]
    return ("longnet", tuple(segs), tuple(dils), draw(st.booleans()))


@st.composite
def _block_sparse(draw, nq, nk, heads):
    bq, bk = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    h = draw(st.sampled_from([1, heads]))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**32))
    layout = np.random.default_rng(seed).random((h, -(-nq // bq), -(-nk // bk))) < density
    return ("blocksparse", layout, (bq, bk))


def trees(nq, nk, hq, per_head=True, **kw):
    """Random pattern trees: every leaf kind, unions, intersections and (top level) PerHead."""
    base = st.recursive(
        leaves(nq, nk, hq, **kw),
        lambda kids: st.tuples(st.sampled_from(["or", "and"]), st.lists(kids, min_size=1, max_size=3)),
        max_leaves=5,
    )
    if not per_head:
        return base
    shared = st.recursive(
        leaves(nq, nk, hq, per_head_layouts=False, **kw),
        lambda kids: st.tuples(st.sampled_from(["or", "and"]), st.lists(kids, min_size=1, max_size=2)),
        max_leaves=3,
    )
    return st.one_of(base, base, base, st.tuples(st.just("perhead"), st.lists(shared, min_size=hq, max_size=hq)))


def describe(tree) -> str:
    """A short, readable form of a drawn tree for failure messages (layouts summarised)."""
    kind = tree[0]
    if kind == "blocksparse":
        return f"blocksparse(shape={tree[1].shape}, block={tree[2]}, kept={int(tree[1].sum())})"
    if kind in ("or", "and", "perhead"):
        return f"{kind}(" + ", ".join(describe(c) for c in tree[1]) + ")"
    return f"{kind}{tuple(tree[1:])}"


# ------------------------------------------------------------------------------------------
# Input layouts: the same values in memory laid out many ways

LAYOUTS = ["contiguous", "bhnd_view", "row_slice", "flip_rows", "flip_heads", "flip_dim",
           "padded_dim", "broadcast_batch"]


def lay_out(x64, kind, dtype, framework, rng):
    """x64 [B, N, H, D] (float64, already rounded to dtype) as an array of `framework` whose
    values are x64 but whose memory layout is `kind`. Returns (array, values it holds)."""
    import torch

    def conv(a):
        a = np.ascontiguousarray(a)
        if framework == "numpy":
            return a.astype(dtype)
        return torch.from_numpy(a).to(getattr(torch, dtype))

    if kind == "contiguous":
        return conv(x64), x64
    if kind == "bhnd_view":
        buf = conv(x64.transpose(0, 2, 1, 3))
        return (buf.transpose(0, 2, 1, 3) if framework == "numpy" else buf.transpose(1, 2)), x64
    if kind == "row_slice":  # every other row of a twice-as-long buffer
        b, n, h, d = x64.shape
        big = np.zeros((b, 2 * n, h, d))
        big[:, ::2] = x64
        buf = conv(big)
        return buf[:, ::2], x64
    if kind == "padded_dim":  # the last dimension is a slice of a wider one
        b, n, h, d = x64.shape
        big = np.zeros((b, n, h, d + 3))
        big[..., 1:d + 1] = x64
        return conv(big)[..., 1:d + 1], x64
    if kind == "broadcast_batch":  # stride 0 on the batch dimension: every batch row equal
        one = x64[:1]
        vals = np.broadcast_to(one, x64.shape)
        if framework == "numpy":
            return np.broadcast_to(conv(one), x64.shape), vals
        return conv(one).expand(*x64.shape), vals
    if framework != "numpy":  # torch has no negative strides; numpy exports them
        return conv(x64), x64
    axis = {"flip_rows": 1, "flip_heads": 2, "flip_dim": 3}[kind]
    return np.flip(conv(np.flip(x64, axis)), axis), x64
