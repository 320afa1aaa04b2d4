"""Combining attention computed on disjoint key sets (split-K, unions, context parallelism)."""
from __future__ import annotations

from . import _core
from ._device import cuda_call
from ._interop import detached, package_of, to_framework
from .api import _torch_ops

__all__ = ["merge"]


def merge(outs, lses, *, sinks=None):
    """Exact merge of partial results: `outs[k]` is attention over key set K_k (the K_k
    disjoint), `lses[k]` its logsumexp. Returns (out, lse) over the union of the key sets:
    lse = log(sum_k exp(lse_k)), out = sum_k exp(lse_k - lse) * out_k.

    Shapes: outs [B, N, H, Dv] with lses [B, H, N] float32 (or varlen [T, H, Dv] with [H, T]);
    any strides, float32/float16/bfloat16 outs, or float64 outs with float64 lses (CPU only);
    results are of the kind of outs[0]. Rows that
    no part saw (every lse = -inf) give out = 0, lse = -inf.

    sinks ([H] logits, numpy or torch, as `attention`'s ``sinks=``): the attention sinks, counted
    once: the result is that of one more part with out = 0 and lse = sinks[h]. Compute the
    parts without sinks and pass them here (a part computed with sinks already holds them: merge
    it with the others without sinks=, and never pass sinks to more than one part).
    """
    if isinstance(outs, (str, bytes)) or not hasattr(outs, "__len__"):
        raise TypeError(f"outs: expected a list of arrays, got {type(outs).__name__}")
    if isinstance(lses, (str, bytes)) or not hasattr(lses, "__len__"):
        raise TypeError(f"lses: expected a list of arrays, got {type(lses).__name__}")
    outs, lses = list(outs), list(lses)
    if sinks is not None:
        outs, lses = _with_sink_part(outs, lses, sinks)
    if outs and lses and all(package_of(x) == "torch" for x in outs + lses):
        return _torch_ops().merge(outs, lses)  # the eager fast path, or the spattn::merge operator
    return _merge(outs, lses)


def _merge(outs, lses):
    """The core's merge; the torch operator's implementation calls it too. CUDA arrays of torch
    or cupy merge on the framework's current stream."""
    cc = cuda_call(outs[0]) if outs else None
    o, l = _core.merge([detached(x) for x in outs], [detached(x) for x in lses], None if cc is None else cc.stream)
    return to_framework(o, outs[0]), to_framework(l, outs[0])



def _with_sink_part(outs, lses, sinks):
    """outs and lses with the sinks as one more part: out = 0 and lse = sinks[h], both broadcast
    views (no memory of their size)."""
    if not outs or not lses:
        raise ValueError("outs, lses: expected at least one partial result each, got none")
    o0, l0 = outs[0], lses[0]
    varlen = len(o0.shape) == 3
    h = o0.shape[-2]
    if package_of(o0) == "torch":
        import torch

        s = sinks if isinstance(sinks, torch.Tensor) else torch.as_tensor(sinks)
        s = s.detach().to(device=o0.device, dtype=l0.dtype)  # the lses' dtype (float64 parts: float64)
        if tuple(s.shape) != (h,):
            raise ValueError(f"sinks: expected shape [{h}] (one logit per head), got {list(s.shape)}")
        lse = s.view(h, 1).expand(l0.shape) if varlen else s.view(1, h, 1).expand(l0.shape)
        return outs + [o0.new_zeros(()).expand(o0.shape)], lses + [lse]
    import numpy as np

    if package_of(o0) != "numpy":
        raise TypeError(f"sinks: merge takes sinks with numpy or torch partial results, got {package_of(o0)} arrays")
    s = np.asarray(sinks, dtype=l0.dtype)
    if s.shape != (h,):
        raise ValueError(f"sinks: expected shape [{h}] (one logit per head), got {list(s.shape)}")
    lse = np.broadcast_to(s[:, None] if varlen else s[None, :, None], l0.shape)
    return outs + [np.broadcast_to(np.zeros((), o0.dtype), o0.shape)], lses + [lse]
