"""The sm90a (Hopper: TMA, wgmma, persistent, no atomics) backward against the float64
reference gradients, on a compute-capability 9.0 GPU.

The sm90a backward is opt-in until it has run correctly on a GPU: these tests set
SPATTN_CUDA_BACKWARD=sm90a (read on every call) and run every (dtype, head dim) listed in
spattn.info()["cuda_sm90a_backward_kernels"] on patterns with full and partial blocks, GQA / MQA,
Nq != Nk with empty rows (zero gradients, never NaN), strided views, variable-length batches,
and the deterministic mode (bitwise identical gradients, run to run). Skipped cleanly without
torch, without a CUDA device, on a device other than 9.0, or with a build without the sm90a
backward: nothing here touches the GPU at import or collection.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import (
    compiled_cuda_kernels,
    cuda_test_patterns,
    cuda_torch_or_skip,
    bhsd_view,
    misaligned_view,
)
from test_cuda_backward import _check, _data


@pytest.fixture
def hopper(monkeypatch):
    torch = cuda_torch_or_skip("cuda_sm90a_backward_kernels")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90a backward runs on compute capability 9.0 only")
    monkeypatch.setenv("SPATTN_CUDA_BACKWARD", "sm90a")
    return torch


def _kernels():
    return compiled_cuda_kernels("cuda_sm90a_backward_kernels")


def test_info_says_opt_in():
    info = spattn.info()
    assert "cuda_sm90a_backward_kernels" in info
    if info.get("cuda_compiled") == "yes" and "sm_90a" in info.get("cuda_archs", ""):
        assert "bfloat16:" in info["cuda_sm90a_backward_kernels"]
        assert info["cuda_sm90a_backward_default"].startswith("no")
    elif info.get("cuda_compiled") == "yes":
        assert info["cuda_sm90a_backward_kernels"] == ""


@pytest.mark.parametrize("name", list(cuda_test_patterns(300, 300, 4)))
def test_patterns_every_kernel(hopper, name):
    for dtype, d in _kernels():
        nq, nk, hq, hkv = 300, 300, 4, 2
        q, k, v, do = _data(2, nq, nk, hq, hkv, d, seed=d + 3)
        _check(hopper, q, k, v, do, cuda_test_patterns(nq, nk, hq)[name], dtype)


@pytest.mark.parametrize("nq,nk", [(1025, 1025), (97, 1100), (600, 130), (128, 128), (1, 255),
                                   (129, 1), (300, 0)])
def test_sizes_and_empty_rows(hopper, nq, nk):
    for dtype, d in _kernels():
        q, k, v, do = _data(1, nq, nk, 2, 1, d, seed=nq + nk)
        for pattern in (spattn.Causal(), spattn.SlidingWindow(20, 0), spattn.Dense()):
            if nk == 0 and not isinstance(pattern, spattn.Dense):
                continue
            _check(hopper, q, k, v, do, pattern, dtype)


def test_gqa_mqa_and_scale(hopper):
    for dtype, d in _kernels():
        q, k, v, do = _data(1, 333, 333, 8, 1, d, seed=5)
        _check(hopper, q, k, v, do, spattn.SlidingWindow(63, 0), dtype, scale=0.05)
        q, k, v, do = _data(2, 333, 400, 8, 2, d, seed=6)
        _check(hopper, q, k, v, do, spattn.Causal(), dtype, scale=-0.08)


def test_many_work_items(hopper):
    """More key and query tiles than multiprocessors, columns and rows of very different
    lengths: every persistent CTA walks several items of both kernels."""
    dtype, d = _kernels()[0]
    nq = nk = 2048
    hq = 8
    q, k, v, do = _data(1, nq, nk, hq, 2, d, seed=21)
    rng = np.random.default_rng(4)
    lay = rng.random((hq, nq // 128, nk // 128)) < 0.1
    for pattern in (spattn.Causal(), spattn.SlidingWindow(1000, 0), spattn.BlockSparse(lay, block_size=128)):
        _check(hopper, q, k, v, do, pattern, dtype)


def test_strided_and_misaligned_views(hopper):
    torch = hopper
    for dtype, d in _kernels():
        q, k, v, do = _data(2, 300, 300, 4, 4, d, seed=11)


        _check(torch, q, k, v, do, spattn.SlidingWindow(127, 0), dtype, views=bhsd_view)
        _check(torch, q, k, v, do, spattn.Causal(), dtype, views=misaligned_view)


def _grads(torch, q, k, v, do, pattern, **kw):
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    g = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern, **kw)
    torch.cuda.synchronize()
    return g


def test_deterministic_bitwise(hopper):
    """Every gradient tile is written once by one CTA in a fixed order: identical bits run to
    run, with and without deterministic=True (the same kernels)."""
    torch = hopper
    for dtype, d in _kernels():
        dt = getattr(torch, dtype)
        q, k, v, do = (torch.from_numpy(x).to(dt).cuda() for x in _data(1, 1025, 1025, 8, 2, d, seed=4))
        pattern = spattn.Sink(4) | spattn.SlidingWindow(300, 0)
        a = _grads(torch, q, k, v, do, pattern, deterministic=True)
        for _ in range(3):
            b = _grads(torch, q, k, v, do, pattern, deterministic=True)
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        c = _grads(torch, q, k, v, do, pattern)
        assert all(torch.equal(x, y) for x, y in zip(a, c))


def test_deterministic_through_autograd(hopper):
    torch = hopper
    dtype, d = _kernels()[0]
    dt = getattr(torch, dtype)
    q, k, v, do = (torch.from_numpy(x).to(dt).cuda() for x in _data(1, 700, 700, 4, 2, d, seed=8))
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
            spattn.attention(qg, kg, vg, pattern=spattn.Causal()).backward(do)
            runs.append((qg.grad, kg.grad, vg.grad))
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_deterministic_refused_by_sm80_backward(hopper, monkeypatch):
    """Without the opt-in the sm80-style backward runs, whose dq goes through float32 atomics:
    deterministic=True raises instead of returning gradients that may differ run to run."""
    torch = hopper
    monkeypatch.delenv("SPATTN_CUDA_BACKWARD")
    q, k, v, do = (torch.from_numpy(x).to(torch.bfloat16).cuda() for x in _data(1, 200, 200, 2, 2, 128, seed=2))
    with pytest.raises(RuntimeError, match="deterministic"):
        _grads(torch, q, k, v, do, spattn.Causal(), deterministic=True)


def test_varlen_matches_cpu(hopper):
    torch = hopper
    dtype, d = _kernels()[0]
    dt = getattr(torch, dtype)
    lens_q, lens_k = [130, 1, 300, 0, 257], [200, 5, 300, 17, 129]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    rng = np.random.default_rng(9)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    q, k, v = (torch.from_numpy(rng.standard_normal(s)).to(dt) for s in ((tq, 4, d), (tk, 2, d), (tk, 2, d)))
    do = torch.from_numpy(rng.standard_normal((tq, 4, d))).to(dt)
    pattern = spattn.Causal()
    kw = dict(pattern=pattern, cu_seqlens_q=torch.from_numpy(cu_q), cu_seqlens_k=torch.from_numpy(cu_k))
    out, lse = spattn.attention(q, k, v, return_lse=True, **kw)
    g_cpu = spattn.attention_backward(do, q, k, v, out, lse, **kw)
    g_gpu = spattn.attention_backward(do.cuda(), q.cuda(), k.cuda(), v.cuda(), out.cuda(), lse.cuda(), **kw)
    torch.cuda.synchronize()
    for name, a, b in zip(("dq", "dk", "dv"), g_cpu, g_gpu):
        scale = max(a.float().abs().max().item(), 1.0)
        diff = (b.float().cpu() - a.float()).abs().max().item()
        assert not torch.isnan(b).any(), f"{name} has NaN"
        assert diff <= 2.0**-5 * scale, f"{name}: sm90a and CPU gradients differ by {diff} (max |g| {scale})"
