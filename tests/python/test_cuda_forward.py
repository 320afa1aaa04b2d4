"""The CUDA forward kernel against the float64 reference, on torch CUDA tensors.

Skipped cleanly without torch, without a CUDA device, or with a spattn built without CUDA:
nothing here touches the GPU at import or collection (the `cuda` fixture asks, inside each
test). On a GPU machine (bench/gpu/run.sh runs this file) every compiled (dtype, head dim) is
checked on windows, causal, per-head block-sparse layouts, unions (the kernel's keeps() path),
global tokens, BigBird, odd lengths, Nq != Nk with empty rows, GQA, strided and misaligned
views, and a poisoned `out=` (every element must be written). Tolerances: the FlashAttention
rule of _helpers.assert_close against the same math done naively in the low precision.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import (
    as64,
    assert_close,
    assert_lse,
    compiled_cuda_kernels,
    cuda_test_patterns,
    cuda_torch_or_skip,
    naive_forward,
    bhsd_view,
    misaligned_view,
)


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_kernels")


def _run(torch, q64, k64, v64, pattern, dtype, scale=None, views=None):
    """spattn on CUDA (out poisoned with NaN beforehand) vs the float64 reference and the naive
    low-precision result, both on the rounded inputs."""
    dt = getattr(torch, dtype)
    qt, kt, vt = (torch.from_numpy(np.ascontiguousarray(x)).to(dt) for x in (q64, k64, v64))
    q64r, k64r, v64r = (as64(x) for x in (qt, kt, vt))  # the inputs the kernel really sees
    if views is None:
        q, k, v = (x.cuda() for x in (qt, kt, vt))
    else:
        q, k, v = (views(x.cuda()) for x in (qt, kt, vt))
    b, nq, hq, _ = q.shape
    dv = v.shape[3]
    out = torch.full((b, nq, hq, dv), float("nan"), dtype=dt, device="cuda")
    res, lse = spattn.attention(q, k, v, pattern=pattern, scale=scale, return_lse=True, out=out)
    torch.cuda.synchronize()
    assert res.data_ptr() == out.data_ptr() and res.is_cuda and lse.is_cuda
    ref, ref_lse = spattn.reference_attention(q64r, k64r, v64r, pattern=pattern, scale=scale,
                                              return_lse=True)
    mask = pattern.mask(nq, k.shape[1], heads=hq)
    naive = naive_forward(q64r, k64r, v64r, mask, dtype, scale)
    got = res.float().cpu().numpy()
    assert not np.isnan(got).any(), "out has unwritten (NaN) elements"
    assert_close("out", got, ref, dtype, naive=naive)
    assert_lse(lse.cpu().numpy(), ref_lse)


def _qkv(b, nq, nk, hq, hkv, d, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, nq, hq, d)), rng.standard_normal((b, nk, hkv, d)),
            rng.standard_normal((b, nk, hkv, d)))


@pytest.mark.parametrize("name", list(cuda_test_patterns(300, 300, 4)))
def test_patterns_each_compiled_kernel(cuda, name):
    for dtype, d in compiled_cuda_kernels("cuda_kernels"):
        nq, nk, hq, hkv = 257, 385, 4, 2
        q, k, v = _qkv(2, nq, nk, hq, hkv, d, seed=d)
        _run(cuda, q, k, v, cuda_test_patterns(nq, nk, hq)[name], dtype)


@pytest.mark.parametrize("nq,nk", [(1025, 1025), (97, 1100), (600, 130), (128, 64), (1, 255)])
def test_sizes_and_empty_rows(cuda, nq, nk):
    # bfloat16 D = 128 and, where compiled, D = 256 (its 128 x 32 tile: other tails of Nk).
    wide = [x for x in compiled_cuda_kernels("cuda_kernels") if x == ("bfloat16", 256)]
    for dtype, d in [("bfloat16", 128)] + wide:
        q, k, v = _qkv(1, nq, nk, 2, 1, d, seed=nq + nk)
        # window(20, 0) with Nq > Nk leaves the first rows with no key: out 0, lse -inf.
        for pattern in (spattn.Causal(), spattn.SlidingWindow(20, 0), spattn.Dense()):
            _run(cuda, q, k, v, pattern, dtype)


def test_mqa_and_scale(cuda):
    for dtype, d in compiled_cuda_kernels("cuda_kernels"):
        q, k, v = _qkv(1, 333, 333, 8, 1, d, seed=5)
        _run(cuda, q, k, v, spattn.SlidingWindow(63, 0), dtype, scale=0.05)
        _run(cuda, q, k, v, spattn.Causal(), dtype, scale=-0.08)


def test_strided_and_misaligned_views(cuda):
    torch = cuda
    dtype, d = ("bfloat16", 128)
    q, k, v = _qkv(2, 300, 300, 4, 4, d, seed=11)


    _run(torch, q, k, v, spattn.SlidingWindow(127, 0), dtype, views=bhsd_view)
    _run(torch, q, k, v, spattn.Causal(), dtype, views=misaligned_view)


def test_matches_cpu_backend(cuda):
    """The same bf16 inputs on the CPU backend and on the GPU agree to rounding."""
    torch = cuda
    d = 128
    q, k, v = (torch.from_numpy(x).to(torch.bfloat16) for x in _qkv(1, 513, 700, 4, 2, d, seed=3))
    pattern = spattn.Sink(2) | spattn.SlidingWindow(200, 0)
    out_cpu, lse_cpu = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    out_gpu, lse_gpu = spattn.attention(q.cuda(), k.cuda(), v.cuda(), pattern=pattern, return_lse=True)
    diff = (out_gpu.float().cpu() - out_cpu.float()).abs().max().item()
    assert diff <= 2.0**-6, f"GPU and CPU outputs differ by {diff}"
    assert torch.allclose(lse_gpu.cpu(), lse_cpu, rtol=1e-4, atol=1e-4, equal_nan=False)


def test_results_are_ordered_for_a_consumer_on_another_stream(cuda):
    # spattn computes on the legacy default stream; inputs made on a side stream, and the result
    # taken there (torch.from_dlpack passes that stream), must see each other's work.
    torch = cuda
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        q = torch.randn(1, 4096, 4, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 4096, 2, 128, device="cuda", dtype=torch.bfloat16)
        out = spattn.attention(q, k, k, pattern=spattn.SlidingWindow(255, 0))
        total = out.float().sum()  # queued on `side` right behind the result
    torch.cuda.synchronize()
    ref = spattn.attention(q.cpu(), k.cpu(), k.cpu(), pattern=spattn.SlidingWindow(255, 0))
    assert torch.allclose(out.cpu().float(), ref.float(), atol=2e-2)
    assert abs(total.item() - ref.float().sum().item()) <= 1e-2 * ref.float().abs().sum().item()
