"""Neighborhood, SlidingTile and LongNet (issue 15), and the vision-language recipe.

Every mask here is written from the definitions (docs/patterns.md), independently of the
library: NATTEN's per-dim rule by listing each group's positions, SlidingTile by cutting the
grid into tiles, LongNet by its formula. They are compared with mask(), block_layout() and
the attention outputs and gradients (float64 reference)."""

import itertools
import math

import numpy as np
import pytest

import spattn
from _helpers import (assert_close, assert_lse, check_float32_attention, check_layout, naive_backward,
                      naive_forward, rand_qkv, ref_backward, ref_forward, round_to)


# --------------------------------------------------------------------------------------------
# The definitions, written out
# --------------------------------------------------------------------------------------------


def natten_dim(n, w, d=1, causal=False):
    """[n, n] bool: NATTEN's rule along one dim. The group of x is the positions with its
    residue mod d, in order; x sees the w positions of its group around it (centred, w // 2
    before, shifted at the borders to keep w), or, causal, the w most recent up to itself."""
    m = np.zeros((n, n), dtype=bool)
    for x in range(n):
        group = [y for y in range(n) if y % d == x % d]
        t = group.index(x)
        if causal:
            kept = group[max(0, t - w + 1):t + 1]
        else:
            lo = min(max(t - w // 2, 0), len(group) - w)
            kept = group[lo:lo + w]
        m[x, kept] = True
    return m


def per_dim(v, ndim):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim


def neighborhood_mask(nq, nk, grid, window, dilation=1, causal=False, start=0):
    """[Nq, Nk]: tokens start.. laid out row-major on grid; kept when neighbours in every dim."""
    nd = len(grid)
    w, d, c = per_dim(window, nd), per_dim(dilation, nd), per_dim(causal, nd)
    dims = [natten_dim(grid[t], w[t], d[t], c[t]) for t in range(nd)]
    size = math.prod(grid)
    coords = np.array(list(itertools.product(*[range(g) for g in grid])))  # row-major order
    g = np.ones((size, size), dtype=bool)
    for t in range(nd):
        g &= dims[t][coords[:, t]][:, coords[:, t]]
    full = np.zeros((nk, nk), dtype=bool)
    full[start:start + size, start:start + size] = g
    return full[nk - nq:] if nq <= nk else np.vstack([np.zeros((nq - nk, nk), bool), full])


def sliding_tile_mask(grid, tile, window_tiles):
    """[N, N] with tokens numbered tile-major: a query tile sees the key tiles of its
    (NATTEN, undilated, centred and shifted) window over the tile grid."""
    nd = len(grid)
    tile, wt = per_dim(tile, nd), per_dim(window_tiles, nd)
    tg = [g // t for g, t in zip(grid, tile)]
    # token order: tile coords (row-major), then the coords inside the tile (row-major)
    order = [tuple(a * t + b for a, b, t in zip(tc, ic, tile))
             for tc in itertools.product(*[range(x) for x in tg])
             for ic in itertools.product(*[range(x) for x in tile])]
    tiles_of = np.array([[c // t for c, t in zip(pos, tile)] for pos in order])
    m = np.ones((len(order), len(order)), dtype=bool)
    for t in range(nd):
        dm = natten_dim(tg[t], wt[t])
        m &= dm[tiles_of[:, t]][:, tiles_of[:, t]]
    return m


def longnet_mask(n, segments, dilations, heads, causal=True):
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    out = np.zeros((heads, n, n), dtype=bool)
    for h in range(heads):
        for w, r in zip(segments, dilations):
            out[h] |= (i // w == j // w) & (i % r == h % r) & (j % r == h % r)
        if causal:
            out[h] &= j <= i
    return out


# --------------------------------------------------------------------------------------------
# NATTEN's rule on worked examples (by hand from the definition)
# --------------------------------------------------------------------------------------------


def kept(n, w, d=1, causal=False):
    return {x: sorted(np.flatnonzero(row).tolist()) for x, row in enumerate(natten_dim(n, w, d, causal))}


def test_natten_worked_examples_of_the_reference():
    # odd window: centred, shifted at the borders so it keeps 3
    k = kept(7, 3)
    assert k[0] == [0, 1, 2] and k[3] == [2, 3, 4] and k[6] == [4, 5, 6]
    # even window: two before, one after; shifted at the borders
    k = kept(7, 4)
    assert k[0] == [0, 1, 2, 3] and k[3] == [1, 2, 3, 4] and k[5] == [3, 4, 5, 6] and k[6] == [3, 4, 5, 6]
    # dilation 2: groups {0,2,4,6} and {1,3,5}
    k = kept(7, 3, 2)
    assert k[0] == [0, 2, 4] and k[6] == [2, 4, 6] and k[4] == [2, 4, 6] and k[1] == [1, 3, 5] and k[5] == [1, 3, 5]
    # causal: the w most recent, self included; fewer at the start
    k = kept(7, 3, causal=True)
    assert k[0] == [0] and k[1] == [0, 1] and k[4] == [2, 3, 4]
    k = kept(7, 2, 2, causal=True)
    assert k[5] == [3, 5] and k[1] == [1] and k[6] == [4, 6]


@pytest.mark.parametrize("n,w,d,causal", [(7, 3, 1, False), (7, 4, 1, False), (7, 3, 2, False),
                                          (9, 2, 3, False), (7, 3, 1, True), (7, 2, 2, True),
                                          (10, 5, 2, False), (6, 6, 1, False)])
def test_natten_1d_matches_the_library(n, w, d, causal):
    p = spattn.Neighborhood((n,), w, d, causal)
    assert np.array_equal(p.mask(n, n)[0], natten_dim(n, w, d, causal))


def test_natten_2d_worked_example():
    # 5 x 5 grid, 3 x 3 window: the corner (0, 0) sees rows 0..2 and columns 0..2
    p = spattn.Neighborhood((5, 5), 3)
    m = p.mask(25, 25)[0]
    assert sorted(np.flatnonzero(m[0]).tolist()) == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    # the centre (2, 2) = token 12 sees rows 1..3, columns 1..3
    assert sorted(np.flatnonzero(m[12]).tolist()) == [6, 7, 8, 11, 12, 13, 16, 17, 18]
    # (4, 1) = token 21: rows 2..4 (shifted), columns 0..2
    assert sorted(np.flatnonzero(m[21]).tolist()) == [10, 11, 12, 15, 16, 17, 20, 21, 22]


# --------------------------------------------------------------------------------------------
# masks and layouts
# --------------------------------------------------------------------------------------------

NEIGHBORHOODS = [
    dict(grid=(13,), window=5),
    dict(grid=(13,), window=4, dilation=3),
    dict(grid=(12,), window=3, causal=True),
    dict(grid=(9, 11), window=3),
    dict(grid=(9, 11), window=(3, 4), dilation=(2, 1)),
    dict(grid=(8, 9), window=(2, 4), dilation=(1, 2)),
    dict(grid=(7, 10), window=3, causal=(True, False)),
    dict(grid=(8, 8), window=4, causal=True),
    dict(grid=(4, 5, 6), window=(3, 3, 3)),
    dict(grid=(5, 4, 7), window=(2, 3, 3), dilation=(2, 1, 2), causal=(True, False, False)),
]


@pytest.mark.parametrize("kw", NEIGHBORHOODS, ids=str)
def test_neighborhood_mask_and_layout(kw):
    p = spattn.Neighborhood(**kw)
    n = math.prod(kw["grid"])
    want = neighborhood_mask(n, n, kw["grid"], kw["window"], kw.get("dilation", 1), kw.get("causal", False))
    assert np.array_equal(p.mask(n, n)[0], want)
    for bq, bk in [(16, 16), (8, 32), (5, 3), (1, 1)]:
        check_layout(p, n, n, bq, bk, 1, want_heads=1)
    assert spattn.Pattern.__repr__(p).startswith("Neighborhood(")


@pytest.mark.parametrize("nq,nk", [(30, 50), (50, 50), (60, 50)])
def test_neighborhood_inside_a_longer_sequence(nq, nk):
    p = spattn.Neighborhood((4, 5), 3, start=17)
    want = neighborhood_mask(nq, nk, (4, 5), 3, start=17)
    assert np.array_equal(p.mask(nq, nk)[0], want)
    check_layout(p, nq, nk, 8, 8, 1)
    check_layout(p, nq, nk, 3, 7, 1)


SLIDING_TILES = [
    dict(grid=(8, 8), tile=(4, 4), window_tiles=(1, 1)),
    dict(grid=(8, 12), tile=(4, 4), window_tiles=(2, 3)),
    dict(grid=(12, 8), tile=(2, 4), window_tiles=(3, 2)),
    dict(grid=(4, 8, 8), tile=(2, 4, 4), window_tiles=(1, 2, 2)),
    dict(grid=(6, 4, 6), tile=(2, 2, 2), window_tiles=(3, 1, 2)),
]


@pytest.mark.parametrize("kw", SLIDING_TILES, ids=str)
def test_sliding_tile_mask_and_layout(kw):
    p = spattn.SlidingTile(**kw)
    n = math.prod(kw["grid"])
    assert np.array_equal(p.mask(n, n)[0], sliding_tile_mask(kw["grid"], kw["tile"], kw["window_tiles"]))
    t = math.prod(per_dim(kw["tile"], len(kw["grid"])))
    for bq, bk in [(t, t), (16, 16), (5, 7)]:
        check_layout(p, n, n, bq, bk, 1, want_heads=1)


@pytest.mark.parametrize("grid,tile,wt", [((64, 64), (8, 8), (3, 3)), ((16, 32, 32), (4, 4, 4), (3, 3, 3)),
                                          ((32, 64), (4, 16), (5, 2))])
def test_tile_aligned_sliding_tile_has_no_partial_blocks(grid, tile, wt):
    p = spattn.SlidingTile(grid, tile, wt)
    n = math.prod(grid)
    lay = p.block_layout(n, n, block=(64, 64))
    blocks = lambda r: int((r[:, 1] - r[:, 0]).sum()) if len(r) else 0
    assert blocks(np.asarray(lay.partial_ranges)) == 0
    tiles = [g // t for g, t in zip(grid, tile)]
    assert blocks(np.asarray(lay.full_ranges)) == math.prod(tiles) * math.prod(wt)


LONGNETS = [
    dict(segments=(8,), dilations=(1,)),
    dict(segments=(8, 16), dilations=(1, 2)),
    dict(segments=(4, 16, 32), dilations=(1, 4, 8)),
    dict(segments=(6, 12), dilations=(2, 3), causal=False),
    dict(segments=(12, 24), dilations=(3, 4), causal=True),
]


@pytest.mark.parametrize("kw", LONGNETS, ids=str)
@pytest.mark.parametrize("n", [37, 64, 97])
def test_longnet_mask_and_layout(kw, n):
    p = spattn.LongNet(**kw)
    heads = 4
    want = longnet_mask(n, kw["segments"], kw["dilations"], heads, kw.get("causal", True))
    assert np.array_equal(p.mask(n, n, heads=heads), want)
    for bq, bk in [(16, 16), (8, 4), (1, 5)]:
        check_layout(p, n, n, bq, bk, heads)


# --------------------------------------------------------------------------------------------
# attention against the float64 reference
# --------------------------------------------------------------------------------------------

ATTN = [
    ("nb1d", lambda: spattn.Neighborhood((97,), 9, 2), 97),
    ("nb2d", lambda: spattn.Neighborhood((9, 11), (3, 5), (2, 1)), 99),
    ("nb2d_causal", lambda: spattn.Neighborhood((10, 10), 4, causal=True), 100),
    ("nb3d", lambda: spattn.Neighborhood((3, 5, 7), (2, 3, 3), (1, 1, 2)), 105),
    # grid lines of >= 64 tokens: 64-key blocks inside one line run the interval path
    ("nb_wide", lambda: spattn.Neighborhood((5, 64), (3, 9)), 320),
    ("nb_wide_causal", lambda: spattn.Neighborhood((3, 130), (2, 11), causal=(False, True)), 390),
    ("tile2d", lambda: spattn.SlidingTile((8, 12), (4, 4), (1, 2)), 96),
    ("tile3d", lambda: spattn.SlidingTile((4, 6, 4), (2, 2, 2), (1, 3, 2)), 96),
    ("longnet", lambda: spattn.LongNet((8, 32, 64), (1, 2, 4)), 97),
    ("longnet_bidir", lambda: spattn.LongNet((12, 48), (1, 3), causal=False), 97),
]


@pytest.mark.parametrize("name,make,n", ATTN, ids=[a[0] for a in ATTN])
def test_forward_and_gradients(name, make, n):
    pytest.importorskip("torch")
    p = make()
    hq, hkv = 4, 2
    q, k, v, do = rand_qkv(1, n, n, hq, hkv, 16, 8, seed=n)
    mask = p.mask(n, n, heads=hq)
    check_float32_attention(p, q, k, v, do, mask)


@pytest.mark.parametrize("causal", [True, False])
def test_longnet_residue_plan_forward_and_gradients(causal):
    # large enough for the plan (every residue class holds >= 64 rows), odd so that classes
    # differ in size, GQA, heads covering every residue of the largest dilation
    pytest.importorskip("torch")
    n, hq, hkv = 1031, 8, 4
    p = spattn.LongNet((32, 128, 512), (1, 4, 8), causal=causal)
    q, k, v, do = rand_qkv(1, n, n, hq, hkv, 16, 8, seed=11)
    mask = longnet_mask(n, (32, 128, 512), (1, 4, 8), hq, causal)
    assert np.array_equal(p.mask(n, n, heads=hq), mask)
    check_float32_attention(p, q, k, v, do, mask)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_neighborhood_low_precision(dtype):
    # the interval path of the bfloat16 / float16 kernels, forward and backward
    torch = pytest.importorskip("torch")
    p = spattn.Neighborhood((4, 64), (3, 9), start=10)
    n = 266
    q64, k64, v64, do64 = rand_qkv(1, n, n, 2, 1, 64, 64, seed=5)
    q64, k64, v64, do64 = (round_to(x, dtype) for x in (q64, k64, v64, do64))
    mask = p.mask(n, n)
    out_ref, _, _ = ref_forward(q64, k64, v64, mask)
    dq_ref, dk_ref, dv_ref = ref_backward(q64, k64, v64, do64, mask)
    dt = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(x).to(dt).requires_grad_() for x in (q64, k64, v64))
    out = spattn.attention(q, k, v, pattern=p)
    assert_close("out", out, out_ref, dtype, naive=naive_forward(q64, k64, v64, mask, dtype))
    out.backward(torch.from_numpy(do64).to(dt))
    nq, nk_, nv = naive_backward(q64, k64, v64, do64, mask, dtype)
    assert_close("dq", q.grad, dq_ref, dtype, naive=nq)
    assert_close("dk", k.grad, dk_ref, dtype, naive=nk_)
    assert_close("dv", v.grad, dv_ref, dtype, naive=nv)


def test_longnet_at_scale_matches_the_mask_rows():
    # the residue plan (per head, per segment size) against the definition on sampled rows
    torch = pytest.importorskip("torch")
    n, hq = 2048, 4
    p = spattn.LongNet((64, 256, 1024), (1, 4, 16))
    q, k, v, _ = rand_qkv(1, n, n, hq, hq, 16, 16, seed=3)
    out = spattn.attention(torch.from_numpy(q).float(), torch.from_numpy(k).float(),
                           torch.from_numpy(v).float(), pattern=p).numpy()
    rows = np.r_[0:40, 500:540, 2000:2048]
    m = longnet_mask(n, (64, 256, 1024), (1, 4, 16), hq)
    out_ref, _, _ = ref_forward(q[:, rows], k, v, m[:, rows])
    assert_close("out", out[:, rows], out_ref, "float32")


# --------------------------------------------------------------------------------------------
# vision-language recipe
# --------------------------------------------------------------------------------------------


def vl_reference(parts, window):
    """Text causal over every earlier token (text or image); image tokens see their own
    image's 2D neighbourhood only."""
    n = sum(x if isinstance(x, int) else math.prod(x) for x in parts)
    m = np.zeros((n, n), dtype=bool)
    pos = 0
    for part in parts:
        if isinstance(part, int):  # text
            for i in range(pos, pos + part):
                m[i, :i + 1] = True
            pos += part
        else:
            size = math.prod(part)
            m[pos:pos + size, pos:pos + size] = neighborhood_mask(size, size, part, window)
            pos += size
    return m


def test_vision_language_recipe():
    parts = [5, (4, 6), 7, (3, 3), 4]
    p = spattn.vision_language(parts, window=3)
    n = 5 + 24 + 7 + 9 + 4
    want = vl_reference(parts, 3)
    assert np.array_equal(p.mask(n, n)[0], want)
    check_layout(p, n, n, 8, 8, 1)
    torch = pytest.importorskip("torch")
    q, k, v, do = rand_qkv(1, n, n, 2, 2, 16, 16, seed=7)
    out_ref, _, _ = ref_forward(q, k, v, want[None])
    out = spattn.attention(torch.from_numpy(q).float(), torch.from_numpy(k).float(),
                           torch.from_numpy(v).float(), pattern=p)
    assert_close("out", out, out_ref, "float32")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda: spattn.Neighborhood((), 3), "Neighborhood: grid"),
    (lambda: spattn.Neighborhood((2, 2, 2, 2), 1), "Neighborhood: grid"),
    (lambda: spattn.Neighborhood((8, 8), 0), "Neighborhood: window"),
    (lambda: spattn.Neighborhood((8, 8), (3, 3, 3)), "Neighborhood: window"),
    (lambda: spattn.Neighborhood((8, 8), 5, dilation=2), "window \\* dilation"),
    (lambda: spattn.Neighborhood((8, 8), 3, dilation=0), "Neighborhood: dilation"),
    (lambda: spattn.Neighborhood((8, 8), 3, start=-1), "Neighborhood: start"),
    (lambda: spattn.SlidingTile((8, 8), (3, 4), 1), "SlidingTile: tile"),
    (lambda: spattn.SlidingTile((8, 8), (4, 4), 3), "SlidingTile: window_tiles"),
    (lambda: spattn.SlidingTile((8,), (4,), 1), "SlidingTile: grid"),
    (lambda: spattn.LongNet((8, 16), (1,)), "LongNet: segments and dilations"),
    (lambda: spattn.LongNet((8, 10), (1, 4)), "LongNet: segment"),
    (lambda: spattn.LongNet((), ()), "LongNet: segments"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_problem_checks():
    q = np.zeros((1, 20, 1, 8), np.float32)
    with pytest.raises(ValueError, match="Neighborhood"):
        spattn.attention(q, q, q, spattn.Neighborhood((5, 5), 3))  # 25 tokens > Nk = 20
    k = np.zeros((1, 24, 1, 8), np.float32)
    with pytest.raises(ValueError, match="LongNet"):
        spattn.attention(q, k, k, spattn.LongNet((8,), (1,)))  # Nq != Nk


# --------------------------------------------------------------------------------------------
# text syntax, spattn show
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("neighborhood((9,11),3)", lambda: spattn.Neighborhood((9, 11), 3)),
    ("natten((9,11),(3,5),dilation=(2,1),causal=(true,false))",
     lambda: spattn.Neighborhood((9, 11), (3, 5), (2, 1), (True, False))),
    ("neighborhood(grid=(4,5),window=3,start=17)", lambda: spattn.Neighborhood((4, 5), 3, start=17)),
    ("slidingtile((8,12),(4,4),(1,3))", lambda: spattn.SlidingTile((8, 12), (4, 4), (1, 3))),
    ("longnet((8,32),(1,4),causal=false)", lambda: spattn.LongNet((8, 32), (1, 4), causal=False)),
])
def test_syntax(text, want):
    from spattn.pattern_syntax import parse

    got, ref = parse(text), want()
    assert repr(got) == repr(ref)
    n = 60 if "start" in text else (99 if "9,11" in text else 96)
    assert np.array_equal(got.mask(n, n, heads=4), ref.mask(n, n, heads=4))


def test_repr_round_trips_through_the_syntax():
    from spattn.pattern_syntax import parse

    for p in (spattn.Neighborhood((9, 11), (3, 5), (2, 1), (True, False), start=2),
              spattn.SlidingTile((8, 12), (4, 4), (1, 3)), spattn.LongNet((8, 32), (1, 4))):
        assert repr(parse(repr(p))) == repr(p)


def test_show_text_draws_the_query_neighbourhood(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from spattn import cli

    out = tmp_path / "nb.png"
    assert cli.main(["show", "neighborhood((7,9),3)", "--n", "63", "--query", "10", "--text", "-o", str(out)]) == 0
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    grid = [l for l in lines if set(l) <= set("#.Q") and len(l) == 9]
    assert len(grid) == 7
    # query 10 = (1, 1): rows 0..2, columns 0..2
    assert grid[0] == "###......" and grid[1] == "#Q#......" and grid[2] == "###......"
    assert all(l == "." * 9 for l in grid[3:])


def test_show_default_query_is_the_middle_and_3d_tiles(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from spattn import cli, viz

    text = viz.neighborhood_text(spattn.Neighborhood((5, 5), 3), 25)
    assert text.splitlines()[2] == ".#Q#."
    p = spattn.SlidingTile((4, 4, 4), (2, 2, 2), (1, 1, 1))
    cells, q = viz.neighborhood_cells(p, 64)
    assert cells.sum() == 8 and cells.reshape(-1)[q]  # its own 2x2x2 tile
    out = tmp_path / "t.png"
    assert cli.main(["show", "slidingtile((4,8,8),(2,4,4),(1,1,2))", "--n", "256", "-o", str(out)]) == 0
    assert cli.main(["show", "longnet((16,64),(1,4))", "--n", "256", "--heads", "4", "--head", "1",
                     "-o", str(out)]) == 0
    assert cli.main(["show", "causal", "--n", "64", "--text", "-o", str(tmp_path / "x.png")]) == 1
    assert "grid pattern" in capsys.readouterr().err
