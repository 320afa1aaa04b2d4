"""torch autograd through spattn.attention (imported only when torch tensors need gradients)."""
from __future__ import annotations

import torch

from .api import _backward, _forward


def _as_torch(x):
    return x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern, scale, cu=None):
        # cu: None, or (cu_seqlens_q, cu_seqlens_k) of a variable-length batch
        cu_q, cu_k = cu if cu is not None else (None, None)
        threads = torch.get_num_threads()  # torch's thread budget holds for spattn too
        out, lse = _forward(q.detach(), k.detach(), v.detach(), pattern, scale, None, True, cu_q, cu_k, threads)
        out, lse = _as_torch(out), _as_torch(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.scale, ctx.cu = pattern, scale, cu
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        args = (dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach())
        cu_q, cu_k = ctx.cu if ctx.cu is not None else (None, None)
        grads = _backward(*args, ctx.pattern, ctx.scale, cu_q, cu_k, torch.get_num_threads())
        dq, dk, dv = (_as_torch(g) for g in grads)
        return dq, dk, dv, None, None, None


def attention_with_grad(q, k, v, pattern, scale, cu=None):
    return _Attention.apply(q, k, v, pattern, scale, cu)
