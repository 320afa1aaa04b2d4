"""The public functions (docs/api.md): thin checks, then the C++ core through `_core`."""
from __future__ import annotations

import math
import numbers

from . import _core
from ._device import cuda_call
from ._interop import detached, package_of, plain as _plain, to_framework
from .patterns import Dense, Pattern

__all__ = ["attention", "attention_backward", "decode", "pool_keys", "info"]


def _pattern(pattern) -> Pattern:
    if pattern is None:
        return Dense()
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern: expected a spattn pattern (Dense(), SlidingWindow(...), ...), got {type(pattern).__name__}")
    return pattern


def _scale(scale):
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale == 0.0:
        raise ValueError(f"scale: expected a finite non-zero number, got {scale}")
    return scale


def _softcap(softcap):
    """softcap: None, or a finite real number > 0."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap: expected a real number > 0 or None, got {type(softcap).__name__}")
    softcap = float(softcap)
    if not math.isfinite(softcap) or softcap <= 0.0:
        raise ValueError(f"softcap: expected a finite number > 0 (None: no softcap), got {softcap}")
    return softcap


def _modifier_dtype_name(q):
    """The dtype of the per-head modifier arrays (and dsinks): lse's, float32, or float64 for
    float64 inputs (a float64 gradient check needs its sinks unrounded)."""
    return "float64" if str(getattr(q, "dtype", "")).endswith("float64") else "float32"


def _per_head(x, name, q):
    """alibi_slopes / sinks: None, or one float per query head as an array the core takes, of
    lse's dtype (float32; float64 for float64 inputs): a torch tensor converted (on its own
    device; the core refuses another device than q's), a numpy array or a sequence of numbers as
    numpy (on a CPU q), other DLPack arrays as they are (the core checks their dtype). Shapes
    and values are the core's to check."""
    if x is None:
        return None
    want = _modifier_dtype_name(q)
    pkg = package_of(x)
    if pkg == "torch":
        import torch

        if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name}: expected a {want} array [Hq], got dtype {x.dtype}")
        return x.to(getattr(torch, want))
    import numpy as np

    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        a = np.asarray(x)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a {want} array [Hq], got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=want)
        qpkg = package_of(q)
        if qpkg == "torch":
            import torch

            return torch.from_numpy(a).to(q.device)
        return a
    if hasattr(x, "__dlpack__"):
        return detached(x)
    raise TypeError(f"{name}: expected a {want} array [Hq] (numpy, torch, any DLPack array) or a sequence of floats, "
                    f"got {type(x).__name__}")


class _Mods:
    """The checked score modifiers of one call (see `attention`)."""

    __slots__ = ("softcap", "alibi_slopes", "sinks")

    def __init__(self, softcap=None, alibi_slopes=None, sinks=None):
        self.softcap, self.alibi_slopes, self.sinks = softcap, alibi_slopes, sinks

    @staticmethod
    def of(q, softcap, alibi_slopes, sinks):
        return _Mods(_softcap(softcap), _per_head(alibi_slopes, "alibi_slopes", q), _per_head(sinks, "sinks", q))

    def any(self):
        return self.softcap is not None or self.alibi_slopes is not None or self.sinks is not None

    def core(self):
        """(softcap, alibi_slopes, sinks) as _core.forward / backward / decode take them, passed
        positionally (see _core_backward: keyword calls of the bindings measured as growing)."""
        return self.softcap, _plain(self.alibi_slopes), _plain(self.sinks)


_NO_MODS = _Mods()


def _wants_grad(*tensors) -> bool:
    """True when torch autograd must record this call (never imports torch by itself)."""
    first = tensors[0]
    if package_of(first) != "torch":
        return False
    import torch

    return torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in tensors)


def _all_torch(*arrays) -> bool:
    """True when every given array is a torch tensor: then the call goes through spattn's torch
    operators (spattn.torch_ops), which torch.compile traces. Never imports torch by itself."""
    return all(package_of(a) == "torch" for a in arrays if a is not None)


class _Module:
    mod = None


_TORCH_OPS = _Module()


def _torch_ops():
    """spattn.torch_ops (the eager fast path and the torch operators), imported on the first
    call on torch tensors and kept: an import statement in the call path costs about 1 us."""
    mod = _TORCH_OPS.mod
    if mod is None:
        from . import torch_ops as mod

        _TORCH_OPS.mod = mod
    return mod


def _threads(x) -> int:
    """The CPU thread budget of the caller's framework: torch's get_num_threads() for torch
    tensors (so that torch.set_num_threads, and data-loader workers limited to one thread, hold
    for spattn too and the two never oversubscribe the cores), else 0: spattn's whole pool."""
    if package_of(x) != "torch":
        return 0
    import torch

    return int(torch.get_num_threads())


def _offsets(x, name):
    """One cu_seqlens argument for the core: a DLPack array as it is (int32, or int64), a
    Python sequence of ints as an int64 numpy array. The core checks the values."""
    if hasattr(x, "__dlpack__"):
        return detached(x)  # not a one-shot capsule: autograd's backward reads the offsets again
    if isinstance(x, (list, tuple, range)):
        import numpy as np

        a = np.asarray(x)
        if a.size == 0:
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected int32 offsets [B+1], got a sequence of {a.dtype} values")
        return a.astype(np.int64)
    raise TypeError(
        f"{name}: expected an int32 array [B+1] (numpy, torch, any DLPack array) or a sequence of ints, "
        f"got {type(x).__name__}"
    )


def _cu_seqlens(cu_seqlens_q, cu_seqlens_k):
    """None for a dense batch, else (cu_seqlens_q, cu_seqlens_k) ready for the core."""
    if cu_seqlens_q is None and cu_seqlens_k is None:
        return None
    if cu_seqlens_q is None or cu_seqlens_k is None:
        given, missing = ("cu_seqlens_q", "cu_seqlens_k") if cu_seqlens_k is None else ("cu_seqlens_k", "cu_seqlens_q")
        raise ValueError(
            f"cu_seqlens_q, cu_seqlens_k: a variable-length batch needs both offset arrays; got {given} but {missing} is None"
        )
    return _offsets(cu_seqlens_q, "cu_seqlens_q"), _offsets(cu_seqlens_k, "cu_seqlens_k")


def _core_forward(q, k, v, pattern, scale, out, want_lse, cu_q, cu_k, threads, mods=_NO_MODS):
    """The core's forward: (out, lse or None) as the core returns them (framework arrays for
    torch and cupy on CUDA, allocated here through the framework; else DLPack holders, or `out`
    itself when given)."""
    cc = cuda_call(q)
    if cc is None:
        return _core.forward(_plain(q), _plain(k), _plain(v), pattern._core(), scale, _plain(out), want_lse, cu_q,
                             cu_k, threads, None, None, None, *mods.core())
    given = out
    if out is None:
        out = cc.empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    lse = None
    if want_lse:
        lse_shape = (q.shape[1], q.shape[0]) if q.ndim == 3 else (q.shape[0], q.shape[2], q.shape[1])
        lse = cc.empty(lse_shape, "lse")
    _core.forward(_plain(q), _plain(k), _plain(v), pattern._core(), scale, _plain(out), want_lse, cu_q, cu_k, threads,
                  None if lse is None else _plain(lse), cc.stream, cc.workspace, *mods.core())
    return (given if given is not None else out), lse


def _core_backward(dout, q, k, v, out, lse, pattern, scale, cu_q, cu_k, threads, mods=_NO_MODS, deterministic=False):
    """The core's backward: (dq, dk, dv), and dsinks with sinks; framework arrays for torch and
    cupy on CUDA (allocated here through the framework), else DLPack holders."""
    cc = cuda_call(q)
    args = [_plain(x) for x in (dout, q, k, v, out, lse)]
    # Positional arguments only: a call of this binding with keyword arguments was measured to
    # keep about 53 bytes per call (tests/python/test_leaks.py), positional ones nothing.
    mod_args = (deterministic, *mods.core())
    if cc is None:
        return _core.backward(*args, pattern._core(), scale, cu_q, cu_k, threads, None, None, None, None, None,
                              *mod_args, None)
    grads = cc.empty(tuple(q.shape)), cc.empty(tuple(k.shape)), cc.empty(tuple(v.shape))
    if mods.sinks is not None:
        grads += (cc.empty((q.shape[-2],), "float32"),)
    _core.backward(*args, pattern._core(), scale, cu_q, cu_k, threads, _plain(grads[0]), _plain(grads[1]),
                   _plain(grads[2]), cc.stream, cc.workspace, *mod_args,
                   _plain(grads[3]) if len(grads) > 3 else None)
    return grads


def _result(x, like):
    """A core result in like's framework (framework arrays pass through)."""
    return x if package_of(x) == package_of(like) else to_framework(x, like)


_MODIFIERS_DOC = """
    Score modifiers (keyword arguments; the same in `attention`, `attention_backward` and
    `decode`). Every kept score of query row i of head h and key j becomes, in this order:

    - ``s = scale * q_i . k_j``;
    - ``softcap=c`` (c > 0): ``s = c * tanh(s / c)``, on the scaled score, as Gemma 2 does;
    - ``alibi_slopes`` (one slope per query head, [Hq]): ``s = s - slope_h * |rel|``, with
      ``rel = i + Nk - Nq - j`` (bottom-right alignment; per sequence in varlen and decode);
    - ``sinks`` (one logit per query head, [Hq], learnable as in GPT-OSS): each row's softmax
      gets one more term ``exp(sink_h)`` in its denominator, with no value row:
      ``out_i = sum_j e^{s_ij} v_j / (e^{sink_h} + sum_j e^{s_ij})`` and
      ``lse_i = log(e^{sink_h} + sum_j e^{s_ij})``.

    Masked pairs stay masked. A row that keeps no key gets ``out = 0`` and ``lse = sink_h``
    (``-inf`` without sinks). Slopes must be finite, sinks finite or -inf (no sink for that
    head). The arrays are converted to float32 on q's device (float64 for float64 inputs; any
    float dtype is accepted).
    With torch tensors, autograd gives the gradient of ``sinks`` (cast back to its dtype);
    ``softcap`` and ``alibi_slopes`` are constants and get none.
"""


def attention(q, k, v, pattern=None, scale=None, return_lse: bool = False, out=None, cu_seqlens_q=None, cu_seqlens_k=None,
              *, softcap=None, alibi_slopes=None, sinks=None):
    """Attention on the (query, key) pairs `pattern` keeps.

    q [B, Nq, Hq, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv], any strides, any DLPack array.
    Returns out [B, Nq, Hq, Dv] as the same kind of array as q, and with return_lse also
    lse [B, Hq, Nq] float32 (float64 for float64 inputs, which run on the CPU only: a plain
    float64 kernel for gradient checks). torch tensors that require grad get gradients (lse
    carries none).

    Variable-length batch (docs/api.md): with cu_seqlens_q and cu_seqlens_k (int32 [B+1] offsets,
    first 0, non-decreasing, last Tq / Tk), q is [Tq, Hq, D], k/v [Tk, Hkv, D/Dv], and sequence
    b is its own problem on rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q (and likewise of k, v),
    the pattern applied inside it. out is [Tq, Hq, Dv], lse [Hq, Tq].
    """
    pattern, scale = _pattern(pattern), _scale(scale)
    if out is None and _all_torch(q, k, v):
        return _torch_ops().attention(q, k, v, pattern, scale, cu_seqlens_q, cu_seqlens_k, return_lse,
                                      softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
    mods = _Mods.of(q, softcap, alibi_slopes, sinks)
    cu = _cu_seqlens(cu_seqlens_q, cu_seqlens_k)
    if out is not None and _wants_grad(q, k, v, mods.sinks):
        raise ValueError("out: not supported when autograd records the call (inputs require grad)")
    return _forward(q, k, v, pattern, scale, out, return_lse, cu, mods)


attention.__doc__ += _MODIFIERS_DOC


def _forward(q, k, v, pattern, scale, out, return_lse, cu, mods=_NO_MODS):
    """The core's forward on checked arguments (`cu`: None or the two offset arrays; `mods`: the
    checked modifiers); the torch operator's implementation calls it too."""
    cu_q, cu_k = cu if cu is not None else (None, None)
    o, lse = _core_forward(q, k, v, pattern, scale, out, return_lse, cu_q, cu_k, _threads(q), mods)
    o = out if out is not None else _result(o, q)
    return (o, _result(lse, q)) if return_lse else o


def attention_backward(dout, q, k, v, out, lse, pattern=None, scale=None, cu_seqlens_q=None, cu_seqlens_k=None,
                       deterministic: bool = False, *, softcap=None, alibi_slopes=None, sinks=None):
    """Gradients (dq, dk, dv) of attention, given dout and the forward's out and lse (with
    cu_seqlens_q / cu_seqlens_k: of a variable-length batch, shapes as in `attention`).

    deterministic=True: bitwise identical gradients on every run with the same inputs, device,
    build and thread count, or RuntimeError where the kernel cannot give them. The CPU backward
    is deterministic anyway (no atomics, fixed summation order; the thread count may change the
    last bits of dk and dv), so on the CPU it costs nothing and changes no bit. On CUDA only the
    sm90a backward is (compute capability 9.0, opt-in with SPATTN_CUDA_BACKWARD=sm90a): its
    query-major dQ pass recomputes the scores and probabilities of every visited block a second
    time (about 1.4x the products of a backward with dq atomics). The sm80-style backward (dq by
    float32 atomics) raises RuntimeError. Through autograd, torch.use_deterministic_algorithms(True)
    asks for it.

    With the forward's score modifiers, pass the same ones here. With ``sinks`` the result is
    (dq, dk, dv, dsinks): dsinks float32 [Hq] (float64 for float64 inputs), the gradient of the sink logits,
    ``dsinks[h] = -sum over rows of exp(sinks[h] - lse) * rowsum(dout * out)`` (over the batch
    and every sequence of a varlen batch).
    """
    pattern, scale = _pattern(pattern), _scale(scale)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic: expected True or False, got {type(deterministic).__name__}")
    if _all_torch(dout, q, k, v, out, lse):
        return _torch_ops().attention_backward(dout, q, k, v, out, lse, pattern, scale, cu_seqlens_q, cu_seqlens_k,
                                               deterministic, softcap=softcap, alibi_slopes=alibi_slopes,
                                               sinks=sinks)
    mods = _Mods.of(q, softcap, alibi_slopes, sinks)
    return _backward(dout, q, k, v, out, lse, pattern, scale, _cu_seqlens(cu_seqlens_q, cu_seqlens_k), mods,
                     deterministic)


attention_backward.__doc__ += _MODIFIERS_DOC


def _backward(dout, q, k, v, out, lse, pattern, scale, cu, mods=_NO_MODS, deterministic=False):
    """The core's backward on checked arguments; the torch operator's implementation calls it.
    (dq, dk, dv), and dsinks when mods has sinks."""
    cu_q, cu_k = cu if cu is not None else (None, None)
    r = _core_backward(dout, q, k, v, out, lse, pattern, scale, cu_q, cu_k, _threads(q), mods, deterministic)
    grads = _result(r[0], q), _result(r[1], k), _result(r[2], v)
    return grads + (_result(r[3], q),) if len(r) > 3 else grads


def _int_array(x, name, what):
    """An integer argument of decode for the core: a DLPack array as it is, a Python sequence
    of ints (or a single int for cache_len) as an int32 numpy array. The core checks it."""
    if hasattr(x, "__dlpack__"):
        return _plain(x)
    import numpy as np

    if isinstance(x, numbers.Integral) and not isinstance(x, bool) and name == "cache_len":
        x = [x]
    if isinstance(x, (list, tuple, range)):
        a = np.asarray(x)
        if a.size == 0:
            a = a.astype(np.int32)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected {what}, got a sequence of {a.dtype} values")
        if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
            return a.astype(np.int64)
        return a.astype(np.int32)
    raise TypeError(f"{name}: expected {what} (numpy, torch, any DLPack array) or a sequence of ints, got {type(x).__name__}")


def decode(q, k_cache, v_cache, cache_len, pattern=None, block_table=None, scale=None, return_lse: bool = False,
           pooled_keys=None, *, softcap=None, alibi_slopes=None, sinks=None, defer_errors: bool = False):
    """Attention of a few new queries against a KV cache (docs/api.md).

    q [B, Nq, Hq, D] (Nq <= 64: the newest tokens of each sequence); caches contiguous
    k_cache [B, Ncap, Hkv, D], v_cache [B, Ncap, Hkv, Dv], or paged [pages, page_size, Hkv, D]
    with block_table int32 [B, max_pages] (key j of sequence b lives in page
    block_table[b, j // page_size], row j % page_size); cache_len int32 [B] counts the valid
    keys of each sequence, the new ones included. Sequence b equals
    attention(q[b:b+1], k[b:b+1, :cache_len[b]], v[b:b+1, :cache_len[b]], pattern) with the
    usual bottom-right alignment. Only the pages the pattern visits are read (a window over a
    long cache reads the window's pages only), and the keys are split across all threads.
    Returns out [B, Nq, Hq, Dv] as the kind of array q is, and with return_lse also
    lse [B, Hq, Nq] float32 (float64 for float64 inputs, CPU only). No gradients (decode is for
    inference).

    TopKBlocks chooses each sequence's blocks from its new queries and the mean key of every
    key block. By default the means are computed from the cache (every key the choice scores
    is read once); ``pooled_keys`` (float32 [B, blocks, Hkv, D], from ``pool_keys`` with the
    pattern's key block size) supplies them instead, so that only the chosen blocks' keys are
    read. For a causal pattern only complete blocks are scored: an entry stays valid once its
    block is full, so a serving loop updates one entry per ``bk`` new tokens. On a GPU the
    choice is made there too, per sequence (the CPU's choice wherever the CPU rounds the same
    way); with ``cache_len`` on the GPU it is planned there as below when its ``always`` pattern
    is one of those patterns (docs/api.md, "Decode on a GPU", says when else the lengths are
    read to the host).

    On a GPU with ``cache_len`` on the GPU too, a pattern whose rule does not depend on the
    length (windows, causal, dense, sinks, globals, dilated, strided, fixed, prefix-LM and their
    unions, intersections and per-head mixes) is planned on the GPU: the call never reads the
    lengths to the host and can be captured in a CUDA graph (``torch.cuda.graph``) and replayed
    with new lengths. A bad length or block-table entry is then found on the GPU: the call waits
    for it and raises ValueError, unless ``defer_errors=True`` or the stream is capturing a
    graph; then the error waits on the GPU until ``check_decode_errors(device)`` raises it
    (docs/api.md, "Decode on a GPU").
    """
    pattern, scale = _pattern(pattern), _scale(scale)
    if _all_torch(q, k_cache, v_cache, pooled_keys):
        o, lse = _torch_ops().decode(q, k_cache, v_cache, cache_len, pattern, block_table, scale, pooled_keys,
                                     softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
                                     defer_errors=bool(defer_errors))
        return (o, lse) if return_lse else o
    mods = _Mods.of(q, softcap, alibi_slopes, sinks)
    return _decode(q, k_cache, v_cache, cache_len, pattern, block_table, scale, return_lse, pooled_keys, mods,
                   bool(defer_errors))


decode.__doc__ += _MODIFIERS_DOC


def _decode(q, k_cache, v_cache, cache_len, pattern, block_table, scale, return_lse, pooled_keys, mods=_NO_MODS,
            defer_errors=False):
    """The core's decode on checked pattern and scale; the torch operator's implementation calls it."""
    cl = _int_array(cache_len, "cache_len", "int32 lengths [B]")
    bt = None if block_table is None else _int_array(block_table, "block_table", "int32 page indices [B, max_pages]")
    pk = None if pooled_keys is None else _plain(pooled_keys)
    cc = cuda_call(q)
    if cc is None or getattr(q, "ndim", 0) != 4 or getattr(v_cache, "ndim", 0) != 4:  # (the core reports ranks)
        o, lse = _core.decode(_plain(q), _plain(k_cache), _plain(v_cache), cl, pattern._core(), bt, scale, return_lse,
                              pk, _threads(q), *mods.core(), None, None, None, None, defer_errors)
        o = to_framework(o, q)
        return (o, to_framework(lse, q)) if return_lse else o
    # torch / cupy on CUDA: results from the framework's allocator, work on its current stream.
    o = cc.empty(tuple(q.shape[:-1]) + (v_cache.shape[-1],))
    lse = cc.empty((q.shape[0], q.shape[2], q.shape[1]), "lse") if return_lse else None
    _core.decode(_plain(q), _plain(k_cache), _plain(v_cache), cl, pattern._core(), bt, scale, return_lse, pk,
                 _threads(q), *mods.core(), _plain(o), None if lse is None else _plain(lse), cc.stream, cc.workspace,
                 defer_errors)
    return (o, lse) if return_lse else o


def check_decode_errors(device=None):
    """Raises the first error a deferred ``decode`` (``defer_errors=True``, or one captured in a
    CUDA graph) left on a CUDA device since the last check, as ValueError with the message the
    call would have raised, and forgets it; returns None when there is none. ``device``: a CUDA
    device index, a ``torch.device`` or a tensor on it (None: device 0, or torch's current
    device). Waits for all the device's work first; not while a stream is capturing. Without a
    CUDA device (or for the CPU) there is nothing to check."""
    index = 0
    if device is None:
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.cuda.current_device()
        except ImportError:
            pass
    elif isinstance(device, numbers.Integral) and not isinstance(device, bool):
        index = int(device)
    else:
        dev = getattr(device, "device", device)
        kind = getattr(dev, "type", None)
        if kind == "cpu":
            return None
        if kind is not None:
            index = dev.index if dev.index is not None else 0
        elif hasattr(device, "__dlpack_device__"):
            kind, index = device.__dlpack_device__()
            if int(kind) != 2:  # kDLCUDA
                return None
        else:
            raise TypeError(f"device: expected a CUDA device index, a torch.device or an array, got {type(device).__name__}")
    _core.check_decode_errors(int(index))
    return None


def pool_keys(k_cache, cache_len, block_size, block_table=None, *, defer_errors: bool = False):
    """The mean key of every block of ``block_size`` keys of each sequence of a KV cache (laid
    out as for ``decode``): float32 [B, ceil(capacity / block_size), Hkv, D] as the kind of
    array k_cache is; block c of sequence b averages keys c*block_size ..
    min(cache_len[b], (c+1)*block_size) - 1 (blocks past cache_len are 0). Feed it to
    ``decode(..., pattern=TopKBlocks(k, block_size=(bq, block_size)), pooled_keys=...)``.

    On a GPU with ``cache_len`` on the GPU too, the lengths are read by the kernel itself: no
    host read, and the call can be captured in a CUDA graph and replayed with new lengths. A bad
    length or block-table entry is then found on the GPU and raised as ``decode`` raises it:
    after one wait as ValueError, or, with ``defer_errors=True`` or while the stream captures a
    graph, left for ``check_decode_errors(device)`` (docs/api.md, "Decode on a GPU")."""
    import operator

    if isinstance(block_size, bool):
        raise TypeError("block_size: expected an int, got bool")
    try:
        block = operator.index(block_size)
    except TypeError:
        raise TypeError(f"block_size: expected an int, got {type(block_size).__name__}") from None
    cl = _int_array(cache_len, "cache_len", "int32 lengths [B]")
    bt = None if block_table is None else _int_array(block_table, "block_table", "int32 page indices [B, max_pages]")
    # torch / cupy on CUDA: the work on the framework's current stream, the result from its
    # allocator (so that a graph capture holds no allocation of spattn's own).
    cc = cuda_call(k_cache)
    stream, workspace = (None, None) if cc is None else (cc.stream, cc.workspace)
    out = None if cc is None else _pooled_out(cc, k_cache, block_table, block)
    res = _core.pool_keys(_plain(k_cache), cl, block, bt, None if out is None else _plain(out), stream, workspace,
                          bool(defer_errors))
    return out if out is not None else to_framework(res, k_cache)


def _pooled_out(cc, k_cache, block_table, block):
    """pool_keys' result [B, ceil(capacity / block), Hkv, D] float32 from the framework, or None
    when the shapes are not those of a cache (the core then reports them)."""
    ks = tuple(getattr(k_cache, "shape", ()))
    ts = None if block_table is None else tuple(getattr(block_table, "shape", ()) or ())
    if len(ks) != 4 or block < 1 or (ts is not None and len(ts) != 2):
        return None
    if str(getattr(k_cache, "dtype", "")).endswith("float64"):
        return None  # refused by the core (TypeError); the lse dtype would be float64
    b, cap = (ks[0], ks[1]) if ts is None else (ts[0], ts[1] * ks[1])
    return cc.empty((b, -(-cap // block), ks[2], ks[3]), "lse")  # "lse": float32


def info() -> dict:
    """Build and runtime facts: version, backends, compiled CUDA architectures, SIMD, threads."""
    return dict(_core.info())

