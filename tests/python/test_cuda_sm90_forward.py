"""The sm90a (Hopper: TMA, wgmma, persistent) forward kernel and the sm80-style kernel, both run
on a compute-capability 9.0 GPU against the float64 reference.

On such a device spattn picks the sm90a kernel for every (dtype, head dim) listed in
spattn.info()["cuda_sm90a_kernels"]; SPATTN_CUDA_FORWARD=sm80 (read on every call) forces the
sm80-style kernel, so each test here runs every compiled kernel. Skipped cleanly without torch,
without a CUDA device, on a device other than 9.0, or with a build without the sm90a kernel:
nothing here touches the GPU at import or collection.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import spattn
from _helpers import compiled_cuda_kernels, cuda_test_patterns, cuda_torch_or_skip
from test_cuda_forward import _qkv, _run


@pytest.fixture
def hopper():
    torch = cuda_torch_or_skip("cuda_sm90a_kernels")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90a kernel runs on compute capability 9.0 only")
    return torch


@pytest.fixture(params=["sm90a", "sm80"])
def kernel(request, monkeypatch):
    """The kernel under test; returns its compiled (dtype, D) list."""
    if request.param == "sm80":
        monkeypatch.setenv("SPATTN_CUDA_FORWARD", "sm80")
        return compiled_cuda_kernels("cuda_kernels")
    monkeypatch.delenv("SPATTN_CUDA_FORWARD", raising=False)
    return compiled_cuda_kernels("cuda_sm90a_kernels")


def test_info_lists_both_kernels():
    info = spattn.info()
    assert "cuda_sm90a_kernels" in info and "cuda_kernels" in info
    if info.get("cuda_compiled") == "yes" and "sm_90a" in info.get("cuda_archs", ""):
        assert "bfloat16:" in info["cuda_sm90a_kernels"]
    else:
        assert info["cuda_sm90a_kernels"] == ""


@pytest.mark.parametrize("name", list(cuda_test_patterns(300, 300, 4)))
def test_patterns_every_kernel(hopper, kernel, name):
    for dtype, d in kernel:
        nq, nk, hq, hkv = 257, 385, 4, 2
        q, k, v = _qkv(2, nq, nk, hq, hkv, d, seed=d + 1)
        _run(hopper, q, k, v, cuda_test_patterns(nq, nk, hq)[name], dtype)


@pytest.mark.parametrize("nq,nk", [(1025, 1025), (97, 1100), (600, 130), (128, 128), (1, 255),
                                   (129, 1)])
def test_sizes_and_empty_rows(hopper, kernel, nq, nk):
    for dtype, d in kernel:
        q, k, v = _qkv(1, nq, nk, 2, 1, d, seed=nq + nk)
        for pattern in (spattn.Causal(), spattn.SlidingWindow(20, 0), spattn.Dense()):
            _run(hopper, q, k, v, pattern, dtype)


def test_persistent_grid_many_items(hopper, kernel):
    """More (batch, head, query tile) items than multiprocessors, rows of very different
    lengths (causal; a window clipped at the start; random blocks): every CTA walks several."""
    dtype, d = kernel[0]
    nq = nk = 2048
    hq = 8
    q, k, v = _qkv(2, nq, nk, hq, 2, d, seed=21)
    rng = np.random.default_rng(4)
    lay = rng.random((hq, nq // 128, nk // 128)) < 0.1
    for pattern in (spattn.Causal(), spattn.SlidingWindow(1000, 0),
                    spattn.BlockSparse(lay, block_size=128)):
        _run(hopper, q, k, v, pattern, dtype)


def test_views_broadcast_and_scale(hopper, kernel):
    torch = hopper
    dtype, d = kernel[0]
    q, k, v = _qkv(2, 300, 300, 4, 2, d, seed=13)

    def bhsd_view(x):  # torch's [B, H, N, D] layout, passed as a [B, N, H, D] view
        return x.transpose(1, 2).contiguous().transpose(1, 2)

    def misaligned(x):  # rows of D + 1 elements, starting one element in: repacked
        b, n, h, dd = x.shape
        buf = torch.zeros((b, n, h, dd + 1), dtype=x.dtype, device=x.device)
        buf[..., 1:] = x
        return buf[..., 1:]

    def batch_broadcast(x):  # batch stride 0 (expand): TMA needs a repack, the old kernel not
        return x[:1].expand(x.shape[0], *x.shape[1:])

    _run(torch, q, k, v, spattn.SlidingWindow(127, 0), dtype, views=bhsd_view)
    _run(torch, q, k, v, spattn.Causal(), dtype, views=misaligned)
    q1, k1, v1 = (np.repeat(x[:1], 2, axis=0) for x in (q, k, v))
    _run(torch, q1, k1, v1, spattn.Causal(), dtype, views=batch_broadcast)
    _run(torch, q, k, v, spattn.Causal(), dtype, scale=-0.07)


def test_kernels_agree(hopper):
    """Both kernels on the same inputs: equal to rounding (different tiles, same function)."""
    torch = hopper
    dtype, d = compiled_cuda_kernels("cuda_sm90a_kernels")[0]
    dt = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(x).to(dt).cuda() for x in _qkv(1, 1000, 1000, 4, 4, d, seed=8))
    pattern = spattn.Sink(2) | spattn.SlidingWindow(300, 0)
    old = os.environ.pop("SPATTN_CUDA_FORWARD", None)
    try:
        o90, l90 = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
        os.environ["SPATTN_CUDA_FORWARD"] = "sm80"
        o80, l80 = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    finally:
        os.environ.pop("SPATTN_CUDA_FORWARD", None)
        if old is not None:
            os.environ["SPATTN_CUDA_FORWARD"] = old
    torch.cuda.synchronize()
    assert (o90.float() - o80.float()).abs().max().item() <= 2.0**-6
    assert torch.allclose(l90, l80, rtol=1e-4, atol=1e-4)
