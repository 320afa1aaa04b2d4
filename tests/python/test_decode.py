"""spattn.decode (docs/api.md): attention of a few new queries against a KV cache, contiguous or
paged, equals spattn.attention per sequence (Nk = cache_len[b], bottom-right alignment)."""
from __future__ import annotations

import numpy as np
import pytest

import spattn

torch = pytest.importorskip("torch")

HQ, HKV, D, DV = 8, 2, 32, 24


def _patterns():
    return [
        spattn.Dense(),
        spattn.Causal(),
        spattn.SlidingWindow(37, 0),
        spattn.SlidingWindow(20, 5),
        spattn.Sink(4) | spattn.SlidingWindow(15, 0),
        spattn.Global([0, 1]) | spattn.SlidingWindow(9, 0),
        spattn.Dilated(6, 0, 3),
        spattn.Strided(5),
        spattn.Fixed(16, 4),
        spattn.BigBird(16, 3, 1, 1, seed=3),
        spattn.Causal() & spattn.Strided(3, causal=False),
        spattn.PerHead([spattn.SlidingWindow(w, 0) for w in (0, 3, 50, 200)] + [spattn.Dense(), spattn.Causal(), spattn.Sink(2), spattn.Strided(4)]),
    ]


def _cache(lens, ncap, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    B = len(lens)
    k = rng.standard_normal((B, ncap, HKV, D)).astype(dtype)
    v = rng.standard_normal((B, ncap, HKV, DV)).astype(dtype)
    return k, v


def _paged(k, v, lens, page, rng, spare=3):
    """Pages of `page` rows in a random order (plus unused pages); the table has extra columns."""
    B, ncap = k.shape[:2]
    npg = (ncap + page - 1) // page
    pages = B * npg + spare
    order = rng.permutation(pages)[: B * npg].reshape(B, npg)
    kp = np.full((pages, page) + k.shape[2:], np.nan, k.dtype)  # NaN: unused rows must not be read
    vp = np.full((pages, page) + v.shape[2:], np.nan, v.dtype)
    for b in range(B):
        for c in range(npg):
            rows = k[b, c * page : (c + 1) * page]
            kp[order[b, c], : len(rows)] = rows
            vp[order[b, c], : len(rows)] = v[b, c * page : (c + 1) * page]
    # Tail rows of a sequence's last page beyond cache_len are NaN too (never read).
    for b in range(B):
        n = lens[b]
        if n % page:
            kp[order[b, n // page], n % page :] = np.nan
            vp[order[b, n // page], n % page :] = np.nan
    table = np.concatenate([order, np.full((B, 2), -1)], axis=1).astype(np.int32)
    # Columns past a sequence's length are never read either.
    for b in range(B):
        table[b, (lens[b] + page - 1) // page :] = -7
    return kp, vp, table


def _np(x):
    return x.float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _expected(q, k, v, lens, pattern):
    outs, lses = [], []
    for b, n in enumerate(lens):
        if n == 0:  # an empty cache: zeros and -inf (the pattern is not checked against Nk=0)
            outs.append(np.zeros((1,) + tuple(q.shape[1:3]) + (v.shape[3],), np.float32))
            lses.append(np.full((1, q.shape[2], q.shape[1]), -np.inf, np.float32))
            continue
        o, l = spattn.attention(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], pattern=pattern, return_lse=True)
        outs.append(_np(o))
        lses.append(_np(l))
    return np.concatenate(outs), np.concatenate(lses)


def _close(got, want, atol=2e-5):
    out, lse = got
    wo, wl = want
    np.testing.assert_allclose(np.asarray(out), wo, atol=atol, rtol=1e-4)
    lse = np.asarray(lse)
    assert (np.isneginf(lse) == np.isneginf(wl)).all()
    fin = np.isfinite(wl)
    np.testing.assert_allclose(lse[fin], wl[fin], atol=atol, rtol=1e-5)


@pytest.mark.parametrize("nq", [1, 3, 16])
def test_contiguous_and_paged_match_attention(nq):
    rng = np.random.default_rng(nq)
    lens = np.array([1000, 0, 2, 517, nq + 1, 64], np.int32)
    if nq > 2:
        lens[2] = nq - 1  # cache shorter than the new queries: the first rows see nothing
    ncap = 1000
    k, v = _cache(lens, ncap, seed=nq)
    q = rng.standard_normal((len(lens), nq, HQ, D)).astype(np.float32)
    pages = {page: _paged(k, v, lens, page, rng) for page in (16, 64, 48)}
    for pattern in _patterns():
        live = [n for n in lens if n]
        if isinstance(pattern, spattn.Union) and min(live) < 2:
            continue
        want = _expected(q, k, v, lens, pattern)
        _close(spattn.decode(q, k, v, lens, pattern=pattern, return_lse=True), want)
        for page, (kp, vp, table) in pages.items():
            _close(spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True), want)


def test_block_sparse_and_single_sequence_long_cache():
    rng = np.random.default_rng(7)
    n, nq = 3000, 4
    lens = np.array([n, n], np.int32)
    k, v = _cache(lens, n + 50, seed=7)
    q = rng.standard_normal((2, nq, HQ, D)).astype(np.float32)
    layout = rng.random((HQ, 1, (n + 99) // 100)) < 0.3
    for pattern in (spattn.BlockSparse(layout, block_size=(4, 100)), spattn.Sink(4) | spattn.SlidingWindow(255, 0)):
        want = _expected(q, k, v, lens, pattern)
        _close(spattn.decode(q, k, v, lens, pattern=pattern, return_lse=True), want)
        kp, vp, table = _paged(k, v, lens, 48, rng)
        _close(spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True), want)


def test_window_reads_only_its_pages():
    """Pages outside a window (and their table entries) are never read: mark them invalid."""
    rng = np.random.default_rng(3)
    n, page, W = 2000, 16, 64
    lens = np.array([n], np.int32)
    k, v = _cache(lens, n, seed=3)
    q = rng.standard_normal((1, 1, HQ, D)).astype(np.float32)
    kp, vp, table = _paged(k, v, lens, page, rng)
    pattern = spattn.Sink(4) | spattn.SlidingWindow(W - 1, 0)
    want = _expected(q, k, v, lens, pattern)
    first, last = 1, (n - W) // page
    for c in range(first, last):
        kp[table[0, c]] = np.nan
        vp[table[0, c]] = np.nan
        table[0, c] = -1
    _close(spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True), want)
    with pytest.raises(ValueError, match=r"block_table: entry \[0, 1\] = -1"):
        spattn.decode(q, kp, vp, lens, pattern=spattn.Dense(), block_table=table)


def _naive_err(q, k, v, lens, pattern, dtype, exact):
    """Max error of spattn.attention in `dtype` against float32 attention of the same inputs."""
    got = _expected(q.to(dtype), k.to(dtype), v.to(dtype), lens, pattern)[0]
    return np.abs(got - exact).max()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_torch_dtypes_flash_rule(dtype):
    rng = np.random.default_rng(11)
    lens = np.array([700, 3, 0, 129], np.int32)
    nq = 3
    k, v = _cache(lens, 700, seed=11)
    q = rng.standard_normal((len(lens), nq, HQ, D)).astype(np.float32)
    qt, kt, vt = (torch.from_numpy(x).to(dtype) for x in (q, k, v))
    # The exact result of the rounded inputs, in float32.
    q32, k32, v32 = (x.float().numpy() for x in (qt, kt, vt))
    for pattern in (spattn.Dense(), spattn.SlidingWindow(31, 0), spattn.Sink(2) | spattn.SlidingWindow(63, 0)):
        exact, exact_lse = _expected(q32, k32, v32, lens, pattern)
        out, lse = spattn.decode(qt, kt, vt, torch.from_numpy(lens), pattern=pattern, return_lse=True)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (len(lens), nq, HQ, DV)
        assert lse.dtype == torch.float32 and lse.shape == (len(lens), HQ, nq)
        err = np.abs(out.float().numpy() - exact).max()
        base = _naive_err(torch.from_numpy(q32), torch.from_numpy(k32), torch.from_numpy(v32), lens, pattern, dtype, exact)
        assert err <= 2 * base + 1e-5, (pattern, err, base)
        fin = np.isfinite(exact_lse)
        np.testing.assert_allclose(lse.numpy()[fin], exact_lse[fin], atol=1e-4, rtol=1e-4)
        assert (np.isneginf(lse.numpy()) == np.isneginf(exact_lse)).all()
        # Paged, same dtype.
        kp, vp, table = _paged(k32, v32, lens, 48, rng)
        out2 = spattn.decode(qt, torch.from_numpy(kp).to(dtype), torch.from_numpy(vp).to(dtype), lens, pattern=pattern, block_table=torch.from_numpy(table))
        assert np.abs(out2.float().numpy() - exact).max() <= 2 * base + 1e-5


def test_empty_cache_rows_are_zero_and_lse_neg_inf():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, HQ, D)).astype(np.float32)
    k, v = _cache([0, 3], 8, seed=0)
    out, lse = spattn.decode(q, k, v, [0, 3], pattern=spattn.Causal(), return_lse=True)
    assert (out[0] == 0).all() and np.isneginf(lse[0]).all()
    # cache_len 3 < Nq 5: queries 0 and 1 sit before the cache start and see nothing.
    assert (out[1, :2] == 0).all() and np.isneginf(lse[1, :, :2]).all()
    assert np.isfinite(lse[1, :, 2:]).all()


def _small(page=16):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 1, HQ, D)).astype(np.float32)
    k, v = _cache([40, 40], 40, seed=1)
    kp, vp, table = _paged(k, v, [40, 40], page, rng)
    return q, k, v, kp, vp, table


@pytest.mark.parametrize(
    "lens, match",
    [
        ([-1, 3], r"cache_len\[0\] = -1 is outside 0..40"),
        ([3, 41], r"cache_len\[1\] = 41 is outside 0..40"),
        ([3], r"cache_len: expected shape \[2\]"),
        ([[3, 3]], r"cache_len: expected shape \[2\]"),
    ],
)
def test_bad_cache_len_contiguous(lens, match):
    q, k, v, *_ = _small()
    with pytest.raises(ValueError, match=match):
        spattn.decode(q, k, v, np.array(lens, np.int32))


def test_bad_cache_len_dtype():
    q, k, v, *_ = _small()
    with pytest.raises(TypeError, match="cache_len: expected int32"):
        spattn.decode(q, k, v, np.array([3.0, 3.0]))
    with pytest.raises(TypeError, match="cache_len"):
        spattn.decode(q, k, v, [3.0, 3.0])


def test_bad_block_table():
    q, k, v, kp, vp, table = _small()
    pages = kp.shape[0]
    for bad, want in ((-1, "= -1"), (pages, f"= {pages}")):
        t = table.copy()
        t[1, 2] = bad
        with pytest.raises(ValueError, match=rf"block_table: entry \[1, 2\] {want} is not a page index in \[0, {pages}\)"):
            spattn.decode(q, kp, vp, [40, 40], block_table=t)
    # Too few columns for the length: 2 pages of 16 hold 32 keys.
    with pytest.raises(ValueError, match=r"cache_len\[0\] = 40 is outside 0..32 .*too few columns"):
        spattn.decode(q, kp, vp, [40, 40], block_table=table[:, :2])
    with pytest.raises(TypeError, match="block_table: expected int32"):
        spattn.decode(q, kp, vp, [40, 40], block_table=table.astype(np.float32))
    with pytest.raises(ValueError, match=r"block_table: expected 2 dimensions \[B=2"):
        spattn.decode(q, kp, vp, [40, 40], block_table=table[:1])
    with pytest.raises(ValueError, match="v_cache"):
        spattn.decode(q, kp, vp[:, :8], [40, 40], block_table=table)


def test_defer_errors_on_the_cpu_raises_at_once():
    """defer_errors only changes the CUDA decode (docs/api.md, "Decode on a GPU"): on the CPU
    errors are raised by the call, and there is never anything to check later."""
    q, k, v, kp, vp, table = _small()
    t = table.copy()
    t[1, 2] = -1
    with pytest.raises(ValueError, match=r"block_table: entry \[1, 2\] = -1"):
        spattn.decode(q, kp, vp, [40, 40], block_table=t, defer_errors=True)
    with pytest.raises(ValueError, match=r"cache_len\[1\] = 41 is outside 0..40"):
        spattn.decode(q, k, v, [3, 41], defer_errors=True)
    want = spattn.decode(q, k, v, [40, 7])
    np.testing.assert_array_equal(spattn.decode(q, k, v, [40, 7], defer_errors=True), want)
    assert spattn.check_decode_errors() is None
    assert spattn.check_decode_errors(0) is None  # no deferred call ran on a CUDA device
    try:
        import torch
    except ImportError:
        return
    assert spattn.check_decode_errors(torch.device("cpu")) is None
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    out = spattn.decode(tq, tk, tv, torch.tensor([40, 7], dtype=torch.int32), defer_errors=True)
    np.testing.assert_array_equal(out.numpy(), want)


def test_shape_and_dtype_errors():
    q, k, v, *_ = _small()
    with pytest.raises(ValueError, match="k_cache, v_cache: batch sizes"):
        spattn.decode(q, k[:1], v[:1], [3, 3])
    with pytest.raises(TypeError, match="k_cache: dtype float64 does not match q's float32"):
        spattn.decode(q, k.astype(np.float64), v, [3, 3])
    with pytest.raises(TypeError, match="v_cache: dtype float16 does not match q's float32"):
        spattn.decode(q, k, v.astype(np.float16), [3, 3])
    with pytest.raises(ValueError, match="at most 64 new queries"):
        spattn.decode(np.zeros((2, 65, HQ, D), np.float32), k, v, [40, 40])
    with pytest.raises(ValueError, match="Hq=8 query heads must be a multiple of Hkv=3"):
        spattn.decode(q, np.zeros((2, 40, 3, D), np.float32), np.zeros((2, 40, 3, DV), np.float32), [3, 3])
    with pytest.raises(ValueError, match="pattern: does not fit sequence 1"):
        spattn.decode(q, k, v, [40, 3], pattern=spattn.Global([10]))


def test_strided_views_and_gqa_layouts():
    """torch's [B, H, N, D] cache passed as a transposed view; MQA (Hkv=1)."""
    rng = np.random.default_rng(5)
    kb = torch.from_numpy(rng.standard_normal((2, 1, 300, D)).astype(np.float32))
    vb = torch.from_numpy(rng.standard_normal((2, 1, 300, DV)).astype(np.float32))
    q = torch.from_numpy(rng.standard_normal((2, 2, HQ, D)).astype(np.float32))
    lens = torch.tensor([300, 150], dtype=torch.int32)
    k, v = kb.transpose(1, 2), vb.transpose(1, 2)
    for pattern in (spattn.Dense(), spattn.SlidingWindow(40, 0)):
        want = _expected(q.numpy(), k.contiguous().numpy(), v.contiguous().numpy(), lens.numpy(), pattern)
        _close(spattn.decode(q, k, v, lens, pattern=pattern, return_lse=True), want)
