"""torch autograd through spattn.attention (imported only when torch tensors need gradients)."""
from __future__ import annotations

import torch

from . import _core


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern, scale):
        out, lse = _core.forward(q.detach(), k.detach(), v.detach(), pattern._core(), scale, None, True)
        out, lse = torch.from_dlpack(out), torch.from_dlpack(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.scale = pattern, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        grads = _core.backward(
            dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), ctx.pattern._core(), ctx.scale
        )
        dq, dk, dv = (torch.from_dlpack(g) for g in grads)
        return dq, dk, dv, None, None


def attention_with_grad(q, k, v, pattern, scale):
    return _Attention.apply(q, k, v, pattern, scale)
