"""float64 on the CPU (issue 13): torch.autograd.gradcheck through spattn's torch path, the
float64 forward against the numpy float64 reference at 1e-12, numpy/DLPack float64 inputs,
opcheck in float64, and the eager fast path bit-identical to the registered operators."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spattn  # noqa: E402
from spattn import torch_ops  # noqa: E402

OPS = torch.ops.spattn


def _patterns(hq, nq=11, nk=13):
    gen = np.random.default_rng(1)
    blocks = (hq, -(-nq // 8), -(-nk // 8))
    return {
        "window-causal": spattn.SlidingWindow(4, 0),
        "bidirectional-asymmetric": spattn.SlidingWindow(2, 5),
        "blocksparse-per-head": spattn.BlockSparse(gen.random(blocks) < 0.7, block_size=8),
        "union-sink-global": spattn.SlidingWindow(3, 0) | spattn.Sink(2) | spattn.Global([5]),
        "dilated": spattn.Dilated(6, 0, 2),
        "strided": spattn.Strided(3),
        "perhead": spattn.PerHead([spattn.Causal(), spattn.Strided(4, causal=False)] * (hq // 2)),
    }


def _qkv(b=1, nq=11, nk=13, hq=2, hkv=1, d=3, dv=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda n, h, e: torch.randn(b, n, h, e, generator=gen, dtype=torch.float64)  # noqa: E731
    return [t.requires_grad_() for t in (mk(nq, hq, d), mk(nk, hkv, d), mk(nk, hkv, dv))]


@pytest.mark.parametrize("name", list(_patterns(2)))
def test_gradcheck_float64(name):
    # GQA (2 query heads on 1 kv head), Nq != Nk, Dv != D; gradients of q, k and v.
    pattern = _patterns(2)[name]
    q, k, v = _qkv()
    fn = lambda q, k, v: spattn.attention(q, k, v, pattern=pattern)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_float64_batch_and_scale():
    q, k, v = _qkv(b=2, nq=9, nk=9, hq=4, hkv=2, seed=3)
    pattern = spattn.SlidingWindow(3, 1) | spattn.Strided(4)
    fn = lambda q, k, v: spattn.attention(q, k, v, pattern=pattern, scale=0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_float64_through_the_registered_operator():
    # The same check through spattn::attention_forward and its registered autograd.
    q, k, v = _qkv(seed=5)
    spec, data = torch_ops.pattern_spec(spattn.SlidingWindow(3, 0) | spattn.Sink(1))
    fn = lambda q, k, v: OPS.attention_forward(q, k, v, spec, data, None, None, None)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_float64_varlen():
    gen = torch.Generator().manual_seed(7)
    cu_q, cu_k = torch.tensor([0, 5, 12], dtype=torch.int32), torch.tensor([0, 7, 13], dtype=torch.int32)
    q = torch.randn(12, 2, 3, generator=gen, dtype=torch.float64).requires_grad_()
    k = torch.randn(13, 1, 3, generator=gen, dtype=torch.float64).requires_grad_()
    v = torch.randn(13, 1, 2, generator=gen, dtype=torch.float64).requires_grad_()
    pattern = spattn.SlidingWindow(3, 0)
    fn = lambda q, k, v: spattn.attention(q, k, v, pattern=pattern, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_lse_is_float64_and_gradchecks_through_lse_free_paths():
    q, k, v = _qkv()
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64 and not lse.requires_grad


@pytest.mark.parametrize("name", list(_patterns(2)))
def test_float64_forward_matches_numpy_reference_to_1e12(name):
    pattern = _patterns(2, 70, 83)[name]
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((2, 70, 2, 5)), rng.standard_normal((2, 83, 1, 5)), rng.standard_normal((2, 83, 1, 4))
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    ref_out, ref_lse = spattn.reference_attention(q, k, v, pattern=pattern, return_lse=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and lse.dtype == np.float64
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-13)
    seen = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), seen)
    np.testing.assert_allclose(lse[seen], ref_lse[seen], rtol=1e-12, atol=1e-13)


def test_float64_backward_matches_torch_autograd_of_a_dense_masked_reference():
    pattern = spattn.SlidingWindow(5, 2) | spattn.Global([0])
    q, k, v = _qkv(b=2, nq=70, nk=70, hq=4, hkv=2, d=5, dv=4, seed=9)
    mask = torch.from_numpy(pattern.mask(70, 70, heads=4))  # [H, Nq, Nk] (or [1, ...])
    kk, vv = (t.repeat_interleave(2, dim=2) for t in (k, v))
    s = torch.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(5)
    ref = torch.einsum("bhij,bjhd->bihd", torch.softmax(s.masked_fill(~mask, -torch.inf), -1), vv)
    dout = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    out = spattn.attention(q, k, v, pattern=pattern)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


def test_float64_numpy_and_dlpack_inputs():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 40, 2, 8)) for _ in range(3))
    pattern = spattn.SlidingWindow(6, 0)
    ref = spattn.reference_attention(q, k, v, pattern=pattern)
    out_np = spattn.attention(q, k, v, pattern=pattern)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float64
    np.testing.assert_allclose(out_np, ref, rtol=1e-12, atol=1e-13)

    class Foreign:  # any DLPack producer: only __dlpack__ and __dlpack_device__
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    out_f = spattn.attention(Foreign(q), Foreign(k), Foreign(v), pattern=pattern)
    np.testing.assert_array_equal(np.from_dlpack(out_f), out_np)
    out_t = spattn.attention(*(torch.from_numpy(x) for x in (q, k, v)), pattern=pattern)
    np.testing.assert_array_equal(out_t.numpy(), out_np)


def test_float64_decode_merge_and_backward_direct():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((2, 3, 4, 8))
    kc, vc = rng.standard_normal((2, 50, 2, 8)), rng.standard_normal((2, 50, 2, 6))
    lens = np.array([50, 31], dtype=np.int32)
    pattern = spattn.SlidingWindow(9, 0) | spattn.Sink(2)
    out, lse = spattn.decode(q, kc, vc, lens, pattern=pattern, return_lse=True)
    assert out.dtype == np.float64 and lse.dtype == np.float64
    for b in range(2):
        n = lens[b]
        ref = spattn.reference_attention(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], pattern=pattern)
        np.testing.assert_allclose(out[b:b + 1], ref, rtol=1e-12, atol=1e-13)
    # paged: pages of 8 keys in a shuffled table
    perm = rng.permutation(14)
    kp, vp = np.zeros((14, 8, 2, 8)), np.zeros((14, 8, 2, 6))
    table = np.zeros((2, 7), dtype=np.int32)
    for b in range(2):
        for c in range(7):
            page = perm[b * 7 + c]
            table[b, c] = page
            kp[page, : len(kc[b, c * 8:(c + 1) * 8])] = kc[b, c * 8:(c + 1) * 8]
            vp[page, : len(vc[b, c * 8:(c + 1) * 8])] = vc[b, c * 8:(c + 1) * 8]
    out_p = spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table)
    np.testing.assert_allclose(out_p, out, rtol=1e-13, atol=1e-14)
    # merge of two disjoint key sets equals attention over both
    qq, kk, vv = (rng.standard_normal((1, 20, 2, 4)) for _ in range(3))
    o1, l1 = spattn.attention(qq, kk[:, :9], vv[:, :9], pattern=spattn.Dense(), return_lse=True)
    o2, l2 = spattn.attention(qq, kk[:, 9:], vv[:, 9:], pattern=spattn.Dense(), return_lse=True)
    om, lm = spattn.merge([o1, o2], [l1, l2])
    ro, rl = spattn.reference_attention(qq, kk, vv, pattern=spattn.Dense(), return_lse=True)
    np.testing.assert_allclose(om, ro, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lm, rl, rtol=1e-12, atol=1e-13)
    # the public backward on numpy float64 arrays
    dout = rng.standard_normal(o1.shape)
    dq, dk, dv = spattn.attention_backward(dout, qq, kk[:, :9], vv[:, :9], o1, l1, pattern=spattn.Dense())
    assert dq.dtype == dk.dtype == dv.dtype == np.float64


def test_float64_refusals_are_clear():
    q = np.zeros((1, 16, 1, 8))
    with pytest.raises(TypeError, match=r"q: expected float32, float16 or bfloat16, got float64 \(TopKBlocks"):
        spattn.attention(q, q, q, pattern=spattn.TopKBlocks(1, block_size=8))
    with pytest.raises(TypeError, match="k_cache: expected float32, float16 or bfloat16, got float64"):
        spattn.pool_keys(q, [16], 8)
    with pytest.raises(TypeError, match=r"lse: expected float64, got float32"):
        spattn.attention_backward(q, q, q, q, q, np.zeros((1, 1, 16), np.float32))


@pytest.mark.parametrize("name", ["window-causal", "blocksparse-per-head", "union-sink-global", "dilated"])
def test_opcheck_float64(name):
    q, k, v = _qkv(b=2, nq=20, nk=24, hq=2, hkv=1, d=4, dv=4)
    spec, data = torch_ops.pattern_spec(_patterns(2, 20, 24)[name])
    torch.library.opcheck(OPS.attention_forward.default, (q, k, v, spec, data, None, None, None))
    out, lse = OPS.attention_forward(q.detach(), k.detach(), v.detach(), spec, data, None, None, None)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, spec, data, 0.4, None, None)
    torch.library.opcheck(OPS.attention_backward.default, args)


def test_opcheck_float64_decode_and_merge():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 2, 2, 4, generator=gen, dtype=torch.float64)
    kc, vc = (torch.randn(2, 30, 1, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    cl = torch.tensor([30, 17], dtype=torch.int32)
    spec, data = torch_ops.pattern_spec(spattn.SlidingWindow(5, 0))
    torch.library.opcheck(OPS.decode.default, (q, kc, vc, cl, spec, data, None, None, None))
    o1, l1 = OPS.decode(q, kc, vc, cl, spec, data, None, None, None)
    o2, l2 = OPS.decode(q, vc, kc, cl, spec, data, None, None, None)
    torch.library.opcheck(OPS.merge.default, ([o1, o2], [l1, l2]))


# -- the eager fast path and the registered operators: the same bits --------------------------------


def _op_path(q, k, v, pattern, **kw):
    """spattn.attention forced through the registered operators (as under tracing)."""
    spec, data = torch_ops.pattern_spec(pattern)
    cu = kw.get("cu")
    return OPS.attention_forward(q, k, v, spec, data, kw.get("scale"), *(cu or (None, None)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", ["window-causal", "blocksparse-per-head", "union-sink-global", "dilated"])
def test_eager_fast_path_is_bit_identical_to_the_operators(dtype, name):
    pattern = _patterns(4, 70, 70)[name]
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 70, h, 16, generator=gen).to(dtype) for h in (4, 2, 2))
    dout = torch.randn(2, 70, 4, 16, generator=gen).to(dtype)
    leaves = lambda: [t.clone().requires_grad_() for t in (q, k, v)]  # noqa: E731

    a = leaves()
    out, lse = spattn.attention(*a, pattern=pattern, scale=0.3, return_lse=True)
    assert "EagerAttention" in type(out.grad_fn).__name__  # the fast path ran
    out.backward(dout)
    b = leaves()
    ref_out, ref_lse = _op_path(*b, pattern, scale=0.3)
    assert "spattn_attention_forward" in type(ref_out.grad_fn).__name__
    ref_out.backward(dout)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse) and not lse.requires_grad
    for x, y in zip(a, b):
        assert torch.equal(x.grad, y.grad)
    # without grad: the direct call, out alone or with lse
    with torch.no_grad():
        assert torch.equal(spattn.attention(*a, pattern=pattern, scale=0.3), ref_out)
    o2, l2 = spattn.attention(q, k, v, pattern=pattern, scale=0.3, return_lse=True)
    assert o2.grad_fn is None and torch.equal(o2, ref_out) and torch.equal(l2, ref_lse)
    g = spattn.attention_backward(dout, q, k, v, ref_out.detach(), ref_lse, pattern=pattern, scale=0.3)
    spec, data = torch_ops.pattern_spec(pattern)
    g_op = OPS.attention_backward(dout, q, k, v, ref_out.detach(), ref_lse, spec, data, 0.3, None, None)
    assert all(torch.equal(x, y) for x, y in zip(g, g_op))


def test_eager_fast_path_varlen_decode_and_merge_match_the_operators():
    gen = torch.Generator().manual_seed(12)
    cu = torch.tensor([0, 30, 75], dtype=torch.int32)
    q, k, v = (torch.randn(75, h, 8, generator=gen) for h in (2, 1, 1))
    pattern = spattn.SlidingWindow(9, 0)
    out, lse = spattn.attention(q, k, v, pattern=pattern, cu_seqlens_q=cu, cu_seqlens_k=cu, return_lse=True)
    ref_out, ref_lse = _op_path(q, k, v, pattern, cu=(cu, cu))
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)

    qd = torch.randn(2, 2, 4, 8, generator=gen)
    kc, vc = (torch.randn(2, 40, 2, 8, generator=gen) for _ in range(2))
    cl = torch.tensor([40, 23], dtype=torch.int32)
    spec, data = torch_ops.pattern_spec(pattern)
    o, l = spattn.decode(qd, kc, vc, cl, pattern=pattern, return_lse=True)
    ro, rl = OPS.decode(qd, kc, vc, cl, spec, data, None, None, None)
    assert torch.equal(o, ro) and torch.equal(l, rl)
    m = spattn.merge([o, ro * 2], [l, rl - 1])
    rm = OPS.merge([o, ro * 2], [l, rl - 1])
    assert all(torch.equal(x, y) for x, y in zip(m, rm))


def test_operators_run_under_a_dispatch_mode_and_for_subclasses():
    # A dispatch mode (here FakeTensor's) sees the operator, not the core: shapes come from the
    # fake implementation, float64 lse included.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 9, 2, 4, dtype=torch.float64)
        out, lse = spattn.attention(q, q, q, pattern=spattn.Causal(), return_lse=True)
        assert out.shape == (1, 9, 2, 4) and lse.shape == (1, 2, 9) and lse.dtype == torch.float64
    assert not torch_ops._eager(torch.zeros(1).as_subclass(_Sub))
    assert torch_ops._eager(torch.zeros(1), torch.nn.Parameter(torch.zeros(1)))


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize("pattern", [spattn.Dilated(255, 0, 4), spattn.Strided(32),
                                     spattn.SlidingWindow(63, 0) | spattn.Dilated(127, 0, 4)],
                         ids=["dilated", "strided", "window|dilated"])
def test_float64_residue_classes_and_union_parts_match_dense_autograd(pattern):
    # Long enough for the planner's residue split and union parts (merged by a float64 lse,
    # gradients summed in float64).
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 1024, 2, 8, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    out = spattn.attention(q, k, v, pattern=pattern)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    mask = torch.from_numpy(pattern.mask(1024, 1024, heads=2))
    s = torch.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(8)
    ref = torch.einsum("bhij,bjhd->bihd", torch.softmax(s.masked_fill(~mask, -torch.inf), -1), v)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    for g, r in zip(grads, torch.autograd.grad(ref, (q, k, v), dout)):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


# ---- score modifiers in float64 (docs/score_modifiers.md): softcap, ALiBi, sinks -------------


def _sinks(hq, seed=11):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(hq, generator=gen, dtype=torch.float64).requires_grad_()


def _slopes(hq):
    return torch.tensor([0.5 / (h + 1) for h in range(hq)], dtype=torch.float64)


def _gradcheck_mods(q, k, v, pattern, softcap=None, alibi_slopes=None, sinks=None, **kw):
    """gradcheck over q, k, v and (when given) the sinks, with the modifiers in the call."""
    inputs = (q, k, v) if sinks is None else (q, k, v, sinks)

    def fn(q, k, v, s=None):
        return spattn.attention(q, k, v, pattern=pattern, softcap=softcap, alibi_slopes=alibi_slopes,
                                sinks=s, **kw)

    return torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", list(_patterns(2)))
def test_gradcheck_float64_with_all_score_modifiers(name):
    # GQA (2 query heads on 1 kv head), Nq != Nk, Dv != D; softcap, ALiBi and sinks together,
    # gradients of q, k, v and the sinks. softcap 1.2 is small enough to bend these scores.
    q, k, v = _qkv(seed=12)
    assert _gradcheck_mods(q, k, v, _patterns(2)[name], softcap=1.2, alibi_slopes=_slopes(2), sinks=_sinks(2))


@pytest.mark.parametrize("mods", ["softcap", "alibi", "sinks", "sinks-one-off"])
def test_gradcheck_float64_each_modifier_alone(mods):
    q, k, v = _qkv(b=2, hq=4, hkv=2, seed=13)
    kw = {"softcap": dict(softcap=0.8), "alibi": dict(alibi_slopes=_slopes(4)),
          "sinks": dict(sinks=_sinks(4)),
          # a head without a sink (-inf): no mass, and a zero gradient for it
          "sinks-one-off": dict(sinks=torch.tensor([0.3, -torch.inf, 1.0, -0.5], dtype=torch.float64,
                                                   requires_grad=True))}[mods]
    assert _gradcheck_mods(q, k, v, spattn.SlidingWindow(3, 1) | spattn.Global([2]), scale=0.9, **kw)


@pytest.mark.parametrize("pattern", [spattn.Dilated(9, 0, 2), spattn.Strided(2),
                                     spattn.SlidingWindow(4, 0) | spattn.Dilated(8, 0, 2)],
                         ids=["dilated", "strided", "window|dilated"])
def test_gradcheck_float64_modifiers_through_the_residue_split(pattern):
    # Nq = 64 >= 32 d (d = 2): the planner runs the residue windows as classes on row-strided
    # views, where ALiBi's rel is mapped onto the class's rows (rel_step, rel_base), and Nq != Nk
    # shifts it; a union runs as parts, the sinks joining the first part only.
    q, k, v = _qkv(nq=64, nk=69, hq=2, hkv=1, d=2, dv=2, seed=14)
    assert _gradcheck_mods(q, k, v, pattern, softcap=1.5, alibi_slopes=_slopes(2), sinks=_sinks(2))


def test_gradcheck_float64_modifiers_varlen():
    gen = torch.Generator().manual_seed(15)
    cu_q, cu_k = torch.tensor([0, 5, 12, 12], dtype=torch.int32), torch.tensor([0, 7, 13, 16], dtype=torch.int32)
    q = torch.randn(12, 2, 3, generator=gen, dtype=torch.float64).requires_grad_()
    k = torch.randn(16, 1, 3, generator=gen, dtype=torch.float64).requires_grad_()
    v = torch.randn(16, 1, 2, generator=gen, dtype=torch.float64).requires_grad_()
    assert _gradcheck_mods(q, k, v, spattn.SlidingWindow(3, 0), softcap=1.1, alibi_slopes=_slopes(2),
                           sinks=_sinks(2), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def _dense_modified(q, k, v, mask, scale, softcap, slopes, sinks):
    """The definition of docs/score_modifiers.md in torch float64, autograd-able (GQA by repeat)."""
    g = q.shape[2] // k.shape[2]
    kk, vv = (t.repeat_interleave(g, dim=2) for t in (k, v))
    nq, nk = q.shape[1], k.shape[1]
    s = torch.einsum("bihd,bjhd->bhij", q, kk) * scale
    s = softcap * torch.tanh(s / softcap)
    rel = (torch.arange(nq)[:, None] + nk - nq) - torch.arange(nk)[None, :]
    s = s - slopes[:, None, None] * rel.abs()
    s = s.masked_fill(~mask, -torch.inf)
    both = torch.cat([s, sinks[None, :, None, None].expand(*s.shape[:3], 1)], dim=-1)
    p = torch.softmax(both, -1)[..., :-1]
    return torch.einsum("bhij,bjhd->bihd", p, vv), torch.logsumexp(both, -1)


@pytest.mark.parametrize("pattern", [spattn.Dilated(255, 0, 4), spattn.Strided(32),
                                     spattn.SlidingWindow(63, 0) | spattn.Dilated(127, 0, 4)],
                         ids=["dilated", "strided", "window|dilated"])
def test_float64_modifiers_in_residue_classes_and_union_parts_match_dense_autograd(pattern):
    # Long enough for the residue split and union parts at their real sizes, Nq != Nk, GQA.
    gen = torch.Generator().manual_seed(16)
    q = torch.randn(1, 1000, 4, 8, generator=gen, dtype=torch.float64).requires_grad_()
    k, v = (torch.randn(1, 1030, 2, 8, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    sinks, slopes = _sinks(4, seed=17), _slopes(4) / 16
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True, softcap=2.0, alibi_slopes=slopes,
                                sinks=sinks)
    mask = torch.from_numpy(pattern.mask(1000, 1030, heads=4))
    ref, ref_lse = _dense_modified(q, k, v, mask, 8 ** -0.5, 2.0, slopes, sinks)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(lse, ref_lse.detach(), rtol=1e-12, atol=1e-13)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, sinks), dout)
    for g, r in zip(grads, torch.autograd.grad(ref, (q, k, v, sinks), dout)):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


def test_float64_modifiers_in_decode_and_empty_rows_match_the_reference():
    rng = np.random.default_rng(18)
    q = rng.standard_normal((2, 3, 4, 8))
    kc, vc = rng.standard_normal((2, 20, 2, 8)), rng.standard_normal((2, 20, 2, 5))
    lens = np.array([17, 0], dtype=np.int32)  # the second sequence sees no key: lse = the sink
    sinks, slopes = rng.standard_normal(4), rng.random(4)
    sinks[1] = -np.inf
    mods = dict(softcap=1.3, alibi_slopes=slopes, sinks=sinks)
    out, lse = spattn.decode(q, kc, vc, lens, pattern=spattn.SlidingWindow(6, 0), return_lse=True, **mods)
    assert out.dtype == np.float64 and lse.dtype == np.float64
    ref, ref_lse = spattn.reference_attention(q[:1], kc[:1, :17], vc[:1, :17], spattn.SlidingWindow(6, 0),
                                              return_lse=True, **mods)
    np.testing.assert_allclose(out[:1], ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse[:1], ref_lse, rtol=1e-12, atol=1e-13)
    assert (out[1] == 0).all() and np.array_equal(lse[1], np.broadcast_to(sinks[:, None], (4, 3)))


def test_float64_modifier_arrays_are_float64_and_dsinks_too():
    # The per-head arrays take lse's dtype: float64 inputs keep their slopes and sinks unrounded
    # (a gradient check perturbs them by 1e-6) and get dsinks in float64.
    rng = np.random.default_rng(19)
    q, k, v = (rng.standard_normal((1, 8, 2, 4)) for _ in range(3))
    sinks = np.array([0.1 + 1e-9, -0.2])
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True, sinks=sinks)
    dq, dk, dv, dsinks = spattn.attention_backward(np.ones_like(out), q, k, v, out, lse, pattern=spattn.Causal(),
                                                   sinks=sinks)
    assert dsinks.dtype == np.float64 and dsinks.shape == (2,)
    ref, ref_lse = spattn.reference_attention(q, k, v, spattn.Causal(), return_lse=True, sinks=sinks)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-14, atol=0)
    d = np.einsum("bihd,bihd->bhi", np.ones_like(out), ref)
    np.testing.assert_allclose(dsinks, -(np.exp(sinks[None, :, None] - ref_lse) * d).sum(axis=(0, 2)), rtol=1e-12)
    with pytest.raises(TypeError, match="float64 inputs take float64 modifiers"):
        # the core itself (the Python layer converts): float32 sinks with float64 inputs
        spattn._core.forward(q, k, v, spattn.Causal()._core(), sinks=np.zeros(2, np.float32))


def test_float64_merge_with_sinks_equals_attention_with_sinks():
    # merge(..., sinks=) adds the sink part in the lses' dtype (float64 here), as attention does.
    rng = np.random.default_rng(20)
    q, k, v = rng.standard_normal((1, 5, 2, 4)), rng.standard_normal((1, 12, 1, 4)), rng.standard_normal((1, 12, 1, 3))
    sinks = np.array([0.4, -1.3])
    parts = [spattn.attention(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in ((0, 7), (7, 12))]
    merged, lse = spattn.merge([o for o, _ in parts], [l for _, l in parts], sinks=sinks)
    want, want_lse = spattn.attention(q, k, v, return_lse=True, sinks=sinks)
    assert merged.dtype == np.float64 and lse.dtype == np.float64
    np.testing.assert_allclose(merged, want, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-13, atol=1e-14)
