"""Score modifiers (softcap, ALiBi, sinks) in the CUDA kernels (sm80 forward and backward, the
sm90a forward on Hopper, the sinks' gradient kernel) against the float64 reference of
test_score_modifiers.py, on torch CUDA tensors.

Skipped cleanly without torch, a CUDA device or a CUDA build of spattn: the `cuda` fixture asks
inside each test, never at import or collection. Both forward kernels run on a Hopper GPU
(SPATTN_CUDA_FORWARD=sm80 forces the sm80 one). Tolerances: float64 math on the rounded inputs,
within 2x the error of rounding the reference itself to the dtype plus FlashAttention's ulp at
0.3, as in test_score_modifiers.py.
"""
import numpy as np
import pytest

import spattn
from _helpers import as64, compiled_cuda_kernels, cuda_torch_or_skip
from modifier_ref import ref_modified
from test_score_modifiers import MODS, _check, _kw, _naive_err


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_backward_kernels")


PATTERNS = {
    "causal": lambda: spattn.Causal(),
    "window": lambda: spattn.SlidingWindow(100, 7),
    "union (keeps() path)": lambda: spattn.Sink(3) | spattn.SlidingWindow(70, 0),
    "empty rows": lambda: spattn.SlidingWindow(20, 5),
}


@pytest.mark.parametrize("forward_kernel", ["default", "sm80"])
@pytest.mark.parametrize("pname", list(PATTERNS))
@pytest.mark.parametrize("mod", list(MODS))
def test_forward_backward_and_sinks_gradient(cuda, mod, pname, forward_kernel, monkeypatch):
    torch = cuda
    if forward_kernel == "sm80":
        monkeypatch.setenv("SPATTN_CUDA_FORWARD", "sm80")
    rng = np.random.default_rng(hash((mod, pname)) % 1000)
    for dtype, d in compiled_cuda_kernels("cuda_backward_kernels")[:2]:
        b, hq, hkv = 2, 4, 2
        nq, nk = (333, 150) if pname == "empty rows" else (257, 300)
        q, k, v, do = (rng.standard_normal(s) for s in ((b, nq, hq, d), (b, nk, hkv, d), (b, nk, hkv, d),
                                                       (b, nq, hq, d)))
        slopes = 2.0 ** (-8.0 * (np.arange(hq) + 1) / hq)
        sinks = rng.standard_normal(hq) + 1.0
        kw = _kw(MODS[mod], slopes, sinks)
        pattern = PATTERNS[pname]()
        dt = getattr(torch, dtype)
        ts = [torch.from_numpy(x).to(dt).cuda() for x in (q, k, v, do)]
        rounded = [as64(t) for t in ts]
        scale = 0.7 / np.sqrt(d)
        ro, rl, (rdq, rdk, rdv, rds) = ref_modified(*rounded[:3], pattern, scale,
                                                    kw["softcap"], kw["alibi_slopes"], kw["sinks"], dout=rounded[3])
        tkw = {n: (torch.tensor(x, dtype=torch.float32, device="cuda") if isinstance(x, np.ndarray) else x)
               for n, x in kw.items()}
        out, lse = spattn.attention(*ts[:3], pattern=pattern, scale=scale, return_lse=True, **tkw)
        _check("out", out, ro, dtype, _naive_err(ro, dtype))
        fin = np.isfinite(rl)
        assert np.array_equal(np.isneginf(as64(lse)), np.isneginf(rl))
        np.testing.assert_allclose(as64(lse)[fin], rl[fin], atol=2e-2)
        grads = spattn.attention_backward(ts[3], *ts[:3], out, lse, pattern=pattern, scale=scale, **tkw)
        for name, g, r in zip(("dq", "dk", "dv"), grads, (rdq, rdk, rdv)):
            _check(name, g, r, dtype, _naive_err(r, dtype) * 4)
        if kw["sinks"] is not None:
            assert grads[3].device.type == "cuda" and grads[3].dtype == torch.float32
            np.testing.assert_allclose(as64(grads[3]), rds, atol=5e-2 * max(1.0, np.abs(rds).max()))


@pytest.mark.parametrize("forward_kernel", ["default", "sm80"])
@pytest.mark.parametrize("mod", ["softcap+alibi", "all"])
def test_forward_every_head_dim(cuda, mod, forward_kernel, monkeypatch):
    """The forward with modifiers on every compiled forward kernel, not only the first two:
    the wide head dims have their own tiles and register budgets (D = 256: 32-key steps in the
    sm80-style kernel, ldmatrix addresses rebuilt per block). Nk = 300 ends inside a 32-key
    and a 64-key block; the union takes the keeps() path."""
    torch = cuda
    if forward_kernel == "sm80":
        monkeypatch.setenv("SPATTN_CUDA_FORWARD", "sm80")
    rng = np.random.default_rng(17)
    b, hq, hkv, nq, nk = 1, 4, 2, 257, 300
    for dtype, d in compiled_cuda_kernels("cuda_kernels"):
        q, k, v = (rng.standard_normal(s) for s in ((b, nq, hq, d), (b, nk, hkv, d), (b, nk, hkv, d)))
        slopes = 2.0 ** (-8.0 * (np.arange(hq) + 1) / hq)
        sinks = rng.standard_normal(hq) + 1.0
        kw = _kw(MODS[mod], slopes, sinks)
        dt = getattr(torch, dtype)
        ts = [torch.from_numpy(x).to(dt).cuda() for x in (q, k, v)]
        tkw = {n: (torch.tensor(x, dtype=torch.float32, device="cuda") if isinstance(x, np.ndarray) else x)
               for n, x in kw.items()}
        scale = 0.7 / np.sqrt(d)
        for pname in ("window", "union (keeps() path)"):
            pattern = PATTERNS[pname]()
            ro, rl = ref_modified(*(as64(t) for t in ts), pattern, scale, kw["softcap"],
                                  kw["alibi_slopes"], kw["sinks"])
            out, lse = spattn.attention(*ts, pattern=pattern, scale=scale, return_lse=True, **tkw)
            _check(f"out D={d} {dtype} {pname}", out, ro, dtype, _naive_err(ro, dtype))
            fin = np.isfinite(rl)
            assert np.array_equal(np.isneginf(as64(lse)), np.isneginf(rl))
            np.testing.assert_allclose(as64(lse)[fin], rl[fin], atol=2e-2)


def test_autograd_learns_the_sinks_on_cuda(cuda):
    torch = cuda
    dtype, d = compiled_cuda_kernels("cuda_backward_kernels")[0]
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 200, 4, d, generator=gen).to(getattr(torch, dtype)).cuda().requires_grad_()
               for _ in range(3))
    sinks = torch.nn.Parameter(torch.linspace(-1, 1, 4, device="cuda"))
    out = spattn.attention(q, k, v, pattern=spattn.Causal(), softcap=20.0, sinks=sinks)
    out.float().sum().backward()
    assert sinks.grad is not None and torch.isfinite(sinks.grad).all()
    g = spattn.attention(q.detach().cpu(), k.detach().cpu(), v.detach().cpu(), pattern=spattn.Causal(), softcap=20.0,
                         sinks=sinks.detach().cpu().requires_grad_())
    assert g.shape == out.shape

