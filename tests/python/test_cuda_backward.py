"""The CUDA backward kernels against the float64 reference gradients, on torch CUDA tensors.

Skipped cleanly without torch, without a CUDA device, with a spattn built without CUDA, or with
a build whose core does not run the backward on CUDA yet (spattn.info() has no
"cuda_backward_kernels"): nothing here touches the GPU at import or collection (the `cuda`
fixture asks, inside each test). On a GPU machine (bench/gpu/run.sh runs this file) gradients
through torch autograd (spattn.attention on CUDA tensors that require grad) and through
spattn.attention_backward are checked for every compiled (dtype, head dim) on windows, causal,
per-head block-sparse layouts, unions (the kernel's keeps() path), global tokens, BigBird,
dilated, odd lengths, Nq != Nk with empty rows (zero gradients, never NaN), GQA / MQA, negative
scales, strided and misaligned views and a broadcast (stride 0) dout. Tolerances: the
FlashAttention rule of _helpers.assert_close against the same math done naively in the low
precision (naive_backward).
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import (
    as64,
    assert_close,
    compiled_cuda_kernels,
    cuda_test_patterns,
    cuda_torch_or_skip,
    naive_backward,
    ref_backward,
    bhsd_view,
    misaligned_view,
)


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_backward_kernels")


def _data(b, nq, nk, hq, hkv, d, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, nq, hq, d)), rng.standard_normal((b, nk, hkv, d)),
            rng.standard_normal((b, nk, hkv, d)), rng.standard_normal((b, nq, hq, d)))


def _check(torch, q64, k64, v64, do64, pattern, dtype, scale=None, views=None):
    """Gradients of spattn.attention on CUDA (torch autograd) vs the float64 reference and the
    naive low-precision gradients, all on the rounded inputs."""
    dt = getattr(torch, dtype)
    ts = [torch.from_numpy(np.ascontiguousarray(x)).to(dt) for x in (q64, k64, v64, do64)]
    q64r, k64r, v64r, do64r = (as64(x) for x in ts)  # what the kernels really see
    dev = [x.cuda() for x in ts]
    if views is not None:
        dev = [views(x) for x in dev]
    q, k, v = (x.detach().requires_grad_() for x in dev[:3])
    dout = dev[3]
    out = spattn.attention(q, k, v, pattern=pattern, scale=scale)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    assert dq.is_cuda and dk.is_cuda and dv.is_cuda
    nq, hq = q.shape[1], q.shape[2]
    mask = pattern.mask(nq, k.shape[1], heads=hq)
    ref = ref_backward(q64r, k64r, v64r, do64r, mask, scale)
    naive = naive_backward(q64r, k64r, v64r, do64r, mask, dtype, scale)
    for name, got, r, n in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, naive):
        got = got.float().cpu().numpy()
        assert not np.isnan(got).any(), f"{name} has NaN"
        assert_close(name, got, r, dtype, naive=n)
    return dq, dk, dv


@pytest.mark.parametrize("name", list(cuda_test_patterns(300, 300, 4)))
def test_patterns_each_compiled_kernel(cuda, name):
    for dtype, d in compiled_cuda_kernels("cuda_backward_kernels"):
        nq, nk, hq, hkv = 257, 385, 4, 2
        q, k, v, do = _data(2, nq, nk, hq, hkv, d, seed=d)
        _check(cuda, q, k, v, do, cuda_test_patterns(nq, nk, hq)[name], dtype)


@pytest.mark.parametrize("nq,nk", [(1025, 1025), (97, 1100), (600, 130), (128, 64), (1, 255), (70, 1)])
def test_sizes_and_empty_rows(cuda, nq, nk):
    torch = cuda
    dtype, d = ("bfloat16", 128)
    q, k, v, do = _data(1, nq, nk, 2, 1, d, seed=nq + nk)
    # window(20, 0) with Nq > Nk leaves the first rows with no key: their dq must be exactly 0.
    for pattern in (spattn.Causal(), spattn.SlidingWindow(20, 0), spattn.Dense()):
        dq, _, _ = _check(torch, q, k, v, do, pattern, dtype)
        m = pattern.mask(nq, nk, heads=1)[0]
        empty = ~m.any(-1)
        if empty.any():
            assert (dq[0, torch.from_numpy(np.flatnonzero(empty)).cuda()] == 0).all()


def test_mqa_and_scale(cuda):
    for dtype, d in compiled_cuda_kernels("cuda_backward_kernels"):
        q, k, v, do = _data(1, 333, 333, 8, 1, d, seed=5)
        _check(cuda, q, k, v, do, spattn.SlidingWindow(63, 0), dtype, scale=0.05)
        _check(cuda, q, k, v, do, spattn.Causal(), dtype, scale=-0.08)


def test_strided_and_misaligned_views(cuda):
    torch = cuda
    dtype, d = ("bfloat16", 128)
    q, k, v, do = _data(2, 300, 300, 4, 4, d, seed=11)


    _check(torch, q, k, v, do, spattn.SlidingWindow(127, 0), dtype, views=bhsd_view)
    _check(torch, q, k, v, do, spattn.Causal(), dtype, views=misaligned_view)


def test_attention_backward_function_and_broadcast_dout(cuda):
    """spattn.attention_backward on CUDA tensors (misaligned outputs path too), and
    out.sum().backward(), whose dout is a stride-0 broadcast (repacked by the launcher)."""
    torch = cuda
    dtype, d = ("bfloat16", 128)
    pattern = spattn.Sink(2) | spattn.SlidingWindow(90, 0)
    q64, k64, v64, do64 = _data(1, 200, 260, 4, 2, d, seed=21)
    q, k, v, do = (torch.from_numpy(x).to(torch.bfloat16).cuda() for x in (q64, k64, v64, do64))
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    dq, dk, dv = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    torch.cuda.synchronize()
    q64r, k64r, v64r, do64r = (as64(x) for x in (q, k, v, do))
    mask = pattern.mask(200, 260, heads=4)
    ref = ref_backward(q64r, k64r, v64r, do64r, mask)
    naive = naive_backward(q64r, k64r, v64r, do64r, mask, dtype)
    for name, got, r, n in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, naive):
        assert_close(name, got.float().cpu().numpy(), r, dtype, naive=n)

    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
    spattn.attention(qg, kg, vg, pattern=pattern).float().sum().backward()
    ones = np.ones_like(do64r)
    ref1 = ref_backward(q64r, k64r, v64r, ones, mask)
    naive1 = naive_backward(q64r, k64r, v64r, ones, mask, dtype)
    for name, got, r, n in zip(("dq", "dk", "dv"), (qg.grad, kg.grad, vg.grad), ref1, naive1):
        assert_close(name + " (sum)", got.float().cpu().numpy(), r, dtype, naive=n)


def test_dk_dv_deterministic(cuda):
    """dK and dV accumulate in registers in a fixed order: identical bits run to run (dQ goes
    through fp32 atomics and may differ in the last bits)."""
    torch = cuda
    q64, k64, v64, do64 = _data(1, 513, 513, 4, 2, 128, seed=4)
    q, k, v, do = (torch.from_numpy(x).to(torch.bfloat16).cuda() for x in (q64, k64, v64, do64))
    pattern = spattn.SlidingWindow(255, 0)
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    a = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    b = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert (a[0].float() - b[0].float()).abs().max().item() <= 2.0**-6


def test_matches_cpu_backend(cuda):
    """The same bf16 inputs on the CPU backend and on the GPU give gradients that agree to
    rounding."""
    torch = cuda
    q64, k64, v64, do64 = _data(1, 513, 700, 4, 2, 128, seed=3)
    q, k, v, do = (torch.from_numpy(x).to(torch.bfloat16) for x in (q64, k64, v64, do64))
    pattern = spattn.Sink(2) | spattn.SlidingWindow(200, 0)
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    g_cpu = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    g_gpu = spattn.attention_backward(do.cuda(), q.cuda(), k.cuda(), v.cuda(), out.cuda(), lse.cuda(),
                                      pattern=pattern)
    for name, a, b in zip(("dq", "dk", "dv"), g_cpu, g_gpu):
        scale = max(a.float().abs().max().item(), 1.0)
        diff = (b.float().cpu() - a.float()).abs().max().item()
        assert diff <= 2.0**-5 * scale, f"{name}: GPU and CPU gradients differ by {diff} (max |g| {scale})"
