"""spattn's torch operators (spattn.torch_ops): opcheck on every operator, torch.compile with
fullgraph=True and no graph break, gradcheck, and the same results as the direct path."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spattn  # noqa: E402
from spattn import api, torch_ops  # noqa: E402

OPS = torch.ops.spattn


DEVICES = ["cpu", "cuda"]


def _need(device, info_key="cuda_kernels"):
    # Asked inside the test (never at collection): a GPU and a CUDA build of spattn.
    if device == "cuda":
        from _helpers import cuda_torch_or_skip

        cuda_torch_or_skip(info_key)


def _patterns(hq):
    gen = np.random.default_rng(0)
    return {
        "causal": spattn.Causal(),
        "window|global": spattn.SlidingWindow(7, 0) | spattn.Global([0, 21]),
        "blocksparse-per-head": spattn.BlockSparse(gen.random((hq, 3, 3)) < 0.6, block_size=16),
        "perhead": spattn.PerHead([spattn.Dilated(4, 0, 2), spattn.Strided(5) | spattn.Sink(2)] * (hq // 2)),
        "topk": spattn.TopKBlocks(1, block_size=16, always=spattn.Sink(3)),
    }


def _qkv(dtype, device, b=2, nq=40, nk=45, hq=4, hkv=2, d=16, grad=True):
    gen = torch.Generator().manual_seed(0)
    mk = lambda n, h: torch.randn(b, n, h, d, generator=gen).to(dtype=dtype, device=device)  # noqa: E731
    q, k, v = mk(nq, hq), mk(nk, hkv), mk(nk, hkv)
    # torch's usual [B, H, N, D] passed as a transposed view, as users do
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(_patterns(4)))
def test_opcheck_attention_forward(device, dtype, name):
    if device == "cuda":
        if name not in ("causal", "window|global", "blocksparse-per-head"):
            pytest.skip("CUDA: the block-walk patterns; the CPU covers the rest")
        _need(device, "cuda_backward_kernels")
    q, k, v = _qkv(dtype, device, d=16 if device == "cpu" else 64)
    spec, data = torch_ops.pattern_spec(_patterns(4)[name])
    torch.library.opcheck(OPS.attention_forward.default, (q, k, v, spec, data, None, None, None))


@pytest.mark.parametrize("name", ["causal", "blocksparse-per-head"])
def test_opcheck_attention_backward(name):
    q, k, v = _qkv(torch.float32, "cpu", grad=False)
    spec, data = torch_ops.pattern_spec(_patterns(4)[name])
    out, lse = OPS.attention_forward(q, k, v, spec, data, 0.3, None, None)
    dout = torch.randn_like(out)
    torch.library.opcheck(OPS.attention_backward.default, (dout, q, k, v, out, lse, spec, data, 0.3, None, None))


def test_opcheck_varlen():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(50, 4, 16, generator=gen).requires_grad_() for _ in range(3))
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    spec, data = torch_ops.pattern_spec(spattn.SlidingWindow(5, 0))
    torch.library.opcheck(OPS.attention_forward.default, (q, k, v, spec, data, None, cu, cu))


def test_opcheck_decode_and_merge():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 2, 4, 16, generator=gen)
    kc, vc = (torch.randn(2, 70, 2, 16, generator=gen) for _ in range(2))
    cl = torch.tensor([70, 33], dtype=torch.int32)
    for pattern in (spattn.Causal(), spattn.Sink(2) | spattn.SlidingWindow(9, 0)):
        spec, data = torch_ops.pattern_spec(pattern)
        torch.library.opcheck(OPS.decode.default, (q, kc, vc, cl, spec, data, None, None, None))
    o1, l1 = OPS.attention_forward(q, kc[:, :30], vc[:, :30], "dense", [], None, None, None)
    o2, l2 = OPS.attention_forward(q, kc[:, 30:], vc[:, 30:], "dense", [], None, None, None)
    torch.library.opcheck(OPS.merge.default, ([o1, o2], [l1, l2]))


@pytest.mark.parametrize("device", DEVICES)
def test_decode_compiles_with_fullgraph_and_no_graph_break(device):
    """spattn.decode inside torch.compile(fullgraph=True): cache_len (and block_table) as a
    tensor, a numpy array or a list all trace into the one operator call, with no graph break,
    and give the eager results (contiguous and paged caches, lse too)."""
    _need(device, "cuda_decode")
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 4, 16, generator=gen).to(device)
    kc, vc = (torch.randn(2, 40, 2, 16, generator=gen).to(device) for _ in range(2))
    kp, vp = kc.reshape(10, 8, 2, 16), vc.reshape(10, 8, 2, 16)
    table = torch.arange(10, dtype=torch.int32).reshape(2, 5).flip(1).contiguous()
    kp, vp = kp[table.flatten().argsort()], vp[table.flatten().argsort()]  # pages out of order
    table = table.to(device)
    pattern = spattn.Sink(2) | spattn.SlidingWindow(7, 0)

    def step(q, kc, vc, cache_len, block_table):
        out, lse = spattn.decode(q, kc, vc, cache_len, pattern=pattern, block_table=block_table, return_lse=True)
        return out * 2, lse

    lens = [40, 17]
    for cache, cl in (
        ((kc, vc, None), torch.tensor(lens, dtype=torch.int32, device=device)),
        ((kc, vc, None), torch.tensor(lens, dtype=torch.int64)),
        ((kc, vc, None), np.array(lens, np.int32)),
        ((kc, vc, None), lens),
        ((kp, vp, table), torch.tensor(lens, dtype=torch.int32, device=device)),
        ((kp, vp, table), lens),
    ):
        args = (q, cache[0], cache[1], cl, cache[2])
        explained = torch._dynamo.explain(step)(*args)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
        torch._dynamo.reset()
        want = step(*args)
        got = torch.compile(step, fullgraph=True)(*args)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    # The paged cache holds the same keys: equal up to the order of sums.
    torch.testing.assert_close(step(q, kp, vp, lens, table)[0], step(q, kc, vc, lens, None)[0])
    # A list with a float is refused while tracing too (as the eager path refuses it).
    with pytest.raises(Exception, match="cache_len: expected int32 lengths"):
        torch.compile(step, fullgraph=True)(q, kc, vc, [40, 17.5], None)


@pytest.mark.parametrize("name", list(_patterns(4)))
def test_public_functions_match_the_direct_path(name):
    # Eager calls take the fast path (torch_ops._eager); test_gradcheck.py checks it against the
    # operators bit for bit, and the tests below run the operators under tracing.
    pattern = _patterns(4)[name]
    q, k, v = _qkv(torch.float32, "cpu")
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    assert out.grad_fn is not None and "EagerAttention" in type(out.grad_fn).__name__
    assert not lse.requires_grad  # lse carries no gradient (as in FlashAttention)
    ref_out, ref_lse = api._forward(q, k, v, pattern, None, None, True, None)
    assert torch.equal(out.detach(), ref_out) and torch.equal(lse, ref_lse)
    dout = torch.randn_like(out)
    out.backward(dout)
    dq, dk, dv = api._backward(dout, q, k, v, out, lse, pattern, None, None)
    assert torch.equal(q.grad, dq) and torch.equal(k.grad, dk) and torch.equal(v.grad, dv)
    g = spattn.attention_backward(dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, pattern=pattern)
    assert all(torch.equal(a, b) for a, b in zip(g, (dq, dk, dv)))


def test_pattern_spec_round_trips_through_the_text_syntax():
    from spattn.pattern_syntax import parse

    layout = np.random.default_rng(3).random((4, 3, 6)) < 0.5
    pattern = spattn.TopKBlocks(2, (16, 32), causal=False, always=spattn.Sink(1) | spattn.Global([2, 5]))
    for p in [*_patterns(4).values(), spattn.BlockSparse(layout, (16, 8)) & spattn.Causal(), pattern,
              spattn.SlidingWindow(None, 3), spattn.Fixed(8, 2, causal=False), spattn.BigBird(8, 3, 1, 2, seed=7)]:
        spec, data = torch_ops.pattern_spec(p)
        again = parse(spec, data=[t.numpy() for t in data])
        assert torch_ops.pattern_spec(again)[0] == spec
        if not isinstance(p, spattn.TopKBlocks):
            assert np.array_equal(again.mask(40, 45, heads=4), p.mask(40, 45, heads=4))
    # an operator given a fresh data tensor (not the pattern's own) parses it
    fresh = torch.from_numpy(layout[:, :, :3].copy())
    q, k, v = _qkv(torch.float32, "cpu", grad=False)
    out, _ = OPS.attention_forward(q, k, v, "layout(@0,16,16)", [fresh], None, None, None)
    assert torch.equal(out, spattn.attention(q, k, v, pattern=spattn.BlockSparse(layout[:, :, :3], 16)))
    fresh[0] = ~fresh[0]  # a write bumps its version: the operator sees the new layout
    out2, _ = OPS.attention_forward(q, k, v, "layout(@0,16,16)", [fresh], None, None, None)
    assert torch.equal(out2, spattn.attention(q, k, v, pattern=spattn.BlockSparse(fresh.numpy().copy(), 16)))


class _Layer(torch.nn.Module):
    def __init__(self, dim, heads, pattern):
        super().__init__()
        self.heads, self.pattern = heads, pattern
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).unbind(2)
        # a pattern given as None is made here, inside the traced function, as users write it
        pattern = self.pattern if self.pattern is not None else spattn.Global([1, 5]) | spattn.Strided(4)
        o = spattn.attention(q, k, v, pattern=pattern, scale=0.25)
        return x + self.proj(o.reshape(b, n, -1))


def _model(dim):
    torch.manual_seed(0)
    layout = torch.rand(4, 4, 4) < 0.5
    return torch.nn.Sequential(
        _Layer(dim, 4, spattn.Sink(2) | spattn.SlidingWindow(15, 0)),
        _Layer(dim, 4, spattn.BlockSparse(layout, block_size=16) | spattn.Global([0, 7])),
        _Layer(dim, 4, None),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_model_compiles_with_fullgraph_and_no_graph_break(device):
    _need(device, "cuda_backward_kernels")
    # CUDA: head dim 64 (a compiled one), bfloat16
    dtype, dim = (torch.float32, 32) if device == "cpu" else (torch.bfloat16, 256)
    model = _model(dim).to(device=device, dtype=dtype)
    x = torch.randn(2, 60, dim, device=device, dtype=dtype, requires_grad=True)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons

    def run(m):
        out = m(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
        return out, grads

    eager_out, eager_grads = run(model)
    compiled = torch.compile(model, fullgraph=True)  # inductor: the custom ops stay calls
    out, grads = run(compiled)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, eager_out, rtol=tol, atol=tol)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_meta_tensors_get_shapes_from_the_fake_implementation():
    # torch's 'meta' device: shapes without data (models built on it, shape propagation)
    q = torch.empty(2, 40, 4, 16, device="meta")
    k = torch.empty(2, 45, 2, 16, device="meta")
    v = torch.empty(2, 45, 2, 8, device="meta")
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
    assert out.device.type == "meta" and out.shape == (2, 40, 4, 8) and lse.shape == (2, 4, 40)
    assert lse.dtype == torch.float32
    with pytest.raises(ValueError, match="q: expected 4 dimensions"):
        spattn.attention(q[0], k, v)


def test_a_pattern_without_text_form_crosses_by_index():
    class Mine(spattn.Pattern):  # a user's own pattern class: no text form
        def _build(self):
            return spattn.SlidingWindow(6, 0)._core()

    pattern = Mine() | spattn.Sink(1)
    spec, data = torch_ops.pattern_spec(pattern)
    assert spec.startswith("#") and data == []
    q, k, v = _qkv(torch.float32, "cpu")
    out = spattn.attention(q, k, v, pattern=pattern)
    ref = spattn.attention(q.detach(), k.detach(), v.detach(), pattern=spattn.SlidingWindow(6, 0) | spattn.Sink(1))
    assert torch.equal(out.detach(), ref)
    out.sum().backward()
    assert q.grad is not None
