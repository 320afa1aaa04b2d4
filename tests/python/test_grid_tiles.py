"""The CPU forward of grid neighbourhoods in gathered tiles (cpp/src/cpu/grid_tiles.cpp): a
query tile is a 4 x 16 patch of the grid (per residue class of the dilations), its keys the box
the patch's neighbourhoods lie in. Taken by Neighborhood on 2 or 3 dims whose residue classes
are at least 4 x 16 cells; SPATTN_GRID_TILES=0 turns it off (then the block walk runs).

Outputs and lse against the float64 reference on masks written from NATTEN's definition
(test_grid_patterns.neighborhood_mask), gradients through the block walk's backward, the
score modifiers, GQA, strided views, Nq != Nk, float16 / bfloat16."""

import numpy as np
import pytest

import spattn
from _helpers import (as64, assert_close, assert_lse, check_float32_attention, naive_forward, rand_qkv,
                      ref_forward, round_to)
from modifier_ref import ref_modified
from test_grid_patterns import neighborhood_mask

torch = pytest.importorskip("torch")

# (grid, window, dilation, causal, start): every one runs the gathered tiles.
GRIDS = {
    "odd_2d": ((21, 37), 5, 1, False, 0),              # partial tiles on both sides
    "even_window": ((12, 40), (4, 6), 1, False, 0),    # even windows lean back
    "clamped": ((8, 20), (8, 20), 1, False, 0),        # window = grid: every row keeps all
    "dilated": ((13, 41), (3, 7), (2, 2), False, 0),   # 4 residue classes of unequal sizes
    "causal": ((12, 33), (4, 9), 1, True, 0),
    "causal_one_dim": ((9, 35), (3, 5), (1, 2), (False, True), 0),
    "3d": ((3, 8, 20), (2, 3, 5), (1, 2, 1), False, 0),
    "3d_causal": ((4, 5, 17), 3, 1, (True, False, False), 0),
    "start": ((6, 19), 5, 1, False, 9),
    # boxes of more than one key block (kGridBlock = 512 keys): the online softmax across blocks,
    # with the masks' keep tables (18 x 46 cells) and, past 64 cells in a dim, compares (12 x 80)
    "two_blocks": ((24, 48), (15, 31), 1, False, 0),
    "wide_box": ((12, 80), (9, 71), 1, False, 0),
}


def _pattern(grid, window, dilation, causal, start):
    return spattn.Neighborhood(grid, window, dilation, causal, start=start)


def _mask(nq, nk, hq, grid, window, dilation, causal, start):
    m = neighborhood_mask(nq, nk, grid, window, dilation, causal, start)
    return np.broadcast_to(m, (hq, nq, nk))


@pytest.mark.parametrize("name", list(GRIDS))
def test_forward_lse_and_gradients_match_the_reference(name):
    grid, window, dilation, causal, start = GRIDS[name]
    n = int(np.prod(grid)) + start + 3  # 3 tokens after the grid: rows that keep nothing
    p = _pattern(*GRIDS[name])
    mask = _mask(n, n, 4, *GRIDS[name])
    assert np.array_equal(p.mask(n, n, heads=4), mask)
    q, k, v, do = rand_qkv(1, n, n, 4, 2, 16, 8, seed=len(name))
    check_float32_attention(p, q, k, v, do, mask)


@pytest.mark.parametrize("nq,nk", [(150, 240), (240, 240), (300, 240)])
def test_queries_aligned_bottom_right(nq, nk):
    # Nq != Nk: query i sits at key position i + Nk - Nq; cells with no query row are skipped,
    # rows before or after the grid keep nothing (out 0, lse -inf)
    p = spattn.Neighborhood((8, 20), (3, 7), start=30)
    mask = np.broadcast_to(neighborhood_mask(nq, nk, (8, 20), (3, 7), start=30), (2, 2, nq, nk))[0]
    q, k, v, do = rand_qkv(1, nq, nk, 2, 1, 32, 16, seed=nq)
    check_float32_attention(p, q, k, v, do, mask)


@pytest.mark.parametrize("d,dv", [(64, 64), (48, 40), (96, 64), (256, 128)])
def test_head_dims_gqa_and_strided_views(d, dv):
    # d = dv = 64: float32 K and V rows read in place, other sizes packed (padding columns; d =
    # 256: K split into head-dim chunks);
    # batch 2, 2 query heads per kv head; q is a [B, H, N, D] tensor seen as [B, N, H, D], v has
    # a stride of H along D (packed whatever its size)
    grid, w = (16, 32), (5, 7)
    n = 512
    p = spattn.Neighborhood(grid, w)
    mask = neighborhood_mask(n, n, grid, w)
    q64, k64, v64, _ = rand_qkv(2, n, n, 4, 2, d, dv, seed=d + dv)
    out_ref, lse_ref, _ = ref_forward(q64, k64, v64, np.broadcast_to(mask, (4, n, n)))
    q = torch.from_numpy(q64).float().transpose(1, 2).contiguous().transpose(1, 2)
    k = torch.from_numpy(k64).float()
    v = torch.from_numpy(np.ascontiguousarray(v64.transpose(0, 1, 3, 2))).float().transpose(2, 3)
    assert q.stride(2) == n * d and v.stride(3) == 4 // 2
    out, lse = spattn.attention(q, k, v, pattern=p, return_lse=True)
    assert_close("out", out, out_ref, "float32")
    assert_lse(lse, lse_ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision(dtype):
    grid, w = (12, 36), (5, 9)
    n = 12 * 36
    p = spattn.Neighborhood(grid, w, dilation=(1, 2))
    mask = neighborhood_mask(n, n, grid, w, (1, 2))
    q64, k64, v64, _ = rand_qkv(1, n, n, 2, 1, 64, 64, seed=7)
    q64, k64, v64 = (round_to(x, dtype) for x in (q64, k64, v64))
    out_ref, lse_ref, _ = ref_forward(q64, k64, v64, np.broadcast_to(mask, (2, n, n)))
    dt = getattr(torch, dtype)
    out, lse = spattn.attention(*(torch.from_numpy(x).to(dt) for x in (q64, k64, v64)), pattern=p,
                                return_lse=True)
    assert out.dtype == dt
    assert_close("out", out, out_ref, dtype, naive=naive_forward(q64, k64, v64, np.broadcast_to(mask, (2, n, n)), dtype))
    np.testing.assert_allclose(as64(lse), lse_ref, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("mods", [dict(softcap=2.0), dict(alibi=True), dict(sinks=True),
                                  dict(softcap=2.0, alibi=True, sinks=True)], ids=str)
@pytest.mark.parametrize("nq", [300, 360])
def test_score_modifiers(mods, nq):
    # ALiBi's rel is the token distance i + Nk - Nq - j of the gathered row and key
    grid, w, nk = (10, 36), (3, 5), 360
    p = spattn.Neighborhood(grid, w, causal=(True, False))
    rng = np.random.default_rng(nq)
    f = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    q, k, v = (f(rng.standard_normal(s)) for s in ((1, nq, 4, 32), (1, nk, 2, 32), (1, nk, 2, 32)))
    slopes = f(rng.uniform(0.05, 0.5, 4)) if mods.get("alibi") else None
    sinks = f(rng.standard_normal(4)) if mods.get("sinks") else None
    kw = dict(softcap=mods.get("softcap"), alibi_slopes=slopes, sinks=sinks)
    out, lse = spattn.attention(q, k, v, pattern=p, scale=0.4, return_lse=True, **kw)
    ro, rl = ref_modified(q, k, v, p, 0.4, mods.get("softcap"), slopes, sinks)
    np.testing.assert_allclose(out, ro, atol=2e-5)
    fin = np.isfinite(rl)
    assert np.array_equal(np.isfinite(np.asarray(lse)), fin)
    np.testing.assert_allclose(np.asarray(lse)[fin], rl[fin], atol=2e-5)


def test_the_gathered_path_runs(monkeypatch):
    # The tiles sum each row's keys in another order than the block walk: the same inputs give
    # results equal to rounding but not bit for bit, which shows the tiles ran (both match the
    # reference above).
    p = spattn.Neighborhood((64, 64), 13)
    q, k, v = (torch.from_numpy(x).float() for x in rand_qkv(1, 4096, 4096, 2, 2, 64, 64, seed=3)[:3])
    monkeypatch.setenv("SPATTN_GRID_TILES", "0")
    walk, walk_lse = spattn.attention(q, k, v, pattern=p, return_lse=True)
    monkeypatch.delenv("SPATTN_GRID_TILES")
    tiles, tiles_lse = spattn.attention(q, k, v, pattern=p, return_lse=True)
    assert not torch.equal(walk, tiles)
    torch.testing.assert_close(tiles, walk, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiles_lse, walk_lse, rtol=1e-5, atol=1e-5)


def test_sliding_tile_and_narrow_grids_keep_the_block_walk(monkeypatch):
    # SlidingTile (full blocks already) and grids narrower than a tile are not taken: turning the
    # tiles off changes nothing, bit for bit
    cases = [(spattn.SlidingTile((32, 32), (8, 8), 3), 1024), (spattn.Neighborhood((40, 12), 5), 480),
             (spattn.Neighborhood((3, 64), 3), 192), (spattn.Neighborhood((256,), 9), 256)]
    for p, n in cases:
        q, k, v = (torch.from_numpy(x).float() for x in rand_qkv(1, n, n, 2, 2, 32, 32, seed=n)[:3])
        monkeypatch.setenv("SPATTN_GRID_TILES", "0")
        a = spattn.attention(q, k, v, pattern=p)
        monkeypatch.delenv("SPATTN_GRID_TILES")
        b = spattn.attention(q, k, v, pattern=p)
        assert torch.equal(a, b), p


@pytest.mark.parametrize("simd", ["portable", "avx2", "avx512"])
def test_every_simd_level(simd):
    # The tiles are compiled per instruction set (the AVX-512 one transposes Q in registers);
    # a level is chosen once per process, so each runs in a child, against the float64 reference.
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import numpy as np, spattn
        rng = np.random.default_rng(1)
        f = lambda s: rng.standard_normal(s).astype(np.float32)
        p = spattn.Neighborhood((9, 40), (3, 7), dilation=(1, 2), causal=(False, True))
        q, k, v = f((1, 360, 4, 32)), f((1, 360, 2, 32)), f((1, 360, 2, 16))
        o, l = spattn.attention(q, k, v, pattern=p, return_lse=True, softcap=3.0)
        ro, rl = spattn.reference_attention(q.astype(np.float64), k.astype(np.float64),
                                            v.astype(np.float64), p, None, True, softcap=3.0)
        assert np.abs(o - ro).max() < 2e-5 and np.abs(l - rl).max() < 2e-5, spattn.info()["cpu_simd"]
        print(spattn.info()["cpu_simd"])
    """)
    env = dict(os.environ, SPATTN_SIMD=simd)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    level = r.stdout.strip()
    if simd != "portable" and level == "portable":
        pytest.skip(f"this CPU has no {simd}")
