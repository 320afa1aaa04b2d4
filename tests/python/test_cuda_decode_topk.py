"""spattn.decode with TopKBlocks on CUDA: each sequence's blocks chosen on the GPU (pooling,
scoring and top-k kernels, cuda/src/kernels/decode_topk.cu) and the decode planned there, against
the CPU decode (which chooses with select::choose) on the same rounded inputs.

Skipped cleanly without torch, without a CUDA device, or with a spattn built without CUDA:
nothing here touches the GPU at import or collection (the `cuda` fixture asks, inside each test).
The choice is the CPU's bit for bit on x86-64 builds (same float32 operations in the same
order, docs/patterns.md), so out differs from the CPU's only by the rounding of out and the
float32 summation order of the decode. Covered: contiguous and paged caches (pages in a random
order, NaN in every row that must not be read), GQA, Nq 1 / 7 / 64, empty caches, a length of 1
and the capacity, causal and not, with and without an always pattern, pooled_keys given or not,
k past the candidates, float32 and bfloat16, lengths on the GPU, cupy arrays, and the CPU's errors
(a bad block-table entry below cache_len, too few pooled key blocks).

Lengths on the GPU are planned there (decode_topk_dev_logic.hpp): the results must equal the
host-lengths call's bit for bit (int32 and int64 lengths), a CUDA graph captured once must replay
with new lengths as eager calls do, bad lengths raise the CPU's errors (at once, or deferred in a
capture), and where the plan still needs the host (pooled_keys too few for the capacity) a
capture is refused with the reason.
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
ATOL = {"float32": 2e-4, "bfloat16": 1.6e-2}


def _patterns():
    return {
        "k2 b32": spattn.TopKBlocks(2, block_size=32),
        "k3 b16x24 sink|window": spattn.TopKBlocks(3, block_size=(16, 24),
                                                   always=spattn.Sink(4) | spattn.SlidingWindow(15, 0)),
        "k2 b16 not causal window": spattn.TopKBlocks(2, block_size=16, causal=False,
                                                      always=spattn.SlidingWindow(8, 8)),
        "k1 b64 window": spattn.TopKBlocks(1, block_size=64, always=spattn.SlidingWindow(40, 0)),
        "k100 (all)": spattn.TopKBlocks(100, block_size=(8, 48)),
        "k0": spattn.TopKBlocks(0, block_size=32, always=spattn.Sink(2)),
    }


def _data(torch, lens, ncap, nq, d, dtype, seed):
    rng = np.random.default_rng(seed)
    B = len(lens)
    dt = getattr(torch, dtype)
    q = torch.from_numpy(rng.standard_normal((B, nq, HQ, d)).astype(np.float32)).to(dt)
    k = torch.from_numpy(rng.standard_normal((B, ncap, HKV, d)).astype(np.float32)).to(dt)
    v = torch.from_numpy(rng.standard_normal((B, ncap, HKV, d)).astype(np.float32)).to(dt)
    return q, k, v


def _paged(torch, k, v, lens, page, seed):
    """Pages of `page` rows in a random order plus spare pages; unread rows NaN, unread table
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
    table = order.astype(np.int32).copy()
    for b in range(B):
        table[b, -(-int(lens[b]) // page) :] = -7
    return kp, vp, torch.from_numpy(table)


def _check(torch, got, want, dtype):
    out, lse = got
    wo, wl = want
    assert out.is_cuda and lse.is_cuda and out.dtype == getattr(torch, dtype)
    o = out.float().cpu().numpy()
    assert not np.isnan(o).any(), "NaN in out (an unread row or page was read?)"
    np.testing.assert_allclose(o, wo.numpy(), atol=ATOL[dtype], rtol=ATOL[dtype])
    l, wl = lse.cpu().numpy(), wl.numpy()
    assert (np.isneginf(l) == np.isneginf(wl)).all()
    fin = np.isfinite(wl)
    np.testing.assert_allclose(l[fin], wl[fin], atol=2e-3, rtol=1e-3)


def _key_block(pattern):
    return int(pattern.block_size[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("nq", [1, 7, 64])
def test_topk_decode_matches_cpu(cuda, dtype, nq):
    torch = cuda
    ncap = 700
    lens = np.array([ncap, 0, 1 if nq == 1 else nq, 333, nq + 1], np.int32)
    q, k, v = _data(torch, lens, ncap, nq, 64, dtype, seed=nq)
    qc, kc, vc = q.cuda(), k.cuda(), v.cuda()
    paged = {page: _paged(torch, k, v, lens, page, seed=page) for page in (16, 48)}
    for name, pattern in _patterns().items():
        for pooled in (False, True):
            extra = {}
            if pooled:
                pk = spattn.pool_keys(k.float().cpu(), lens, _key_block(pattern))
                extra = {"pooled_keys": pk}
            want = spattn.decode(q.float().cpu(), k.float().cpu(), v.float().cpu(), lens, pattern=pattern,
                                 return_lse=True, **extra)
            dev = {"pooled_keys": extra["pooled_keys"].cuda()} if pooled else {}
            got = spattn.decode(qc, kc, vc, lens, pattern=pattern, return_lse=True, **dev)
            _check(torch, got, want, dtype)
            for page, (kp, vp, table) in paged.items():
                got = spattn.decode(qc, kp.cuda(), vp.cuda(), lens, pattern=pattern,
                                    block_table=table.cuda(), return_lse=True, **dev)
                _check(torch, got, want, dtype)


def test_topk_decode_lengths_on_gpu(cuda):
    torch = cuda
    lens = np.array([500, 37, 0], np.int32)
    q, k, v = _data(torch, lens, 500, 2, 64, "bfloat16", seed=3)
    pattern = spattn.TopKBlocks(2, block_size=32, always=spattn.Sink(1))
    want = spattn.decode(q.float(), k.float(), v.float(), lens, pattern=pattern, return_lse=True)
    got = spattn.decode(q.cuda(), k.cuda(), v.cuda(), torch.from_numpy(lens).cuda(), pattern=pattern,
                        return_lse=True)
    _check(torch, got, want, "bfloat16")


def test_topk_decode_errors_as_cpu(cuda):
    torch = cuda
    lens = np.array([300, 200], np.int32)
    q, k, v = _data(torch, lens, 300, 1, 64, "float32", seed=5)
    kp, vp, table = _paged(torch, k, v, lens, 16, seed=5)
    pattern = spattn.TopKBlocks(1, block_size=32)
    # A bad entry below cache_len: the CPU checks every such page before it pools.
    for bad in (-1, kp.shape[0]):
        t = table.clone()
        t[1, 3] = bad
        msgs = []
        for dev in ("cpu", "cuda"):
            with pytest.raises(ValueError) as e:
                spattn.decode(q.to(dev), kp.to(dev), vp.to(dev), lens, pattern=pattern, block_table=t.to(dev))
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1]
    # Too few pooled key blocks.
    pk = spattn.pool_keys(k, lens, 32)[:, :3]
    msgs = []
    for dev in ("cpu", "cuda"):
        with pytest.raises(ValueError) as e:
            spattn.decode(q.to(dev), k.to(dev), v.to(dev), lens, pattern=pattern, pooled_keys=pk.to(dev))
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "pooled_keys" in msgs[0]


def test_topk_decode_cupy(cuda):
    cupy = pytest.importorskip("cupy")
    torch = cuda
    lens = np.array([400, 129], np.int32)
    q, k, v = _data(torch, lens, 400, 1, 64, "float32", seed=9)
    pattern = spattn.TopKBlocks(2, block_size=32, always=spattn.SlidingWindow(16, 0))
    want = spattn.decode(q, k, v, lens, pattern=pattern)
    out = spattn.decode(*(cupy.asarray(x.numpy()) for x in (q, k, v)), lens, pattern=pattern)
    assert isinstance(out, cupy.ndarray)
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_allclose(cupy.asnumpy(out), want.numpy(), atol=2e-4, rtol=2e-4)


def test_topk_decode_capture_refused(cuda):
    torch = cuda
    lens = np.array([200], np.int32)
    q, k, v = (x.cuda() for x in _data(torch, lens, 256, 1, 64, "bfloat16", seed=11))
    pattern = spattn.TopKBlocks(2, block_size=32)
    # pooled_keys with fewer blocks than a length up to the capacity may score: the plan reads
    # the lengths on the host (it works outside a capture, and a capture says why not).
    # (length 200 scores blocks 0..5; the capacity 256, blocks 0..6)
    few = spattn.pool_keys(k, torch.tensor(lens, device="cuda"), 32)[:, :6]
    for cache_len, extra, why in (
            (torch.tensor(lens, device="cuda"), {"pooled_keys": few}, "pooled_keys holds 6 key blocks"),
            (lens, {}, "cache_len is host memory")):
        spattn.decode(q, k, v, cache_len, pattern=pattern, **extra)  # outside a capture: works
        g = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match=why):
            with torch.cuda.graph(g):
                spattn.decode(q, k, v, cache_len, pattern=pattern, **extra)


def _same_bits(torch, got, want):
    for a, b in zip(got, want):
        assert torch.equal(a, b), "device-lengths result differs from the host-lengths one"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_topk_decode_device_lengths_equal_host_lengths(cuda, dtype):
    torch = cuda
    ncap, nq = 700, 3
    lens = np.array([ncap, 0, 1, 333, nq + 40], np.int32)
    q, k, v = (x.cuda() for x in _data(torch, lens, ncap, nq, 64, dtype, seed=21))
    kp, vp, table = (x.cuda() for x in _paged(torch, k.cpu(), v.cpu(), lens, 16, seed=21))
    for name, pattern in _patterns().items():
        for pooled in (False, True):
            extra = {}
            if pooled:
                extra = {"pooled_keys": spattn.pool_keys(k, torch.tensor(lens, device="cuda"),
                                                         _key_block(pattern))}
            for cache in ((k, v, None), (kp, vp, table)):
                kw = dict(pattern=pattern, block_table=cache[2], return_lse=True, **extra)
                want = spattn.decode(q, cache[0], cache[1], lens, **kw)
                for dt in (torch.int32, torch.int64):
                    got = spattn.decode(q, cache[0], cache[1], torch.tensor(lens, dtype=dt, device="cuda"), **kw)
                    _same_bits(torch, got, want)


def test_topk_decode_graph_replays_new_lengths(cuda):
    torch = cuda
    ncap, page = 1024, 16
    lens0 = np.array([700, 1, 1024], np.int32)
    q, k, v = (x.cuda() for x in _data(torch, lens0, ncap, 2, 64, "bfloat16", seed=23))
    full = np.full(3, ncap, np.int32)
    kp, vp, table = (x.cuda() for x in _paged(torch, k.cpu(), v.cpu(), full, page, seed=23))
    pattern = spattn.TopKBlocks(3, block_size=(16, 32), always=spattn.Sink(4) | spattn.SlidingWindow(63, 0))
    lens = torch.tensor(lens0, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (first use uploads the program)
        spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, lse = spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True)
    for new in ([700, 1, 1024], [701, 2, 900], [0, 300, 17], [1024, 1024, 1024]):
        lens.copy_(torch.tensor(new, dtype=torch.int32))
        q.copy_(torch.randn_like(q.float()).to(q.dtype))
        g.replay()
        torch.cuda.synchronize()
        want = spattn.decode(q, kp, vp, np.array(new, np.int32), pattern=pattern, block_table=table,
                             return_lse=True)
        _same_bits(torch, (out, lse), want)
    spattn.check_decode_errors(q.device)  # nothing was recorded
    lens.fill_(2000)  # past the capacity: deferred in the graph
    g.replay()
    with pytest.raises(ValueError, match=r"cache_len: cache_len\[0\] = 2000 is outside 0\.\.1024"):
        spattn.check_decode_errors(q.device)


def test_topk_decode_device_lengths_errors_as_cpu(cuda):
    torch = cuda
    q, k, v = _data(torch, np.array([300, 200], np.int32), 300, 1, 64, "float32", seed=25)
    kp, vp, table = _paged(torch, k, v, np.array([300, 300], np.int32), 16, seed=25)
    pattern = spattn.TopKBlocks(1, block_size=32, always=spattn.Global([30]) | spattn.SlidingWindow(8, 0))
    t = table.clone()
    t[1, 3] = -1
    cases = [([300, 400], table), ([300, -2], table), ([300, 12], table), ([12, 400], table),
             ([300, 200], t)]
    for lens, tab in cases:
        msgs = []
        for dev, cl in (("cpu", np.array(lens, np.int32)),
                        ("cuda", torch.tensor(lens, dtype=torch.int32, device="cuda"))):
            with pytest.raises(ValueError) as e:
                spattn.decode(q.to(dev), kp.to(dev), vp.to(dev), cl, pattern=pattern,
                              block_table=tab.to(dev))
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1], (lens, msgs)
