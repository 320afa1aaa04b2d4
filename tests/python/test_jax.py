"""spattn.jax: attention and decode under jax.jit / jax.grad / jax.vmap against a jnp reference."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import spattn  # noqa: E402
import spattn.jax as sj  # noqa: E402


def _ref(q, k, v, pattern):
    """Masked softmax attention in jnp (float32), GQA by repeating kv heads."""
    nq, hq, nk, hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    mask = jnp.asarray(pattern.mask(nq, nk, heads=hq))  # [Hq, Nq, Nk]
    k, v = jnp.repeat(k, hq // hkv, axis=2), jnp.repeat(v, hq // hkv, axis=2)
    s = jnp.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(mask[None], s, -jnp.inf)
    p = jnp.where(mask[None], jax.nn.softmax(s, axis=-1), 0.0)
    return jnp.einsum("bhij,bjhd->bihd", p, v)


def _qkv(nq=37, nk=45, hq=4, hkv=2, d=16):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(keys[0], (2, nq, hq, d)), jax.random.normal(keys[1], (2, nk, hkv, d)),
            jax.random.normal(keys[2], (2, nk, hkv, d)))


PATTERNS = {
    "causal": spattn.Causal(),
    "sink|window": spattn.Sink(2) | spattn.SlidingWindow(7, 0),
    "perhead": spattn.PerHead([spattn.Strided(3), spattn.Dense(), spattn.SlidingWindow(4, 4), spattn.Causal()]),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_forward_and_gradients_under_jit_match_jnp(name):
    pattern = PATTERNS[name]
    q, k, v = _qkv()
    out = jax.jit(lambda q, k, v: sj.attention(q, k, v, pattern=pattern))(q, k, v)
    np.testing.assert_allclose(out, _ref(q, k, v, pattern), rtol=1e-5, atol=2e-6)

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * jnp.cos(jnp.arange(16.0))).sum()

    got = jax.jit(jax.grad(loss(lambda q, k, v: sj.attention(q, k, v, pattern=pattern)), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(lambda q, k, v: _ref(q, k, v, pattern)), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_lse_vmap_bfloat16_and_errors():
    assert spattn.jax is sj  # reachable without importing the submodule
    q, k, v = _qkv()
    out, lse = sj.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
    assert out.shape == (2, 37, 4, 16) and lse.shape == (2, 4, 37) and lse.dtype == jnp.float32
    batched = jax.vmap(lambda q: sj.attention(q, k, v, pattern=spattn.Causal()))(jnp.stack([q, 2 * q]))
    np.testing.assert_allclose(batched[0], out, rtol=1e-6, atol=1e-6)
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ob = sj.attention(qb, kb, vb, pattern=spattn.Causal())
    assert ob.dtype == jnp.bfloat16
    np.testing.assert_allclose(ob.astype(jnp.float32), _ref(qb.astype(jnp.float32), kb.astype(jnp.float32),
                                                            vb.astype(jnp.float32), spattn.Causal()), atol=2e-2)
    with pytest.raises(ValueError, match="q"):
        sj.attention(q[0], k, v)


def test_decode_matches_attention_on_each_sequence():
    q, k, v = _qkv(nq=2, nk=50)
    cache_len = jnp.array([50, 23], dtype=jnp.int32)
    pattern = spattn.Sink(1) | spattn.SlidingWindow(9, 0)
    out = jax.jit(lambda q, k, v, n: sj.decode(q, k, v, n, pattern=pattern))(q, k, v, cache_len)
    for b, n in enumerate([50, 23]):
        want = _ref(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], pattern)
        np.testing.assert_allclose(out[b : b + 1], want, rtol=1e-5, atol=2e-6)


def test_runs_as_xla_ffi_custom_calls():
    from spattn import _core

    if not _core.xla_ffi_targets("cpu"):
        pytest.skip("this spattn was built without jaxlib's FFI headers (SPATTN_JAX=ON pip install .)")
    assert sj.backend() == "xla_ffi"
    q, k, v = _qkv()
    fn = jax.grad(lambda q, k, v: sj.attention(q, k, v, pattern=spattn.Causal()).sum(), argnums=(0, 1, 2))
    hlo = jax.jit(fn).lower(q, k, v).as_text()
    assert "spattn_forward" in hlo and "spattn_backward" in hlo
    # the core's own checks come back as errors naming the argument
    with pytest.raises(RuntimeError, match="Hkv"):  # JaxRuntimeError, the core's message
        jax.block_until_ready(sj.attention(q, k[:, :, :1].repeat(3, axis=2), v))


def test_decode_paged_matches_contiguous():
    q, k, v = _qkv(nq=1, nk=48)
    pages_k = k.reshape(2 * 6, 8, 2, 16)  # sequence b's keys in pages 6b .. 6b+5
    pages_v = v.reshape(2 * 6, 8, 2, 16)
    table = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    cache_len = jnp.array([48, 30], dtype=jnp.int32)
    want = sj.decode(q, k, v, cache_len, pattern=spattn.SlidingWindow(15, 0))
    got = jax.jit(lambda *a: sj.decode(*a[:4], block_table=a[4], pattern=spattn.SlidingWindow(15, 0)))(
        q, pages_k, pages_v, cache_len, table)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---- score modifiers (docs/score_modifiers.md) through the same FFI targets -----------------


def _ref_mod(q, k, v, pattern, scale=None, softcap=None, slopes=None, sinks=None):
    """The modified attention in jnp, differentiable in q, k, v and the sinks: s = scale q.k,
    s = c tanh(s / c), s -= slope_h |i + Nk - Nq - j|, then the sink as one more logit per row
    that takes mass and adds no value. Every row here keeps a key (no -inf-only rows)."""
    nq, hq, nk, hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    mask = jnp.asarray(pattern.mask(nq, nk, heads=hq))
    k, v = jnp.repeat(k, hq // hkv, axis=2), jnp.repeat(v, hq // hkv, axis=2)
    s = jnp.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    if slopes is not None:
        rel = (jnp.arange(nq)[:, None] + nk - nq) - jnp.arange(nk)[None, :]
        s = s - slopes[:, None, None] * jnp.abs(rel)
    s = jnp.where(mask[None], s, -jnp.inf)
    if sinks is not None:
        s = jnp.concatenate([s, jnp.broadcast_to(sinks[None, :, None, None], (*s.shape[:3], 1)).astype(s.dtype)], -1)
    p = jax.nn.softmax(s, axis=-1)
    if sinks is not None:
        p = p[..., :-1]
    return jnp.einsum("bhij,bjhd->bihd", p, v)


MODS = {
    "softcap": dict(softcap=1.5),
    "alibi": dict(alibi_slopes=True),
    "sinks": dict(sinks=True),
    "all": dict(softcap=1.5, alibi_slopes=True, sinks=True),
}


def _mod_args(mod, hq, dtype=jnp.float32):
    slopes = jnp.asarray(2.0 ** (-np.arange(1, hq + 1)), dtype)
    sinks = jnp.asarray(np.linspace(-0.5, 1.0, hq), dtype)
    m = MODS[mod]
    return m.get("softcap"), slopes if "alibi_slopes" in m else None, sinks if "sinks" in m else None


@pytest.mark.parametrize("mod", list(MODS))
@pytest.mark.parametrize("name", ["causal", "sink|window"])
def test_modifiers_forward_and_gradients_under_jit_match_jnp(name, mod):
    pattern = PATTERNS[name]
    q, k, v = _qkv()
    cap, slopes, sinks = _mod_args(mod, 4)
    weights = jnp.cos(jnp.arange(16.0))

    def ours(q, k, v, s):
        return sj.attention(q, k, v, pattern=pattern, scale=0.3, softcap=cap, alibi_slopes=slopes, sinks=s)

    def ref(q, k, v, s):
        return _ref_mod(q, k, v, pattern, 0.3, cap, slopes, s)

    out = jax.jit(ours)(q, k, v, sinks)
    np.testing.assert_allclose(out, ref(q, k, v, sinks), rtol=1e-5, atol=2e-6)
    argnums = (0, 1, 2, 3) if sinks is not None else (0, 1, 2)
    got = jax.jit(jax.grad(lambda *a: (ours(*a) * weights).sum(), argnums=argnums))(q, k, v, sinks)
    want = jax.grad(lambda *a: (ref(*a) * weights).sum(), argnums=argnums)(q, k, v, sinks)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_modifiers_run_as_xla_ffi_custom_calls_without_a_host_callback():
    from spattn import _core

    if not _core.xla_ffi_targets("cpu"):
        pytest.skip("this spattn was built without jaxlib's FFI headers (SPATTN_JAX=ON pip install .)")
    q, k, v = _qkv()
    cap, slopes, sinks = _mod_args("all", 4)
    fn = jax.grad(lambda q, s: sj.attention(q, k, v, pattern=spattn.Causal(), softcap=cap, alibi_slopes=slopes,
                                            sinks=s).sum(), argnums=(0, 1))
    hlo = jax.jit(fn).lower(q, sinks).as_text()
    assert "spattn_forward" in hlo and "spattn_backward" in hlo
    assert "callback" not in hlo.lower()
    dec = jax.jit(lambda q: sj.decode(q, k, v, jnp.array([45, 9], jnp.int32), pattern=spattn.Causal(),
                                      softcap=cap, alibi_slopes=slopes, sinks=sinks)).lower(q[:, :2]).as_text()
    assert "spattn_decode" in dec and "callback" not in dec.lower()


def test_modifiers_through_the_host_callback_equal_the_ffi_path(monkeypatch):
    # The fallback (no FFI targets, or a JAX whose default backend is not the CPU) takes the
    # same operands: same results, gradients and vmap.
    q, k, v = _qkv()
    cap, slopes, sinks = _mod_args("all", 4)
    pattern = spattn.Sink(2) | spattn.SlidingWindow(7, 0)

    def run():
        def loss(q, s):
            return (sj.attention(q, k, v, pattern=pattern, softcap=cap, alibi_slopes=slopes, sinks=s) ** 2).sum()

        batched = jax.vmap(lambda q: sj.attention(q, k, v, pattern=pattern, softcap=cap, sinks=sinks))(
            jnp.stack([q, 2 * q]))
        dec = sj.decode(q[:, :2], k, v, jnp.array([45, 9], jnp.int32), pattern=pattern, softcap=cap,
                        alibi_slopes=slopes, sinks=sinks, return_lse=True)
        return (*jax.jit(jax.grad(loss, argnums=(0, 1)))(q, sinks), batched, *dec)

    first = run()
    monkeypatch.setattr(sj, "backend", lambda: "pure_callback")
    second = run()
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("paged", [False, True])
def test_decode_with_modifiers_matches_jnp(paged):
    q, k, v = _qkv(nq=2, nk=48)
    cache_len = jnp.array([48, 21], dtype=jnp.int32)
    cap, slopes, sinks = _mod_args("all", 4)
    pattern = spattn.Sink(1) | spattn.SlidingWindow(9, 0)
    kw = dict(pattern=pattern, softcap=cap, alibi_slopes=slopes, sinks=sinks)
    if paged:
        table = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
        out = jax.jit(lambda q, k, v, n, t: sj.decode(q, k, v, n, block_table=t, **kw))(
            q, k.reshape(12, 8, 2, 16), v.reshape(12, 8, 2, 16), cache_len, table)
    else:
        out = jax.jit(lambda q, k, v, n: sj.decode(q, k, v, n, **kw))(q, k, v, cache_len)
    for b, n in enumerate([48, 21]):  # rel is each sequence's own: i + n - Nq - j
        want = _ref_mod(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], pattern, None, cap, slopes, sinks)
        np.testing.assert_allclose(out[b : b + 1], want, rtol=1e-5, atol=2e-6)


def test_float64_under_x64_with_modifiers():
    # jax_enable_x64: float64 inputs run spattn's float64 kernel, the slopes and sinks in float64
    # too, and the gradients (the sinks' included) match the jnp reference to float64 precision.
    with jax.enable_x64(True):
        q, k, v = (x.astype(jnp.float64) for x in _qkv(nq=13, nk=17, d=8))
        cap, slopes, sinks = _mod_args("all", 4, jnp.float64)
        pattern = spattn.SlidingWindow(5, 1) | spattn.Global([0])
        out, lse = jax.jit(lambda q, k, v, s: sj.attention(q, k, v, pattern=pattern, softcap=cap, alibi_slopes=slopes,
                                                           sinks=s, return_lse=True))(q, k, v, sinks)
        assert out.dtype == jnp.float64 and lse.dtype == jnp.float64
        ref_out, ref_lse = spattn.reference_attention(np.asarray(q), np.asarray(k), np.asarray(v), pattern,
                                                      return_lse=True, softcap=cap, alibi_slopes=np.asarray(slopes),
                                                      sinks=np.asarray(sinks))
        np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-12, atol=1e-13)

        def loss(fn):
            return lambda q, k, v, s: (jnp.sin(fn(q, k, v, s)) * 3.0).sum()

        ours = loss(lambda q, k, v, s: sj.attention(q, k, v, pattern=pattern, softcap=cap, alibi_slopes=slopes,
                                                    sinks=s))
        ref = loss(lambda q, k, v, s: _ref_mod(q, k, v, pattern, None, cap, slopes, s))
        got = jax.jit(jax.grad(ours, argnums=(0, 1, 2, 3)))(q, k, v, sinks)
        want = jax.grad(ref, argnums=(0, 1, 2, 3))(q, k, v, sinks)
        for g, w in zip(got, want):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)
        # a float32 sinks array is used in float64 and its gradient comes back as float32
        g32 = jax.grad(lambda s: sj.attention(q, k, v, pattern=pattern, sinks=s).sum())(sinks.astype(jnp.float32))
        assert g32.dtype == jnp.float32


def test_ffi_targets_per_platform():
    from spattn import _core

    cpu = dict(_core.xla_ffi_targets("cpu"))
    cuda = dict(_core.xla_ffi_targets("cuda"))
    names = {"spattn_forward", "spattn_backward", "spattn_decode", "spattn_decode_paged"}
    assert set(cpu) in (set(), names)
    # CUDA handlers exist exactly in builds with the FFI headers and CUDA kernels
    want_cuda = bool(cpu) and spattn.info().get("cuda_compiled") == "yes"
    assert set(cuda) == (names if want_cuda else set())
    with pytest.raises(ValueError, match="platform"):
        _core.xla_ffi_targets("tpu")


def test_on_the_gpu_through_the_cuda_targets():
    # JAX on a GPU with spattn's CUDA kernels: the custom calls run on XLA's stream
    if jax.default_backend() != "gpu" or spattn.info().get("cuda_compiled") != "yes":
        pytest.skip("needs JAX on a GPU and spattn built with CUDA")
    assert sj.backend() == "xla_ffi"
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(nq=200, nk=200, d=64))
    pattern = spattn.SlidingWindow(31, 0)
    out = jax.jit(lambda q, k, v: sj.attention(q, k, v, pattern=pattern))(q, k, v)
    want = _ref(*(x.astype(jnp.float32) for x in (q, k, v)), pattern)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want), atol=2e-2, rtol=2e-2)
    g = jax.grad(lambda q: sj.attention(q, k, v, pattern=pattern).astype(jnp.float32).sum())(q)
    gw = jax.grad(lambda q: _ref(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                                 pattern).sum())(q)
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(gw, np.float32), atol=5e-2, rtol=5e-2)
