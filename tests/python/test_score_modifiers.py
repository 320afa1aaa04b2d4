"""Score modifiers (softcap, ALiBi, sinks) against the float64 reference spattn.reference_attention
(checked here once against the definitions written out by hand, and its gradients against
finite differences): forward, lse, backward (dq, dk, dv, dsinks), decode, GQA, varlen, several
patterns, the three dtypes; torch autograd and opcheck; the errors."""
import math

import numpy as np
import pytest

import spattn
from _helpers import as64, assert_close, eps
from modifier_ref import ref_modified

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# The reference: ref_modified (modifier_ref.py), spattn.reference_attention and the chain rule.


def test_the_reference_on_a_hand_written_case():
    # The definitions of docs/score_modifiers.md written out as scalar loops, independent of the
    # reference's vectorised form: Nq=2 < Nk=3 (rel = i + 1 - j), GQA (2 query heads on 1 kv
    # head), a causal mask, each row with its own sink (head 1: none).
    q = [[[0.3, -1.2], [0.8, 0.5]], [[-0.7, 0.9], [1.5, -0.4]]]  # [i][h][d]
    k = [[[1.0, 0.2]], [[-0.6, 1.1]], [[0.4, -0.9]]]              # [j][g][d]
    v = [[[0.5]], [[-2.0]], [[1.25]]]                              # [j][g][dv]
    scale, cap, slopes, sinks = 0.8, 1.1, [0.3, 0.7], [0.25, -math.inf]
    out, lse = spattn.reference_attention(np.array([q]), np.array([k]), np.array([v]), spattn.Causal(), scale,
                                          True, softcap=cap, alibi_slopes=slopes, sinks=sinks)
    for i in range(2):
        for h in range(2):
            terms = []
            for j in range(3):
                rel = i + 3 - 2 - j
                if rel < 0:  # causal: keys after the query's aligned position are masked
                    continue
                x = scale * sum(a * b for a, b in zip(q[i][h], k[j][0]))
                x = cap * math.tanh(x / cap) - slopes[h] * abs(rel)
                terms.append((math.exp(x), v[j][0][0]))
            z = sum(e for e, _ in terms) + math.exp(sinks[h])
            assert lse[0, h, i] == pytest.approx(math.log(z), rel=1e-14)
            assert out[0, i, h, 0] == pytest.approx(sum(e * x for e, x in terms) / z, rel=1e-13)


def test_reference_gradients_match_finite_differences():
    # The reference's analytic gradients, checked once against central differences of its
    # own forward (so that every other test's reference is right).
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 5, 2, 3)), rng.standard_normal((1, 6, 1, 3)), rng.standard_normal((1, 6, 1, 2))
    do = rng.standard_normal((1, 5, 2, 2))
    pattern = spattn.SlidingWindow(3, 0)
    kw = dict(scale=0.7, softcap=1.3, slopes=[0.25, 0.5], sinks=np.array([0.3, -0.4]))
    _, _, grads = ref_modified(q, k, v, pattern, dout=do, **kw)

    def loss(q, k, v, sinks):
        o, _ = ref_modified(q, k, v, pattern, **{**kw, "sinks": sinks})
        return float((o * do).sum())

    args = [q, k, v, kw["sinks"]]
    for idx, g in enumerate(grads):
        x = args[idx]
        num = np.zeros_like(x)
        for pos in np.ndindex(x.shape):
            hi, lo = [a.copy() for a in args], [a.copy() for a in args]
            hi[idx][pos] += 1e-6
            lo[idx][pos] -= 1e-6
            num[pos] = (loss(*hi) - loss(*lo)) / 2e-6
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Inputs and tolerances


def _case(b=2, nq=97, nk=131, hq=4, hkv=2, d=32, dv=24, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, nq, hq, d))
    k = rng.standard_normal((b, nk, hkv, d))
    v = rng.standard_normal((b, nk, hkv, dv))
    do = rng.standard_normal((b, nq, hq, dv))
    slopes = 2.0 ** (-8.0 * (np.arange(hq) + 1) / hq)  # ALiBi's geometric slopes
    sinks = rng.standard_normal(hq) + 1.0
    return q, k, v, do, slopes, sinks


def _to(x, dtype):
    return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))


def _rounded(x, dtype):
    return as64(_to(x, dtype))


MODS = {
    "softcap": dict(softcap=2.5),
    "alibi": dict(alibi=True),
    "sinks": dict(sinks=True),
    "softcap+alibi": dict(softcap=2.5, alibi=True),
    "all": dict(softcap=2.5, alibi=True, sinks=True),
}


def _kw(mod, slopes, sinks):
    return dict(softcap=mod.get("softcap"), alibi_slopes=slopes if mod.get("alibi") else None,
                sinks=sinks if mod.get("sinks") else None)


def _check(name, got, ref, dtype, naive_err):
    """float32: the suite's fixed relative rule; float16/bfloat16: within 2x the error of the
    same float64 math on the rounded inputs, plus FlashAttention's ulp-at-0.3 slack. Half
    precision has its own rounding of out, so naive_err is the rounding error of ref itself."""
    if dtype == "float32":
        assert_close(name, got, ref, dtype)
    else:
        assert_close(name, got, ref, dtype, naive=ref + naive_err, mult=2.0)


def _naive_err(ref, dtype):
    # what rounding the reference to dtype costs, elementwise (the floor of any low-precision result)
    return np.abs(_rounded(ref, dtype) - ref) + eps(dtype) * np.abs(ref).max()


PATTERNS = {
    "dense": spattn.Dense(),
    "causal": spattn.Causal(),
    "window": spattn.SlidingWindow(40, 3),
    "blocksparse": spattn.BlockSparse(np.random.default_rng(5).random((4, 2, 3)) < 0.6, block_size=(64, 64)),
    "union": spattn.SlidingWindow(20, 0) | spattn.Global([0, 77]),
    "dilated": spattn.Dilated(8, 0, 3),
    "window|strided": spattn.SlidingWindow(10, 0) | spattn.Strided(7),
    "logsparse": spattn.LogSparse(5),  # the CPU's sparse-rows path (rows over their key lists)
    "empty-rows": spattn.BlockSparse(np.array([[[True, False, False], [False, False, False]]]), block_size=(64, 64)),
}


# float32 on every pattern; float16 and bfloat16 on a subset
CASES = [(p, m, "float32") for p in PATTERNS for m in MODS] + [
    (p, m, dt) for p in ("causal", "window", "union", "logsparse", "empty-rows") for m in MODS
    for dt in ("float16", "bfloat16")]


@pytest.mark.parametrize("pname,mod,dtype", CASES)
def test_forward_and_backward_match_the_reference(pname, mod, dtype):
    q, k, v, do, slopes, sinks = _case(seed=hash((pname, mod)) % 1000)
    pattern = PATTERNS[pname]
    m = MODS[mod]
    kw = _kw(m, slopes, sinks)
    scale = 0.3
    args = [_rounded(x, dtype) for x in (q, k, v, do)]
    ref_out, ref_lse, (rdq, rdk, rdv, rds) = ref_modified(*args[:3], pattern, scale, softcap=kw["softcap"],
                                                          slopes=kw["alibi_slopes"], sinks=kw["sinks"], dout=args[3])
    qt, kt, vt, dot = (_to(x, dtype) for x in (q, k, v, do))
    out, lse = spattn.attention(qt, kt, vt, pattern=pattern, scale=scale, return_lse=True, **kw)
    _check("out", out, ref_out, dtype, _naive_err(ref_out, dtype))
    got_lse = as64(lse)
    assert np.array_equal(np.isneginf(got_lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(got_lse[fin], ref_lse[fin], rtol=1e-5, atol=1e-4 if dtype == "float32" else 2e-2)
    if pname == "empty-rows":  # rows 64.. keep no key: out 0, lse = the sink (or -inf)
        assert np.all(as64(out)[:, 64:] == 0)
        want = np.broadcast_to((sinks if kw["sinks"] is not None else np.full(4, -np.inf))[None, :, None], (2, 4, 33))
        np.testing.assert_allclose(got_lse[:, :, 64:], want.astype(np.float32), rtol=1e-6)
    grads = spattn.attention_backward(dot, qt, kt, vt, out, lse, pattern=pattern, scale=scale, **kw)
    assert len(grads) == (4 if kw["sinks"] is not None else 3)
    mult_err = lambda r: _naive_err(r, dtype) * 4  # noqa: E731  (gradients go through more roundings)
    for name, g, r in zip(("dq", "dk", "dv"), grads, (rdq, rdk, rdv)):
        _check(name, g, r, dtype, mult_err(r))
    if kw["sinks"] is not None:
        ds = as64(grads[3])
        assert grads[3].dtype == torch.float32 and ds.shape == (4,)
        tol = (1e-4 if dtype == "float32" else 5e-2) * max(1.0, np.abs(rds).max())
        np.testing.assert_allclose(ds, rds, atol=tol)


@pytest.mark.parametrize("simd", ["portable", "avx2", "avx512"])
def test_every_simd_level(simd, monkeypatch):
    # The kernels are compiled per instruction set: each level computes the modifiers. A level
    # is chosen once per process, so each runs in a child.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys, numpy as np, spattn
        sys.path.insert(0, {repr(__import__('os').path.dirname(__file__))})
        from test_score_modifiers import _case, ref_modified
        q, k, v, do, slopes, sinks = _case(nq=70, nk=90, seed=3)
        f = lambda x: np.ascontiguousarray(x, np.float32)
        for pat in (spattn.Causal(), spattn.SlidingWindow(30, 0) | spattn.Global([5]), spattn.LogSparse(3)):
            ro, rl, (dq, dk, dv, ds) = ref_modified(f(q), f(k), f(v), pat, 0.3, 2.0, slopes, sinks, dout=f(do))
            o, l = spattn.attention(f(q), f(k), f(v), pattern=pat, scale=0.3, return_lse=True, softcap=2.0,
                                    alibi_slopes=slopes, sinks=sinks)
            g = spattn.attention_backward(f(do), f(q), f(k), f(v), o, l, pattern=pat, scale=0.3, softcap=2.0,
                                          alibi_slopes=slopes, sinks=sinks)
            for a, r in zip((o, l, *g), (ro, rl, dq, dk, dv, ds)):
                assert np.abs(np.asarray(a, np.float64) - r).max() < 1e-4 * max(1, np.abs(r).max()), spattn.info()["cpu_simd"]
        print(spattn.info()["cpu_simd"])
    """)
    env = dict(__import__("os").environ, SPATTN_SIMD=simd)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_varlen_topk_and_gqa():
    q, k, v, do, slopes, sinks = _case(b=1, nq=150, nk=150, hq=6, hkv=3, seed=7)
    kw = dict(softcap=3.0, alibi_slopes=slopes[:6] if len(slopes) >= 6 else 2.0 ** -np.arange(1, 7), sinks=np.r_[sinks, sinks][:6])
    f = lambda x: np.ascontiguousarray(x[0], np.float32)  # noqa: E731  varlen: [T, H, D]
    cu = np.array([0, 40, 40, 150], np.int32)
    pat = spattn.Causal()
    out, lse = spattn.attention(f(q), f(k), f(v), pattern=pat, return_lse=True, cu_seqlens_q=cu, cu_seqlens_k=cu, **kw)
    g = spattn.attention_backward(f(do), f(q), f(k), f(v), out, lse, pattern=pat, cu_seqlens_q=cu, cu_seqlens_k=cu, **kw)
    dsum = 0
    for a, b in ((0, 40), (40, 150)):
        sl = lambda x: x[:, a:b]  # noqa: E731
        ro, rl, (dq, dk, dv, ds) = ref_modified(sl(q), sl(k), sl(v), pat, 1 / np.sqrt(32),
                                                kw["softcap"], kw["alibi_slopes"], kw["sinks"], dout=sl(do))
        np.testing.assert_allclose(np.asarray(out)[a:b], ro[0], atol=2e-5)
        np.testing.assert_allclose(np.asarray(lse)[:, a:b], rl[0], atol=2e-5)
        for got, r in zip(g[:3], (dq, dk, dv)):
            np.testing.assert_allclose(np.asarray(got)[a:b], r[0], atol=5e-5)
        dsum = dsum + ds
    np.testing.assert_allclose(np.asarray(g[3]), dsum, atol=1e-4)
    # TopKBlocks runs the chosen concrete pattern with the same modifiers
    top = spattn.TopKBlocks(1, block_size=32, always=spattn.Sink(2))
    q4, k4, v4 = (np.ascontiguousarray(x, np.float32) for x in (q, k, v))
    got = spattn.attention(q4, k4, v4, pattern=top, **kw)
    chosen = top.select(q4, k4)[0]
    want = spattn.attention(q4, k4, v4, pattern=chosen, **kw)
    np.testing.assert_array_equal(got, want)
    ro, _ = ref_modified(q4, k4, v4, chosen, 1 / np.sqrt(32), kw["softcap"],
                         kw["alibi_slopes"], kw["sinks"])
    np.testing.assert_allclose(got, ro, atol=2e-5)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("mod", list(MODS))
def test_decode(mod, paged):
    rng = np.random.default_rng(11)
    B, nq, hq, hkv, d, cap = 3, 2, 4, 2, 32, 700
    lens = np.array([700, 65, 2], np.int32)
    q = rng.standard_normal((B, nq, hq, d)).astype(np.float32)
    kc = rng.standard_normal((B, cap, hkv, d)).astype(np.float32)
    vc = rng.standard_normal((B, cap, hkv, d)).astype(np.float32)
    slopes = (2.0 ** -np.arange(1, hq + 1)).astype(np.float32)
    sinks = rng.standard_normal(hq).astype(np.float32)
    kw = _kw(MODS[mod], slopes, sinks)
    pattern = spattn.SlidingWindow(300, 0) | spattn.Sink(4)
    if paged:
        ps = 64
        pages = (cap + ps - 1) // ps
        perm = rng.permutation(B * pages).astype(np.int32)
        table = perm.reshape(B, pages)
        kp = np.zeros((B * pages, ps, hkv, d), np.float32)
        vp = np.zeros_like(kp)
        for b in range(B):
            for c in range(pages):
                n = min(ps, cap - c * ps)
                kp[table[b, c], :n], vp[table[b, c], :n] = kc[b, c * ps:c * ps + n], vc[b, c * ps:c * ps + n]
        out, lse = spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True, **kw)
    else:
        out, lse = spattn.decode(q, kc, vc, lens, pattern=pattern, return_lse=True, **kw)
    for b in range(B):
        n = int(lens[b])
        ro, rl = ref_modified(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], pattern, 1 / np.sqrt(d),
                              kw["softcap"], kw["alibi_slopes"], kw["sinks"])
        np.testing.assert_allclose(np.asarray(out)[b], ro[0], atol=3e-5)
        np.testing.assert_allclose(np.asarray(lse)[b], rl[0], atol=3e-5)
        # decode equals attention on the valid keys (with the same modifiers)
        ao = spattn.attention(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], pattern=pattern, **kw)
        np.testing.assert_allclose(np.asarray(out)[b:b + 1], ao, atol=3e-6)


def test_empty_cache_with_sinks():
    q = np.ones((1, 1, 2, 8), np.float32)
    kc = np.zeros((1, 4, 1, 8), np.float32)
    out, lse = spattn.decode(q, kc, kc, [0], return_lse=True, sinks=np.array([0.5, -np.inf], np.float32))
    assert np.all(np.asarray(out) == 0)
    assert np.asarray(lse)[0, 0, 0] == np.float32(0.5) and np.isneginf(np.asarray(lse)[0, 1, 0])


# ---------------------------------------------------------------------------------------------
# torch


def _torch_case(dtype=torch.float32, grad=True, hq=4):
    q, k, v, do, slopes, sinks = _case(b=2, nq=50, nk=61, hq=hq, hkv=2, d=16, dv=16, seed=21)
    mk = lambda x: torch.from_numpy(x).to(dtype).requires_grad_(grad)  # noqa: E731
    return mk(q), mk(k), mk(v), torch.from_numpy(do).to(dtype), torch.from_numpy(slopes), torch.from_numpy(sinks)


@pytest.mark.parametrize("sink_dtype", [torch.float32, torch.bfloat16])
def test_torch_autograd_gives_the_sinks_gradient(sink_dtype):
    q, k, v, do, slopes, sinks = _torch_case()
    sinks = sinks.to(sink_dtype).requires_grad_()
    slopes.requires_grad_(False)
    pattern = spattn.SlidingWindow(20, 0)
    out = spattn.attention(q, k, v, pattern=pattern, softcap=2.0, alibi_slopes=slopes, sinks=sinks)
    out.backward(do)
    assert sinks.grad is not None and sinks.grad.dtype == sink_dtype
    _, _, (dq, dk, dv, ds) = ref_modified(as64(q), as64(k), as64(v), pattern, 0.25, 2.0, as64(slopes),
                                          as64(sinks), dout=as64(do))
    for got, r in zip((q.grad, k.grad, v.grad), (dq, dk, dv)):
        np.testing.assert_allclose(as64(got), r, atol=5e-5)
    np.testing.assert_allclose(as64(sinks.grad), ds, atol=5e-4 if sink_dtype == torch.float32 else 0.1)


def test_torch_no_gradient_for_constants_and_no_sinks():
    q, k, v, do, slopes, sinks = _torch_case()
    out = spattn.attention(q, k, v, pattern=spattn.Causal(), softcap=3.0, alibi_slopes=slopes.requires_grad_())
    out.backward(do)
    assert slopes.grad is None  # ALiBi slopes are constants: no gradient
    assert q.grad is not None


def test_opcheck_with_modifiers():
    from spattn import torch_ops

    ops = torch.ops.spattn
    q, k, v, do, slopes, sinks = _torch_case(grad=True)
    slopes, sinks = slopes.float(), sinks.float().requires_grad_()  # the operators take float32
    for pattern in (spattn.Causal(), spattn.SlidingWindow(9, 0) | spattn.Global([3])):
        spec, data = torch_ops.pattern_spec(pattern)
        args = (q, k, v, spec, data, 0.3, None, None, 2.0, slopes, sinks)
        torch.library.opcheck(ops.attention_forward.default, args)
        out, lse = ops.attention_forward(*args)
        bargs = (do, q.detach(), k.detach(), v.detach(), out.detach(), lse, spec, data, 0.3, None, None, 2.0, slopes,
                 sinks.detach())
        torch.library.opcheck(ops.attention_backward.default, bargs)
    qd = torch.randn(2, 1, 4, 16)
    kc = torch.randn(2, 70, 2, 16)
    cl = torch.tensor([70, 33], dtype=torch.int32)
    spec, data = torch_ops.pattern_spec(spattn.Causal())
    torch.library.opcheck(ops.decode.default, (qd, kc, kc, cl, spec, data, None, None, None, 2.0, slopes,
                                               sinks.detach()))


def test_torch_compile_fullgraph_with_modifiers():
    q, k, v, do, slopes, sinks = _torch_case()
    sinks = torch.nn.Parameter(sinks.clone())
    pattern = spattn.SlidingWindow(15, 0)

    def f(q, k, v, sinks):
        return spattn.attention(q, k, v, pattern=pattern, softcap=5.0, alibi_slopes=slopes, sinks=sinks)

    torch._dynamo.reset()
    explain = torch._dynamo.explain(f)(q, k, v, sinks)
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v, sinks)
    out.backward(do)
    grads = [t.grad.clone() for t in (q, k, v, sinks)]
    for t in (q, k, v, sinks):
        t.grad = None
    f(q, k, v, sinks).backward(do)
    for g, t in zip(grads, (q, k, v, sinks)):
        torch.testing.assert_close(g, t.grad)


# ---------------------------------------------------------------------------------------------
# Errors


def test_errors_name_the_argument():
    q = np.zeros((1, 8, 4, 16), np.float32)
    with pytest.raises(ValueError, match="softcap"):
        spattn.attention(q, q[:, :, :2], q[:, :, :2], softcap=0.0)
    with pytest.raises(ValueError, match="softcap"):
        spattn.attention(q, q, q, softcap=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        spattn.attention(q, q, q, softcap=float("inf"))
    with pytest.raises(TypeError, match="softcap"):
        spattn.attention(q, q, q, softcap="big")
    with pytest.raises(ValueError, match=r"alibi_slopes: expected shape \[4\]"):
        spattn.attention(q, q, q, alibi_slopes=np.ones(3))
    with pytest.raises(ValueError, match=r"sinks: expected shape \[4\]"):
        spattn.attention(q, q, q, sinks=np.ones((1, 4)))
    with pytest.raises(ValueError, match="alibi_slopes: expected finite"):
        spattn.attention(q, q, q, alibi_slopes=np.array([0, 1, np.nan, 0]))
    with pytest.raises(ValueError, match="sinks: expected finite"):
        spattn.attention(q, q, q, sinks=np.array([0, np.inf, 0, 0]))
    with pytest.raises(TypeError, match="sinks"):
        spattn.attention(q, q, q, sinks=np.array(["a"] * 4))
    with pytest.raises(TypeError, match="alibi_slopes"):
        spattn.attention(q, q, q, alibi_slopes=object())
    # a sink of -inf is no sink: the plain result
    np.testing.assert_array_equal(spattn.attention(q + 1, q, q + 2, sinks=np.full(4, -np.inf)),
                                  spattn.attention(q + 1, q, q + 2))
    with pytest.raises(TypeError, match="sinks"):  # torch: a wrong dtype at the operator
        spattn.attention(torch.zeros(1, 8, 4, 16), torch.zeros(1, 8, 4, 16), torch.zeros(1, 8, 4, 16),
                         sinks=torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="sinks"):
        spattn.decode(q[:, :1], q, q, [8], sinks=np.ones(2))


# ---------------------------------------------------------------------------------------------
# merge, distributed, JAX


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_merge_counts_the_sinks_once(framework):
    q, k, v, _, slopes, sinks = _case(b=1, nq=30, nk=80, hq=4, hkv=4, d=16, dv=16, seed=31)
    f = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    q, k, v, sinks = f(q), f(k), f(v), f(sinks)
    kw = dict(softcap=4.0, alibi_slopes=f(slopes))
    full, full_lse = spattn.attention(q, k, v, return_lse=True, sinks=sinks, **kw)
    # a caller's own split of the keys: ALiBi needs each part's keys at their global positions,
    # so the parts here are computed over all keys with a pattern each (disjoint key sets)
    parts = [spattn.BlockSparse(np.array([[[True, False]]]), block_size=(64, 40)),
             spattn.BlockSparse(np.array([[[False, True]]]), block_size=(64, 40))]
    outs, lses = zip(*(spattn.attention(q, k, v, pattern=p, return_lse=True, **kw) for p in parts))
    conv = (lambda x: torch.from_numpy(np.asarray(x))) if framework == "torch" else np.asarray
    o, lse = spattn.merge([conv(x) for x in outs], [conv(x) for x in lses], sinks=conv(sinks))
    np.testing.assert_allclose(as64(o), full, atol=2e-6)
    np.testing.assert_allclose(as64(lse), full_lse, atol=2e-6)
    with pytest.raises(ValueError, match="sinks"):
        spattn.merge([conv(x) for x in outs], [conv(x) for x in lses], sinks=conv(sinks[:3]))


def test_distributed_refuses_modifiers_clearly():
    from spattn import distributed

    q = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="score modifiers"):
        distributed.attention(q, q, q, sinks=torch.zeros(2))


def test_jax_attention_and_decode_with_modifiers():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import spattn.jax as sj

    q, k, v, do, slopes, sinks = _case(b=1, nq=40, nk=40, hq=4, hkv=2, d=16, dv=16, seed=41)
    f = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
    pattern = spattn.SlidingWindow(9, 0)
    kw = dict(softcap=2.0, alibi_slopes=f(slopes))

    def loss(q, k, v, s):
        return (sj.attention(q, k, v, pattern, scale=0.3, sinks=s, **kw) * f(do)).sum()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(f(q), f(k), f(v), f(sinks))
    _, _, ref = ref_modified(*(np.asarray(x, np.float32) for x in (q, k, v)), pattern, 0.3, 2.0, slopes,
                             np.asarray(sinks, np.float32), dout=do)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(np.asarray(g), r, atol=1e-4)
    out = sj.decode(f(q[:, -2:]), f(k), f(v), jnp.array([40], jnp.int32), pattern, sinks=f(sinks), **kw)
    want = spattn.attention(np.asarray(q[:, -2:], np.float32), np.asarray(k, np.float32), np.asarray(v, np.float32),
                            pattern=pattern, sinks=np.asarray(sinks, np.float32), softcap=2.0,
                            alibi_slopes=np.asarray(slopes, np.float32))
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-6)


@pytest.mark.parametrize("pattern", [spattn.Dilated(6, 2, 5), spattn.Strided(7, causal=False),
                                     spattn.SlidingWindow(10, 0) | spattn.Strided(7)],
                         ids=["dilated", "strided", "window|strided"])
def test_residue_classes_and_union_parts(pattern):
    # Large enough that the planner runs residue classes (row-strided views: ALiBi's rel in the
    # whole problem's coordinates) and, for the union, parts merged by lse (the sink counted once).
    q, k, v, do, slopes, sinks = _case(b=1, nq=300, nk=333, hq=2, hkv=1, d=16, dv=16, seed=51)
    f = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    kw = dict(softcap=1.5, alibi_slopes=f(slopes), sinks=f(sinks))
    out, lse = spattn.attention(f(q), f(k), f(v), pattern=pattern, scale=0.5, return_lse=True, **kw)
    g = spattn.attention_backward(f(do), f(q), f(k), f(v), out, lse, pattern=pattern, scale=0.5, **kw)
    ro, rl, ref = ref_modified(f(q), f(k), f(v), pattern, 0.5, 1.5, f(slopes), f(sinks),
                               dout=f(do))
    np.testing.assert_allclose(out, ro, atol=2e-5)
    np.testing.assert_allclose(lse, rl, atol=2e-5)
    for got, r in zip(g, ref):
        np.testing.assert_allclose(np.asarray(got), r, atol=1e-4 * max(1, np.abs(r).max()))


@pytest.mark.parametrize("pattern", [
    spattn.LongNet(segments=(64, 256), dilations=(1, 4)),        # by levels without modifiers
    spattn.Neighborhood((16, 24), (5, 7)),
    spattn.SlidingTile((16, 16), (4, 4), 3),
    spattn.Document([0, 100, 260, 384]) & spattn.Causal(),
    spattn.PrefixLM(40),
    spattn.LogSparse(local=8),
], ids=["longnet", "neighborhood", "slidingtile", "document&causal", "prefixlm", "logsparse"])
def test_issue15_patterns_with_modifiers(pattern):
    # The new patterns take the modifiers like every other: forward, lse and gradients (the
    # sinks' too) against the float64 reference on the pattern's own mask (Nq = Nk = 384).
    q, k, v, do, slopes, sinks = _case(b=1, nq=384, nk=384, hq=4, hkv=2, d=16, dv=16, seed=52)
    f = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    kw = dict(softcap=2.0, alibi_slopes=f(slopes), sinks=f(sinks))
    out, lse = spattn.attention(f(q), f(k), f(v), pattern=pattern, scale=0.5, return_lse=True, **kw)
    g = spattn.attention_backward(f(do), f(q), f(k), f(v), out, lse, pattern=pattern, scale=0.5, **kw)
    ro, rl, ref = ref_modified(f(q), f(k), f(v), pattern, 0.5, 2.0, f(slopes), f(sinks),
                               dout=f(do))
    np.testing.assert_allclose(out, ro, atol=2e-5)
    np.testing.assert_allclose(lse, rl, atol=2e-5)
    assert len(g) == 4
    for got, r in zip(g, ref):
        np.testing.assert_allclose(np.asarray(got), r, atol=1e-4 * max(1, np.abs(r).max()))
