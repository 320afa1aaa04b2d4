"""Global query rows (Global positions) see every key of their sequence. Rather than bringing
all keys to the rank that holds such a row, the row goes to the keys: its owner sends the
query row to every rank holding keys of that sequence, each computes the row against its own
keys, and the partial (out, lse) come back and merge exactly. The backward sends (dout, out,
lse) of the row the same way; dQ partials come back, dK/dV stay where the keys are."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import api as _api
from ._merge import merge as _merge
from ._comm import Exchange
from ._shift import key_padding, shifted


@dataclass
class GlobalRows:
    rank: int
    rows: list  # every global row: (seq, pos, owner rank, owner's local row)
    helpers: list  # per row: the ranks that hold keys of its sequence (owner included)
    subs: dict = field(default_factory=dict)  # row index -> [(k_row, nk, pad, pattern)] on this rank

    def owned(self):
        return [h for h, r in enumerate(self.rows) if r[2] == self.rank]

    def to(self, dst):
        """Rows this rank owns and `dst` helps with, in order."""
        return [h for h in self.owned() if dst in self.helpers[h] and dst != self.rank]

    def frm(self, src):
        """Rows `src` owns that this rank helps with, in order."""
        return [h for h, r in enumerate(self.rows) if r[2] == src and src != self.rank and self.rank in self.helpers[h]]


def make(pattern, pieces, seq_lengths, positions, me):
    rows, helpers = [], []
    for b, n in enumerate(seq_lengths):
        holders = sorted({r for r, ps in enumerate(pieces) for p in ps if p.seq == b})
        for pos in sorted(x for x in positions if x < n):
            owner = next((r, p.local + pos - p.start) for r, ps in enumerate(pieces) for p in ps
                         if p.seq == b and p.start <= pos < p.end)
            rows.append((b, pos, owner[0], owner[1]))
            helpers.append(holders)
    g = GlobalRows(me, rows, helpers)
    for h, (b, pos, _, _) in enumerate(rows):
        if me not in helpers[h]:
            continue
        subs = []
        for kp in pieces[me]:
            if kp.seq != b:
                continue
            pad = key_padding(pattern, pos, 1, kp.start, kp.length)
            pat = shifted(pattern, pos, 1, kp.start, kp.length, pad)
            if pat is not None:
                subs.append((kp.local, kp.length, pad, pat))
        g.subs[h] = subs
    return g


def _keys(k, v, k_row, nk, pad):
    kk, vv = k[:, k_row:k_row + nk], v[:, k_row:k_row + nk]
    if pad:
        kk = torch.cat([kk, kk.new_zeros(kk.shape[0], pad, *kk.shape[2:])], dim=1)
        vv = torch.cat([vv, vv.new_zeros(vv.shape[0], pad, *vv.shape[2:])], dim=1)
    return kk, vv


class GlobalRowRunner:
    def __init__(self, g: GlobalRows, group, scale, timeout):
        self.g, self.group, self.scale, self.timeout = g, group, scale, timeout
        self.q_rows = {}  # row index -> q row [B, 1, Hq, D] (this rank helps), kept for the backward

    def _owners_to_helpers(self, chunk_of, width, dtype, device, phase):
        """Each owner sends chunk_of(h) (flat, `width` elements of `dtype`) of its rows to their
        helpers. Returns {row index: flat chunk} for the rows this rank helps with (own rows
        included, from chunk_of directly)."""
        g = self.g
        dsts = sorted({d for h in g.owned() for d in g.helpers[h] if d != g.rank})
        srcs = sorted({g.rows[h][2] for h in g.subs if g.rows[h][2] != g.rank})
        sends = {dst: torch.cat([chunk_of(h).to(dtype).reshape(-1) for h in g.to(dst)]) for dst in dsts}
        ex = Exchange(self.group, sends, {src: (len(g.frm(src)) * width, dtype) for src in srcs}, device, self.timeout,
                      phase)
        got = {h: chunk_of(h).to(dtype).reshape(-1) for h in g.owned() if h in g.subs}
        for src in srcs:
            buf = ex.get(src)
            for i, h in enumerate(g.frm(src)):
                got[h] = buf[i * width:(i + 1) * width]
        ex.finish()
        return got

    def _helpers_to_owners(self, part, width, device, phase):
        """Each helper sends part[h] (flat float32, `width`) of the rows it helps with back to
        their owners. Returns {owned row index: [flat chunks]} (own part included)."""
        g = self.g
        srcs = sorted({g.rows[h][2] for h in g.subs if g.rows[h][2] != g.rank})
        dsts = sorted({d for h in g.owned() for d in g.helpers[h] if d != g.rank})
        sends = {src: torch.cat([part[h] for h in g.frm(src)]) for src in srcs}
        ex = Exchange(self.group, sends, {dst: (len(g.to(dst)) * width, torch.float32) for dst in dsts}, device,
                      self.timeout, phase)
        got = {h: ([part[h]] if h in part else []) for h in g.owned()}
        for dst in dsts:
            buf = ex.get(dst)
            for i, h in enumerate(g.to(dst)):
                got[h].append(buf[i * width:(i + 1) * width])
        ex.finish()
        return got

    def forward(self, q, k, v, out, lse):
        """Overwrites the owned global rows of out and lse with their exact values."""
        g = self.g
        b, _, hq, d = q.shape
        dv = v.shape[3]
        row_of = lambda h: q[:, g.rows[h][3]:g.rows[h][3] + 1]  # noqa: E731
        got = self._owners_to_helpers(row_of, b * hq * d, q.dtype, q.device, "forward")
        self.q_rows = {h: got[h].view(b, 1, hq, d) for h in g.subs}
        part = {}
        for h, subs in g.subs.items():
            outs = [torch.zeros(b, 1, hq, dv, dtype=torch.float32, device=q.device)]
            lses = [torch.full((b, hq, 1), float("-inf"), dtype=torch.float32, device=q.device)]
            for k_row, nk, pad, pat in subs:
                kk, vv = _keys(k, v, k_row, nk, pad)
                o, l = _api.attention(self.q_rows[h], kk, vv, pattern=pat, scale=self.scale, return_lse=True)
                outs.append(o.float())
                lses.append(l)
            o, l = _merge(outs, lses)
            part[h] = torch.cat([o.reshape(-1), l.reshape(-1)])
        got = self._helpers_to_owners(part, b * hq * (dv + 1), q.device, "forward")
        for h, chunks in got.items():
            outs = [c[:b * hq * dv].view(b, 1, hq, dv) for c in chunks]
            lses = [c[b * hq * dv:].view(b, hq, 1) for c in chunks]
            o, l = _merge(outs, lses)
            row = g.rows[h][3]
            out[:, row:row + 1] = o
            lse[:, :, row:row + 1] = l

    def key_ranges(self):
        return [(k_row, k_row + nk) for subs in self.g.subs.values() for k_row, nk, _, _ in subs]

    def backward(self, dout, out, lse, k, v, dq, dk, dv_acc):
        """Adds the global rows' gradients: dQ partials to the owners' dq, dK/dV here."""
        g = self.g
        b, _, hq, dv = dout.shape
        d = k.shape[3]
        dtype = dout.dtype
        rows = lambda x, h: x[:, g.rows[h][3]:g.rows[h][3] + 1]  # noqa: E731
        chunk = lambda h: torch.cat([rows(dout, h).float().reshape(-1), rows(out, h).float().reshape(-1),  # noqa: E731
                                     lse[:, :, g.rows[h][3]:g.rows[h][3] + 1].reshape(-1)])
        w = b * hq * dv
        got = self._owners_to_helpers(chunk, 2 * w + b * hq, torch.float32, dout.device, "backward")
        part = {}
        for h, subs in g.subs.items():
            c = got[h]
            do, o = c[:w].view(b, 1, hq, dv).to(dtype), c[w:2 * w].view(b, 1, hq, dv).to(dtype)
            l = c[2 * w:].view(b, hq, 1)
            gq_sum = torch.zeros(b, 1, hq, d, dtype=torch.float32, device=dout.device)
            for k_row, nk, pad, pat in subs:
                kk, vv = _keys(k, v, k_row, nk, pad)
                gq, gk, gv = _api.attention_backward(do, self.q_rows[h], kk, vv, o, l, pattern=pat, scale=self.scale)
                gq_sum += gq.float()
                dk.add(k_row, gk[:, :nk])
                dv_acc.add(k_row, gv[:, :nk])
            part[h] = gq_sum.reshape(-1)
        got = self._helpers_to_owners(part, b * hq * d, dout.device, "backward")
        for h, chunks in got.items():
            total = sum(c.view(b, 1, hq, d) for c in chunks)
            dq.add(g.rows[h][3], total.to(dq.result.dtype))
