"""float32 on CUDA (cuda/src/f32/: SIMT kernels in float32 arithmetic, and the decode kernel)
against the float64 reference, on torch CUDA tensors.

Skipped cleanly without torch, without a CUDA device, with a spattn built without CUDA, or with
a build whose spattn.info()["cuda_kernels"] lists no float32 kernel: nothing here touches the
GPU at import or collection (the `cuda` fixture asks, inside each test). The tolerance is the
suite's float32 rule (_helpers.assert_close: 2e-5 relative to max(|ref|, 1)), the one the CPU's
float32 passes; TF32 products (10-bit mantissas) would fail it by two orders of magnitude.
Covered: forward (out, lse) and backward (autograd) for every test pattern (windows, causal,
per-head block-sparse, unions through keeps(), global, BigBird, dilated) with GQA and odd
sizes; empty rows; MQA; negative scales; padded head dims and Dv != D; strided and misaligned
views (the 4-byte repack); varlen batches; softcap, ALiBi and sinks (against the CPU's float64);
decode over contiguous and paged caches against the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import (
    assert_close,
    assert_lse,
    cuda_test_patterns,
    cuda_torch_or_skip,
    ref_backward,
    ref_forward,
    bhsd_view,
    misaligned_view,
)


def _f32_dims(key):
    for part in str(spattn.info().get(key, "")).split(";"):
        name, _, dims = part.partition(":")
        if name.strip() == "float32":
            return [int(d) for d in dims.split(",") if d.strip().isdigit()]
    return []


@pytest.fixture
def cuda():
    torch = cuda_torch_or_skip("cuda_kernels")
    if not _f32_dims("cuda_kernels") or not _f32_dims("cuda_backward_kernels"):
        pytest.skip("this build has no float32 CUDA kernels")
    return torch


def _data(b, nq, nk, hq, hkv, d, seed, dv=None):
    rng = np.random.default_rng(seed)
    dv = d if dv is None else dv
    return [rng.standard_normal(s).astype(np.float32) for s in
            ((b, nq, hq, d), (b, nk, hkv, d), (b, nk, hkv, dv), (b, nq, hq, dv))]


def _check(torch, q, k, v, do, pattern, scale=None, views=None):
    """spattn.attention on CUDA float32 (out, lse, autograd gradients) vs the float64 reference."""
    dev = [torch.from_numpy(x).cuda() for x in (q, k, v, do)]
    if views is not None:
        dev = [views(x) for x in dev]
    qc, kc, vc = (x.detach().requires_grad_() for x in dev[:3])
    out, lse = spattn.attention(qc, kc, vc, pattern=pattern, scale=scale, return_lse=True)
    dq, dk, dv = torch.autograd.grad(out, (qc, kc, vc), dev[3])
    torch.cuda.synchronize()
    assert out.dtype == torch.float32 and out.is_cuda and dq.dtype == torch.float32
    mask = pattern.mask(q.shape[1], k.shape[1], heads=q.shape[2])
    out_ref, lse_ref, _ = ref_forward(q, k, v, mask, scale)
    assert_close("out", out.detach().cpu().numpy(), out_ref, "float32")
    assert_lse(lse.cpu().numpy(), lse_ref)
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_backward(q, k, v, do, mask, scale)):
        assert_close(name, got.cpu().numpy(), ref, "float32")
    return out, dq


@pytest.mark.parametrize("name", list(cuda_test_patterns(300, 300, 4)))
def test_patterns_gqa(cuda, name):
    for d in _f32_dims("cuda_kernels"):
        nq, nk = 257, 385
        q, k, v, do = _data(2, nq, nk, 4, 2, d, seed=d)
        _check(cuda, q, k, v, do, cuda_test_patterns(nq, nk, 4)[name])


@pytest.mark.parametrize("nq,nk", [(1025, 1025), (97, 1100), (600, 130), (128, 64), (1, 255), (70, 1)])
def test_sizes_and_empty_rows(cuda, nq, nk):
    torch = cuda
    q, k, v, do = _data(1, nq, nk, 2, 1, 128, seed=nq + nk)
    for pattern in (spattn.Causal(), spattn.SlidingWindow(20, 0), spattn.Dense()):
        out, dq = _check(torch, q, k, v, do, pattern)
        empty = ~pattern.mask(nq, nk, heads=1)[0].any(-1)
        if empty.any():  # rows that see no key: out 0 and dq 0 exactly, never NaN
            rows = torch.from_numpy(np.flatnonzero(empty)).cuda()
            assert (out[0, rows] == 0).all() and (dq[0, rows] == 0).all()


def test_mqa_negative_scale_and_padded_head_dims(cuda):
    q, k, v, do = _data(1, 333, 333, 8, 1, 128, seed=5)
    _check(cuda, q, k, v, do, spattn.SlidingWindow(63, 0), scale=0.05)
    _check(cuda, q, k, v, do, spattn.Causal(), scale=-0.08)
    # head dims without a kernel of their own, and Dv != D: zero-padded to a compiled one
    for d, dv in ((80, 80), (64, 40), (24, 120)):
        q, k, v, do = _data(2, 200, 260, 4, 2, d, seed=d + dv, dv=dv)
        _check(cuda, q, k, v, do, spattn.Sink(3) | spattn.SlidingWindow(50, 0))


def test_strided_and_misaligned_views(cuda):
    torch = cuda
    q, k, v, do = _data(2, 300, 300, 4, 4, 128, seed=11)


    _check(torch, q, k, v, do, spattn.SlidingWindow(127, 0), views=bhsd_view)
    _check(torch, q, k, v, do, spattn.Causal(), views=misaligned_view)


def test_varlen(cuda):
    torch = cuda
    lens_q, lens_k = [300, 0, 129, 700], [300, 5, 200, 700]
    cq = torch.tensor(np.concatenate([[0], np.cumsum(lens_q)]), dtype=torch.int32)
    ck = torch.tensor(np.concatenate([[0], np.cumsum(lens_k)]), dtype=torch.int32)
    rng = np.random.default_rng(3)
    q, do = (rng.standard_normal((sum(lens_q), 4, 64)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((sum(lens_k), 2, 64)).astype(np.float32) for _ in range(2))
    pattern = spattn.Sink(2) | spattn.SlidingWindow(99, 0)
    qc, kc, vc = (torch.from_numpy(x).cuda().requires_grad_() for x in (q, k, v))
    out, lse = spattn.attention(qc, kc, vc, pattern=pattern, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    dq, dk, dv = torch.autograd.grad(out, (qc, kc, vc), torch.from_numpy(do).cuda())
    torch.cuda.synchronize()
    out, lse, dq, dk, dv = (x.detach().cpu().numpy() for x in (out, lse, dq, dk, dv))
    for b in range(len(lens_q)):
        qs = slice(int(cq[b]), int(cq[b + 1]))
        ks = slice(int(ck[b]), int(ck[b + 1]))
        if lens_q[b] == 0:
            continue
        mask = pattern.mask(lens_q[b], lens_k[b], heads=4)
        qb, kb, vb, dob = q[None, qs], k[None, ks], v[None, ks], do[None, qs]
        o_ref, l_ref, _ = ref_forward(qb, kb, vb, mask)
        assert_close(f"out[{b}]", out[qs], o_ref[0], "float32")
        assert_lse(lse[:, qs], l_ref[0])
        for name, got, ref in zip(("dq", "dk", "dv"), (dq[qs], dk[ks], dv[ks]), ref_backward(qb, kb, vb, dob, mask)):
            assert_close(f"{name}[{b}]", got, ref[0], "float32")


def test_score_modifiers(cuda):
    """softcap, ALiBi and sinks: forward and gradients (dsinks too) against the CPU in float64."""
    torch = cuda
    q, k, v, do = _data(2, 200, 260, 4, 2, 64, seed=21)
    mods = dict(softcap=20.0, alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625], dtype=np.float32),
                sinks=np.array([0.7, -1.2, 0.0, 2.0], dtype=np.float32))
    pattern = spattn.SlidingWindow(70, 5)
    results = {}
    for device, dt in (("cuda", torch.float32), ("cpu", torch.float64)):
        q_, k_, v_, do_ = (torch.from_numpy(x).to(device=device, dtype=dt) for x in (q, k, v, do))
        kw = {"softcap": mods["softcap"]}
        for key in ("alibi_slopes", "sinks"):  # lse's dtype: float32 on CUDA, float64 for float64
            kw[key] = torch.from_numpy(mods[key]).to(device=device, dtype=dt)
        out, lse = spattn.attention(q_, k_, v_, pattern=pattern, return_lse=True, **kw)
        grads = spattn.attention_backward(do_, q_, k_, v_, out, lse, pattern=pattern, **kw)
        assert len(grads) == 4  # dq, dk, dv, dsinks
        results[device] = [t.detach().cpu().double().numpy() for t in (out, lse, *grads)]
    for name, got, ref in zip(("out", "lse", "dq", "dk", "dv", "dsinks"), results["cuda"], results["cpu"]):
        assert_close(name, got, ref, "float32")


@pytest.mark.parametrize("paged", [False, True])
def test_decode(cuda, paged):
    torch = cuda
    rng = np.random.default_rng(8)
    lens, ncap, nq, hq, hkv, d = [1, 300, 1000, 0], 1024, 7, 8, 2, 128
    q = rng.standard_normal((len(lens), nq, hq, d)).astype(np.float32)
    k = rng.standard_normal((len(lens), ncap, hkv, d)).astype(np.float32)
    v = rng.standard_normal((len(lens), ncap, hkv, d)).astype(np.float32)
    for pattern in (spattn.Causal(), spattn.SlidingWindow(100, 0), spattn.Sink(4) | spattn.SlidingWindow(37, 0)):
        kw = {}
        kc, vc = torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda()
        if paged:  # pages of 64 rows in reverse order
            page, npg = 64, ncap // 64
            order = np.arange(len(lens) * npg)[::-1].reshape(len(lens), npg).copy()
            kp = torch.empty((len(lens) * npg, page, hkv, d), device="cuda")
            vp = torch.empty_like(kp)
            for b in range(len(lens)):
                for c in range(npg):
                    kp[order[b, c]] = kc[b, c * page:(c + 1) * page]
                    vp[order[b, c]] = vc[b, c * page:(c + 1) * page]
            kc, vc = kp, vp
            kw["block_table"] = torch.from_numpy(order.astype(np.int32)).cuda()
        out, lse = spattn.decode(torch.from_numpy(q).cuda(), kc, vc, np.array(lens, dtype=np.int32),
                                 pattern=pattern, return_lse=True, **kw)
        torch.cuda.synchronize()
        assert out.dtype == torch.float32 and out.is_cuda
        for b, n in enumerate(lens):
            if nq > n:  # queries are the newest tokens: a cache shorter than Nq is compared on
                continue  # the CPU decode's own terms elsewhere (test_cuda_decode.py)
            mask = pattern.mask(nq, n, heads=hq)
            o_ref, l_ref, _ = ref_forward(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], mask)
            assert_close(f"out[{b}]", out[b:b + 1].cpu().numpy(), o_ref, "float32")
            assert_lse(lse[b:b + 1].cpu().numpy(), l_ref)
