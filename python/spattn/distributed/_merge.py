"""Exact merge of partial results over disjoint key sets: spattn.merge on the CPU; torch ops
(float32 out) on other devices. (spattn.merge also runs on CUDA now; this path was written
before it did, and moving it over waits for a GPU session to test the NCCL path at all.)"""
from __future__ import annotations

import torch

from ..merge import merge as _cpu_merge


def merge(outs, lses):
    """(out, lse) over the union of the parts' key sets; outs [B, n, H, Dv], lses [B, H, n]."""
    if outs[0].device.type == "cpu":
        return _cpu_merge(outs, lses)
    return torch_merge(outs, lses)


def torch_merge(outs, lses):
    """The same merge in torch ops (float32 out), for any device."""
    lse = lses[0]
    for l in lses[1:]:
        lse = torch.logaddexp(lse, l)
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    out = None
    for o, l in zip(outs, lses):
        w = torch.exp(l - safe).transpose(1, 2).unsqueeze(-1)  # [B, n, H, 1]; 0 where l = -inf
        term = w * o.float()
        out = term if out is None else out + term
    return out, lse
