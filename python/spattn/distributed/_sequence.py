"""Sequence mode: each rank keeps its queries, fetches only the keys its plan names (a halo
for a window, the earlier shards for causal, gathered global keys), runs one attention call per
(query piece, key piece) and merges the parts exactly through their logsumexps. The backward
reuses the forward's out and lse, so each part's gradients are exact partial sums; dK/dV of
fetched keys go back to their owners."""
from __future__ import annotations

import torch

from .. import api as _api
from ._merge import merge as _merge
from ._comm import Exchange
from ._global_rows import GlobalRowRunner
from ._rows import Coverage, SumRows


class Runner:
    """Runs one plan on this rank's tensors (4-D, [Bt, n, H, D]; varlen problems as Bt = 1)."""

    def __init__(self, plan, group, scale, timeout, refetch=frozenset()):
        # refetch: the ranks that keep no fetched K/V for the backward and fetch it again
        self.plan, self.group, self.scale, self.timeout = plan, group, scale, timeout
        self.refetch = refetch
        self.rows = None if plan.global_rows is None else GlobalRowRunner(plan.global_rows, group, scale, timeout)

    # ---- K/V exchange -------------------------------------------------------------------

    @staticmethod
    def _parts(k, v, rows):
        """The K rows, then the V rows, as separate message parts (no copy when contiguous)."""
        return [k[:, a:a + n] for a, n in rows] + [v[:, a:a + n] for a, n in rows]

    @staticmethod
    def _unpack(buf, like_k, like_v, rows):
        """Inverse of the layout [K rows of each part] + [V rows of each part] (or, rows an
        int, one [B, rows, Hkv, D] K block and one V block)."""
        b, _, hk, d = like_k.shape
        dv = like_v.shape[3]
        counts = [rows] if isinstance(rows, int) else [n for _, n in rows]
        total = sum(counts)
        nk = b * total * hk * d
        if len(counts) == 1 or b == 1:  # parts are consecutive rows already
            return buf[:nk].view(b, total, hk, d), buf[nk:].view(b, total, hk, dv)
        ks = buf[:nk].split([b * n * hk * d for n in counts])
        vs = buf[nk:].split([b * n * hk * dv for n in counts])
        return (torch.cat([x.view(b, n, hk, d) for x, n in zip(ks, counts)], dim=1),
                torch.cat([x.view(b, n, hk, dv) for x, n in zip(vs, counts)], dim=1))

    def exchange_kv(self, k, v, again=False):
        """Starts sending this rank's halos and receiving the others'. Returns get(src).
        again: the backward's second fetch, only to and from the ranks in self.refetch."""
        plan = self.plan
        b, _, hk, d = k.shape
        dv = v.shape[3]
        to = [dst for dst in plan.send if not again or dst in self.refetch]
        sends = {dst: self._parts(k, v, plan.send[dst]) for dst in to}
        take = not again or plan.rank in self.refetch
        recvs = {src: ([b * n * hk * d for _, n in plan.recv[src]] + [b * n * hk * dv for _, n in plan.recv[src]], k.dtype)
                 for src in plan.recv if take}
        # At most two sources in flight (gloo): the last rank of a causal problem holds a few
        # earlier shards at a time, not all of them.
        ex = Exchange(self.group, sends, recvs, k.device, self.timeout, "backward" if again else "forward", depth=2)
        cache = {}

        def get(src):
            if src == plan.rank:
                return k, v
            if src not in cache:
                cache[src] = self._unpack(ex.get(src), k, v, plan.recv[src])
            return cache[src]

        def drop(src):
            cache.pop(src, None)
            ex.release(src)

        get.drop = drop
        return ex, get

    @staticmethod
    def _keys(kbuf, vbuf, sub):
        kk, vv = kbuf[:, sub.k_row:sub.k_row + sub.nk], vbuf[:, sub.k_row:sub.k_row + sub.nk]
        if sub.pad:
            kk = torch.cat([kk, kk.new_zeros(kk.shape[0], sub.pad, *kk.shape[2:])], dim=1)
            vv = torch.cat([vv, vv.new_zeros(vv.shape[0], sub.pad, *vv.shape[2:])], dim=1)
        return kk, vv

    # ---- forward ------------------------------------------------------------------------

    def forward(self, q, k, v, keep=False):
        """out (q's dtype), lse float32 [Bt, Hq, n], and (keep) the fetched K/V (src -> (k, v))
        for the backward; without keep each source's K/V is dropped once its parts ran."""
        b, n, hq, _ = q.shape
        dv = v.shape[3]
        ex, get = self.exchange_kv(k, v)
        subs = self.plan.subs
        cov = Coverage(n, [(s.q_row, s.q_row + s.nq) for s in subs])
        out = torch.empty(b, n, hq, dv, dtype=q.dtype, device=q.device)
        lse = torch.full((b, hq, n), float("-inf"), dtype=torch.float32, device=q.device)
        for r0, r1 in cov.uncovered:  # rows that see no key: out 0, lse -inf
            out[:, r0:r1] = 0
        # Every part writes its rows straight into out; rows several parts cover are then
        # merged in float32 accumulators and written once at the end.
        acc = [(torch.zeros(b, r1 - r0, hq, dv, dtype=torch.float32, device=q.device),
                torch.full((b, hq, r1 - r0), float("-inf"), dtype=torch.float32, device=q.device)) for r0, r1 in cov.multi]
        last = {sub.src: i for i, sub in enumerate(subs)}
        for i, sub in enumerate(subs):
            kk, vv = self._keys(*get(sub.src), sub)
            r0, r1 = sub.q_row, sub.q_row + sub.nq
            _, l = _api.attention(q[:, r0:r1], kk, vv, pattern=sub.pattern, scale=self.scale, return_lse=True,
                                  out=out[:, r0:r1])
            lse[:, :, r0:r1] = l
            for a, e, run in cov.split(r0, r1):
                if run is None:
                    continue
                ao, al = acc[run]
                m0 = cov.multi[run][0]
                mo, ml = _merge([ao[:, a - m0:e - m0], out[:, a:e].float()], [al[:, :, a - m0:e - m0], lse[:, :, a:e]])
                ao[:, a - m0:e - m0] = mo
                al[:, :, a - m0:e - m0] = ml
            if not keep and sub.src != self.plan.rank and last[sub.src] == i:
                get.drop(sub.src)
        for (r0, r1), (ao, al) in zip(cov.multi, acc):
            out[:, r0:r1] = ao
            lse[:, :, r0:r1] = al
        ex.finish()
        if self.rows is not None:
            self.rows.forward(q, k, v, out, lse)
        fetched = {src: get(src) for src in self.plan.recv} if keep else None
        return out, lse, fetched

    # ---- backward -----------------------------------------------------------------------

    def backward(self, dout, q, k, v, out, lse, fetched):
        """dq, dk, dv for this rank's tensors. `fetched`: the forward's K/V from other ranks
        (None on a rank in self.refetch: it fetches them again)."""
        plan = self.plan
        ex = None
        if plan.rank in self.refetch or any(dst in self.refetch for dst in plan.send):
            # Sends to the ranks that fetch again, and receives when this rank is one of them.
            ex, get = self.exchange_kv(k, v, again=True)
        if plan.rank not in self.refetch:
            get = lambda src: (k, v) if src == plan.rank else fetched[src]  # noqa: E731
        b, _, hk, d = k.shape
        dv_dim = v.shape[3]
        subs = plan.subs
        own = [(s.k_row, s.k_row + s.nk) for s in subs if s.src == plan.rank]
        incoming = [(a, a + m) for rows in plan.send.values() for a, m in rows]
        extra_q, extra_k = [], []
        if self.rows is not None:
            # Global rows: their gradients come from the helpers; the plan's parts see dout 0 there.
            owned = [self.rows.g.rows[h][3] for h in self.rows.g.owned()]
            extra_q = [(r, r + 1) for r in owned] * 2
            extra_k = self.rows.key_ranges()
            if owned:
                dout_rows = dout
                dout = dout.clone()
                for r in owned:
                    dout[:, r] = 0
        dq = SumRows(torch.zeros_like(q), [(s.q_row, s.q_row + s.nq) for s in subs] + extra_q)
        dk = SumRows(torch.zeros_like(k), own + incoming + extra_k)
        dvv = SumRows(torch.zeros_like(v), own + incoming + extra_k)
        partial = {}
        for src in plan.recv:
            ranges = [(s.k_row, s.k_row + s.nk) for s in subs if s.src == src]
            rows = plan.recv_rows(src)
            partial[src] = (SumRows(k.new_zeros(b, rows, hk, d), ranges), SumRows(v.new_zeros(b, rows, hk, dv_dim), ranges))
        last = {sub.src: i for i, sub in enumerate(subs)}
        for i, sub in enumerate(subs):
            kk, vv = self._keys(*get(sub.src), sub)
            r0, r1 = sub.q_row, sub.q_row + sub.nq
            gq, gk, gv = _api.attention_backward(dout[:, r0:r1], q[:, r0:r1], kk, vv, out[:, r0:r1], lse[:, :, r0:r1],
                                                 pattern=sub.pattern, scale=self.scale)
            dq.add(r0, gq)
            tk, tv = (dk, dvv) if sub.src == plan.rank else partial[sub.src]
            tk.add(sub.k_row, gk[:, :sub.nk])
            tv.add(sub.k_row, gv[:, :sub.nk])
            if plan.rank in self.refetch and sub.src != plan.rank and last[sub.src] == i:
                get.drop(sub.src)
        if ex is not None:
            ex.finish()
        if self.rows is not None:
            self.rows.backward(dout_rows if extra_q else dout, out, lse, k, v, dq, dk, dvv)
        # dK/dV of fetched keys go back to their owners (the reverse of the forward's messages).
        sends = {src: torch.cat([gk.finish().reshape(-1), gv.finish().reshape(-1)]) for src, (gk, gv) in partial.items()}
        recvs = {dst: (b * plan.send_rows(dst) * hk * (d + dv_dim), k.dtype) for dst in plan.send}
        back = Exchange(self.group, sends, recvs, k.device, self.timeout, "backward")
        for dst, rows in sorted(plan.send.items()):
            gk, gv = self._unpack(back.get(dst), k, v, plan.send_rows(dst))
            o = 0
            for a, m in rows:
                dk.add(a, gk[:, o:o + m])
                dvv.add(a, gv[:, o:o + m])
                o += m
        back.finish()
        return dq.finish(), dk.finish(), dvv.finish()


class SequenceAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, runner, keep_fetched):
        out, lse, fetched = runner.forward(q.detach(), k.detach(), v.detach(), keep_fetched)
        ctx.runner = runner
        ctx.fetched = fetched
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.runner.backward(dout.contiguous(), q.detach(), k.detach(), v.detach(), out, lse, ctx.fetched)
        ctx.fetched = None
        return dq, dk, dv, None, None
