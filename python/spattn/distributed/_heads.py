"""Head mode (Ulysses-style): one all-to-all turns sequence shards of all heads into the whole
sequence for 1/world of the heads; attention runs locally with any pattern (per-head layouts,
learned patterns, dense); a second all-to-all brings the output back to sequence shards. The
all-to-alls are autograd functions whose backward is the reverse all-to-all."""
from __future__ import annotations

import torch
import torch.distributed as dist

from .. import patterns as P
from ._comm import _wait, count


def _all_to_all(inp, in_splits, out_splits, group, timeout, phase):
    out = inp.new_empty(sum(out_splits))
    me = dist.get_rank(group)
    count((sum(in_splits) - in_splits[me]) * inp.element_size(), phase)
    _wait(dist.all_to_all_single(out, inp, out_splits, in_splits, group=group, async_op=True), timeout)
    return out


def _to_heads(x, lengths, group, timeout, phase):
    """[B, n_me, H, D] sequence shard -> [B, N, H / world, D] head shard."""
    world, me = len(lengths), dist.get_rank(group)
    b, n, h_all, d = x.shape
    h = h_all // world
    inp = x.reshape(b, n, world, h, d).permute(2, 0, 1, 3, 4).reshape(-1)
    out = _all_to_all(inp, [b * n * h * d] * world, [b * m * h * d for m in lengths], group, timeout, phase)
    parts = out.split([b * m * h * d for m in lengths])
    return torch.cat([p.view(b, m, h, d) for p, m in zip(parts, lengths)], dim=1)


def _to_seq(y, lengths, group, timeout, phase):
    """[B, N, h, D] head shard -> [B, n_me, h * world, D] sequence shard."""
    world, me = len(lengths), dist.get_rank(group)
    b, _, h, d = y.shape
    n = lengths[me]
    inp = torch.cat([p.reshape(-1) for p in y.split(list(lengths), dim=1)])
    out = _all_to_all(inp, [b * m * h * d for m in lengths], [b * n * h * d] * world, group, timeout, phase)
    return out.view(world, b, n, h, d).permute(1, 2, 0, 3, 4).reshape(b, n, world * h, d)


class ToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lengths, group, timeout):
        ctx.args = (lengths, group, timeout)
        return _to_heads(x, lengths, group, timeout, "forward")

    @staticmethod
    def backward(ctx, g):
        return _to_seq(g.contiguous(), *ctx.args, "backward"), None, None, None


class ToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, lengths, group, timeout):
        ctx.args = (lengths, group, timeout)
        return _to_seq(y, lengths, group, timeout, "forward")

    @staticmethod
    def backward(ctx, g):
        return _to_heads(g.contiguous(), *ctx.args, "backward"), None, None, None


def head_slice(pattern, h0: int, h1: int, hq: int):
    """The pattern for query heads h0 .. h1 - 1 only."""
    if isinstance(pattern, P.PerHead):
        return P.PerHead(list(pattern.parts[h0:h1]))
    if isinstance(pattern, P.BlockSparse) and pattern.layout.shape[0] == hq and hq > 1:
        return P.BlockSparse(pattern.layout[h0:h1], pattern.block_size)
    if isinstance(pattern, P.Union):
        return P.Union([head_slice(p, h0, h1, hq) for p in pattern.parts])
    if isinstance(pattern, P.Intersection):
        return P.Intersection([head_slice(p, h0, h1, hq) for p in pattern.parts])
    if isinstance(pattern, P.TopKBlocks) and pattern.always is not None:
        return P.TopKBlocks(pattern.k, pattern.block_size, pattern.causal, head_slice(pattern.always, h0, h1, hq))
    return pattern


def attention(q, k, v, pattern, lengths, group, scale, timeout, cu_seqlens=None):
    """q, k, v [B, n_me, H, D] (varlen: B = 1 and cu_seqlens the global offsets). Returns out
    [B, n_me, Hq, Dv] and lse [B, Hq, n_me]."""
    from .. import api

    world, me = len(lengths), dist.get_rank(group)
    hq, hkv = q.shape[2], k.shape[2]
    if hkv % world:
        # Too few kv heads to split: give every query head its own copy (autograd sums back).
        k = k.repeat_interleave(hq // hkv, dim=2)
        v = v.repeat_interleave(hq // hkv, dim=2)
    qh, kh, vh = (ToHeads.apply(x, lengths, group, timeout) for x in (q, k, v))
    h = hq // world
    pat = head_slice(pattern, me * h, (me + 1) * h, hq)
    if cu_seqlens is None:
        o, l = api.attention(qh, kh, vh, pattern=pat, scale=scale, return_lse=True)
    else:
        o, l = api.attention(qh[0], kh[0], vh[0], pattern=pat, scale=scale, return_lse=True,
                             cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens)
        o, l = o.unsqueeze(0), l.unsqueeze(0)
    out = ToSeq.apply(o, lengths, group, timeout)
    with torch.no_grad():
        lse = _to_seq(l.transpose(1, 2).unsqueeze(-1).contiguous(), lengths, group, timeout, "forward")
    return out, lse.squeeze(-1).transpose(1, 2)
