"""The planner on CUDA (issue 11): what runs through the backend seam on the GPU beyond one
block walk, against the float64 reference.

- dilated and strided patterns as residue classes (row-strided views), window | strided unions
  as parts merged on the device, forward and backward;
- variable-length batches, offsets on the CPU and on the device;
- spattn.merge of CUDA arrays;
- head dims without a kernel of their own, and Dv != D (zero-padded to a compiled head dim);
- the caller's stream (torch.cuda.stream), outputs and workspaces from torch's caching
  allocator, CUDA graph capture and replay;
- the compiled-pattern cache: a second call on the same pattern does no host work of its own
  (checked by the benchmark's host-overhead rows; here: the results stay right across sizes).

Skipped cleanly without torch, a CUDA device or a CUDA build; nothing touches the GPU at import
or collection.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import as64, assert_close, assert_lse, cuda_torch_or_skip, naive_backward, naive_forward, ref_backward


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_kernels")


def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def _to(torch, x64, dtype="bfloat16"):
    return torch.from_numpy(np.ascontiguousarray(x64)).to(getattr(torch, dtype)).cuda()


def _forward_check(torch, q, k, v, pattern, dtype="bfloat16", scale=None, **kw):
    """spattn on CUDA tensors q, k, v vs the float64 reference on the same rounded values."""
    out, lse = spattn.attention(q, k, v, pattern=pattern, scale=scale, return_lse=True, **kw)
    torch.cuda.synchronize()
    assert out.is_cuda and lse.is_cuda
    q64, k64, v64 = (as64(x.cpu()) for x in (q, k, v))
    ref, ref_lse = spattn.reference_attention(q64, k64, v64, pattern=pattern, scale=scale, return_lse=True)
    mask = pattern.mask(q.shape[1], k.shape[1], heads=q.shape[2])
    naive = naive_forward(q64, k64, v64, mask, dtype, scale)
    got = out.float().cpu().numpy()
    assert not np.isnan(got).any()
    assert_close("out", got, ref, dtype, naive=naive)
    assert_lse(lse.cpu().numpy(), ref_lse)
    return out, lse


def _backward_check(torch, q, k, v, pattern, dtype="bfloat16", seed=0):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    dout = _to(torch, _rand(tuple(q.shape[:-1]) + (v.shape[-1],), seed), dtype)
    out = spattn.attention(q, k, v, pattern=pattern)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    q64, k64, v64, do64 = (as64(x.detach().cpu()) for x in (q, k, v, dout))
    mask = pattern.mask(q.shape[1], k.shape[1], heads=q.shape[2])
    ref = ref_backward(q64, k64, v64, do64, mask)
    naive = naive_backward(q64, k64, v64, do64, mask, dtype)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, naive):
        got = g.float().cpu().numpy()
        assert not np.isnan(got).any(), name
        assert_close(name, got, r, dtype, naive=n)


RESIDUE_PATTERNS = {
    "dilated(64,0,4)": lambda: spattn.Dilated(64, 0, 4),
    "dilated(16,16,3)": lambda: spattn.Dilated(16, 16, 3),
    "strided(64)": lambda: spattn.Strided(64),
    "strided(32,noncausal)": lambda: spattn.Strided(32, causal=False),
    "window|strided": lambda: spattn.SlidingWindow(63, 0) | spattn.Strided(64),
}


@pytest.mark.parametrize("name", list(RESIDUE_PATTERNS))
def test_residue_split_and_union_parts(cuda, name):
    torch = cuda
    pattern = RESIDUE_PATTERNS[name]()
    nq = nk = 2048  # long enough for the residue split to pay (plan/residue.cpp)
    q = _to(torch, _rand((1, nq, 4, 128), 1))
    k = _to(torch, _rand((1, nk, 2, 128), 2))
    v = _to(torch, _rand((1, nk, 2, 128), 3))
    _forward_check(torch, q, k, v, pattern)
    _backward_check(torch, q, k, v, pattern)


@pytest.mark.parametrize("offsets_on", ["cpu", "cuda"])
def test_varlen(cuda, offsets_on):
    torch = cuda
    lens_q, lens_k = [300, 0, 129, 700], [300, 5, 200, 700]
    cq = torch.tensor(np.concatenate([[0], np.cumsum(lens_q)]), dtype=torch.int32)
    ck = torch.tensor(np.concatenate([[0], np.cumsum(lens_k)]), dtype=torch.int32)
    if offsets_on == "cuda":
        cq, ck = cq.cuda(), ck.cuda()
    q = _to(torch, _rand((sum(lens_q), 4, 64), 4))
    k = _to(torch, _rand((sum(lens_k), 2, 64), 5))
    v = _to(torch, _rand((sum(lens_k), 2, 64), 6))
    pattern = spattn.Sink(2) | spattn.SlidingWindow(99, 0)
    out, lse = spattn.attention(q, k, v, pattern=pattern, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    torch.cuda.synchronize()
    cqh, ckh = cq.cpu().numpy(), ck.cpu().numpy()
    for b in range(len(lens_q)):
        qs, ks = slice(cqh[b], cqh[b + 1]), slice(ckh[b], ckh[b + 1])
        if cqh[b + 1] == cqh[b]:
            continue
        ref_o, ref_l = spattn.attention(q[None, qs], k[None, ks], v[None, ks], pattern=pattern, return_lse=True)
        torch.testing.assert_close(out[qs], ref_o[0], rtol=0, atol=0)  # the same kernel on the same data
        torch.testing.assert_close(lse[:, qs], ref_l[0], rtol=0, atol=0)
    # backward through autograd, against per-sequence calls
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    o = spattn.attention(qg, kg, vg, pattern=pattern, cu_seqlens_q=cq, cu_seqlens_k=ck)
    o.float().square().sum().backward()
    for b in range(len(lens_q)):
        qs, ks = slice(cqh[b], cqh[b + 1]), slice(ckh[b], ckh[b + 1])
        qb, kb, vb = (x.detach()[None, s].clone().requires_grad_() for x, s in ((q, qs), (k, ks), (v, ks)))
        spattn.attention(qb, kb, vb, pattern=pattern).float().square().sum().backward()
        # dq is summed with float32 atomics, in an order that varies from run to run: equal up
        # to the rounding of that sum to bfloat16 (dk and dv are written once: exact).
        torch.testing.assert_close(qg.grad[qs].float(), qb.grad[0].float(), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(kg.grad[ks], kb.grad[0], rtol=0, atol=0)
        torch.testing.assert_close(vg.grad[ks], vb.grad[0], rtol=0, atol=0)


def test_merge_on_device(cuda):
    torch = cuda
    q = _to(torch, _rand((2, 100, 4, 64), 7))
    k = _to(torch, _rand((2, 300, 4, 64), 8))
    v = _to(torch, _rand((2, 300, 4, 64), 9))
    parts = [spattn.attention(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in ((0, 100), (100, 170), (170, 300))]
    out, lse = spattn.merge([p[0] for p in parts], [p[1] for p in parts])
    whole, whole_lse = spattn.attention(q, k, v, return_lse=True)
    torch.cuda.synchronize()
    assert out.is_cuda and lse.is_cuda
    torch.testing.assert_close(out.float(), whole.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse, whole_lse, rtol=1e-4, atol=1e-4)
    # nine parts: more than one launch takes (merged in rounds)
    cuts = np.linspace(0, 300, 10).astype(int)
    parts = [spattn.attention(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in zip(cuts[:-1], cuts[1:])]
    out9, lse9 = spattn.merge([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(out9.float(), whole.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse9, whole_lse, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d,dv", [(80, 80), (128, 64), (64, 128), (40, 100)])
def test_padded_head_dims(cuda, d, dv):
    torch = cuda
    q = _to(torch, _rand((1, 333, 4, d), 10))
    k = _to(torch, _rand((1, 400, 2, d), 11))
    v = _to(torch, _rand((1, 400, 2, dv), 12))
    pattern = spattn.SlidingWindow(127, 0)
    _forward_check(torch, q, k, v, pattern)
    _backward_check(torch, q, k, v, pattern)


def test_callers_stream_and_allocator(cuda):
    torch = cuda
    q = _to(torch, _rand((1, 4096, 8, 128), 13))
    k = _to(torch, _rand((1, 4096, 8, 128), 14))
    v = _to(torch, _rand((1, 4096, 8, 128), 15))
    pattern = spattn.SlidingWindow(511, 0) | spattn.Strided(256)  # parts: workspaces too
    want = spattn.attention(q, k, v, pattern=pattern)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        before = torch.cuda.memory_allocated()
        got = spattn.attention(q, k, v, pattern=pattern)
        # the output came from torch's allocator: torch sees it
        assert torch.cuda.memory_allocated() - before >= got.numel() * got.element_size()
    s.synchronize()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_graph_capture(cuda):
    torch = cuda
    shape_q, shape_k = (1, 2048, 8, 128), (1, 2048, 2, 128)
    static = [_to(torch, _rand(s, 20 + i)) for i, s in enumerate((shape_q, shape_k, shape_k))]
    for x in static:
        x.requires_grad_(False)
    pattern = spattn.Sink(4) | spattn.SlidingWindow(255, 0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up, as torch asks before a capture
        for _ in range(2):
            spattn.attention(*static, pattern=pattern)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = spattn.attention(*static, pattern=pattern)
    for seed in (30, 31):
        fresh = [_to(torch, _rand(x.shape, seed + i)) for i, x in enumerate(static)]
        for x, f in zip(static, fresh):
            x.copy_(f)
        g.replay()
        torch.cuda.synchronize()
        want = spattn.attention(*fresh, pattern=pattern)
        torch.testing.assert_close(static_out, want, rtol=0, atol=0)


def test_graph_capture_of_a_pattern_never_run(cuda):
    """A capture can be the pattern's first use: its layout is uploaded beside the capture."""
    torch = cuda
    q, k, v = (_to(torch, _rand((1, 1500, 4, 64), 40 + i)) for i in range(3))
    pattern = spattn.SlidingWindow(377, 3)  # not used anywhere else in this process
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = spattn.attention(q, k, v, pattern=pattern)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, spattn.attention(q, k, v, pattern=pattern), rtol=0, atol=0)


def test_cache_across_sizes(cuda):
    """One pattern object used at more sizes than its cache keeps, and back: always right."""
    torch = cuda
    pattern = spattn.BigBird(64, 3, 1, 2, seed=5)  # generated per problem size: a real cache key
    for n in [2560, 2000, 1700, 2560, 1300, 999, 700, 500, 300, 2560, 2000]:
        q = _to(torch, _rand((1, n, 4, 64), n))
        k = _to(torch, _rand((1, n, 4, 64), n + 1))
        v = _to(torch, _rand((1, n, 4, 64), n + 2))
        _forward_check(torch, q, k, v, pattern)


def test_cupy_arrays(cuda):
    cupy = pytest.importorskip("cupy")
    if "float16" not in spattn.info()["cuda_kernels"]:
        pytest.skip("no float16 kernel in this build (cupy has no bfloat16)")
    q, k, v = (cupy.asarray(_rand((1, 512, 4, 64), 50 + i)).astype(cupy.float16) for i in range(3))
    out = spattn.attention(q, k, v, pattern=spattn.Causal())
    assert isinstance(out, cupy.ndarray)
    cupy.cuda.get_current_stream().synchronize()
    ref = spattn.reference_attention(*(cupy.asnumpy(x).astype(np.float64) for x in (q, k, v)), pattern=spattn.Causal())
    assert np.abs(cupy.asnumpy(out).astype(np.float64) - ref).max() < 2e-2
