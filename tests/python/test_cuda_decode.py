"""spattn.decode and spattn.pool_keys on CUDA (cuda/src/kernels/decode.cu) against the CPU decode,
on torch CUDA tensors.

Skipped cleanly without torch, without a CUDA device, or with a spattn built without CUDA:
nothing here touches the GPU at import or collection (the `cuda` fixture asks, inside each test).
The reference is the CPU decode in float32 of the same (rounded) inputs; the CUDA kernel
accumulates in float32 too, so the difference is the rounding of out to the low precision plus
float32 summation order. Covered: contiguous and paged caches (pages in a random order, NaN in
every row that must not be read, int32 and int64 tables), GQA, Nq 1 / 7 / 64, empty caches and
caches shorter than Nq, windows, dense, causal, unions, per-head mixes, block-sparse, head dims
64 / 128 / 256 and Dv != D, strided caches, score modifiers, bad table entries (ValueError as on
the CPU), pool_keys, streams and graphs. TopKBlocks (chosen on the GPU): test_cuda_decode_topk.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import cuda_torch_or_skip


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_decode")


HQ, HKV = 8, 2
ATOL = {"float16": 2e-3, "bfloat16": 1.6e-2}


def _patterns(nq):
    return {
        "dense": spattn.Dense(),
        "causal": spattn.Causal(),
        "window(37,0)": spattn.SlidingWindow(37, 0),
        "sink(4)|window(15,0)": spattn.Sink(4) | spattn.SlidingWindow(15, 0),
        "per-head mix": spattn.PerHead([spattn.SlidingWindow(w, 0) for w in (0, 3, 50, 200)]
                                       + [spattn.Dense(), spattn.Causal(), spattn.Sink(2), spattn.Strided(4)]),
        "dilated(6,0,3)": spattn.Dilated(6, 0, 3),
    }


def _data(torch, lens, ncap, nq, d, dv, dtype, seed):
    rng = np.random.default_rng(seed)
    B = len(lens)
    dt = getattr(torch, dtype)
    q = torch.from_numpy(rng.standard_normal((B, nq, HQ, d)).astype(np.float32)).to(dt)
    k = torch.from_numpy(rng.standard_normal((B, ncap, HKV, d)).astype(np.float32)).to(dt)
    v = torch.from_numpy(rng.standard_normal((B, ncap, HKV, dv)).astype(np.float32)).to(dt)
    return q, k, v


def _paged(torch, k, v, lens, page, seed, table_dtype="int32"):
    """Pages of `page` rows in a random order plus spare pages; unread rows are NaN, unread table
    columns -7."""
    rng = np.random.default_rng(seed)
    B, ncap = k.shape[:2]
    npg = -(-ncap // page)
    pages = B * npg + 3
    order = rng.permutation(pages)[: B * npg].reshape(B, npg)
    kp = torch.full((pages, page) + tuple(k.shape[2:]), float("nan"), dtype=k.dtype)
    vp = torch.full((pages, page) + tuple(v.shape[2:]), float("nan"), dtype=v.dtype)
    for b in range(B):
        n = int(lens[b])
        for c in range(-(-n // page)):
            rows = min(page, n - c * page)
            kp[order[b, c], :rows] = k[b, c * page : c * page + rows]
            vp[order[b, c], :rows] = v[b, c * page : c * page + rows]
    table = order.astype(table_dtype).copy()
    for b in range(B):
        table[b, -(-int(lens[b]) // page) :] = -7
    return kp, vp, torch.from_numpy(table)


def _cpu_ref(q, k, v, lens, pattern, table=None, **mods):
    """The CPU decode in float32 of the same rounded inputs."""
    cpu = {key: (val.cpu() if hasattr(val, "cpu") else val) for key, val in mods.items()}
    return spattn.decode(q.float().cpu(), k.float().cpu(), v.float().cpu(), lens, pattern=pattern,
                         block_table=None if table is None else table.cpu(), return_lse=True, **cpu)


def _check(torch, got, want, dtype):
    out, lse = got
    wo, wl = want
    assert out.is_cuda and lse.is_cuda and out.dtype == getattr(torch, dtype) and lse.dtype == torch.float32
    o = out.float().cpu().numpy()
    assert not np.isnan(o).any(), "NaN in out (an unread row or page was read?)"
    np.testing.assert_allclose(o, wo.numpy(), atol=ATOL[dtype], rtol=ATOL[dtype])
    l, wl = lse.cpu().numpy(), wl.numpy()
    assert (np.isneginf(l) == np.isneginf(wl)).all()
    fin = np.isfinite(wl)
    np.testing.assert_allclose(l[fin], wl[fin], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("nq", [1, 7, 64])
def test_matches_cpu_contiguous_and_paged(cuda, dtype, nq):
    torch = cuda
    lens = np.array([1000, 0, 5, 517, nq + 1, 64], np.int32)
    ncap = 1000
    q, k, v = _data(torch, lens, ncap, nq, 128, 128, dtype, seed=nq)
    qc, kc, vc = q.cuda(), k.cuda(), v.cuda()
    paged = {page: _paged(torch, k, v, lens, page, seed=page) for page in (16, 48)}
    for pattern in _patterns(nq).values():
        want = _cpu_ref(q, k, v, lens, pattern)
        _check(torch, spattn.decode(qc, kc, vc, lens, pattern=pattern, return_lse=True), want, dtype)
        for page, (kp, vp, table) in paged.items():
            got = spattn.decode(qc, kp.cuda(), vp.cuda(), lens, pattern=pattern, block_table=table.cuda(),
                                return_lse=True)
            _check(torch, got, want, dtype)


@pytest.mark.parametrize("d, dv", [(64, 64), (128, 64), (256, 256), (96, 40)])
def test_head_dims_and_int64_table(cuda, d, dv):
    torch = cuda
    lens = np.array([700, 3], np.int32)
    q, k, v = _data(torch, lens, 700, 2, d, dv, "bfloat16", seed=d + dv)
    kp, vp, table = _paged(torch, k, v, lens, 32, seed=1, table_dtype="int64")
    for pattern in (spattn.Dense(), spattn.SlidingWindow(99, 0)):
        want = _cpu_ref(q, k, v, lens, pattern)
        _check(torch, spattn.decode(q.cuda(), kp.cuda(), vp.cuda(), lens, pattern=pattern,
                                    block_table=table.cuda(), return_lse=True), want, "bfloat16")


def test_block_sparse_per_head(cuda):
    torch = cuda
    n, nq = 3000, 4
    lens = np.array([n, n], np.int32)
    q, k, v = _data(torch, lens, n + 50, nq, 128, 128, "bfloat16", seed=7)
    layout = np.random.default_rng(7).random((HQ, 1, (n + 99) // 100)) < 0.3
    pattern = spattn.BlockSparse(layout, block_size=(4, 100))
    want = _cpu_ref(q, k, v, lens, pattern)
    _check(torch, spattn.decode(q.cuda(), k.cuda(), v.cuda(), lens, pattern=pattern, return_lse=True), want,
           "bfloat16")
    kp, vp, table = _paged(torch, k, v, lens, 48, seed=7)
    _check(torch, spattn.decode(q.cuda(), kp.cuda(), vp.cuda(), lens, pattern=pattern, block_table=table.cuda(),
                                return_lse=True), want, "bfloat16")


def test_strided_caches_and_cache_len_on_device(cuda):
    """Cache rows 3 elements longer than D (a view of a padded buffer: strides not multiples of
    8, so the kernel reads element by element), a transposed query, cache_len on the device."""
    torch = cuda
    lens = np.array([300, 77], np.int32)
    q, k, v = _data(torch, lens, 300, 3, 64, 64, "float16", seed=5)
    kpad = torch.zeros(k.shape[:3] + (67,), dtype=k.dtype)
    vpad = torch.zeros(v.shape[:3] + (67,), dtype=v.dtype)
    kpad[..., :64], vpad[..., :64] = k, v
    kt, vt = kpad.cuda()[..., :64], vpad.cuda()[..., :64]
    want = _cpu_ref(q, k, v, lens, spattn.Causal())
    qt = q.transpose(1, 2).contiguous().cuda().transpose(1, 2)
    got = spattn.decode(qt, kt, vt, torch.from_numpy(lens).cuda(), pattern=spattn.Causal(), return_lse=True)
    _check(torch, got, want, "float16")


def test_score_modifiers(cuda):
    torch = cuda
    lens = np.array([400, 0, 9], np.int32)
    q, k, v = _data(torch, lens, 400, 4, 128, 128, "bfloat16", seed=9)
    kp, vp, table = _paged(torch, k, v, lens, 16, seed=2)
    alibi = torch.linspace(0.01, 0.2, HQ)
    sinks = torch.tensor([0.5, -1.0, 2.0, float("-inf"), 0.0, 1.0, -0.5, 3.0])
    for mods in ({"softcap": 5.0}, {"alibi_slopes": alibi}, {"sinks": sinks},
                 {"softcap": 3.0, "alibi_slopes": alibi, "sinks": sinks}):
        want = _cpu_ref(q, k, v, lens, spattn.SlidingWindow(100, 0), **mods)
        dev = {key: (val.cuda() if hasattr(val, "cuda") else val) for key, val in mods.items()}
        got = spattn.decode(q.cuda(), kp.cuda(), vp.cuda(), lens, pattern=spattn.SlidingWindow(100, 0),
                            block_table=table.cuda(), return_lse=True, **dev)
        _check(torch, got, want, "bfloat16")


def test_window_reads_only_its_pages_and_bad_entries_raise(cuda):
    torch = cuda
    n, page, W = 4000, 16, 64
    lens = np.array([n], np.int32)
    q, k, v = _data(torch, lens, n, 1, 128, 128, "bfloat16", seed=3)
    kp, vp, table = _paged(torch, k, v, lens, page, seed=3)
    pattern = spattn.Sink(4) | spattn.SlidingWindow(W - 1, 0)
    want = _cpu_ref(q, k, v, lens, pattern)
    for c in range(1, (n - W) // page):  # pages neither the sink nor the window reads
        kp[table[0, c]] = float("nan")
        vp[table[0, c]] = float("nan")
        table[0, c] = -1
    kp, vp, table = kp.cuda(), vp.cuda(), table.cuda()
    _check(torch, spattn.decode(q.cuda(), kp, vp, lens, pattern=pattern, block_table=table, return_lse=True),
           want, "bfloat16")
    with pytest.raises(ValueError, match=r"block_table: entry \[0, 1\] = -1 is not a page index in \[0, "):
        spattn.decode(q.cuda(), kp, vp, lens, pattern=spattn.Dense(), block_table=table)
    # The device is fine afterwards.
    _check(torch, spattn.decode(q.cuda(), kp, vp, lens, pattern=pattern, block_table=table, return_lse=True),
           want, "bfloat16")


def test_bad_block_table_message_matches_cpu(cuda):
    torch = cuda
    lens = np.array([40, 40], np.int32)
    q, k, v = _data(torch, lens, 40, 1, 64, 64, "bfloat16", seed=1)
    kp, vp, table = _paged(torch, k, v, lens, 16, seed=1)
    pages = kp.shape[0]
    for bad in (-1, pages):
        t = table.clone()
        t[1, 2] = bad
        msgs = []
        for dev in ("cpu", "cuda"):
            with pytest.raises(ValueError) as e:
                spattn.decode(q.to(dev), kp.to(dev), vp.to(dev), lens, block_table=t.to(dev))
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1]


def test_pool_keys_matches_cpu(cuda):
    torch = cuda
    lens = np.array([130, 0, 64], np.int32)
    for dtype in ("float32", "bfloat16"):
        _, k, v = _data(torch, lens, 130, 1, 64, 64, "float32", seed=4)
        k = k.to(getattr(torch, dtype))
        want = spattn.pool_keys(k.float(), lens, 32)
        got = spattn.pool_keys(k.cuda(), lens, 32)
        assert got.is_cuda and got.dtype == torch.float32
        np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), atol=1e-5, rtol=1e-5)
        kp, vp, table = _paged(torch, k, v.to(k.dtype), lens, 16, seed=4)
        got = spattn.pool_keys(kp.cuda(), lens, 32, block_table=table.cuda())
        np.testing.assert_allclose(got.cpu().numpy()[:, : want.shape[1]], want.numpy(), atol=1e-5, rtol=1e-5)
        t = table.clone()
        t[2, 1] = kp.shape[0]
        with pytest.raises(ValueError, match=r"block_table: entry \[2, 1\] = "):
            spattn.pool_keys(kp.cuda(), lens, 32, block_table=t.cuda())


def test_side_stream_and_graph_capture(cuda):
    torch = cuda
    lens = np.array([500], np.int32)
    q, k, v = _data(torch, lens, 500, 1, 128, 128, "bfloat16", seed=6)
    want = _cpu_ref(q, k, v, lens, spattn.SlidingWindow(63, 0))
    qc, kc, vc = q.cuda(), k.cuda(), v.cuda()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = spattn.decode(qc, kc, vc, lens, pattern=spattn.SlidingWindow(63, 0), return_lse=True)
    torch.cuda.current_stream().wait_stream(s)
    _check(torch, got, want, "bfloat16")
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(g):
            spattn.decode(qc, kc, vc, lens, pattern=spattn.SlidingWindow(63, 0))


def test_long_cache_one_query(cuda):
    """One query over a 200K-token paged cache: dense (many splits) and window 4096."""
    torch = cuda
    n = 200_000
    lens = np.array([n], np.int32)
    q, k, v = _data(torch, lens, n, 1, 128, 128, "bfloat16", seed=8)
    kp, vp, table = _paged(torch, k, v, lens, 256, seed=8)
    for pattern in (spattn.Dense(), spattn.SlidingWindow(4095, 0)):
        want = _cpu_ref(q, k, v, lens, pattern)
        got = spattn.decode(q.cuda(), kp.cuda(), vp.cuda(), lens, pattern=pattern, block_table=table.cuda(),
                            return_lse=True)
        _check(torch, got, want, "bfloat16")
