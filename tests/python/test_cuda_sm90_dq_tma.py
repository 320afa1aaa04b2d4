"""The sm90a backward with dQ by TMA reduce-add (SPATTN_CUDA_DQ=tma) against the float64
reference gradients, on a compute-capability 9.0 GPU.

In that variant the dK/dV kernel also forms dS K for every (query tile, key tile) pair it visits
and adds it, fp32, into a dq accumulator with cp.reduce.async.bulk.tensor; a conversion writes
dq. These tests run every (dtype, head dim) in spattn.info()["cuda_sm90a_backward_kernels"] on
patterns with full and partial blocks, Nq != Nk with empty rows, GQA / MQA, strided and
misaligned views, and many persistent CTAs adding into the same rows at once; they check that
dK and dV are bitwise those of the default (query-major dQ pass) variant, that
deterministic=True keeps the pass variant (bitwise reproducible) whatever SPATTN_CUDA_DQ says,
and that an unknown SPATTN_CUDA_DQ value is an error. Skipped cleanly without torch, without a
CUDA device, on a device other than 9.0, or with a build without the sm90a backward.
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
def hopper_tma(monkeypatch):
    torch = cuda_torch_or_skip("cuda_sm90a_backward_kernels")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90a backward runs on compute capability 9.0 only")
    monkeypatch.setenv("SPATTN_CUDA_BACKWARD", "sm90a")
    monkeypatch.setenv("SPATTN_CUDA_DQ", "tma")
    return torch


def _kernels():
    return compiled_cuda_kernels("cuda_sm90a_backward_kernels")


def _grads(torch, q, k, v, do, pattern, **kw):
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    g = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern, **kw)
    torch.cuda.synchronize()
    return g


def _on_device(torch, dtype, arrays):
    dt = getattr(torch, dtype)
    return [torch.from_numpy(x).to(dt).cuda() for x in arrays]


def test_info_names_both_variants():
    info = spattn.info()
    if info.get("cuda_compiled") != "yes":
        pytest.skip("spattn was built without CUDA")
    assert info["cuda_sm90a_backward_dq"].startswith("pass (default")
    assert "SPATTN_CUDA_DQ=tma" in info["cuda_sm90a_backward_dq"]


@pytest.mark.parametrize("name", list(cuda_test_patterns(300, 300, 4)))
def test_patterns_every_kernel(hopper_tma, name):
    for dtype, d in _kernels():
        nq, nk, hq, hkv = 300, 300, 4, 2
        q, k, v, do = _data(2, nq, nk, hq, hkv, d, seed=d + 7)
        _check(hopper_tma, q, k, v, do, cuda_test_patterns(nq, nk, hq)[name], dtype)


@pytest.mark.parametrize("nq,nk", [(1025, 1025), (97, 1100), (600, 130), (128, 128), (1, 255),
                                   (129, 1), (300, 0)])
def test_sizes_and_empty_rows(hopper_tma, nq, nk):
    """Query tiles past Nq in the accumulator's padding rows, keys past Nk masked, rows that see
    no key (dq exactly 0), Nk = 0 (nothing to reduce: the pass variant runs)."""
    for dtype, d in _kernels():
        q, k, v, do = _data(1, nq, nk, 2, 1, d, seed=nq + nk + 1)
        for pattern in (spattn.Causal(), spattn.SlidingWindow(20, 0), spattn.Dense()):
            if nk == 0 and not isinstance(pattern, spattn.Dense):
                continue
            _check(hopper_tma, q, k, v, do, pattern, dtype)


def test_gqa_mqa_and_scale(hopper_tma):
    """A kv head's CTA reduce-adds into every query head of its group."""
    for dtype, d in _kernels():
        q, k, v, do = _data(1, 333, 333, 8, 1, d, seed=15)
        _check(hopper_tma, q, k, v, do, spattn.SlidingWindow(63, 0), dtype, scale=0.05)
        q, k, v, do = _data(2, 333, 400, 8, 2, d, seed=16)
        _check(hopper_tma, q, k, v, do, spattn.Causal(), dtype, scale=-0.08)


def test_many_ctas_add_into_the_same_rows(hopper_tma):
    """Dense and long windows: every query tile receives reduce-adds from up to 16 key-tile
    CTAs running at once, each CTA walks several items (a lost or doubled add shows in dq)."""
    dtype, d = _kernels()[0]
    nq = nk = 2048
    q, k, v, do = _data(1, nq, nk, 8, 2, d, seed=21)
    rng = np.random.default_rng(5)
    lay = rng.random((8, nq // 128, nk // 128)) < 0.3
    for pattern in (spattn.Dense(), spattn.SlidingWindow(1000, 0),
                    spattn.BlockSparse(lay, block_size=128)):
        _check(hopper_tma, q, k, v, do, pattern, dtype)


def test_strided_and_misaligned_views(hopper_tma):
    torch = hopper_tma
    for dtype, d in _kernels():
        q, k, v, do = _data(2, 300, 300, 4, 4, d, seed=12)


        _check(torch, q, k, v, do, spattn.SlidingWindow(127, 0), dtype, views=bhsd_view)
        _check(torch, q, k, v, do, spattn.Causal(), dtype, views=misaligned_view)


def test_dk_dv_bitwise_those_of_the_pass_variant(hopper_tma, monkeypatch):
    """The reduce-add variant changes how dQ is summed only: dK and dV come from the same
    products in the same order. dq agrees with the pass variant's to rounding."""
    torch = hopper_tma
    for dtype, d in _kernels():
        q, k, v, do = _on_device(torch, dtype, _data(1, 1025, 1025, 8, 2, d, seed=4))
        pattern = spattn.Sink(4) | spattn.SlidingWindow(300, 0)
        dq_t, dk_t, dv_t = _grads(torch, q, k, v, do, pattern)
        monkeypatch.setenv("SPATTN_CUDA_DQ", "pass")
        dq_p, dk_p, dv_p = _grads(torch, q, k, v, do, pattern)
        monkeypatch.setenv("SPATTN_CUDA_DQ", "tma")
        assert torch.equal(dk_t, dk_p) and torch.equal(dv_t, dv_p)
        scale = max(dq_p.float().abs().max().item(), 1.0)
        diff = (dq_t.float() - dq_p.float()).abs().max().item()
        assert diff <= 2.0**-6 * scale, f"dq: tma and pass variants differ by {diff} (max |dq| {scale})"


def test_deterministic_keeps_the_pass_variant(hopper_tma, monkeypatch):
    """deterministic=True with SPATTN_CUDA_DQ=tma: the pass variant's bits, run to run."""
    torch = hopper_tma
    dtype, d = _kernels()[0]
    q, k, v, do = _on_device(torch, dtype, _data(1, 1025, 1025, 8, 2, d, seed=9))
    pattern = spattn.Causal()
    a = _grads(torch, q, k, v, do, pattern, deterministic=True)
    for _ in range(2):
        b = _grads(torch, q, k, v, do, pattern, deterministic=True)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    monkeypatch.setenv("SPATTN_CUDA_DQ", "pass")
    c = _grads(torch, q, k, v, do, pattern)
    assert all(torch.equal(x, y) for x, y in zip(a, c))


def test_unknown_dq_variant_is_an_error(hopper_tma, monkeypatch):
    torch = hopper_tma
    dtype, d = _kernels()[0]
    q, k, v, do = _on_device(torch, dtype, _data(1, 200, 200, 2, 2, d, seed=2))
    monkeypatch.setenv("SPATTN_CUDA_DQ", "atomics")
    with pytest.raises(ValueError, match="SPATTN_CUDA_DQ"):
        _grads(torch, q, k, v, do, spattn.Causal())
