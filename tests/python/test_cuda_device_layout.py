"""The forward's layout compiled on the device (issue #11 item 2) against the host compiler.

The same CUDA forward kernel runs once with the layout the device compiler made (the default,
SPATTN_LAYOUT_COMPILE unset) and once with the host compiler's (SPATTN_LAYOUT_COMPILE=host):
the layouts and schedules are the same, so the outputs and lse must be bitwise equal; both
against the float64 reference too. Structured patterns, unions, intersections, PerHead, sizes
that are not multiples of the tile, Nq != Nk. Skipped without torch, a CUDA device or a CUDA
build. The host emulation of the same code (no GPU needed) is tests/cpp/test_device_layout.cpp.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import as64, assert_close, assert_lse, compiled_cuda_kernels, cuda_torch_or_skip, naive_forward


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
