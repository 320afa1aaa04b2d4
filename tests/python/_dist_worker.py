"""Checks that run inside gloo ranks spawned by test_distributed.py (one spawn runs many
checks: starting processes is the slow part). Every rank builds the same global inputs from a
seed, takes its shard, calls spattn.distributed.attention and compares its rows, and the
gradients, with a single-process spattn.attention on the whole tensors."""
from __future__ import annotations

import datetime
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import spattn
import spattn.distributed as sd
from spattn.distributed._plan import Planner, contiguous_pieces, zigzag_pieces
from spattn.distributed._sequence import Runner

TOL = 1e-5


def _rel(a, b):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _inputs(seed, b, n, hq, hkv, d, dv, varlen=False):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if varlen else (b, n)
    q = torch.randn(*shape, hq, d, generator=g)
    k = torch.randn(*shape, hkv, d, generator=g)
    v = torch.randn(*shape, hkv, dv, generator=g)
    dout = torch.randn(*shape, hq, dv, generator=g)
    return q, k, v, dout


def _split(n, lengths):
    out, o = [], 0
    for m in lengths:
        out.append((o, o + m))
        o += m
    return out


def check(pattern, lengths, *, b=1, hq=4, hkv=2, d=16, dv=16, seed=0, mode="auto", layout="contiguous", cu=None,
          group=None, cu_pair=False):
    """Forward (out and lse) and backward of this rank's shard against the single-process call."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n = sum(lengths)
    q, k, v, dout = _inputs(seed, b, n, hq, hkv, d, dv, varlen=cu is not None)
    dim = 0 if cu is not None else 1
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
    kw = {} if cu is None else dict(cu_seqlens_q=torch.tensor(cu, dtype=torch.int32), cu_seqlens_k=torch.tensor(cu, dtype=torch.int32))
    ref, ref_lse = spattn.attention(qr, kr, vr, pattern=pattern, return_lse=True, **kw)
    ref.backward(dout)
    if layout == "zigzag":
        take = lambda x: sd.shard(x, group=group, layout="zigzag", dim=dim)  # noqa: E731
    else:
        a, e = _split(n, lengths)[rank]
        take = lambda x: x.narrow(dim, a, e - a)  # noqa: E731
    qs, ks, vs = (take(x).detach().clone().requires_grad_() for x in (q, k, v))
    cu_kw = dict(cu_seqlens_q=torch.tensor(cu, dtype=torch.int32), cu_seqlens_k=list(cu)) if cu_pair else dict(cu_seqlens=cu)
    out, lse = sd.attention(qs, ks, vs, pattern=pattern, group=group, return_lse=True, mode=mode, layout=layout,
                            timeout=60, **cu_kw)
    out.backward(take(dout))
    want_lse = take(ref_lse.transpose(-1, -2)).transpose(-1, -2)
    fin = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse), fin), "rows that see no key differ"
    errs = {
        "out": _rel(out, take(ref)),
        "lse": _rel(lse[fin], want_lse[fin]) if fin.any() else 0.0,
        "dq": _rel(qs.grad, take(qr.grad)),
        "dk": _rel(ks.grad, take(kr.grad)),
        "dv": _rel(vs.grad, take(vr.grad)),
    }
    bad = {key: val for key, val in errs.items() if not val <= TOL}
    assert not bad, f"rank {rank}/{world} {pattern!r} lengths={lengths} mode={mode} layout={layout}: {bad}"
    return out


class LocalRunner(Runner):
    """A Runner whose messages are slices of the other ranks' tensors (no processes). Global
    query rows, which travel to every rank and back, are checked by test_distributed.py."""

    def __init__(self, plan, shards):
        super().__init__(plan, None, None, None)
        self.shards = shards
        self.rows = None

    def exchange_kv(self, k, v, again=False):
        plan, shards = self.plan, self.shards

        class Done:
            def finish(self):
                pass

        def get(src):
            if src == plan.rank:
                return k, v
            ks, vs = shards[src]
            rows = plan.recv[src]
            return torch.cat([ks[:, a:a + n] for a, n in rows], 1), torch.cat([vs[:, a:a + n] for a, n in rows], 1)

        get.drop = lambda src: None
        return Done(), get


def run_plan(pattern, lengths, layout="contiguous", cu=None, dtype=torch.float32, device="cpu", d=16, tol=None):
    """Each rank's plan run in turn (messages replaced by slices) against one call."""
    g = torch.Generator().manual_seed(3)
    n = sum(lengths)
    q, k, v = (torch.randn(1, n, h, d, generator=g).to(device=device, dtype=dtype) for h in (3, 1, 1))
    seqs = [n] if cu is None else [b - a for a, b in zip(cu, cu[1:])]
    starts = np.concatenate(([0], np.cumsum(seqs)))
    if cu is None:
        ref, ref_lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    else:
        ref, ref_lse = spattn.attention(q[0], k[0], v[0], pattern=pattern, return_lse=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
        ref, ref_lse = ref[None], ref_lse[None]
    world = len(lengths)
    pieces = contiguous_pieces(lengths, seqs if cu else None) if layout == "contiguous" else zigzag_pieces(n, world)
    rows = [torch.tensor([int(starts[p.seq]) + i for p in ps for i in range(p.start, p.end)], dtype=torch.long,
                         device=device) for ps in pieces]
    shards = [(k[:, r], v[:, r]) for r in rows]
    planner = Planner(pattern, pieces, seqs)
    for r in range(world):
        out, lse, _ = LocalRunner(planner.plan(r), shards).forward(q[:, rows[r]], *shards[r])
        want, want_lse = ref[:, rows[r]], ref_lse[:, :, rows[r]]
        keep = torch.tensor([i - int(starts[np.searchsorted(starts, i, side="right") - 1])
                             not in planner.global_positions for i in rows[r].tolist()], dtype=torch.bool, device=device)
        out, lse, want, want_lse = out[:, keep], lse[:, :, keep], want[:, keep], want_lse[:, :, keep]
        tol = tol or (1e-5 if dtype == torch.float32 else 2e-2)
        assert (out.float() - want.float()).abs().max() <= tol * want.float().abs().max()
        fin = torch.isfinite(want_lse)
        assert torch.equal(torch.isfinite(lse), fin)
        assert (lse[fin] - want_lse[fin]).abs().max() <= 1e-4
    return planner


def check_halo_bytes(window, n_per_rank, hkv, d, dv):
    """A causal window of `window` keys: each rank but the first receives window - 1 keys from
    its left neighbour, and the bytes sent must stay within 1.1x of W * Hkv * (D + Dv) * 4."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = n_per_rank * world
    q, k, v, _ = _inputs(7, 1, n, hkv, hkv, d, dv)
    a = rank * n_per_rank
    sl = lambda x: x[:, a:a + n_per_rank]  # noqa: E731
    sd.reset_stats()
    out = sd.attention(sl(q), sl(k), sl(v), pattern=spattn.SlidingWindow(window - 1, 0), timeout=60)
    st = sd.stats()
    halo = window * hkv * (d + dv) * 4
    exact = (window - 1) * hkv * (d + dv) * 4 if rank < world - 1 else 0  # rank r sends to r + 1
    assert st["forward_bytes"] == exact, (rank, st, exact)
    assert st["bytes_sent"] <= 1.1 * halo, (rank, st, halo)
    ref = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(window - 1, 0))
    assert _rel(out, sl(ref)) <= TOL
    # The backward returns the halo's dK/dV to its owner: the same bytes, the other way.
    qs, ks, vs = (sl(x).clone().requires_grad_() for x in (q, k, v))
    sd.reset_stats()
    sd.attention(qs, ks, vs, pattern=spattn.SlidingWindow(window - 1, 0), timeout=60).sum().backward()
    st = sd.stats()
    back = (window - 1) * hkv * (d + dv) * 4 if rank > 0 else 0
    assert st["forward_bytes"] == exact and st["backward_bytes"] == back, (rank, st, exact, back)


def check_causal_skips():
    """Causal: a rank sends its shard only to later ranks (no pair with the earlier ones)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    q, k, v, _ = _inputs(3, 1, 16 * world, 2, 2, 8, 8)
    sl = lambda x: x[:, 16 * rank:16 * rank + 16]  # noqa: E731
    sd.reset_stats()
    sd.attention(sl(q), sl(k), sl(v), pattern=spattn.Causal(), mode="sequence", timeout=60)
    assert sd.stats()["forward_bytes"] == (world - 1 - rank) * 16 * 2 * 16 * 4, (rank, sd.stats())


def check_global_row_bytes():
    """Global([0]) | window: the global row travels to the keys (its q row out, partial results
    back) instead of every key travelling to rank 0; each rank sends far less than a shard."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n, hq, hkv, d = 256, 2, 2, 8
    q, k, v, dout = _inputs(4, 1, n * world, hq, hkv, d, d)
    sl = lambda x: x[:, n * rank:n * rank + n]  # noqa: E731
    pattern = spattn.Global([0]) | spattn.SlidingWindow(7, 0)
    qs, ks, vs = (sl(x).clone().requires_grad_() for x in (q, k, v))
    sd.reset_stats()
    out = sd.attention(qs, ks, vs, pattern=pattern, timeout=60)
    out.backward(sl(dout))
    st = sd.stats()
    shard_bytes = n * hkv * 2 * d * 4
    assert st["forward_bytes"] < shard_bytes / 4 and st["backward_bytes"] < shard_bytes / 4, (rank, st)
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
    ref = spattn.attention(qr, kr, vr, pattern=pattern)
    ref.backward(dout)
    for got, want in ((out, ref), (qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        assert _rel(got, sl(want)) <= TOL


def expect_error_everywhere(fn, kind, words):
    try:
        fn()
    except kind as e:
        msg = str(e)
        assert all(w in msg for w in words), msg
        return
    raise AssertionError(f"rank {dist.get_rank()}: no {kind.__name__} raised")


def check_errors():
    rank, world = dist.get_rank(), dist.get_world_size()
    q, k, v, _ = _inputs(1, 1, 24, 2, 2, 8, 8)
    # One rank passes a wrong head dim: every rank raises, naming that rank.
    bad_k = k[:, :, :, :4] if rank == world - 1 else k
    expect_error_everywhere(lambda: sd.attention(q, bad_k, v, pattern=spattn.Causal(), timeout=30), ValueError,
                            [f"rank {world - 1}", "k"])
    # The ranks disagree on the pattern.
    pat = spattn.SlidingWindow(3 + (rank == 0), 0)
    expect_error_everywhere(lambda: sd.attention(q, k, v, pattern=pat, timeout=30), ValueError, ["pattern", "disagree"])
    # Zigzag shards whose lengths are not the zigzag split.
    qq = q[:, : 5 + 3 * rank]
    expect_error_everywhere(lambda: sd.attention(qq, k[:, : 5 + 3 * rank], v[:, : 5 + 3 * rank], pattern=spattn.Causal(),
                                                 layout="zigzag", timeout=30), ValueError, ["zigzag"])
    # A per-head pattern sized for other heads fails the same check as a single-process call.
    expect_error_everywhere(lambda: sd.attention(q, k, v, pattern=spattn.PerHead([spattn.Causal()] * 3), timeout=30),
                            ValueError, ["PerHead"])
    # Head mode that cannot split the heads.
    q3 = q.repeat_interleave(3, dim=2)[:, :, : 2 * world + 1]
    expect_error_everywhere(lambda: sd.attention(q3, k[:, :, :1], v[:, :, :1], mode="heads", timeout=30), ValueError,
                            ["heads"])
    # A non-tensor on one rank only: TypeError everywhere.
    qn = q.numpy() if rank == 0 else q
    expect_error_everywhere(lambda: sd.attention(qn, k, v, timeout=30), TypeError, ["rank 0", "torch"])


def check_timeout():
    """A rank that never calls: the others raise a RuntimeError after the timeout, no hang.
    (Last in its suite: the group is not usable afterwards.)"""
    q, k, v, _ = _inputs(1, 1, 8, 1, 1, 8, 8)
    if dist.get_rank() == 0:
        expect_error_everywhere(lambda: sd.attention(q, k, v, timeout=2), RuntimeError, ["timed out"])
    else:
        time.sleep(6)  # stays connected, but never calls


def main(rank, world, port, suite):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        if SUITES[suite](world) != "no barrier":
            dist.barrier()
    finally:
        dist.destroy_process_group()


def suite_patterns(world):
    S = spattn
    uneven = [37, 23, 41, 19][:world] if world == 4 else [53, 44]
    n = sum(uneven)
    rng = np.random.default_rng(5)
    nb = -(-n // 16)
    layout = rng.random((4, nb, nb)) < 0.25
    check(S.SlidingWindow(15, 0), uneven)
    check(S.SlidingWindow(30, 9), uneven, b=2, hq=4, hkv=1, dv=24)
    check(S.Causal(), uneven)
    check(S.Causal(), _even(n, world), layout="zigzag")
    check(S.Dilated(6, 0, 3), uneven)
    check(S.Global([0, 7, n - 5]) | S.SlidingWindow(11, 0), uneven)
    check(S.Sink(4) | S.SlidingWindow(11, 0), uneven)
    # Two key intervals from one rank (sink and halo apart), batch of 2: a message of parts.
    check(S.Sink(2) | S.SlidingWindow(5, 0), [100, 60, 50, 40][:world], b=2)
    check(S.BlockSparse(layout, 16), uneven, mode="sequence")
    check(S.BlockSparse(layout, 16), uneven, mode="heads")
    # Shard borders that cut the blocks need a refined layout; when some rank's would be too
    # large, every rank learns it from the plan and auto runs head mode (no rank left waiting).
    import spattn.distributed._shift as shift

    limit, shift.MAX_REFINED_LAYOUT = shift.MAX_REFINED_LAYOUT, 64
    try:
        check(S.BlockSparse(~layout, 16), uneven)
        a, e = _split(n, uneven)[dist.get_rank()]
        shards = [x[:, a:e] for x in _inputs(0, 1, n, 4, 2, 16, 16)[:3]]
        expect_error_everywhere(lambda: sd.attention(*shards, pattern=S.BlockSparse(layout[:, ::-1], 16), mode="sequence",
                                                     timeout=30), ValueError, ["layout", "heads"])
    finally:
        shift.MAX_REFINED_LAYOUT = limit
    check(S.PerHead([S.SlidingWindow(7, 0), S.Causal(), S.Dilated(4, 0, 2), S.Sink(2) | S.SlidingWindow(3, 3)]), uneven)
    cu = [0, 30, 31, n - 20, n]
    check(S.SlidingWindow(9, 0), uneven, cu=cu)
    check(S.Causal(), uneven, cu=cu, mode="heads", cu_pair=True)
    check(S.Dense(), uneven, hq=4, hkv=2, mode="heads")
    # A learned pattern has no sequence plan: auto runs it in head mode.
    check(S.TopKBlocks(2, 16, always=S.Sink(1)), uneven)
    check(S.Dense(), uneven, mode="sequence")
    # An empty shard: the halo of the rank after it comes from further left.
    check(S.SlidingWindow(40, 0), [30, 0] + [25] * (world - 2) if world > 2 else [45, 0])
    # A subgroup (ranks 1 and 3 of 4, or rank 1 alone of 2): group ranks map to global ranks.
    members = [1, 3] if world == 4 else [1]
    sub = dist.new_group(members)
    if rank_in(members):
        check(S.SlidingWindow(9, 2) | S.Sink(1), [30, 25][: len(members)], group=sub)


def rank_in(members):
    return dist.get_rank() in members


def _even(n, world):
    from spattn.distributed._plan import zigzag_bounds

    b = zigzag_bounds(n, world)
    return [(b[r + 1] - b[r]) + (b[2 * world - r] - b[2 * world - 1 - r]) for r in range(world)]


def suite_bytes_and_errors(world):
    check_halo_bytes(4096, 6144, 1, 16, 16)
    check_causal_skips()
    check_global_row_bytes()
    check_errors()
    dist.barrier()
    check_timeout()
    return "no barrier"


SUITES = {"patterns": suite_patterns, "bytes_and_errors": suite_bytes_and_errors}
