"""Backward pass: spattn.attention_backward and torch autograd through spattn.attention."""

import functools

import numpy as np
import pytest
import torch

import spattn
from _helpers import (
    Case,
    as64,
    assert_close,
    naive_backward,
    naive_torch,
    rand_qkv,
    ref_backward,
    round_to,
    to_framework,
    window_mask,
)

# (B, Nq, Nk, Hq, Hkv, D, Dv, pattern)
GRAD_CASES = [
    (1, 1, 1, 1, 1, 32, 32, Case("Dense")),
    (2, 97, 97, 4, 2, 64, 64, Case("Causal")),
    (1, 97, 255, 4, 1, 64, 48, Case("SlidingWindow", 31, 0)),  # Nq < Nk, MQA, Dv != D
    (1, 255, 97, 2, 2, 32, 32, Case("Causal")),  # Nq > Nk: empty rows
    (1, 255, 255, 2, 1, 256, 256, Case("SlidingWindow", 64, 64)),  # head dim 256
    (1, 1025, 1025, 2, 2, 64, 64, Case("SlidingWindow", 127, 0)),
    (1, 97, 97, 2, 2, 16, 16, Case("SlidingWindow", 2000, 2000)),  # wider than the sequence
    (1, 97, 255, 2, 1, 40, 24, Case("SlidingWindow", -3, 5)),  # future-only window: empty rows
    (1, 255, 97, 4, 2, 64, 32, Case("BlockSparse", 7, 5, per_head=True, seed=2, empty_row=True)),
    (2, 97, 130, 4, 2, 64, 64, Case("BlockSparse", 16, 32, seed=1)),
]


def case_id(c):
    b, nq, nk, hq, hkv, d, dv, pat = c
    return f"B{b}-{nq}x{nk}-H{hq}/{hkv}-D{d}/{dv}-{pat!r}".replace(" ", "")


COMBOS = [("numpy", "float32"), ("torch", "float32"), ("numpy", "float16"), ("torch", "float16"),
          ("torch", "bfloat16")]


@functools.lru_cache(maxsize=None)
def _problem(ci, dtype):
    b, nq, nk, hq, hkv, d, dv, case = GRAD_CASES[ci]
    q, k, v, do = rand_qkv(b, nq, nk, hq, hkv, d, dv, seed=100 + ci)
    q, k, v, do = (round_to(x, dtype) for x in (q, k, v, do))
    pattern, mask = case.build(nq, nk, hq)
    grads = ref_backward(q, k, v, do, mask)
    naive = None if dtype == "float32" else naive_backward(q, k, v, do, mask, dtype)
    return q, k, v, do, pattern, mask, grads, naive


def _empty_rows(mask, hq):
    return ~np.broadcast_to(mask, (hq,) + mask.shape[1:]).any(-1)  # [Hq, Nq]


def _check_grads(got, q64, k64, v64, mask, grads, naive, dtype):
    for name, g, ref, nv, x in zip(("dq", "dk", "dv"), got, grads, naive or (None,) * 3, (q64, k64, v64)):
        assert tuple(g.shape) == x.shape, (name, tuple(g.shape), x.shape)
        assert str(g.dtype).split(".")[-1] == dtype, (name, g.dtype)
        assert_close(name, g, ref, dtype, nv, mult=3.0)
    empty = _empty_rows(mask, q64.shape[2])
    if empty.any():
        dq = as64(got[0]).transpose(0, 2, 1, 3)  # [B, Hq, Nq, D]
        assert (dq[:, empty] == 0).all(), "a query that sees no key must get dq = 0"


@pytest.mark.parametrize("framework,dtype", COMBOS, ids=[f"{a}-{b}" for a, b in COMBOS])
@pytest.mark.parametrize("ci", range(len(GRAD_CASES)), ids=[case_id(c) for c in GRAD_CASES])
def test_attention_backward(ci, framework, dtype):
    q64, k64, v64, do64, pattern, mask, grads, naive = _problem(ci, dtype)
    q, k, v, do = (to_framework(x, framework, dtype) for x in (q64, k64, v64, do64))
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    got = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    assert len(got) == 3
    kind = np.ndarray if framework == "numpy" else torch.Tensor
    assert all(isinstance(g, kind) for g in got), [type(g) for g in got]
    _check_grads(got, q64, k64, v64, mask, grads, naive, dtype)


@pytest.mark.parametrize("framework,dtype", [("numpy", "float32"), ("torch", "float32"), ("torch", "bfloat16")])
def test_attention_backward_noncontiguous(framework, dtype):
    # every operand a transposed [B, H, N, D] buffer, dout included
    b, nq, nk, hq, hkv, d, dv = 2, 97, 130, 4, 2, 32, 48
    rng = np.random.default_rng(20)

    def view(shape):
        buf = to_framework(rng.standard_normal((shape[0], shape[2], shape[1], shape[3])), framework, dtype)
        return buf.transpose(0, 2, 1, 3) if framework == "numpy" else buf.transpose(1, 2)

    q, k, v, do = view((b, nq, hq, d)), view((b, nk, hkv, d)), view((b, nk, hkv, dv)), view((b, nq, hq, dv))
    pattern, mask = Case("BlockSparse", 16, 32, per_head=True, seed=5).build(nq, nk, hq)
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    got = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    q64, k64, v64, do64 = (as64(x) for x in (q, k, v, do))
    grads = ref_backward(q64, k64, v64, do64, mask)
    naive = None if dtype == "float32" else naive_backward(q64, k64, v64, do64, mask, dtype)
    _check_grads(got, q64, k64, v64, mask, grads, naive, dtype)


AUTOGRAD_CASES = [1, 2, 3, 4, 7, 8, 9]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("ci", AUTOGRAD_CASES, ids=[case_id(GRAD_CASES[i]) for i in AUTOGRAD_CASES])
def test_torch_autograd(ci, dtype):
    q64, k64, v64, do64, pattern, mask, grads, naive = _problem(ci, dtype)
    q, k, v = (to_framework(x, "torch", dtype).requires_grad_() for x in (q64, k64, v64))
    do = to_framework(do64, "torch", dtype)
    out = spattn.attention(q, k, v, pattern=pattern)
    assert out.requires_grad and out.grad_fn is not None
    out.backward(do)
    _check_grads((q.grad, k.grad, v.grad), q64, k64, v64, mask, grads, naive, dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_autograd_through_transposed_views(dtype):
    # [B, H, N, D] leaves passed as x.transpose(1, 2): the gradient lands on the leaves.
    b, nq, nk, hq, hkv, d, dv = 2, 97, 130, 4, 2, 32, 48
    rng = np.random.default_rng(21)
    leaves = [torch.from_numpy(rng.standard_normal(s)).to(getattr(torch, dtype)).requires_grad_()
              for s in ((b, hq, nq, d), (b, hkv, nk, d), (b, hkv, nk, dv))]
    q, k, v = (x.transpose(1, 2) for x in leaves)
    do = torch.from_numpy(rng.standard_normal((b, nq, hq, dv))).to(getattr(torch, dtype))
    pattern, mask = Case("SlidingWindow", 40, 0).build(nq, nk, hq)
    spattn.attention(q, k, v, pattern=pattern).backward(do)
    q64, k64, v64, do64 = (as64(x) for x in (q, k, v, do))
    grads = ref_backward(q64, k64, v64, do64, mask)
    naive = None if dtype == "float32" else naive_backward(q64, k64, v64, do64, mask, dtype)
    for name, leaf, ref, nv in zip(("dq", "dk", "dv"), leaves, grads, naive or (None,) * 3):
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
        assert_close(name, leaf.grad.transpose(1, 2), ref, dtype, nv, mult=3.0)


def test_autograd_only_some_inputs_require_grad():
    q64, k64, v64, do64 = rand_qkv(1, 50, 60, 2, 1, 16, 16, seed=22)
    q = torch.from_numpy(q64).float().requires_grad_()
    k, v = torch.from_numpy(k64).float(), torch.from_numpy(v64).float()
    do = torch.from_numpy(do64).float()
    spattn.attention(q, k, v, pattern=spattn.Causal()).backward(do)
    dq, _, _ = ref_backward(as64(q), as64(k), as64(v), as64(do), window_mask(50, 60, None, 0)[None])
    assert k.grad is None and v.grad is None
    assert_close("dq", q.grad, dq, "float32")


def test_autograd_with_return_lse():
    q64, k64, v64, do64 = rand_qkv(1, 40, 40, 2, 2, 16, 16, seed=23)
    q, k, v = (torch.from_numpy(x).float().requires_grad_() for x in (q64, k64, v64))
    out, lse = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(5, 5), return_lse=True)
    assert lse.dtype == torch.float32 and tuple(lse.shape) == (1, 2, 40)
    out.backward(torch.from_numpy(do64).float())
    grads = ref_backward(q64.astype(np.float32), k64.astype(np.float32), v64.astype(np.float32),
                         do64.astype(np.float32), window_mask(40, 40, 5, 5)[None])
    for name, g, ref in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), grads):
        assert_close(name, g, ref, "float32")


def test_autograd_matches_attention_backward():
    q64, k64, v64, do64 = rand_qkv(2, 97, 97, 4, 2, 32, 32, seed=24)
    q, k, v = (torch.from_numpy(x).float().requires_grad_() for x in (q64, k64, v64))
    do = torch.from_numpy(do64).float()
    p = spattn.SlidingWindow(17, 3)
    out = spattn.attention(q, k, v, pattern=p)
    out.backward(do)
    with torch.no_grad():
        o, lse = spattn.attention(q.detach(), k.detach(), v.detach(), pattern=p, return_lse=True)
        g = spattn.attention_backward(do, q.detach(), k.detach(), v.detach(), o, lse, pattern=p)
    for a, b in zip((q.grad, k.grad, v.grad), g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_empty_rows_have_finite_zero_gradients(dtype):
    # Causal with Nq > Nk: queries 0..30 see nothing; BlockSparse with no block: nothing at all.
    q64, k64, v64, do64 = rand_qkv(1, 40, 9, 2, 1, 16, 16, seed=25)
    for pattern, n_empty in ((spattn.Causal(), 31),
                             (spattn.BlockSparse(np.zeros((1, 3, 1), dtype=bool), block_size=16), 40)):
        q, k, v = (to_framework(x, "torch", dtype).requires_grad_() for x in (q64, k64, v64))
        do = to_framework(do64, "torch", dtype)
        out = spattn.attention(q, k, v, pattern=pattern)
        out.backward(do)
        for g in (q.grad, k.grad, v.grad):
            assert torch.isfinite(g).all()
        assert (q.grad[:, :n_empty] == 0).all()
        if n_empty == 40:
            assert (k.grad == 0).all() and (v.grad == 0).all()
        # attention_backward with the lse = -inf rows
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        o, lse = spattn.attention(qd, kd, vd, pattern=pattern, return_lse=True)
        assert torch.isneginf(lse[:, :, :n_empty]).all()
        dq, dk, dv = spattn.attention_backward(do, qd, kd, vd, o, lse, pattern=pattern)
        for g in (dq, dk, dv):
            assert torch.isfinite(g).all()
        assert (dq[:, :n_empty] == 0).all()


def test_explicit_scale_backward():
    q64, k64, v64, do64 = rand_qkv(1, 60, 60, 2, 1, 16, 16, seed=26)
    q, k, v, do = (x.astype(np.float32) for x in (q64, k64, v64, do64))
    mask = window_mask(60, 60, 9, 0)[None]
    p = spattn.SlidingWindow(9, 0)
    out, lse = spattn.attention(q, k, v, pattern=p, scale=0.4, return_lse=True)
    got = spattn.attention_backward(do, q, k, v, out, lse, pattern=p, scale=0.4)
    for name, g, ref in zip(("dq", "dk", "dv"), got, ref_backward(q, k, v, do, mask, scale=0.4)):
        assert_close(name, g, ref, "float32")


# ------------------------------------------------------------------------------------------
# the test's own reference, checked against torch float64 autograd
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nq,nk,hq,hkv,left,right", [(7, 5, 4, 2, None, 0), (6, 9, 3, 1, 2, 1), (5, 5, 2, 2, -1, 2)])
def test_reference_gradients_match_torch_float64_autograd(nq, nk, hq, hkv, left, right):
    q64, k64, v64, do64 = rand_qkv(2, nq, nk, hq, hkv, 5, 3, seed=27)
    mask = window_mask(nq, nk, left, right)[None]
    q, k, v = (torch.from_numpy(x).requires_grad_() for x in (q64, k64, v64))
    out = naive_torch(q, k, v, mask)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.from_numpy(do64))
    for a, b in zip(ref_backward(q64, k64, v64, do64, mask), (dq, dk, dv)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
