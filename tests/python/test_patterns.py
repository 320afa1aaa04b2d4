"""Patterns (docs/patterns.md): `.mask()` against the documented table, `.block_layout()` against `.mask()`."""

import time

import numpy as np
import pytest

import spattn
from _helpers import block_mask, check_layout, window_mask

SIZES = [(1, 1), (1, 7), (7, 1), (5, 5), (13, 29), (29, 13), (97, 97), (64, 64), (97, 255), (255, 97)]

WINDOWS = [
    (None, None),
    (None, 0),
    (0, 0),
    (0, None),
    (3, 0),
    (0, 3),
    (2, 5),
    (16, 16),
    (255, 0),
    (1000, 1000),  # wider than every sequence here
    (None, 7),
    (7, None),
    (-3, 5),  # keys 3..5 positions in the future only
    (5, -2),  # keys 2..5 positions in the past only
    (-2, 2),  # exactly one key: rel == -2
    (None, -4),
    (-4, None),
]


def spec_window(nq, nk, left, right):
    """docs/patterns.md written out pair by pair (slow, obviously right)."""
    off = nk - nq
    m = np.zeros((nq, nk), dtype=bool)
    for i in range(nq):
        for j in range(nk):
            rel = i + off - j
            ok = True
            if right is not None and rel < -right:
                ok = False
            if left is not None and rel > left:
                ok = False
            m[i, j] = ok
    return m


def spec_blocks(layout, bq, bk, nq, nk):
    h = layout.shape[0]
    m = np.zeros((h, nq, nk), dtype=bool)
    for hh in range(h):
        for i in range(nq):
            for j in range(nk):
                m[hh, i, j] = bool(layout[hh, i // bq, j // bk])
    return m


def test_helpers_follow_spec():
    for nq, nk in [(1, 1), (5, 9), (9, 5), (13, 13)]:
        for left, right in WINDOWS:
            assert np.array_equal(window_mask(nq, nk, left, right), spec_window(nq, nk, left, right))
    rng = np.random.default_rng(0)
    lay = rng.random((2, 3, 2)) < 0.5
    assert np.array_equal(block_mask(lay, 7, 5, 20, 9), spec_blocks(lay, 7, 5, 20, 9))


# ------------------------------------------------------------------------------------------
# mask()
# ------------------------------------------------------------------------------------------


def check_mask_array(m, heads, nq, nk):
    assert isinstance(m, np.ndarray), type(m)
    assert m.dtype == np.bool_, m.dtype
    assert m.shape == (heads, nq, nk), m.shape


@pytest.mark.parametrize("nq,nk", SIZES)
def test_dense_mask(nq, nk):
    m = spattn.Dense().mask(nq, nk)
    check_mask_array(m, 1, nq, nk)
    assert m.all()


@pytest.mark.parametrize("nq,nk", SIZES)
def test_causal_mask(nq, nk):
    m = spattn.Causal().mask(nq, nk)
    check_mask_array(m, 1, nq, nk)
    # rel = i + (Nk - Nq) - j >= 0: bottom-right aligned
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    assert np.array_equal(m[0], j <= i + (nk - nq))
    assert np.array_equal(m, spattn.SlidingWindow(None, 0).mask(nq, nk))


def test_causal_bottom_right_examples():
    # Nq < Nk (a KV cache): the last query sees every key, the first sees Nk - Nq + 1 keys.
    m = spattn.Causal().mask(2, 5)[0]
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # Nq > Nk: the first Nq - Nk queries see nothing.
    m = spattn.Causal().mask(5, 2)[0]
    assert m.tolist() == [[False, False], [False, False], [False, False], [True, False], [True, True]]


@pytest.mark.parametrize("nq,nk", SIZES)
@pytest.mark.parametrize("left,right", WINDOWS)
def test_sliding_window_mask(nq, nk, left, right):
    m = spattn.SlidingWindow(left, right).mask(nq, nk)
    check_mask_array(m, 1, nq, nk)
    assert np.array_equal(m[0], window_mask(nq, nk, left, right))


def test_sliding_window_default_right_is_zero():
    assert np.array_equal(spattn.SlidingWindow(4).mask(30, 40), spattn.SlidingWindow(4, 0).mask(30, 40))


def test_sliding_window_w_minus_one_is_w_keys():
    # SlidingWindow(W - 1, 0): a causal window of W keys, self included.
    w = 8
    m = spattn.SlidingWindow(w - 1, 0).mask(50, 50)[0]
    counts = m.sum(1)
    assert counts.tolist() == [min(i + 1, w) for i in range(50)]
    assert all(m[i, i] for i in range(50))


def test_sliding_window_wider_than_sequence_is_dense_or_causal():
    assert spattn.SlidingWindow(10_000, 10_000).mask(37, 53).all()
    assert np.array_equal(spattn.SlidingWindow(10_000, 0).mask(37, 53), spattn.Causal().mask(37, 53))


@pytest.mark.parametrize("heads", [1, 3])
def test_mask_heads_argument(heads):
    for p in [spattn.Dense(), spattn.Causal(), spattn.SlidingWindow(3, 2)]:
        m = p.mask(11, 17, heads=heads)
        check_mask_array(m, heads, 11, 17)
        for h in range(heads):
            assert np.array_equal(m[h], m[0])


BLOCKS = [(16, 32), (32, 16), (7, 5), (5, 7), (1, 1), (64, 64), (100, 3)]


@pytest.mark.parametrize("nq,nk", [(1, 1), (97, 97), (97, 255), (255, 97), (33, 70)])
@pytest.mark.parametrize("bq,bk", BLOCKS)
@pytest.mark.parametrize("per_head", [False, True])
def test_block_sparse_mask(nq, nk, bq, bk, per_head):
    hq = 3
    rng = np.random.default_rng(nq * 1000 + nk + bq * 7 + bk)
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    layout = rng.random((hq if per_head else 1, nqb, nkb)) < 0.45
    p = spattn.BlockSparse(layout, block_size=(bq, bk))
    m = p.mask(nq, nk, heads=hq)
    check_mask_array(m, hq, nq, nk)
    want = np.broadcast_to(block_mask(layout, bq, bk, nq, nk), (hq, nq, nk))
    assert np.array_equal(m, want)
    if not per_head:
        check_mask_array(p.mask(nq, nk), 1, nq, nk)
        assert np.array_equal(p.mask(nq, nk)[0], want[0])


def test_block_sparse_indexed_by_query_row_without_offset():
    # Nq != Nk: BlockSparse is indexed by query row i, not by the bottom-right position.
    layout = np.array([[[True, False, False], [False, False, True]]])  # 2 x 3 blocks of 4 x 4
    m = spattn.BlockSparse(layout, block_size=(4, 4)).mask(5, 12)[0]
    want = np.zeros((5, 12), dtype=bool)
    want[0:4, 0:4] = True
    want[4, 8:12] = True
    assert np.array_equal(m, want)


def test_block_sparse_int_block_size_and_int_layout():
    rng = np.random.default_rng(3)
    layout = rng.random((1, 4, 4)) < 0.5
    a = spattn.BlockSparse(layout, block_size=8).mask(30, 30)
    b = spattn.BlockSparse(layout, block_size=(8, 8)).mask(30, 30)
    c = spattn.BlockSparse(layout.astype(np.int32), block_size=(8, 8)).mask(30, 30)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert np.array_equal(a, block_mask(layout, 8, 8, 30, 30))


def test_block_sparse_torch_layout():
    torch = pytest.importorskip("torch")
    layout = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    p = spattn.BlockSparse(layout, block_size=(7, 5))
    assert np.array_equal(p.mask(20, 18, heads=2), block_mask(layout.numpy(), 7, 5, 20, 18))


# ------------------------------------------------------------------------------------------
# block_layout()
# ------------------------------------------------------------------------------------------


LAYOUT_SIZES = [(1, 1), (97, 97), (97, 255), (255, 97), (128, 128), (1, 130)]
LAYOUT_BLOCKS = [(16, 32), (32, 16), (7, 5), (64, 64), (1, 1)]


@pytest.mark.parametrize("nq,nk", LAYOUT_SIZES)
@pytest.mark.parametrize("bq,bk", LAYOUT_BLOCKS)
@pytest.mark.parametrize(
    "pattern",
    [spattn.Dense(), spattn.Causal(), spattn.SlidingWindow(15, 0), spattn.SlidingWindow(3, 9),
     spattn.SlidingWindow(-3, 5), spattn.SlidingWindow(None, 7), spattn.SlidingWindow(40, None),
     spattn.SlidingWindow(1000, 1000)],
    ids=["Dense", "Causal", "SW15_0", "SW3_9", "SWm3_5", "SWNone_7", "SW40_None", "SWwide"],
)
def test_structured_block_layout(pattern, nq, nk, bq, bk):
    check_layout(pattern, nq, nk, bq, bk, heads=1, want_heads=1)


@pytest.mark.parametrize("heads", [1, 4])
def test_structured_block_layout_is_shared_across_heads(heads):
    check_layout(spattn.SlidingWindow(20, 3), 97, 130, 16, 32, heads=heads, want_heads=1)


def test_default_block_is_64():
    lay = spattn.Causal().block_layout(200, 200)
    assert tuple(int(x) for x in lay.block) == (64, 64)
    assert lay.nqb == 4 and lay.nkb == 4


@pytest.mark.parametrize("nq,nk", [(97, 97), (97, 255), (255, 97)])
@pytest.mark.parametrize("ubq,ubk", [(16, 32), (7, 5)])
@pytest.mark.parametrize("bq,bk", [(16, 32), (64, 64), (7, 5), (13, 11)])
@pytest.mark.parametrize("per_head", [False, True])
def test_block_sparse_block_layout(nq, nk, ubq, ubk, bq, bk, per_head):
    hq = 3
    rng = np.random.default_rng(nq + 10 * nk + ubq + bq * 100)
    layout = rng.random((hq if per_head else 1, -(-nq // ubq), -(-nk // ubk))) < 0.35
    p = spattn.BlockSparse(layout, block_size=(ubq, ubk))
    check_layout(p, nq, nk, bq, bk, heads=hq, want_heads=hq if per_head else 1)


def test_empty_block_sparse_layout():
    layout = np.zeros((1, 4, 4), dtype=bool)
    p = spattn.BlockSparse(layout, block_size=16)
    lay = check_layout(p, 64, 64, 16, 16, heads=1)
    assert len(lay.full_indices) == 0 and len(lay.partial_indices) == 0
    assert float(lay.density) == 0.0


def test_dense_layout_is_all_full_when_blocks_divide():
    lay = check_layout(spattn.Dense(), 128, 192, 64, 64, heads=1)
    assert len(lay.partial_indices) == 0
    assert len(lay.full_indices) == 2 * 3
    assert float(lay.density) == 1.0


def test_million_token_sliding_window_layout_is_fast():
    n = 1 << 20
    p = spattn.SlidingWindow(255, 0)
    p.block_layout(1024, 1024)  # warm up any lazy import
    t0 = time.perf_counter()
    lay = p.block_layout(n, n, block=(64, 64))
    dt = time.perf_counter() - t0
    assert dt < 1.0, f"block_layout of a 1M-token SlidingWindow(255, 0) took {dt:.2f} s"
    nb = n // 64
    assert lay.nqb == nb and lay.nkb == nb and int(lay.heads) == 1
    fp, fi = np.asarray(lay.full_indptr), np.asarray(lay.full_indices)
    pp, pi = np.asarray(lay.partial_indptr), np.asarray(lay.partial_indices)
    assert fp.shape == (nb + 1,) and pp.shape == (nb + 1,)
    # Closed form: block row a (a >= 4) sees key blocks a-4 (partial), a-3..a-1 (full), a (partial).
    a = 1000
    assert fi[fp[a]:fp[a + 1]].tolist() == [a - 3, a - 2, a - 1]
    assert pi[pp[a]:pp[a + 1]].tolist() == [a - 4, a]
    assert fi[fp[0]:fp[1]].tolist() == [] and pi[pp[0]:pp[1]].tolist() == [0]
    w = 256
    kept = w * (w - 1) // 2 + (n - (w - 1)) * w  # sum over rows of min(i + 1, 256)
    assert abs(float(lay.density) - kept / (n * n)) <= 1e-12


MILLION = [
    spattn.Causal(), spattn.Dense(), spattn.SlidingWindow(511, 0), spattn.Dilated(511, 0, 4),
    spattn.Strided(128), spattn.Fixed(128, 8), spattn.Global([0, 1, 2, 3, 100000, 500000]),
    spattn.Sink(64), spattn.BigBird(64, 3, 2, 3), spattn.Sink(64) | spattn.SlidingWindow(511, 0),
    spattn.Strided(128) | spattn.SlidingWindow(127, 0),
]


@pytest.mark.parametrize("p", MILLION, ids=repr)
def test_million_token_compile_returns_ranges_fast(p):
    """Pattern.block_layout at 1M tokens (block 64) in < 50 ms, best of 3: the compile returns
    ranges and expands nothing (the CSR index arrays and the density are lazy)."""
    n = 1 << 20
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        lay = p.block_layout(n, n)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05, f"{p!r}: {best * 1e3:.1f} ms"
    assert lay.nqb == n // 64 and lay.nkb == n // 64
    lazy = ("_full_csr", "_partial_csr", "density")
    assert not any(k in vars(lay) for k in lazy), "block_layout expanded or counted eagerly"
    nranges = len(lay.full_ranges) + len(lay.partial_ranges)
    assert 0 < nranges <= 4 * (1 << 21)
    # A few rows by hand: ranges in order, not overlapping, inside the grid.
    for r in (0, 1, 1000, lay.nqb - 1):
        for ptr, rng in ((lay.full_rowptr, lay.full_ranges), (lay.partial_rowptr, lay.partial_ranges)):
            seg = np.asarray(rng[ptr[r]:ptr[r + 1]])
            assert (seg[:, 0] < seg[:, 1]).all() and (seg[1:, 0] >= seg[:-1, 1]).all()
            assert seg.size == 0 or (seg.min() >= 0 and seg.max() <= lay.nkb)


def test_causal_layout_is_two_ranges_per_row():
    lay = spattn.Causal().block_layout(1 << 20, 1 << 20)
    nb = (1 << 20) // 64
    assert len(lay.full_ranges) == nb - 1 and len(lay.partial_ranges) == nb
    a = 1000
    assert lay.full_ranges[lay.full_rowptr[a]:lay.full_rowptr[a + 1]].tolist() == [[0, a]]
    assert lay.partial_ranges[lay.partial_rowptr[a]:lay.partial_rowptr[a + 1]].tolist() == [[a, a + 1]]


@pytest.mark.parametrize(
    "p",
    [spattn.Strided(5), spattn.Fixed(16, 3), spattn.Dilated(9, 2, 3), spattn.Global([1, 2, 3, 40, 77]),
     spattn.Strided(7) | spattn.SlidingWindow(4, 0), spattn.Fixed(8, 2) & spattn.Strided(3),
     spattn.Sink(20) | spattn.SlidingWindow(30, 0), spattn.BigBird(8, 3, 1, 2)],
    ids=repr,
)
@pytest.mark.parametrize("bq,bk", [(8, 8), (16, 4), (3, 5)])
def test_layout_ranges_match_expanded_indices(p, bq, bk):
    check_layout(p, 97, 130, bq, bk, heads=2, want_heads=1)


def test_block_layout_density_per_head_counts_every_head():
    layout = np.zeros((2, 2, 2), dtype=bool)
    layout[0] = True  # head 0 dense, head 1 empty
    p = spattn.BlockSparse(layout, block_size=(8, 8))
    lay = check_layout(p, 16, 16, 8, 8, heads=2, want_heads=2)
    assert abs(float(lay.density) - 0.5) < 1e-12
