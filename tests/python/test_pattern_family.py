"""The pattern family (docs/patterns.md): Dilated, Strided, Fixed, Global, Sink, BigBird, unions,
intersections and PerHead. Masks against the documented rows written out in numpy, block layouts
against the masks, forward and gradients against the float64 reference, argument errors, and
1M-token compile times."""

import time

import numpy as np
import pytest

import spattn
from _helpers import check_float32_attention, check_layout, rand_qkv, window_mask

SIZES = [(1, 1), (37, 37), (97, 37), (37, 97), (130, 97), (97, 130), (1, 130), (130, 1)]


# --------------------------------------------------------------------------------------------
# The documented rows (docs/patterns.md), written out directly
# --------------------------------------------------------------------------------------------


def grid(nq, nk):
    i = np.arange(nq, dtype=np.int64)[:, None]
    j = np.arange(nk, dtype=np.int64)[None, :]
    p = i + (nk - nq)
    return i, j, p, p - j


def spec_dilated(nq, nk, left, right, dil):
    _, _, _, rel = grid(nq, nk)
    m = rel % dil == 0
    if left is not None:
        m &= rel <= left * dil
    if right is not None:
        m &= rel >= -right * dil
    return m


def spec_strided(nq, nk, stride, causal=True):
    _, _, _, rel = grid(nq, nk)
    m = rel % stride == 0
    return m & (rel >= 0) if causal else m


def spec_fixed(nq, nk, block, summary, causal=True):
    _, j, p, rel = grid(nq, nk)
    m = (p // block == j // block) | (j % block >= block - summary)
    return m & (rel >= 0) if causal else m


def spec_global(nq, nk, positions):
    _, j, p, _ = grid(nq, nk)
    pos = np.asarray(sorted(set(positions)), dtype=np.int64)
    return np.isin(j, pos) | np.isin(p, pos)


def spec_sink(nq, nk, n):
    _, j, _, _ = grid(nq, nk)
    return np.broadcast_to(j < n, (nq, nk)).copy()


def spec_bigbird_fixed_part(nq, nk, block, window, globals_):
    """The deterministic part of BigBird (window + globals), as a block layout."""
    nqb, nkb = -(-nq // block), -(-nk // block)
    a = np.arange(nqb)[:, None]
    c = np.arange(nkb)[None, :]
    d = a + (nk - nq) // block
    return ((c >= d - (window - 1) // 2) & (c <= d + window // 2)) | (a < globals_) | (c < globals_)


def expand_blocks(lay, block, nq, nk):
    return lay[np.arange(nq) // block][:, np.arange(nk) // block]


LEAVES = [
    ("Dilated(3, 0, 2)", lambda: spattn.Dilated(3, 0, 2), lambda nq, nk: spec_dilated(nq, nk, 3, 0, 2)),
    ("Dilated(2, 5, 3)", lambda: spattn.Dilated(2, 5, 3), lambda nq, nk: spec_dilated(nq, nk, 2, 5, 3)),
    ("Dilated(None, 0, 4)", lambda: spattn.Dilated(None, 0, 4), lambda nq, nk: spec_dilated(nq, nk, None, 0, 4)),
    ("Dilated(0, None, 7)", lambda: spattn.Dilated(0, None, 7), lambda nq, nk: spec_dilated(nq, nk, 0, None, 7)),
    ("Dilated(None, None, 3)", lambda: spattn.Dilated(None, None, 3), lambda nq, nk: spec_dilated(nq, nk, None, None, 3)),
    ("Dilated(4, 2, 1)", lambda: spattn.Dilated(4, 2, 1), lambda nq, nk: window_mask(nq, nk, 4, 2)),
    ("Strided(3)", lambda: spattn.Strided(3), lambda nq, nk: spec_strided(nq, nk, 3)),
    ("Strided(5, False)", lambda: spattn.Strided(5, causal=False), lambda nq, nk: spec_strided(nq, nk, 5, False)),
    ("Strided(70)", lambda: spattn.Strided(70), lambda nq, nk: spec_strided(nq, nk, 70)),
    ("Strided(1)", lambda: spattn.Strided(1), lambda nq, nk: spec_strided(nq, nk, 1)),
    ("Fixed(8, 2)", lambda: spattn.Fixed(8, 2), lambda nq, nk: spec_fixed(nq, nk, 8, 2)),
    ("Fixed(16, 16)", lambda: spattn.Fixed(16, 16), lambda nq, nk: spec_fixed(nq, nk, 16, 16)),
    ("Fixed(5, 1, False)", lambda: spattn.Fixed(5, 1, causal=False), lambda nq, nk: spec_fixed(nq, nk, 5, 1, False)),
    ("Fixed(40, 3)", lambda: spattn.Fixed(40, 3), lambda nq, nk: spec_fixed(nq, nk, 40, 3)),
    ("Fixed(3, 2, False)", lambda: spattn.Fixed(3, 2, causal=False), lambda nq, nk: spec_fixed(nq, nk, 3, 2, False)),
    ("Sink(0)", lambda: spattn.Sink(0), lambda nq, nk: spec_sink(nq, nk, 0)),
    ("Sink(5)", lambda: spattn.Sink(5), lambda nq, nk: spec_sink(nq, nk, 5)),
    ("Sink(200)", lambda: spattn.Sink(200), lambda nq, nk: spec_sink(nq, nk, 200)),
]


def global_case(nk):
    pos = sorted({0, nk - 1, nk // 2, nk // 2, min(3, nk - 1)})
    return spattn.Global(pos + [nk // 2]), pos


@pytest.mark.parametrize("nq,nk", SIZES)
@pytest.mark.parametrize("name,make,spec", LEAVES, ids=[x[0] for x in LEAVES])
def test_leaf_mask_and_layout(name, make, spec, nq, nk):
    p = make()
    m = p.mask(nq, nk)
    assert m.shape == (1, nq, nk) and m.dtype == np.bool_
    assert np.array_equal(m[0], spec(nq, nk)), name
    check_layout(p, nq, nk, 16, 16, 1, want_heads=1)
    check_layout(p, nq, nk, 8, 32, 2, want_heads=1)


@pytest.mark.parametrize("nq,nk", SIZES)
def test_global_mask_and_layout(nq, nk):
    p, pos = global_case(nk)
    assert np.array_equal(p.mask(nq, nk)[0], spec_global(nq, nk, pos))
    check_layout(p, nq, nk, 16, 16, 1)
    check_layout(p, nq, nk, 4, 2, 1)
    e = spattn.Global([])
    assert not e.mask(nq, nk).any()
    check_layout(e, nq, nk, 16, 16, 1)


def test_global_position_out_of_range_names_it():
    p = spattn.Global([1, 50])
    with pytest.raises(ValueError, match="50"):
        p.mask(10, 20)
    with pytest.raises(ValueError, match="50"):
        p.block_layout(10, 20)


@pytest.mark.parametrize("nq,nk", SIZES + [(256, 200), (200, 256)])
@pytest.mark.parametrize("block,window,globals_,randoms", [(8, 3, 1, 2), (16, 0, 0, 3), (5, 2, 2, 1), (32, 5, 0, 0)])
def test_bigbird(block, window, globals_, randoms, nq, nk):
    p = spattn.BigBird(block, window, globals_, randoms, seed=3)
    m = p.mask(nq, nk)[0]
    nqb, nkb = -(-nq // block), -(-nk // block)
    # constant on BigBird blocks
    lay = m[np.arange(nqb) * block][:, np.arange(nkb) * block]
    assert np.array_equal(expand_blocks(lay, block, nq, nk), m)
    fixed = spec_bigbird_fixed_part(nq, nk, block, window, globals_)
    assert (lay | ~fixed).all(), "window / global blocks missing"
    extra = lay & ~fixed
    free = (~fixed).sum(1)
    assert np.array_equal(extra.sum(1), np.minimum(randoms, free))
    # deterministic; another seed draws other blocks (when there is room to differ)
    assert np.array_equal(spattn.BigBird(block, window, globals_, randoms, seed=3).mask(nq, nk)[0], m)
    check_layout(p, nq, nk, 16, 16, 1, want_heads=1)
    check_layout(p, nq, nk, 7, 24, 1)


def test_bigbird_seed_changes_randoms():
    a = spattn.BigBird(4, 1, 0, 2, seed=0).mask(256, 256)
    b = spattn.BigBird(4, 1, 0, 2, seed=1).mask(256, 256)
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------------------------
# combinations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nq,nk", SIZES)
def test_unions_and_intersections(nq, nk):
    cases = [
        (spattn.Sink(4) | spattn.SlidingWindow(9, 0), spec_sink(nq, nk, 4) | window_mask(nq, nk, 9, 0)),
        (spattn.Causal() | spattn.SlidingWindow(-1, None), np.ones((nq, nk), bool)),  # two halves
        (spattn.Strided(2, causal=False) | spattn.Dilated(None, None, 3),
         spec_strided(nq, nk, 2, False) | spec_dilated(nq, nk, None, None, 3)),
        (spattn.Strided(3, causal=False) & spattn.Fixed(8, 2), spec_strided(nq, nk, 3, False) & spec_fixed(nq, nk, 8, 2)),
        (spattn.Strided(2) & spattn.Dilated(None, None, 3), spec_strided(nq, nk, 2) & spec_dilated(nq, nk, None, None, 3)),
        (spattn.Causal() & spattn.SlidingWindow(-1, None), np.zeros((nq, nk), bool)),  # empty
        ((spattn.Sink(3) | spattn.Strided(5)) & spattn.Causal(),
         (spec_sink(nq, nk, 3) | spec_strided(nq, nk, 5)) & window_mask(nq, nk, None, 0)),
        (spattn.Union([spattn.Fixed(16, 4)]), spec_fixed(nq, nk, 16, 4)),
        (spattn.Intersection([spattn.Dense(), spattn.Sink(7), spattn.Strided(1)]), spec_sink(nq, nk, 7) & spec_strided(nq, nk, 1)),
    ]
    for p, want in cases:
        assert np.array_equal(p.mask(nq, nk)[0], want), repr(p)
        check_layout(p, nq, nk, 16, 16, 1)
        check_layout(p, nq, nk, 8, 4, 1)


@pytest.mark.parametrize("nq,nk", [(37, 37), (97, 130), (130, 37)])
def test_per_head(nq, nk):
    parts = [spattn.Causal(), spattn.Strided(4), spattn.Fixed(8, 2), spattn.Sink(3)]
    p = spattn.PerHead(parts)
    m = p.mask(nq, nk, heads=4)
    for h, q in enumerate(parts):
        assert np.array_equal(m[h], q.mask(nq, nk)[0])
    check_layout(p, nq, nk, 16, 16, 4, want_heads=4)
    # nested inside a union: the union is per-head
    u = p | spattn.Global([0])
    mu = u.mask(nq, nk, heads=4)
    g = spec_global(nq, nk, [0])
    for h in range(4):
        assert np.array_equal(mu[h], m[h] | g)
    check_layout(u, nq, nk, 16, 16, 4, want_heads=4)
    # PerHead inside PerHead, and with a per-head BlockSparse
    rng = np.random.default_rng(1)
    lay = rng.random((4, -(-nq // 8), -(-nk // 8))) < 0.4
    bs = spattn.BlockSparse(lay, block_size=8)
    pp = spattn.PerHead([p, p, p, p]) & bs
    mp = pp.mask(nq, nk, heads=4)
    bm = bs.mask(nq, nk, heads=4)
    assert np.array_equal(mp, m & bm)
    check_layout(pp, nq, nk, 16, 16, 4, want_heads=4)


def test_per_head_wrong_length():
    p = spattn.PerHead([spattn.Causal(), spattn.Dense()])
    with pytest.raises(ValueError, match="PerHead"):
        p.mask(4, 4, heads=3)
    with pytest.raises(ValueError, match="PerHead"):
        p.block_layout(4, 4, heads=1)
    q, k, v, _ = rand_qkv(1, 8, 8, 3, 1, 4, 4)
    with pytest.raises(ValueError, match="PerHead"):
        spattn.attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), pattern=p)


def test_nested_too_deeply():
    p = spattn.Sink(1)
    for _ in range(20):
        p = spattn.Intersection([spattn.Dense(), spattn.Union([spattn.Causal(), p])])
    with pytest.raises(ValueError, match="nested too deeply"):
        p.mask(4, 4)


def test_wide_unions_are_fine():
    p = spattn.Union([spattn.Dilated(2, 0, d) for d in range(1, 40)])
    m = p.mask(50, 50)[0]
    want = np.zeros((50, 50), bool)
    for d in range(1, 40):
        want |= spec_dilated(50, 50, 2, 0, d)
    assert np.array_equal(m, want)


# random trees --------------------------------------------------------------------------------

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


def leaf_strategy(nk):
    return st.one_of(
        st.builds(lambda l, r, d: (spattn.Dilated(l, r, d), lambda nq, nk: spec_dilated(nq, nk, l, r, d)),
                  st.one_of(st.none(), st.integers(0, 6)), st.one_of(st.none(), st.integers(0, 6)), st.integers(1, 5)),
        st.builds(lambda s, c: (spattn.Strided(s, c), lambda nq, nk: spec_strided(nq, nk, s, c)),
                  st.integers(1, 9), st.booleans()),
        st.builds(lambda b, f, c: (spattn.Fixed(b, max(1, min(b, f)), c),
                                   lambda nq, nk: spec_fixed(nq, nk, b, max(1, min(b, f)), c)),
                  st.integers(1, 12), st.integers(1, 12), st.booleans()),
        st.builds(lambda n: (spattn.Sink(n), lambda nq, nk: spec_sink(nq, nk, n)), st.integers(0, 30)),
        st.builds(lambda l, r: (spattn.SlidingWindow(l, r), lambda nq, nk: window_mask(nq, nk, l, r)),
                  st.integers(0, 10), st.integers(0, 10)),
        st.builds(lambda ps: (spattn.Global(ps), lambda nq, nk: spec_global(nq, nk, ps)),
                  st.lists(st.integers(0, nk - 1), max_size=4)),
    )


def tree_strategy(nk):
    def extend(children):
        def mk(kind, parts):
            pats = [p for p, _ in parts]
            specs = [s for _, s in parts]
            if kind == "or":
                return spattn.Union(pats), lambda nq, nk: np.logical_or.reduce([s(nq, nk) for s in specs])
            return spattn.Intersection(pats), lambda nq, nk: np.logical_and.reduce([s(nq, nk) for s in specs])
        return st.builds(mk, st.sampled_from(["or", "and"]), st.lists(children, min_size=1, max_size=3))
    return st.recursive(leaf_strategy(nk), extend, max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), nq=st.integers(1, 70), nk=st.integers(1, 70),
       bq=st.sampled_from([4, 16, 64]), bk=st.sampled_from([8, 16, 32]))
def test_random_trees(data, nq, nk, bq, bk):
    p, spec = data.draw(tree_strategy(nk))
    assert np.array_equal(p.mask(nq, nk)[0], spec(nq, nk)), repr(p)
    check_layout(p, nq, nk, bq, bk, 1)


# --------------------------------------------------------------------------------------------
# forward and gradients through the CPU kernels
# --------------------------------------------------------------------------------------------

ATTN = [
    ("Dilated", lambda: spattn.Dilated(20, 0, 3)),
    ("Strided", lambda: spattn.Strided(7)),
    ("StridedNC", lambda: spattn.Strided(5, causal=False)),
    ("Fixed", lambda: spattn.Fixed(32, 4)),
    ("Global", lambda: spattn.Global([0, 5, 77])),
    ("Sink", lambda: spattn.Sink(3)),
    ("BigBird", lambda: spattn.BigBird(16, 3, 1, 2, seed=5)),
    ("Union", lambda: spattn.Sink(4) | spattn.SlidingWindow(30, 0)),
    ("Intersection", lambda: spattn.Causal() & spattn.Dilated(None, None, 2)),
    ("PerHead", lambda: spattn.PerHead([spattn.Causal(), spattn.Strided(3), spattn.Sink(2) | spattn.SlidingWindow(8, 0), spattn.Fixed(16, 2)])),
    ("PerHeadWindows", lambda: spattn.PerHead([spattn.SlidingWindow(5, 0), spattn.Causal(), spattn.SlidingWindow(20, 3), spattn.Dense()])),
]


@pytest.mark.parametrize("nq,nk", [(97, 97), (80, 130), (130, 80)])
@pytest.mark.parametrize("name,make", ATTN, ids=[a[0] for a in ATTN])
def test_forward_and_gradients(name, make, nq, nk):
    pytest.importorskip("torch")
    p = make()
    hq, hkv = 4, 2  # GQA
    q, k, v, do = rand_qkv(1, nq, nk, hq, hkv, 16, 8, seed=nq + nk)
    mask = p.mask(nq, nk, heads=hq)
    check_float32_attention(p, q, k, v, do, mask)


# --------------------------------------------------------------------------------------------
# arguments and repr
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,exc,match", [
    (lambda: spattn.Dilated(-1, 0, 2), ValueError, "Dilated: left"),
    (lambda: spattn.Dilated(1, -2, 2), ValueError, "Dilated: right"),
    (lambda: spattn.Dilated(1, 0, 0), ValueError, "Dilated: dilation"),
    (lambda: spattn.Dilated(1.5, 0, 2), TypeError, "Dilated: left"),
    (lambda: spattn.Dilated(1, 0, "2"), TypeError, "Dilated: dilation"),
    (lambda: spattn.Strided(0), ValueError, "Strided: stride"),
    (lambda: spattn.Strided(-3), ValueError, "Strided: stride"),
    (lambda: spattn.Strided(2.0), TypeError, "Strided: stride"),
    (lambda: spattn.Strided(2, causal=1), TypeError, "Strided: causal"),
    (lambda: spattn.Fixed(0, 1), ValueError, "Fixed: block"),
    (lambda: spattn.Fixed(8, 0), ValueError, "Fixed: summary"),
    (lambda: spattn.Fixed(8, 9), ValueError, "Fixed: summary"),
    (lambda: spattn.Fixed(8, None), TypeError, "Fixed: summary"),
    (lambda: spattn.Global([1, -2]), ValueError, "Global: positions"),
    (lambda: spattn.Global([1, 2.5]), TypeError, "Global: positions"),
    (lambda: spattn.Global(3), TypeError, "Global: positions"),
    (lambda: spattn.Sink(-1), ValueError, "Sink: n"),
    (lambda: spattn.Sink(None), TypeError, "Sink: n"),
    (lambda: spattn.BigBird(0), ValueError, "BigBird: block"),
    (lambda: spattn.BigBird(8, -1), ValueError, "BigBird: window"),
    (lambda: spattn.BigBird(8, 3, -1), ValueError, "BigBird: globals"),
    (lambda: spattn.BigBird(8, 3, 1, -1), ValueError, "BigBird: randoms"),
    (lambda: spattn.BigBird(8, 3, 1, 1, seed=-1), ValueError, "BigBird: seed"),
    (lambda: spattn.BigBird(8, 3.0), TypeError, "BigBird: window"),
    (lambda: spattn.PerHead([]), ValueError, "PerHead"),
    (lambda: spattn.PerHead([spattn.Causal(), 3]), TypeError, "PerHead"),
    (lambda: spattn.Union([]), ValueError, "Union"),
    (lambda: spattn.Intersection([spattn.Causal(), "x"]), TypeError, "Intersection"),
    (lambda: spattn.Causal() | 3, TypeError, None),
    (lambda: 3 & spattn.Causal(), TypeError, None),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_repr_is_constructor_like():
    assert repr(spattn.Dilated(3, 0, 2)) == "Dilated(3, 0, dilation=2)"
    assert repr(spattn.Strided(4)) == "Strided(4)"
    assert repr(spattn.Strided(4, causal=False)) == "Strided(4, causal=False)"
    assert repr(spattn.Fixed(16, 2)) == "Fixed(block=16, summary=2)"
    assert repr(spattn.Global([5, 1, 1])) == "Global([1, 5])"
    assert repr(spattn.Sink(4)) == "Sink(4)"
    assert repr(spattn.BigBird(64, 3, 1, 2, seed=7)) == "BigBird(block=64, window=3, globals=1, randoms=2, seed=7)"
    assert repr(spattn.Sink(4) | spattn.SlidingWindow(255, 0)) == "Sink(4) | SlidingWindow(255, 0)"
    assert repr((spattn.Sink(4) | spattn.Causal()) & spattn.Strided(2)) == "(Sink(4) | Causal()) & Strided(2)"
    assert repr(spattn.PerHead([spattn.Causal(), spattn.Dense()])) == "PerHead([Causal(), Dense()])"
    for p in (spattn.Sink(4) | spattn.SlidingWindow(255, 0), spattn.PerHead([spattn.Causal(), spattn.Strided(3)]),
              (spattn.Sink(4) | spattn.Causal()) & spattn.Strided(2)):
        assert repr(eval(repr(p), vars(spattn))) == repr(p)


# --------------------------------------------------------------------------------------------
# 1M tokens
# --------------------------------------------------------------------------------------------

BIG = [
    spattn.SlidingWindow(511, 0),
    spattn.Dilated(256, 0, 4),
    spattn.Strided(16384),
    spattn.Fixed(16384, 64),
    spattn.Global([0, 1, 2, 3, 100000, 500000]),
    spattn.Sink(64),
    spattn.BigBird(64, 3, 1, 3),
]


@pytest.mark.parametrize("p", BIG, ids=repr)
def test_million_token_compile_is_fast(p):
    """The layout compile at 1M tokens, block 64, in < 50 ms (best of 3, including the copies
    into numpy; the density that Pattern.block_layout adds is counted separately, and
    tests/cpp/test_layout.cpp times the C++ compile alone)."""
    n = 1 << 20
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        raw = p._core().block_layout(n, n, 64, 64, 1)
        best = min(best, time.perf_counter() - t0)
    assert raw["nqb"] == n // 64
    assert best < 0.05, f"{p!r}: {best * 1e3:.1f} ms"
    assert 0 < p.block_layout(n, n, block=64).density < 1
