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

    if not _core.xla_ffi_targets():
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
