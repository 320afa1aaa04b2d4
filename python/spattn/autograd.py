"""torch autograd through spattn.attention (imported only when torch tensors need gradients)."""
from __future__ import annotations

import torch

from . import _core


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern, scale, cu=None):
        # cu: None, or (cu_seqlens_q, cu_seqlens_k) of a variable-length batch
        if cu is None:
            out, lse = _core.forward(q.detach(), k.detach(), v.detach(), pattern._core(), scale, None, True)
        else:
            out, lse = _core.forward_varlen(q.detach(), k.detach(), v.detach(), cu[0], cu[1], pattern._core(), scale, None, True)
        out, lse = torch.from_dlpack(out), torch.from_dlpack(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.scale, ctx.cu = pattern, scale, cu
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        args = (dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach())
        if ctx.cu is None:
            grads = _core.backward(*args, ctx.pattern._core(), ctx.scale)
        else:
            grads = _core.backward_varlen(*args, ctx.cu[0], ctx.cu[1], ctx.pattern._core(), ctx.scale)
        dq, dk, dv = (torch.from_dlpack(g) for g in grads)
        return dq, dk, dv, None, None, None


def attention_with_grad(q, k, v, pattern, scale, cu=None):
    return _Attention.apply(q, k, v, pattern, scale, cu)
