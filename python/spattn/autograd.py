"""torch autograd through spattn.attention (imported only when torch tensors need gradients)."""
from __future__ import annotations

import torch

from . import _core


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern, scale, cu=None):
        # cu: None, or (cu_seqlens_q, cu_seqlens_k) of a variable-length batch
        cu_q, cu_k = cu if cu is not None else (None, None)
        threads = torch.get_num_threads()  # torch's thread budget holds for spattn too
        out, lse = _core.forward(q.detach(), k.detach(), v.detach(), pattern._core(), scale, None, True, cu_q, cu_k,
                                 threads)
        out, lse = torch.from_dlpack(out), torch.from_dlpack(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.scale, ctx.cu = pattern, scale, cu
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        args = (dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach())
        cu_q, cu_k = ctx.cu if ctx.cu is not None else (None, None)
        grads = _core.backward(*args, ctx.pattern._core(), ctx.scale, cu_q, cu_k, torch.get_num_threads())
        dq, dk, dv = (torch.from_dlpack(g) for g in grads)
        return dq, dk, dv, None, None, None


def attention_with_grad(q, k, v, pattern, scale, cu=None):
    return _Attention.apply(q, k, v, pattern, scale, cu)
