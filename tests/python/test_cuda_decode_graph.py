"""spattn.decode (and spattn.pool_keys) on CUDA with cache_len on the GPU: the plan made on the device
(cuda/include/spattn/cuda/decode_plan_logic.hpp), CUDA graph capture and replay, and how errors
reach the caller (raised at once, or deferred to spattn.check_decode_errors).

Skipped cleanly without torch, without a CUDA device, or with a spattn built without CUDA:
nothing here touches the GPU at import or collection (the `cuda` fixture asks, inside each test).
The plan's logic is tested on the host by tests/cpp/test_cuda_decode_plan.cpp and
test_cuda_decode_logic.cpp (the device plan gives the host plan's bits in an emulation).
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


def _patterns():
    return {
        "dense": spattn.Dense(),
        "causal": spattn.Causal(),
        "window(37,0)": spattn.SlidingWindow(37, 0),
        "sink(4)|window(15,0)": spattn.Sink(4) | spattn.SlidingWindow(15, 0),
        "global|window": spattn.Global([0, 3]) | spattn.SlidingWindow(20, 0),
        "per-head mix": spattn.PerHead([spattn.SlidingWindow(w, 0) for w in (0, 3, 50, 200)]
                                       + [spattn.Dense(), spattn.Causal(), spattn.Sink(2), spattn.Strided(4)]),
        "dilated(6,0,3)": spattn.Dilated(6, 0, 3),
    }


def _data(torch, B, ncap, nq, d, seed, dtype="bfloat16"):
    rng = np.random.default_rng(seed)
    dt = getattr(torch, dtype)
    q = torch.from_numpy(rng.standard_normal((B, nq, HQ, d)).astype(np.float32)).to(dt).cuda()
    k = torch.from_numpy(rng.standard_normal((B, ncap, HKV, d)).astype(np.float32)).to(dt).cuda()
    v = torch.from_numpy(rng.standard_normal((B, ncap, HKV, d)).astype(np.float32)).to(dt).cuda()
    return q, k, v


def _paged(torch, k, v, page, seed):
    """Every sequence's capacity in pages of `page` rows, in a random order."""
    rng = np.random.default_rng(seed)
    B, ncap = k.shape[:2]
    npg = -(-ncap // page)
    order = rng.permutation(B * npg + 2)[: B * npg].reshape(B, npg)
    kp = torch.zeros((B * npg + 2, page) + tuple(k.shape[2:]), dtype=k.dtype, device="cuda")
    vp = torch.zeros_like(kp)
    for b in range(B):
        for c in range(npg):
            rows = min(page, ncap - c * page)
            kp[order[b, c], :rows] = k[b, c * page : c * page + rows]
            vp[order[b, c], :rows] = v[b, c * page : c * page + rows]
    return kp, vp, torch.from_numpy(order.astype(np.int32)).cuda()


def _same(torch, a, b):
    """Bit for bit (NaN-free outputs)."""
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("nq", [1, 7])
def test_device_lengths_equal_host_lengths(cuda, nq):
    """The plan made on the GPU from GPU lengths gives the bits of the host plan."""
    torch = cuda
    lens = np.array([1000, 0, 5, 517, 64], np.int32)
    q, k, v = _data(torch, len(lens), 1000, nq, 128, seed=nq)
    kp, vp, table = _paged(torch, k, v, 16, seed=nq)
    dlens = torch.from_numpy(lens).cuda()
    for name, pattern in _patterns().items():
        for cache in ((k, v, None), (kp, vp, table)):
            host = spattn.decode(q, *cache[:2], lens, pattern=pattern, block_table=cache[2], return_lse=True)
            dev = spattn.decode(q, *cache[:2], dlens, pattern=pattern, block_table=cache[2], return_lse=True)
            _same(torch, host, dev)
            dev64 = spattn.decode(q, *cache[:2], dlens.long(), pattern=pattern, block_table=cache[2],
                                  return_lse=True)
            _same(torch, host, dev64)


def test_graph_capture_and_replay_with_new_lengths(cuda):
    """A decode step captured once and replayed as the cache grows: each replay reads the
    lengths its tensor holds then, and equals an eager call."""
    torch = cuda
    B, ncap, page = 3, 2048, 16
    q, k, v = _data(torch, B, ncap, 1, 128, seed=11)
    kp, vp, table = _paged(torch, k, v, page, seed=11)
    pattern = spattn.Sink(4) | spattn.SlidingWindow(255, 0)
    lens = torch.tensor([700, 1, 2048], dtype=torch.int32, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (first use uploads the pattern's program)
        spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, lse = spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True)
    for step, new in enumerate(([700, 1, 2048], [701, 2, 1500], [0, 300, 17], [2048, 2048, 2048])):
        lens.copy_(torch.tensor(new, dtype=torch.int32))
        q.copy_(torch.randn_like(q.float()).to(q.dtype))
        g.replay()
        torch.cuda.synchronize()
        want = spattn.decode(q, kp, vp, np.array(new, np.int32), pattern=pattern, block_table=table,
                             return_lse=True)
        _same(torch, (out, lse), want)
    spattn.check_decode_errors(q.device)  # nothing was recorded


def test_bad_lengths_and_table_entries_raise_like_the_cpu(cuda):
    torch = cuda
    q, k, v = _data(torch, 2, 64, 1, 64, seed=1)
    kp, vp, table = _paged(torch, k, v, 16, seed=1)
    cases = [
        (dict(lens=[40, 65]), None),                  # contiguous: past Ncap
        (dict(lens=[40, -1]), None),
        (dict(lens=[40, 65], paged=True), None),      # paged: past max_pages * page_size
        (dict(lens=[40, 40], paged=True), (1, 2)),    # a bad table entry
    ]
    for case, bad in cases:
        t = table.clone()
        if bad is not None:
            t[bad] = kp.shape[0]
        kk, vv, tt = (kp, vp, t) if case.get("paged") else (k, v, None)
        msgs = []
        for lens in (np.array(case["lens"], np.int32), torch.tensor(case["lens"], dtype=torch.int32).cuda()):
            with pytest.raises(ValueError) as e:
                spattn.decode(q.cpu().float(), kk.cpu().float(), vv.cpu().float(),
                              lens if isinstance(lens, np.ndarray) else lens.cpu(),
                              block_table=None if tt is None else tt.cpu())
            msgs.append(str(e.value))
            with pytest.raises(ValueError) as e:
                spattn.decode(q, kk, vv, lens, block_table=tt)
            msgs.append(str(e.value))
        assert len(set(msgs)) == 1, msgs
    # A length below a Global position: the CPU's message too.
    pattern = spattn.Global([30]) | spattn.Causal()
    with pytest.raises(ValueError) as cpu_err:
        spattn.decode(q.cpu().float(), k.cpu().float(), v.cpu().float(), np.array([40, 12], np.int32), pattern=pattern)
    with pytest.raises(ValueError) as gpu_err:
        spattn.decode(q, k, v, torch.tensor([40, 12], dtype=torch.int32).cuda(), pattern=pattern)
    assert str(cpu_err.value) == str(gpu_err.value)


def test_deferred_errors(cuda):
    torch = cuda
    q, k, v = _data(torch, 2, 64, 1, 64, seed=2)
    kp, vp, table = _paged(torch, k, v, 16, seed=2)
    spattn.check_decode_errors(q.device)  # start clean
    t = table.clone()
    t[1, 3] = -4
    lens = torch.tensor([40, 64], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError) as immediate:
        spattn.decode(q, kp, vp, lens, block_table=t)
    spattn.decode(q, kp, vp, lens, block_table=t, defer_errors=True)  # returns at once
    spattn.decode(q, kp, vp, torch.tensor([40, 999], dtype=torch.int32, device="cuda"), block_table=table,
                  defer_errors=True)  # a second error: the first one stays
    with pytest.raises(ValueError) as deferred:
        spattn.check_decode_errors(q.device)
    assert str(deferred.value) == str(immediate.value)
    assert spattn.check_decode_errors(q.device) is None  # forgotten once raised
    # A deferred call without errors leaves nothing; host lengths defer table errors too.
    spattn.decode(q, kp, vp, np.array([40, 64], np.int32), block_table=t, defer_errors=True)
    with pytest.raises(ValueError, match=r"block_table: entry \[1, 3\] = -4"):
        spattn.check_decode_errors(q.device.index)


def test_capture_defers_errors(cuda):
    torch = cuda
    q, k, v = _data(torch, 1, 256, 1, 64, seed=3)
    kp, vp, table = _paged(torch, k, v, 16, seed=3)
    lens = torch.tensor([100], dtype=torch.int32, device="cuda")
    spattn.decode(q, kp, vp, lens, block_table=table)  # warm up
    spattn.check_decode_errors(q.device)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        spattn.decode(q, kp, vp, lens, block_table=table)
    g.replay()
    assert spattn.check_decode_errors(q.device) is None
    lens.fill_(300)  # past the capacity (16 pages of 16)
    g.replay()
    with pytest.raises(ValueError, match=r"cache_len: cache_len\[0\] = 300 is outside 0\.\.256"):
        spattn.check_decode_errors(q.device)


def test_capture_refused_where_the_plan_needs_the_host(cuda):
    torch = cuda
    q, k, v = _data(torch, 1, 256, 4, 64, seed=4)
    lens = torch.tensor([200], dtype=torch.int32, device="cuda")
    layout = np.random.default_rng(0).random((HQ, 1, 4)) < 0.5
    block_sparse = spattn.BlockSparse(layout, block_size=(4, 64))
    # Outside a capture the lengths are read to the host and it works as before.
    want = spattn.decode(q, k, v, np.array([200], np.int32), pattern=block_sparse)
    _same(torch, [want], [spattn.decode(q, k, v, lens, pattern=block_sparse)])
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cache_len is on the GPU but the plan needs it on the host"):
        with torch.cuda.graph(g):
            spattn.decode(q, k, v, lens, pattern=block_sparse)
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cache_len is host memory"):
        with torch.cuda.graph(g):
            spattn.decode(q, k, v, np.array([200], np.int32))


def test_no_host_memory_or_sync_per_call(cuda):
    """The workspace comes from torch's allocator (freed in stream order), and the call returns
    before its kernels finish when errors are deferred (nothing waits on the host)."""
    torch = cuda
    q, k, v = _data(torch, 4, 4096, 1, 128, seed=5)
    lens = torch.full((4,), 4096, dtype=torch.int32, device="cuda")
    spattn.decode(q, k, v, lens, defer_errors=True)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(50_000_000)  # keep the stream busy: a host wait would show here
    start.record()
    for _ in range(3):
        spattn.decode(q, k, v, lens, defer_errors=True)
    end.record()
    assert not end.query(), "the calls waited for the GPU"
    torch.cuda.synchronize()
    spattn.check_decode_errors(q.device)


# ---- pool_keys with cache_len on the GPU: read by the pool kernel, checked there -------------


def _pool_cases(torch, seed):
    """(k cache, block_table or None) pairs over the same keys: contiguous and paged (page 16)."""
    _, k, v = _data(torch, 3, 300, 1, 64, seed=seed)
    kp, _, table = _paged(torch, k, v, 16, seed=seed)
    return (k, None), (kp, table)


def test_pool_keys_device_lengths_equal_host_lengths(cuda):
    """Lengths on the GPU (int32, int64, a strided view) give the host lengths' bits."""
    torch = cuda
    lens = np.array([300, 0, 37], np.int32)
    for kc, table in _pool_cases(torch, seed=21):
        want = spattn.pool_keys(kc, lens, 32, block_table=table)
        wide = torch.zeros(6, dtype=torch.int64, device="cuda")
        wide[::2] = torch.from_numpy(lens.astype(np.int64)).cuda()
        for dlens in (torch.from_numpy(lens).cuda(), torch.from_numpy(lens).cuda().long(), wide[::2]):
            got = spattn.pool_keys(kc, dlens, 32, block_table=table)
            assert got.is_cuda and got.dtype == torch.float32 and got.shape == want.shape
            assert torch.equal(got, want), (got - want).abs().max()


def test_pool_keys_graph_capture_and_replay_with_new_lengths(cuda):
    torch = cuda
    for kc, table in _pool_cases(torch, seed=22):
        lens = torch.tensor([300, 1, 40], dtype=torch.int32, device="cuda")
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm up
            spattn.pool_keys(kc, lens, 16, block_table=table)
        torch.cuda.current_stream().wait_stream(s)
        spattn.check_decode_errors(kc.device)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            pooled = spattn.pool_keys(kc, lens, 16, block_table=table)
        for new in ([300, 1, 40], [17, 299, 0], [0, 0, 0], [300, 300, 300]):
            lens.copy_(torch.tensor(new, dtype=torch.int32))
            g.replay()
            torch.cuda.synchronize()
            want = spattn.pool_keys(kc, np.array(new, np.int32), 16, block_table=table)
            assert torch.equal(pooled, want), (new, (pooled - want).abs().max())
        assert spattn.check_decode_errors(kc.device) is None
        lens.fill_(1000)  # past the capacity: found on the GPU, left for check_decode_errors
        g.replay()
        with pytest.raises(ValueError, match=r"cache_len: cache_len\[0\] = 1000 is outside 0\.\.30[04]"):
            spattn.check_decode_errors(kc.device)


def test_pool_keys_capture_refused_with_host_lengths(cuda):
    torch = cuda
    (kc, _), _ = _pool_cases(torch, seed=23)
    spattn.pool_keys(kc, np.array([3, 4, 5], np.int32), 16)
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cache_len is host memory"):
        with torch.cuda.graph(g):
            spattn.pool_keys(kc, np.array([3, 4, 5], np.int32), 16)


def test_pool_keys_bad_lengths_and_entries_raise_like_the_cpu(cuda):
    """Raised after one wait with the CPU's message; deferred with defer_errors=True."""
    torch = cuda
    (kc, _), (kp, table) = _pool_cases(torch, seed=24)
    bad_table = table.clone()
    bad_table[2, 1] = kp.shape[0]
    cases = [
        (kc, None, [300, 301, 5]),        # contiguous: past Ncap
        (kc, None, [300, -2, 5]),
        (kp, table, [300, 0, 400]),       # paged: past max_pages * page_size
        (kp, bad_table, [300, 0, 20]),    # page 1 of sequence 2 is read: a bad entry
    ]
    spattn.check_decode_errors(kc.device)
    for cache, t, lens in cases:
        with pytest.raises(ValueError) as cpu_err:
            spattn.pool_keys(cache.cpu().float(), np.array(lens, np.int32), 32,
                             block_table=None if t is None else t.cpu())
        dlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        with pytest.raises(ValueError) as gpu_err:
            spattn.pool_keys(cache, dlens, 32, block_table=t)
        assert str(gpu_err.value) == str(cpu_err.value)
        spattn.pool_keys(cache, dlens, 32, block_table=t, defer_errors=True)  # returns at once
        with pytest.raises(ValueError) as deferred:
            spattn.check_decode_errors(cache.device)
        assert str(deferred.value) == str(cpu_err.value)
    # A bad entry that no length reaches is never read: no error.
    spattn.pool_keys(kp, torch.tensor([300, 0, 16], dtype=torch.int32, device="cuda"), 32, block_table=bad_table)
