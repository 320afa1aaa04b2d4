"""The forward's layout compiled on the device (issue #11 item 2) against the host compiler.

The same CUDA forward kernel runs once with the layout the device compiler made (the default,
SPATTN_LAYOUT_COMPILE unset) and once with the host compiler's (SPATTN_LAYOUT_COMPILE=host):
the layouts and schedules are the same, so the outputs and lse must be bitwise equal; both
against the float64 reference too. Structured patterns, unions, intersections, PerHead, sizes
that are not multiples of the tile, Nq != Nk. Skipped without torch, a CUDA device or a CUDA
build. The host emulation of the same code (no GPU needed) is tests/cpp/test_device_layout.cpp.

The backward's columns, schedule and (sm90a) rows are made on the device too, by the same row
compile and a device transposition: its gradients must equal those of the host-staged layout,
dk and dv bit for bit (one CTA each, fixed order), dq to the last bits of its float32 atomics on
the sm80-style backward, and every gradient bit for bit on the deterministic sm90a backward. The
host emulation is tests/cpp/test_device_transpose.cpp.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import as64, assert_close, assert_lse, compiled_cuda_kernels, cuda_torch_or_skip, naive_forward
from test_cuda_backward import _check, _data


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_kernels")


def _patterns(nq, nk, hq):
    return {
        "causal": lambda: spattn.Causal(),
        "window(255,0)": lambda: spattn.SlidingWindow(255, 0),
        "window(100,37)": lambda: spattn.SlidingWindow(100, 37),
        "dilated(16,4,3)": lambda: spattn.Dilated(16, 4, 3),
        "strided(64)": lambda: spattn.Strided(64),
        "fixed(64,8)": lambda: spattn.Fixed(64, 8),
        "global": lambda: spattn.Global(sorted({x for x in (0, 5, 300, min(nq, nk) - 1) if x < nk})),
        "sink(4)|window(127,0)": lambda: spattn.Sink(4) | spattn.SlidingWindow(127, 0),
        "bigbird": lambda: spattn.BigBird(64, 3, 1, 2, seed=3),
        "prefix_lm": lambda: spattn.PrefixLM(100),
        "strided|fixed": lambda: spattn.Strided(96) | spattn.Fixed(128, 8),
        "blocksparse per head|window": lambda: spattn.BlockSparse(
            np.random.default_rng(nq * 3 + nk).random((hq, -(-nq // 48), -(-nk // 40))) < 0.3,
            block_size=(48, 40)) | spattn.SlidingWindow(64, 0),
        "causal&dilated": lambda: spattn.Causal() & spattn.Dilated(None, None, 4),
        "per head": lambda: spattn.PerHead([spattn.Causal(), spattn.SlidingWindow(64, 64),
                                            spattn.Strided(33) | spattn.Sink(9),
                                            spattn.Global([3, 77 % nk])][:hq]),
    }


def _forward(torch, q, k, v, pattern):
    res, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    torch.cuda.synchronize()
    return res, lse


@pytest.mark.parametrize("name", list(_patterns(1, 1, 4)))
@pytest.mark.parametrize("nq,nk", [(257, 385), (700, 700), (1025, 130)])
def test_device_layout_matches_host_layout(cuda, monkeypatch, name, nq, nk):
    torch = cuda
    dtype, d = compiled_cuda_kernels("cuda_kernels")[0]
    hq, hkv = 4, 2
    rng = np.random.default_rng(nq + nk)
    dt = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(rng.standard_normal(s)).to(dt).cuda()
               for s in ((1, nq, hq, d), (1, nk, hkv, d), (1, nk, hkv, d)))
    make = _patterns(nq, nk, hq)[name]
    monkeypatch.setenv("SPATTN_LAYOUT_COMPILE", "host")
    host_out, host_lse = _forward(torch, q, k, v, make())
    monkeypatch.setenv("SPATTN_LAYOUT_COMPILE", "device")
    dev_out, dev_lse = _forward(torch, q, k, v, make())
    assert torch.equal(host_out, dev_out)
    assert torch.equal(host_lse, dev_lse)
    # Twice more on the same pattern object: the cached device layout.
    p = make()
    a, _ = _forward(torch, q, k, v, p)
    b, _ = _forward(torch, q, k, v, p)
    assert torch.equal(a, dev_out) and torch.equal(b, dev_out)
    q64, k64, v64 = (as64(x.cpu()) for x in (q, k, v))
    pattern = make()
    ref, ref_lse = spattn.reference_attention(q64, k64, v64, pattern=pattern, return_lse=True)
    naive = naive_forward(q64, k64, v64, pattern.mask(nq, nk, heads=hq), dtype, None)
    assert_close("out", dev_out.float().cpu().numpy(), ref, dtype, naive=naive)
    assert_lse(dev_lse.cpu().numpy(), ref_lse)


def test_bad_compile_setting_is_refused(cuda, monkeypatch):
    torch = cuda
    dtype, d = compiled_cuda_kernels("cuda_kernels")[0]
    q = torch.zeros((1, 64, 1, d), dtype=getattr(torch, dtype), device="cuda")
    monkeypatch.setenv("SPATTN_LAYOUT_COMPILE", "gpu")
    with pytest.raises(ValueError, match="SPATTN_LAYOUT_COMPILE"):
        spattn.attention(q, q, q, pattern=spattn.Causal())


def _backward_both(torch, monkeypatch, nq, nk, make, deterministic=False, kernel=None):
    """(host-staged, device-made) gradients of one problem: the forward once (its layout is the
    same either way), then the backward with each compiler on a fresh pattern object."""
    dtype, d = kernel or compiled_cuda_kernels("cuda_backward_kernels")[0]
    hq, hkv = 4, 2
    dt = getattr(torch, dtype)
    q, k, v, do = (torch.from_numpy(x).to(dt).cuda() for x in _data(1, nq, nk, hq, hkv, d, seed=nq + 2 * nk))
    out, lse = spattn.attention(q, k, v, pattern=make(), return_lse=True)
    grads = []
    for mode in ("host", "device"):
        monkeypatch.setenv("SPATTN_LAYOUT_COMPILE", mode)
        grads.append(spattn.attention_backward(do, q, k, v, out, lse, pattern=make(), deterministic=deterministic))
        torch.cuda.synchronize()
    return grads


@pytest.mark.parametrize("name", list(_patterns(1, 1, 4)))
@pytest.mark.parametrize("nq,nk", [(257, 385), (700, 700), (1025, 130)])
def test_backward_device_layout_matches_host_layout(cuda, monkeypatch, name, nq, nk):
    torch = cuda
    monkeypatch.delenv("SPATTN_CUDA_BACKWARD", raising=False)
    make = _patterns(nq, nk, 4)[name]
    (hdq, hdk, hdv), (ddq, ddk, ddv) = _backward_both(torch, monkeypatch, nq, nk, make)
    assert torch.equal(hdk, ddk) and torch.equal(hdv, ddv)
    # dq sums through float32 atomics (order free): the same up to their last bits.
    assert (hdq.float() - ddq.float()).abs().max().item() <= 2.0**-6


@pytest.mark.parametrize("name", ["causal", "strided|fixed", "blocksparse per head|window", "per head"])
def test_backward_device_layout_reference(cuda, monkeypatch, name):
    """The device-made backward layout against the float64 reference gradients."""
    torch = cuda
    monkeypatch.setenv("SPATTN_LAYOUT_COMPILE", "device")
    dtype, d = compiled_cuda_kernels("cuda_backward_kernels")[0]
    nq, nk, hq, hkv = 300, 420, 4, 2
    _check(torch, *_data(1, nq, nk, hq, hkv, d, seed=11), _patterns(nq, nk, hq)[name](), dtype)


@pytest.mark.parametrize("name", list(_patterns(1, 1, 4)))
def test_sm90a_backward_device_layout_bitwise(cuda, monkeypatch, name):
    """The sm90a backward (deterministic: no atomics) walks the device-made columns, rows and
    both schedules: every gradient bit for bit as with the host-staged layout."""
    torch = cuda
    if torch.cuda.get_device_capability() != (9, 0) or not spattn.info().get("cuda_sm90a_backward_kernels"):
        pytest.skip("the sm90a backward runs on compute capability 9.0 in a build that has it")
    monkeypatch.setenv("SPATTN_CUDA_BACKWARD", "sm90a")
    nq, nk = 700, 457
    host, dev = _backward_both(torch, monkeypatch, nq, nk, _patterns(nq, nk, 4)[name], deterministic=True,
                               kernel=compiled_cuda_kernels("cuda_sm90a_backward_kernels")[0])
    for h, g in zip(host, dev):
        assert torch.equal(h, g)


def test_backward_without_device_rule_keeps_host_path(cuda, monkeypatch):
    """A leaf without a device block rule (LogSparse): the backward compiles on the host and gives
    the same gradients whichever compiler is asked for."""
    torch = cuda
    monkeypatch.delenv("SPATTN_CUDA_BACKWARD", raising=False)
    (hdq, hdk, hdv), (ddq, ddk, ddv) = _backward_both(
        torch, monkeypatch, 300, 300, lambda: spattn.LogSparse(2) | spattn.Sink(3))
    assert torch.equal(hdk, ddk) and torch.equal(hdv, ddv)
    assert (hdq.float() - ddq.float()).abs().max().item() <= 2.0**-6
