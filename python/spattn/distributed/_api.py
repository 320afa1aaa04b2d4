"""spattn.distributed.attention: the sharded call, its checks (run on every rank, so that a bad
shard gives the same clear error everywhere instead of a hang) and the choice of mode."""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .. import api as _api
from .. import patterns as P
from . import _heads
from ._comm import all_gather_int64
from ._plan import Planner, contiguous_pieces, zigzag_bounds, zigzag_pieces
from ._reach import Unsupported, check_supported
from ._sequence import Runner, SequenceAttention

_MODES = ("auto", "sequence", "heads")
_LAYOUTS = ("contiguous", "zigzag")
_DTYPES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_plans: OrderedDict = OrderedDict()
_MAX_PLANS = 16


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "little")


def _canon(p) -> str:
    """A description of a pattern that equal patterns share across processes."""
    if isinstance(p, (P.Union, P.Intersection, P.PerHead)):
        return f"{type(p).__name__}({','.join(_canon(x) for x in p.parts)})"
    items = []
    for key, val in sorted(vars(p).items()):
        if key.startswith("_"):
            continue
        if isinstance(val, np.ndarray):
            val = (val.shape, _digest(np.ascontiguousarray(val).tobytes()))
        elif isinstance(val, P.Pattern):
            val = _canon(val)
        items.append(f"{key}={val!r}")
    return f"{type(p).__name__}({';'.join(items)})"


def _timeout(timeout):
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, a timedelta or None, got {timeout!r}")
    return timedelta(seconds=float(timeout))


def _cu_list(cu):
    if cu is None:
        return None
    if isinstance(cu, torch.Tensor):
        cu = cu.detach().cpu().tolist()
    elif isinstance(cu, np.ndarray):
        cu = cu.tolist()
    try:
        vals = [int(x) for x in cu]
    except (TypeError, ValueError):
        raise TypeError(f"cu_seqlens: expected a sequence of ints (global offsets [B+1]), got {type(cu).__name__}") from None
    if len(vals) < 2 or vals[0] != 0 or any(b < a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"cu_seqlens: expected global offsets [B+1] starting at 0, non-decreasing, got {vals[:8]}")
    return vals


def _one_cu(cu, cu_q, cu_k):
    """The one offsets array of a sharded self-attention, from cu_seqlens or the q / k pair."""
    if cu_q is None and cu_k is None:
        return cu
    given = [x for x in (cu, cu_q, cu_k) if x is not None]
    lists = [_cu_list(x) for x in given]
    if cu_q is None or cu_k is None or any(x != lists[0] for x in lists):
        raise ValueError("cu_seqlens_q, cu_seqlens_k: a sharded self-attention takes one set of global offsets; pass "
                         "cu_seqlens (or equal cu_seqlens_q and cu_seqlens_k)")
    return lists[0]


def _local_meta(q, k, v, pattern, scale, cu, mode, layout, nccl):
    """This rank's facts for the cross-rank check; raises for what is wrong locally."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: spattn.distributed needs torch tensors, got {type(t).__name__}")
    rank = 3 if cu is not None else 4
    layout_str = "[T_r, H, D]" if cu is not None else "[B, N_r, H, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{name}: expected {rank} dimensions {layout_str}, got shape {list(t.shape)}")
    q4, k4, v4 = (t.unsqueeze(0) if cu is not None else t for t in (q, k, v))
    if q4.dtype not in _DTYPES or k4.dtype != q4.dtype or v4.dtype != q4.dtype:
        raise TypeError(f"q, k, v: expected one dtype among float32, float16, bfloat16, got {q4.dtype}, {k4.dtype}, {v4.dtype}")
    if k4.shape[:2] != q4.shape[:2] or v4.shape[:3] != k4.shape[:3]:
        raise ValueError(
            f"q, k, v: a rank holds the same positions of q, k and v (shapes [B, N_r] and heads must agree), got "
            f"q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if q4.shape[2] % k4.shape[2] or k4.shape[3] != q4.shape[3]:
        raise ValueError(f"q, k: expected Hq a multiple of Hkv and one head dim D, got q {list(q.shape)}, k {list(k.shape)}")
    if not (k4.device == q4.device and v4.device == q4.device):
        raise ValueError(f"q, k, v: expected one device, got {q.device}, {k.device}, {v.device}")
    if nccl != q4.is_cuda:
        raise ValueError(f"group: its backend is {'NCCL' if nccl else 'not NCCL'}, but q is on {q.device}; use a gloo "
                         f"group for CPU tensors and an NCCL group for CUDA tensors")
    b, n, hq, d = q4.shape
    scale_bits = 0 if scale is None else struct.unpack("<q", struct.pack("<d", scale))[0]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    opts = _digest(f"{mode}/{layout}".encode())
    cu_fp = 0 if cu is None else _digest(repr(cu).encode())
    return [0, n, b, hq, k4.shape[2], d, v4.shape[3], _DTYPES[q4.dtype], 1 if q4.is_cuda else 0,
            _digest(_canon(pattern).encode()), scale_bits & ((1 << 62) - 1), cu_fp, opts, int(grad)]


_FIELDS = ["n", "B", "Hq", "Hkv", "D", "Dv", "dtype", "device type", "pattern", "scale", "cu_seqlens",
           "mode/layout", "requires_grad"]


def _exchange_meta(local, err, group, device, timeout):
    """Every rank's meta; raises the same error on every rank when one rank failed or the
    ranks disagree."""
    meta = [1] + [0] * 13 if err is not None else local
    rows = all_gather_int64(meta, group, device, timeout)
    bad = [r for r, row in enumerate(rows) if row[0]]
    if bad:
        msgs = [None] * len(rows)
        dist.all_gather_object(msgs, None if err is None else (type(err).__name__, str(err)), group=group)
        kind, msg = msgs[bad[0]]
        text = f"rank {bad[0]}: {msg}" + (f" (and ranks {bad[1:]} failed too)" if len(bad) > 1 else "")
        raise (TypeError if kind == "TypeError" else ValueError)(text)
    for i, name in enumerate(_FIELDS[1:], start=2):
        vals = [row[i] for row in rows]
        if len(set(vals)) > 1:
            other = next(r for r, x in enumerate(vals) if x != vals[0])
            shown = (lambda x: x) if name in ("B", "Hq", "Hkv", "D", "Dv", "requires_grad") else (lambda x: "a different value")
            raise ValueError(
                f"{name}: the ranks of the group disagree: rank 0 has {shown(vals[0])}, rank {other} has "
                f"{shown(vals[other])}; every rank must pass the same {name}")
    return rows


def _seq_lengths(lengths, cu):
    total = sum(lengths)
    if cu is None:
        return [total]
    if cu[-1] != total:
        raise ValueError(f"cu_seqlens: the last offset {cu[-1]} must equal the total tokens over the ranks, {total} "
                         f"(shard lengths {lengths})")
    return [b - a for a, b in zip(cu, cu[1:])]


def _pieces(lengths, seq_lengths, layout, cu):
    if layout == "contiguous":
        return contiguous_pieces(lengths, seq_lengths if cu is not None else None)
    world, n = len(lengths), sum(lengths)
    b = zigzag_bounds(n, world)
    want = [(b[r + 1] - b[r]) + (b[2 * world - r] - b[2 * world - 1 - r]) for r in range(world)]
    if list(lengths) != want:
        raise ValueError(f"layout: 'zigzag' expects shard lengths {want} for {n} tokens on {world} ranks "
                         f"(spattn.distributed.shard makes them), got {list(lengths)}")
    return zigzag_pieces(n, world)


def _head_bytes(lengths, hq, hkv, d, dv):
    world = len(lengths)
    hk = hkv if hkv % world == 0 else hq
    return max(n * (world - 1) // world * (hq * d + hk * (d + dv) + hq * dv) for n in lengths)


def _has_block_sparse(p) -> bool:
    if isinstance(p, (P.Union, P.Intersection, P.PerHead)):
        return any(_has_block_sparse(x) for x in p.parts)
    return isinstance(p, P.BlockSparse)


def _sequence_plan_ok(pattern, planner_fn, world):
    """Unsupported unless every rank can plan: a BlockSparse layout whose blocks the shard
    borders cut finely may be too large to refine on some rank, and every rank must know it
    (else some would wait for the others)."""
    check_supported(pattern)
    if _has_block_sparse(pattern):
        planner = planner_fn()
        for r in range(world):
            planner.plan(r)


def _choose(mode, pattern, planner_fn, lengths, hq, hkv, d, dv, layout):
    heads_ok = hq % len(lengths) == 0 and layout == "contiguous"
    if mode == "heads":
        seq_ok = False
    else:
        try:
            _sequence_plan_ok(pattern, planner_fn, len(lengths))
            seq_ok = True
        except Unsupported:
            if mode == "sequence":
                raise
            seq_ok = False
    if mode == "sequence":
        return "sequence"
    if mode == "heads":
        if not heads_ok:
            raise ValueError(f"mode: 'heads' needs Hq={hq} divisible by the group size {len(lengths)} and layout='contiguous'")
        return "heads"
    if seq_ok and heads_ok:
        planner = planner_fn()
        seq = max(planner.received_rows(r) for r in range(len(lengths))) * hkv * (d + dv)
        return "sequence" if seq <= _head_bytes(lengths, hq, hkv, d, dv) else "heads"
    if seq_ok:
        return "sequence"
    if heads_ok:
        return "heads"
    raise ValueError(f"pattern: {type(pattern).__name__} needs mode='heads' (no sequence plan), which needs Hq={hq} "
                     f"divisible by the group size {len(lengths)} and layout='contiguous'")


def _planner(key, pattern, pieces, seq_lengths):
    if key in _plans:
        _plans.move_to_end(key)
        return _plans[key]
    planner = Planner(pattern, pieces, seq_lengths)
    _plans[key] = planner
    if len(_plans) > _MAX_PLANS:
        _plans.popitem(last=False)
    return planner


def attention(q, k, v, pattern=None, group=None, scale=None, return_lse: bool = False, *, mode: str = "auto",
              layout: str = "contiguous", cu_seqlens=None, timeout=None, cu_seqlens_q=None, cu_seqlens_k=None,
              softcap=None, alibi_slopes=None, sinks=None):
    """Attention over a sequence sharded across the ranks of a torch.distributed group.

    Each rank passes its shard q [B, N_r, Hq, D], k [B, N_r, Hkv, D], v [B, N_r, Hkv, Dv]
    (torch tensors; CPU with gloo, CUDA with NCCL). With layout='contiguous' (default) rank r
    holds global positions sum(N_<r) .. + N_r, in rank order; shards may differ in length. With
    layout='zigzag' rank r holds chunks r and 2*world-1-r of 2*world (spattn.distributed.shard),
    which balances causal work. The pattern applies to global positions (docs/patterns.md with
    Nq == Nk). Returns this rank's out [B, N_r, Hq, Dv] (and lse [B, Hq, N_r] float32):
    exactly the rows a single-process call on the gathered tensors would give.

    mode: 'sequence' sends each rank only the keys its queries need (a halo for windows, earlier
    shards for causal, merged by logsumexp); 'heads' runs an all-to-all over heads (any pattern,
    Hq divisible by the group size); 'auto' takes the one that sends fewer bytes.
    cu_seqlens: global offsets [B+1] of a variable-length batch packed over all ranks (q is then
    [T_r, Hq, D]; sequences may cross shard borders); cu_seqlens_q / cu_seqlens_k, as in
    spattn.attention, are accepted too and must then be equal (self-attention). timeout: seconds (or a timedelta) to wait
    for any message before raising. torch autograd works through the call.

    Score modifiers (softcap, alibi_slopes, sinks) are not implemented for sharded sequences in
    this version (ALiBi needs global positions in every shard's call, and sinks must be counted
    once in the merge of the shards' parts: spattn.merge(..., sinks=) does that for a caller's
    own split); passing one raises ValueError.
    """
    for name, given in (("softcap", softcap), ("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if given is not None:
            raise ValueError(f"{name}: spattn.distributed.attention does not take score modifiers in this version; "
                             "run spattn.attention on gathered tensors, or split the keys yourself and merge the "
                             "parts with spattn.merge(..., sinks=)")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group: torch.distributed is not initialized; call torch.distributed.init_process_group first")
    me = dist.get_rank(group)
    if me < 0:
        raise ValueError("group: this process is not a member of the group passed")
    world = dist.get_world_size(group)
    timeout = _timeout(timeout)
    err, local = None, None
    nccl = dist.get_backend(group) == "nccl"
    try:
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
        pattern = _api._pattern(pattern)
        scale = _api._scale(scale)
        cu = _cu_list(_one_cu(cu_seqlens, cu_seqlens_q, cu_seqlens_k))
        if cu is not None and layout != "contiguous":
            raise ValueError("layout: a variable-length batch (cu_seqlens) is sharded contiguously; got layout='zigzag'")
        local = _local_meta(q, k, v, pattern, scale, cu, mode, layout, nccl)
    except (TypeError, ValueError) as e:
        err = e
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    rows = _exchange_meta(local, err, group, device, timeout)
    lengths = [row[1] for row in rows]
    _, n, b, hq, hkv, d, dv = local[:7]
    seq_lengths = _seq_lengths(lengths, cu)
    for m in sorted(set(seq_lengths)):
        pattern._core().check(m, m, hq)
    pieces = _pieces(lengths, seq_lengths, layout, cu)
    key = (local[9], tuple(lengths), tuple(seq_lengths), layout)
    chosen = _choose(mode, pattern, lambda: _planner(key, pattern, pieces, seq_lengths), lengths, hq, hkv, d, dv, layout)
    q4, k4, v4 = (t.unsqueeze(0) if cu is not None else t for t in (q, k, v))
    if chosen == "heads":
        out, lse = _heads.attention(q4, k4, v4, pattern, lengths, group, scale, timeout, cu)
    else:
        planner = _planner(key, pattern, pieces, seq_lengths)
        # A rank keeps the K/V it fetched for the backward when that is no more than its own
        # shard (a halo); otherwise (causal, dense) the backward fetches it again.
        refetch = frozenset(r for r in range(world) if planner.received_rows(r) > max(lengths[r], 1)) if local[13] else frozenset()
        runner = Runner(planner.plan(me), group, scale, timeout, refetch)
        keep = me not in refetch
        if local[13]:
            out, lse = SequenceAttention.apply(q4, k4, v4, runner, keep)
        else:
            with torch.no_grad():
                out, lse, _ = runner.forward(q4, k4, v4)
    if cu is not None:
        out, lse = out[0], lse[0]
    return (out, lse) if return_lse else out


def _bounds(n, world, rank, layout):
    if layout == "contiguous":
        return [(n * rank // world, n * (rank + 1) // world)]
    b = zigzag_bounds(n, world)
    return [(b[rank], b[rank + 1]), (b[2 * world - 1 - rank], b[2 * world - rank])]


def shard(x, group=None, layout: str = "contiguous", dim: int = 1):
    """This rank's shard of a whole sequence x (sequence along `dim`): contiguous, or the two
    zigzag chunks r and 2*world-1-r (equal causal work per rank). Local: no communication."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    parts = [x.narrow(dim, a, b - a) for a, b in _bounds(x.shape[dim], world, rank, layout)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def unshard(x, group=None, layout: str = "contiguous", dim: int = 1):
    """The whole sequence from every rank's shard (an all-gather; the inverse of shard)."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
    world = dist.get_world_size(group)
    lens = torch.tensor([x.shape[dim]], dtype=torch.int64, device=x.device)
    all_lens = [torch.empty_like(lens) for _ in range(world)]
    dist.all_gather(all_lens, lens, group=group)
    lens = [int(t) for t in all_lens]
    top = max(lens)
    padded = x
    if x.shape[dim] < top:
        shape = list(x.shape)
        shape[dim] = top - x.shape[dim]
        padded = torch.cat([x, x.new_zeros(shape)], dim=dim)
    got = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(got, padded.contiguous(), group=group)
    shards = [g.narrow(dim, 0, m) for g, m in zip(got, lens)]
    if layout == "contiguous":
        return torch.cat(shards, dim=dim)
    n = sum(lens)
    chunks = {}
    for r, s in enumerate(shards):
        (a0, a1), (b0, b1) = _bounds(n, world, r, layout)
        chunks[a0] = s.narrow(dim, 0, a1 - a0)
        chunks[b0] = s.narrow(dim, a1 - a0, b1 - b0)
    return torch.cat([chunks[a] for a in sorted(chunks)], dim=dim)
