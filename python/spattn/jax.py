"""spattn for JAX: `attention` (with gradients through `jax.custom_vjp`) and `decode`, usable
under `jax.jit`, `jax.grad` and `jax.vmap`.

    import spattn.jax
    out = spattn.jax.attention(q, k, v, pattern=spattn.SlidingWindow(255, 0))
    dq = jax.grad(lambda q: spattn.jax.attention(q, k, v, pattern=p).sum())(q)

How it runs (`backend()` tells): as XLA FFI custom calls (`spattn_forward`, `spattn_backward`,
`spattn_decode`, `spattn_decode_paged`) registered from spattn's C++ library, built with the
FFI headers jaxlib ships (`SPATTN_JAX=ON pip install .`, see the README): for the CPU, and for
CUDA when spattn is built with its CUDA kernels (the handlers then run on the stream and device
XLA gives them; not yet run on a GPU). A build without those headers, or a JAX whose default
backend has no spattn targets, falls back to calling the core from a `jax.pure_callback` on the
host: arrays on a GPU are then copied to the host and back, and bfloat16 (which numpy cannot
hand over through DLPack) is computed in float32 there and rounded back. Calls with score
modifiers (softcap, alibi_slopes, sinks) take the same path as plain ones, forward and backward.

Shapes and patterns as in `spattn.attention` / `spattn.decode` (docs/api.md): q [B, Nq, Hq, D],
k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv] -> out [B, Nq, Hq, Dv] (and lse [B, Hq, Nq] float32 with
`return_lse`, which carries no gradient).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _core
from . import api as _api

__all__ = ["attention", "decode", "backend"]

_registered = None  # None: not yet asked; then the JAX backends ("cpu", "gpu") with targets

# spattn's platform name -> JAX's name for registering targets, and jax.default_backend()'s
_PLATFORMS = {"cpu": ("cpu", "cpu"), "cuda": ("CUDA", "gpu")}


def _ffi_targets() -> set:
    global _registered
    if _registered is None:
        _registered = set()
        for platform, (jax_platform, jax_backend) in _PLATFORMS.items():
            targets = dict(_core.xla_ffi_targets(platform))  # empty: not in this build
            if not targets:
                continue
            try:
                for name, capsule in targets.items():
                    jax.ffi.register_ffi_target(name, capsule, platform=jax_platform)
            except Exception:  # a jaxlib without that platform: its calls use the callback
                if platform == "cpu":
                    raise
                continue
            _registered.add(jax_backend)
    return _registered


def backend() -> str:
    """"xla_ffi" when calls on JAX's default backend run as XLA FFI custom calls, else
    "pure_callback" (see above)."""
    return "xla_ffi" if jax.default_backend() in _ffi_targets() else "pure_callback"


def _ffi_attrs(pattern, scale, softcap) -> dict:
    pid = getattr(pattern, "_xla_ffi_id", None)
    if pid is None:  # the C++ side keeps the pattern; the custom call names it by index
        pid = _core.register_ffi_pattern(pattern._core())
        pattern._xla_ffi_id = pid
    return {"pattern": np.int64(pid), "scale": np.float64(0.0 if scale is None else scale),
            "softcap": np.float64(0.0 if softcap is None else softcap)}


def _host(x):
    """A callback argument as an array the core reads (float32 in place of bfloat16)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == jnp.bfloat16 else x


def _lse_dtype(q):
    """lse's dtype, which the per-head modifiers and dsinks share: float64 for float64 inputs
    (jax_enable_x64), else float32."""
    return jnp.float64 if q.dtype == jnp.float64 else jnp.float32


# Score modifiers (see spattn.attention). softcap is a static float (an FFI attribute); the
# slopes and sinks are [Hq] arrays of lse's dtype, operands of every call, and an empty [0]
# array stands for "none" (python/src/jax_ffi.cpp), so calls with and without modifiers take
# the same path, FFI or host callback.


def _mods(q, softcap, alibi_slopes, sinks):
    softcap = _api._softcap(softcap)
    hq, dtype = q.shape[2], _lse_dtype(q)

    def per_head(x, name):
        if x is None:
            return jnp.zeros((0,), dtype)
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating) and not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{name}: expected a {jnp.dtype(dtype).name} array [Hq], got dtype {x.dtype}")
        if x.shape != (hq,):
            raise ValueError(f"{name}: expected shape [{hq}] (one per query head, Hq={hq}), got {list(x.shape)}")
        return x.astype(dtype)  # jax.grad differentiates through the cast back to the sinks' dtype

    return softcap, per_head(alibi_slopes, "alibi_slopes"), per_head(sinks, "sinks")


def _host_mods(softcap, alibi, sinks):
    """The modifiers of a host callback as the core takes them (None for an empty array)."""
    a, s = (None if x.shape[0] == 0 else np.asarray(x) for x in (alibi, sinks))
    return _api._Mods(softcap, a, s)


def _forward_call(q, k, v, alibi, sinks, pattern, scale, softcap):
    b, nq, hq, _ = q.shape
    shapes = (jax.ShapeDtypeStruct((b, nq, hq, v.shape[-1]), q.dtype),
              jax.ShapeDtypeStruct((b, hq, nq), _lse_dtype(q)))
    if backend() == "xla_ffi":
        call = jax.ffi.ffi_call("spattn_forward", shapes, vmap_method="sequential")
        return call(q, k, v, alibi, sinks, **_ffi_attrs(pattern, scale, softcap))

    def run(q, k, v, alibi, sinks):
        out, lse = _api._forward(_host(q), _host(k), _host(v), pattern, scale, None, True, None,
                                 _host_mods(softcap, alibi, sinks))
        return np.asarray(out).astype(shapes[0].dtype, copy=False), np.asarray(lse).astype(shapes[1].dtype, copy=False)

    return jax.pure_callback(run, shapes, q, k, v, alibi, sinks, vmap_method="sequential")


def _backward_call(dout, q, k, v, out, lse, alibi, sinks, pattern, scale, softcap):
    """(dq, dk, dv, dsinks); dsinks [Hq] of the sinks' dtype, or [0] without sinks."""
    shapes = tuple(jax.ShapeDtypeStruct(t.shape, q.dtype) for t in (q, k, v))
    shapes += (jax.ShapeDtypeStruct(sinks.shape, sinks.dtype),)
    if backend() == "xla_ffi":
        call = jax.ffi.ffi_call("spattn_backward", shapes, vmap_method="sequential")
        return call(dout, q, k, v, out, lse, alibi, sinks, **_ffi_attrs(pattern, scale, softcap))

    def run(dout, q, k, v, out, lse, alibi, sinks):
        grads = _api._backward(_host(dout), _host(q), _host(k), _host(v), _host(out), _host(lse), pattern, scale,
                               None, _host_mods(softcap, alibi, sinks))
        if len(grads) == 3:
            grads = (*grads, np.zeros((0,), shapes[3].dtype))
        return tuple(np.asarray(g).astype(sh.dtype, copy=False) for g, sh in zip(grads, shapes))

    return jax.pure_callback(run, shapes, dout, q, k, v, out, lse, alibi, sinks, vmap_method="sequential")


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, alibi, sinks, pattern, scale, softcap):
    return _forward_call(q, k, v, alibi, sinks, pattern, scale, softcap)


def _attention_fwd(q, k, v, alibi, sinks, pattern, scale, softcap):
    out, lse = _forward_call(q, k, v, alibi, sinks, pattern, scale, softcap)
    return (out, lse), (q, k, v, alibi, sinks, out, lse)


def _attention_bwd(pattern, scale, softcap, residuals, cotangents):
    q, k, v, alibi, sinks, out, lse = residuals
    dout, _ = cotangents  # lse carries no gradient (as in FlashAttention)
    dq, dk, dv, dsinks = _backward_call(dout, q, k, v, out, lse, alibi, sinks, pattern, scale, softcap)
    return dq, dk, dv, jnp.zeros_like(alibi), dsinks  # the slopes are constants, the sinks learned


_attention.defvjp(_attention_fwd, _attention_bwd)


def _check(name, x):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected a JAX array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected 4 dimensions, got shape {tuple(x.shape)}")


def attention(q, k, v, pattern=None, scale=None, return_lse: bool = False, *, softcap=None, alibi_slopes=None,
              sinks=None):
    """Attention on the pairs `pattern` keeps, differentiable with `jax.grad` (lse has no
    gradient); works under `jax.jit` and `jax.vmap`. The score modifiers softcap, alibi_slopes
    and sinks are those of `spattn.attention`, on the same path as plain calls (the sinks get a
    gradient; the slopes and sinks are used in lse's dtype, float64 for float64 inputs)."""
    pattern, scale = _api._pattern(pattern), _api._scale(scale)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x)
    softcap, alibi, sinks = _mods(q, softcap, alibi_slopes, sinks)
    out, lse = _attention(q, k, v, alibi, sinks, pattern, scale, softcap)
    return (out, jax.lax.stop_gradient(lse)) if return_lse else out


def decode(q, k_cache, v_cache, cache_len, pattern=None, block_table=None, scale=None, return_lse: bool = False, *,
           softcap=None, alibi_slopes=None, sinks=None):
    """`spattn.decode` for JAX arrays (no gradient: decoding is inference); works under `jax.jit`.
    Score modifiers as in `attention`."""
    pattern, scale = _api._pattern(pattern), _api._scale(scale)
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check(name, x)
    softcap, alibi, sinks = _mods(q, softcap, alibi_slopes, sinks)
    cache_len = jnp.asarray(cache_len)
    b, nq, hq, _ = q.shape
    shapes = (jax.ShapeDtypeStruct((b, nq, hq, v_cache.shape[-1]), q.dtype),
              jax.ShapeDtypeStruct((b, hq, nq), _lse_dtype(q)))
    args = (q, k_cache, v_cache, cache_len) + (() if block_table is None else (jnp.asarray(block_table),))
    args = tuple(jax.lax.stop_gradient(a) for a in args + (alibi, sinks))
    if backend() == "xla_ffi":
        name = "spattn_decode" if block_table is None else "spattn_decode_paged"
        call = jax.ffi.ffi_call(name, shapes, vmap_method="sequential")
        out, lse = call(*args, **_ffi_attrs(pattern, scale, softcap))
        return (out, lse) if return_lse else out

    def run(q, k_cache, v_cache, cache_len, *rest):
        *table, alibi, sinks = rest
        bt = np.asarray(table[0]) if table else None
        out, lse = _api._decode(_host(q), _host(k_cache), _host(v_cache), np.asarray(cache_len), pattern, bt, scale,
                                True, None, _host_mods(softcap, alibi, sinks))
        return np.asarray(out).astype(shapes[0].dtype, copy=False), np.asarray(lse).astype(shapes[1].dtype, copy=False)

    out, lse = jax.pure_callback(run, shapes, *args, vmap_method="sequential")
    return (out, lse) if return_lse else out
