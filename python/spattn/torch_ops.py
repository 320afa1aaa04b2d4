"""spattn as torch operators (torch.library): what `spattn.attention`, `attention_backward`,
`decode` and `merge` call on torch tensors whenever torch may be tracing or transforming the
call, so that `torch.compile(fullgraph=True)` traces a model that uses spattn without a graph
break, and autograd, FakeTensor and AOT dispatch know the calls. In plain eager mode the same
functions call the core directly (see "the eager fast path" below): same results, less host
time.

- ``spattn::attention_forward`` -> (out, lse), with registered autograd whose backward is
  ``spattn::attention_backward`` -> (dq, dk, dv, dsinks); ``spattn::decode`` -> (out, lse);
  ``spattn::merge`` -> (out, lse). Each has a fake (meta) implementation, and one real
  implementation for every device: it calls the same internal functions as the direct path
  (`api._forward`, ...), so the core decides what runs where (CPU, CUDA).
- A pattern crosses the operator boundary as a hashable text in the pattern syntax
  (`pattern_syntax`) plus a list of tensors for its data: ``layout(@0, 64, 64)`` for a
  BlockSparse layout, ``global(@1)`` for Global positions, ``topk(...)`` for TopKBlocks; a
  pattern without a text form (a user's own Pattern subclass) as ``#n``, the index of the object
  kept in this process (it then holds its data itself). The
  text of a pattern object is made once and kept on it; the pattern an implementation needs is
  found again in a small cache (the caller's own object, whose compiled layouts the core
  keeps), so the eager path pays a dictionary lookup, not a parse.

Imported only by callers that already use torch.
"""
import collections
import numbers
import threading
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import api as _api
from .merge import _merge as _merge_impl
from . import patterns as _p
from .pattern_syntax import parse as _parse

__all__ = ["pattern_spec", "attention", "attention_backward", "decode", "merge"]


# -- patterns across the boundary -------------------------------------------------------------------


def _int_text(x) -> str:
    return "none" if x is None else str(int(x))


def _flag_text(x: bool) -> str:
    return "true" if x else "false"


def _encode(p, data: list) -> str:
    """The text of pattern `p`; arrays it holds are appended to `data` and named @i."""
    t = type(p)
    if t is _p.Dense:
        return "dense"
    if t is _p.Causal:
        return "causal"
    if t is _p.SlidingWindow:
        return f"window({_int_text(p.left)},{_int_text(p.right)})"
    if t is _p.Dilated:
        return f"dilated({_int_text(p.left)},{_int_text(p.right)},{p.dilation})"
    if t is _p.Strided:
        return f"strided({p.stride},causal={_flag_text(p.causal)})"
    if t is _p.Fixed:
        return f"fixed({p.block},{p.summary},causal={_flag_text(p.causal)})"
    if t is _p.Sink:
        return f"sink({p.n})"
    if t is _p.BigBird:
        return f"bigbird({p.block},{p.window},{p.globals},{p.randoms},seed={p.seed})"
    if t is _p.Global:
        data.append(torch.tensor(p.positions, dtype=torch.int64))
        return f"global(@{len(data) - 1})"
    if t is _p.BlockSparse:
        data.append(torch.from_numpy(p.layout))
        bq, bk = p.block_size
        return f"layout(@{len(data) - 1},{bq},{bk})"
    if t is _p.Union or t is _p.Intersection:
        op = "|" if t is _p.Union else "&"
        return "(" + op.join("(" + _encode(part, data) + ")" for part in p.parts) + ")"
    if t is _p.PerHead:
        return "perhead(" + ";".join(_encode(part, data) for part in p.parts) + ")"
    if t is _p.TopKBlocks:
        bq, bk = p.block_size
        always = "none" if p.always is None else _encode(p.always, data)
        return f"topk({p.k},{bq},{bk},causal={_flag_text(p.causal)},always={always})"

    def ref(array) -> str:  # an array the kind's text names: passed beside it as a tensor
        data.append(torch.as_tensor(np.asarray(array)))
        return f"@{len(data) - 1}"

    text = p._text(ref) if isinstance(p, _p.Pattern) else None
    if text is not None:
        return text
    raise _NoText(t.__name__)


class _NoText(Exception):
    """A pattern (or a part of one) that the text syntax cannot write."""


_CACHE_SIZE = 128
# text -> pattern, or (text, data keys) -> (pattern, data): the patterns the implementations use.
_patterns: "collections.OrderedDict" = collections.OrderedDict()
_kept: list = []  # patterns named "#n" (no text form), kept for the life of the process
_lock = threading.Lock()  # calls from several threads share the cache


def _data_key(data) -> tuple:
    # The entry keeps its tensors alive, so no other tensor can take their memory while it is
    # cached; the version counter catches writes into them.
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape), tuple(t.stride()), str(t.device)) for t in data)


def _remember(key, value):
    with _lock:
        _patterns[key] = value
        _patterns.move_to_end(key)
        while len(_patterns) > _CACHE_SIZE:
            _patterns.popitem(last=False)


def pattern_spec(pattern) -> Tuple[str, List[Tensor]]:
    """(text, data tensors) of a spattn pattern: how it crosses the torch operators."""
    cached = getattr(pattern, "_torch_op_spec", None)
    if cached is not None:
        return cached
    data: list = []
    try:
        spec = _encode(pattern, data)
    except _NoText:  # a user's own Pattern subclass somewhere inside: the object, by index
        with _lock:
            _kept.append(pattern)
            spec, data = f"#{len(_kept) - 1}", []
    if not torch.compiler.is_compiling():  # tracing only reads; eager calls keep the result
        pattern._torch_op_spec = (spec, data)
        _remember((spec, _data_key(data)) if data else spec, (pattern, tuple(data)))
    return spec, data


def _pattern_of(spec: str, data: List[Tensor]):
    """The pattern object for (spec, data), from the cache or parsed (then cached)."""
    if spec.startswith("#"):
        return _kept[int(spec[1:])]
    key = (spec, _data_key(data)) if data else spec
    with _lock:
        hit = _patterns.get(key)
        if hit is not None:
            _patterns.move_to_end(key)
            return hit[0]
    arrays = [t.detach().cpu().numpy() for t in data]
    pattern = _parse(spec, data=arrays)
    _remember(key, (pattern, tuple(data)))
    return pattern


def _as_torch(x):
    """An index array the public function accepted (torch, numpy, any DLPack array) as a tensor."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return torch.from_dlpack(x)


def _cu(cu):
    return (None, None) if cu is None else (_as_torch(cu[0]), _as_torch(cu[1]))


# -- the operators ----------------------------------------------------------------------------------


def _varlen(cu_seqlens_q, cu_seqlens_k) -> Optional[tuple]:
    return None if cu_seqlens_q is None else (cu_seqlens_q, cu_seqlens_k)


@torch.library.custom_op("spattn::attention_forward", mutates_args=())
def _attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: str,
    pattern_data: List[Tensor],
    scale: Optional[float],
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    sinks: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    p = _pattern_of(pattern, pattern_data)
    return _api._forward(q, k, v, p, scale, None, True, _varlen(cu_seqlens_q, cu_seqlens_k),
                         _api._Mods(softcap, alibi_slopes, sinks))


def _lse_dtype(q):
    """lse is float32, except for float64 inputs: float64 (docs/api.md), so that a float64 gradient
    check sees an lse as exact as the output."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _same_device(q, **others):
    # Mixed devices reach the fake implementation when one of them is 'meta'; the real one
    # refuses them in the core.
    for name, t in others.items():
        if t is not None and t.device != q.device:
            raise RuntimeError(f"{name}: expected a tensor on q's device ({q.device}), got one on {t.device}")


def _check_rank(t, name, want, shape):
    if t.dim() != want:
        raise ValueError(f"{name}: expected {want} dimensions {shape}, got shape {list(t.shape)}")


def _check_per_head(t, name, q):
    """alibi_slopes / sinks in the fake implementations: [Hq] of lse's dtype (the core's checks)."""
    if t is None:
        return
    hq = q.shape[-2]
    if t.dtype != _lse_dtype(q):
        raise TypeError(f"{name}: expected {_lse_dtype(q)} [Hq], got dtype {t.dtype}")
    if t.dim() != 1 or t.shape[0] != hq:
        raise ValueError(f"{name}: expected shape [{hq}] (one per query head), got {list(t.shape)}")


@_attention_forward.register_fake
def _(q, k, v, pattern, pattern_data, scale, cu_seqlens_q, cu_seqlens_k, softcap=None, alibi_slopes=None, sinks=None):
    _same_device(q, k=k, v=v, alibi_slopes=alibi_slopes, sinks=sinks)
    _check_per_head(alibi_slopes, "alibi_slopes", q)
    _check_per_head(sinks, "sinks", q)
    if cu_seqlens_q is None:
        _check_rank(q, "q", 4, "[B, Nq, Hq, D]")
        _check_rank(v, "v", 4, "[B, Nk, Hkv, Dv]")
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=_lse_dtype(q))
    else:
        _check_rank(q, "q", 3, "[Tq, Hq, D] (variable-length batch)")
        _check_rank(v, "v", 3, "[Tk, Hkv, Dv] (variable-length batch)")
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q))
    return q.new_empty((*q.shape[:-1], v.shape[-1])), lse


@torch.library.custom_op("spattn::attention_backward", mutates_args=())
def _attention_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    pattern: str,
    pattern_data: List[Tensor],
    scale: Optional[float],
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    sinks: Optional[Tensor] = None,
    deterministic: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dsinks); dsinks is [Hq] of lse's dtype with sinks, else empty [0]."""
    p = _pattern_of(pattern, pattern_data)
    r = _api._backward(dout, q, k, v, out, lse, p, scale, _varlen(cu_seqlens_q, cu_seqlens_k),
                       _api._Mods(softcap, alibi_slopes, sinks), deterministic)
    return r if len(r) == 4 else r + (q.new_empty((0,), dtype=_lse_dtype(q)),)


@_attention_backward.register_fake
def _(dout, q, k, v, out, lse, pattern, pattern_data, scale, cu_seqlens_q, cu_seqlens_k, softcap=None,
      alibi_slopes=None, sinks=None, deterministic=False):
    _same_device(q, dout=dout, k=k, v=v, out=out, lse=lse, alibi_slopes=alibi_slopes, sinks=sinks)
    _check_per_head(alibi_slopes, "alibi_slopes", q)
    _check_per_head(sinks, "sinks", q)
    dsinks = q.new_empty((0,) if sinks is None else (q.shape[-2],), dtype=_lse_dtype(q))
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape), dsinks


def _setup_context(ctx, inputs, output):
    q, k, v, pattern, pattern_data, scale, cu_q, cu_k, softcap, alibi_slopes, sinks = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, alibi_slopes, sinks, *pattern_data)
    ctx.pattern, ctx.scale, ctx.softcap = pattern, scale, softcap
    ctx.mark_non_differentiable(lse)  # as in FlashAttention: lse carries no gradient


def _deterministic_requested() -> bool:
    """Autograd's backward is deterministic when torch is asked for deterministic algorithms
    (torch.use_deterministic_algorithms(True), not warn_only)."""
    return torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k, alibi_slopes, sinks, *pattern_data = ctx.saved_tensors
    dq, dk, dv, dsinks = _attention_backward(dout, q, k, v, out, lse, ctx.pattern, pattern_data, ctx.scale, cu_q,
                                             cu_k, ctx.softcap, alibi_slopes, sinks,
                                             _deterministic_requested())
    # one None per input that gets no gradient; the pattern's tensors are a list input; the
    # softcap and the ALiBi slopes are constants, the sinks are learned
    grads = (dq, dk, dv, None, [None] * len(pattern_data), None, None, None, None, None,
             dsinks if sinks is not None else None)
    return grads[:len(ctx.needs_input_grad)]  # as many as the call passed (the modifiers are optional)


_attention_forward.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("spattn::decode", mutates_args=())
def _decode(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    cache_len: Tensor,
    pattern: str,
    pattern_data: List[Tensor],
    block_table: Optional[Tensor],
    scale: Optional[float],
    pooled_keys: Optional[Tensor],
    softcap: Optional[float] = None,
    alibi_slopes: Optional[Tensor] = None,
    sinks: Optional[Tensor] = None,
    defer_errors: bool = False,
) -> Tuple[Tensor, Tensor]:
    p = _pattern_of(pattern, pattern_data)
    return _api._decode(q, k_cache, v_cache, cache_len, p, block_table, scale, True, pooled_keys,
                        _api._Mods(softcap, alibi_slopes, sinks), defer_errors)


@_decode.register_fake
def _(q, k_cache, v_cache, cache_len, pattern, pattern_data, block_table, scale, pooled_keys, softcap=None,
      alibi_slopes=None, sinks=None, defer_errors=False):
    _same_device(q, k_cache=k_cache, v_cache=v_cache, pooled_keys=pooled_keys, alibi_slopes=alibi_slopes,
                 sinks=sinks)
    _check_per_head(alibi_slopes, "alibi_slopes", q)
    _check_per_head(sinks, "sinks", q)
    _check_rank(q, "q", 4, "[B, Nq, Hq, D]")
    _check_rank(v_cache, "v_cache", 4, "[B, Ncap, Hkv, Dv] or [pages, page_size, Hkv, Dv]")
    B, Nq, Hq = q.shape[0], q.shape[1], q.shape[2]
    return q.new_empty((B, Nq, Hq, v_cache.shape[-1])), q.new_empty((B, Hq, Nq), dtype=_lse_dtype(q))


@torch.library.custom_op("spattn::merge", mutates_args=())
def _merge_op(outs: List[Tensor], lses: List[Tensor]) -> Tuple[Tensor, Tensor]:
    return _merge_impl(outs, lses)


@_merge_op.register_fake
def _(outs, lses):
    if not outs or not lses:
        raise ValueError("outs, lses: expected at least one partial result each, got none")
    return outs[0].new_empty(outs[0].shape), lses[0].new_empty(lses[0].shape, dtype=_lse_dtype(outs[0]))


# -- the eager fast path ---------------------------------------------------------------------------
#
# In plain eager mode the operators' dispatch (torch.library's redispatch, the autograd wrapper,
# the pattern's text and its cache lookup) costs tens of microseconds per call, several times
# a small problem's work. There the public functions call the same internal functions the
# operators' implementations call (api._forward, ...), directly, and gradients come from a plain
# torch.autograd.Function over api._forward / api._backward. Results are the same bit for bit:
# the same core calls on the same tensors. Whenever anything might be looking at the call
# (torch.compile or export, a jit trace, FakeTensor, functionalization, make_fx, any other
# dispatch or function mode, vmap and other functorch transforms, a tensor subclass, a device
# other than the CPU and CUDA, such as meta), the registered operators run instead.

_C = torch._C
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _eager(*tensors) -> bool:
    """True when a call may skip the operators (see above). torch.compile reads the first test
    as True and never traces the rest."""
    if torch.compiler.is_compiling():
        return False
    if (_C._len_torch_dispatch_stack() or _C._len_torch_function_stack() or _C._get_tracing_state() is not None
            or _C._functorch.peek_interpreter_stack() is not None):
        return False
    for t in tensors:  # plain tensors on a device the core runs (meta: the fake implementation)
        if t is not None and (type(t) not in _PLAIN_TYPES or not (t.is_cpu or t.is_cuda)):
            return False
    return True


class _EagerAttention(torch.autograd.Function):
    """spattn::attention_forward's autograd, without the operator: the same forward and the same
    backward (api._backward on the saved out and lse); lse carries no gradient, the sinks do
    (softcap and the ALiBi slopes are constants)."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, pattern, scale, cu, softcap, alibi_slopes):
        mods = _api._Mods(softcap, alibi_slopes, None if sinks is None else sinks.detach())
        out, lse = _api._forward(q, k, v, pattern, scale, None, True, cu, mods)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.scale, ctx.cu, ctx.mods = pattern, scale, cu, mods
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)  # no zero tensor for lse's (never used) gradient
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable  # as the operator: no double backward
    def backward(ctx, dout, _dlse):
        if dout is None:  # out took no part in what is differentiated
            return (None,) * 9
        q, k, v, out, lse = ctx.saved_tensors
        r = _api._backward(dout, q, k, v, out, lse, ctx.pattern, ctx.scale, ctx.cu, ctx.mods,
                           _deterministic_requested())
        dsinks = r[3] if len(r) > 3 and ctx.needs_input_grad[3] else None  # the sinks are learned
        return r[0], r[1], r[2], dsinks, None, None, None, None, None


# -- what the public functions call on torch tensors ------------------------------------------------


def _mods(q, softcap, alibi_slopes, sinks, detach_sinks):
    """The checked modifiers as the operators take them: tensors of lse's dtype (float32; float64
    for float64 inputs) on q's device (sinks keep their autograd history through the cast unless
    detach_sinks)."""
    if softcap is None and alibi_slopes is None and sinks is None:
        return None, None, None

    def per_head(x, name):  # (isinstance only: torch.compile traces this)
        if x is None:
            return None
        if isinstance(x, Tensor):
            if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
                raise TypeError(f"{name}: expected a {_lse_dtype(q)} tensor [Hq], got dtype {x.dtype}")
            return x.to(_lse_dtype(q))
        return _as_torch(_api._per_head(x, name, q)).to(q.device)

    alibi = per_head(alibi_slopes, "alibi_slopes")
    s = per_head(sinks, "sinks")
    if s is not None and detach_sinks:
        s = s.detach()
    return _api._softcap(softcap), None if alibi is None else alibi.detach(), s


def attention(q, k, v, pattern, scale, cu_seqlens_q=None, cu_seqlens_k=None, return_lse=True, softcap=None,
              alibi_slopes=None, sinks=None):
    """out, or (out, lse) with return_lse: eagerly through the core (autograd included, for sinks
    too), else through spattn::attention_forward. `pattern` and `scale` are already checked by
    `spattn.attention`."""
    cap, alibi, s = _mods(q, softcap, alibi_slopes, sinks, False)
    if _eager(q, k, v, alibi, s):
        cu = _api._cu_seqlens(cu_seqlens_q, cu_seqlens_k)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or (s is not None and s.requires_grad)):
            out, lse = _EagerAttention.apply(q, k, v, s, pattern, scale, cu, cap, alibi)
            return (out, lse) if return_lse else out
        return _api._forward(q, k, v, pattern, scale, None, return_lse, cu, _api._Mods(cap, alibi, s))
    spec, data = pattern_spec(pattern)
    cu_q, cu_k = _cu(_api._cu_seqlens(cu_seqlens_q, cu_seqlens_k))
    if cap is None and alibi is None and s is None:
        out, lse = _attention_forward(q, k, v, spec, data, scale, cu_q, cu_k)
    else:
        out, lse = _attention_forward(q, k, v, spec, data, scale, cu_q, cu_k, cap, alibi, s)
    return (out, lse) if return_lse else out


def attention_backward(dout, q, k, v, out, lse, pattern, scale, cu_seqlens_q=None, cu_seqlens_k=None,
                       deterministic=False, softcap=None, alibi_slopes=None, sinks=None):
    """(dq, dk, dv), and dsinks [Hq] (lse's dtype) with sinks, eagerly through the core, else through
    spattn::attention_backward; the gradients carry no gradient themselves (no double backward),
    as on the direct path."""
    args = [t.detach() for t in (dout, q, k, v, out, lse)]
    cap, alibi, s = _mods(q, softcap, alibi_slopes, sinks, True)
    if _eager(*args, alibi, s):
        return _api._backward(*args, pattern, scale, _api._cu_seqlens(cu_seqlens_q, cu_seqlens_k),
                              _api._Mods(cap, alibi, s), deterministic)
    spec, data = pattern_spec(pattern)
    cu_q, cu_k = _cu(_api._cu_seqlens(cu_seqlens_q, cu_seqlens_k))
    dq, dk, dv, dsinks = _attention_backward(*args, spec, data, scale, cu_q, cu_k, cap, alibi, s, deterministic)
    return (dq, dk, dv) if s is None else (dq, dk, dv, dsinks)


def decode(q, k_cache, v_cache, cache_len, pattern, block_table, scale, pooled_keys, softcap=None, alibi_slopes=None,
           sinks=None, defer_errors=False):
    """(out, lse), eagerly through the core, else through spattn::decode; decode passes no
    gradient (inference)."""
    q, k_cache, v_cache = q.detach(), k_cache.detach(), v_cache.detach()
    pk = None if pooled_keys is None else pooled_keys.detach()
    cap, alibi, s = _mods(q, softcap, alibi_slopes, sinks, True)
    if _eager(q, k_cache, v_cache, pk, alibi, s):
        return _api._decode(q, k_cache, v_cache, cache_len, pattern, block_table, scale, True, pk,
                            _api._Mods(cap, alibi, s), defer_errors)
    spec, data = pattern_spec(pattern)
    cl = _index_tensor(cache_len, "cache_len", "int32 lengths [B]")
    bt = None if block_table is None else _index_tensor(block_table, "block_table",
                                                        "int32 page indices [B, max_pages]")
    return _decode(q, k_cache, v_cache, cl, spec, data, bt, scale, pk, cap, alibi, s, defer_errors)


def _index_tensor(x, name, what):
    """decode's cache_len or block_table as the operator takes it, a tensor; torch.compile traces
    this, so no DLPack and no numpy attribute here. A torch tensor as it is, and a numpy array as
    a tensor over it (the core checks dtype and shape inside the operator); a Python sequence of
    ints (or one int for cache_len) checked here as api._int_array checks it, then an int32
    tensor (int64 when a value needs it); anything else (other DLPack arrays) through
    api._int_array."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if name == "cache_len" and isinstance(x, numbers.Integral) and not isinstance(x, bool):
        x = [x]
    if isinstance(x, (list, tuple, range)):
        values = _flat_ints(x, name, what)
        wide = any(v > 2**31 - 1 or v < -(2**31) for v in values)
        return torch.tensor(x, dtype=torch.int64 if wide else torch.int32)
    return _as_torch(_api._int_array(x, name, what))


def _flat_ints(x, name, what):
    """The values of a (nested) sequence, each an int (bool and float: TypeError)."""
    values = []
    for v in x:
        if isinstance(v, (list, tuple, range)):
            values.extend(_flat_ints(v, name, what))
        elif isinstance(v, numbers.Integral) and not isinstance(v, bool):
            values.append(int(v))
        else:
            raise TypeError(f"{name}: expected {what}, got a sequence holding a {type(v).__name__}")
    return values


def merge(outs, lses):
    """(out, lse), eagerly through the core, else through spattn::merge (no gradient, as on the
    direct path)."""
    if not outs:
        raise ValueError("outs: expected at least one partial result, got none")
    if not lses:
        raise ValueError("lses: expected one lse per output, got none")
    outs, lses = [o.detach() for o in outs], [x.detach() for x in lses]
    if _eager(*outs, *lses):
        return _merge_impl(outs, lses)
    return _merge_op(outs, lses)
