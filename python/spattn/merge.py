"""Combining attention computed on disjoint key sets (split-K, unions, context parallelism)."""
from __future__ import annotations

from . import _core
from ._device import cuda_call
from ._interop import detached, package_of, to_framework
from .api import _torch_ops

__all__ = ["merge"]


def merge(outs, lses):
    """Exact merge of partial results: `outs[k]` is attention over key set K_k (the K_k
    disjoint), `lses[k]` its logsumexp. Returns (out, lse) over the union of the key sets:
    lse = log(sum_k exp(lse_k)), out = sum_k exp(lse_k - lse) * out_k.

    Shapes: outs [B, N, H, Dv] with lses [B, H, N] float32 (or varlen [T, H, Dv] with [H, T]);
    any strides, float32/float16/bfloat16 outs, or float64 outs with float64 lses (CPU only);
    results are of the kind of outs[0]. Rows that
    no part saw (every lse = -inf) give out = 0, lse = -inf.
    """
    if isinstance(outs, (str, bytes)) or not hasattr(outs, "__len__"):
        raise TypeError(f"outs: expected a list of arrays, got {type(outs).__name__}")
    if isinstance(lses, (str, bytes)) or not hasattr(lses, "__len__"):
        raise TypeError(f"lses: expected a list of arrays, got {type(lses).__name__}")
    outs, lses = list(outs), list(lses)
    if outs and lses and all(package_of(x) == "torch" for x in outs + lses):
        return _torch_ops().merge(outs, lses)  # the eager fast path, or the spattn::merge operator
    return _merge(outs, lses)


def _merge(outs, lses):
    """The core's merge; the torch operator's implementation calls it too. CUDA arrays of torch
    or cupy merge on the framework's current stream."""
    cc = cuda_call(outs[0]) if outs else None
    o, l = _core.merge([detached(x) for x in outs], [detached(x) for x in lses], None if cc is None else cc.stream)
    return to_framework(o, outs[0]), to_framework(l, outs[0])

