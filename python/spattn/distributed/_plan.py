"""The sequence-mode plan: who holds which positions, which keys each rank needs from which,
and the attention sub-problems each rank runs. Deterministic from (pieces, pattern), so every
rank computes the same messages without negotiating them."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import _intervals as iv
from . import _global_rows
from ._reach import global_rows, keys_of, queries_of
from ._shift import key_padding, shifted

# Key intervals closer than this are sent (and computed) as one piece: fewer messages parts and
# attention calls for a few extra keys.
GAP = 64


@dataclass(frozen=True)
class Piece:
    """Positions [start, start + length) of sequence `seq`, at local rows [local, local + length)."""

    seq: int
    start: int
    length: int
    local: int

    @property
    def end(self) -> int:
        return self.start + self.length


def contiguous_pieces(lengths, seq_lengths=None):
    """Pieces of each rank when rank r holds global rows [sum(lengths[:r]), ... + lengths[r]) of
    the concatenation of sequences of seq_lengths (one sequence of sum(lengths) by default)."""
    total = sum(lengths)
    seq_lengths = [total] if seq_lengths is None else list(seq_lengths)
    starts = [0]
    for n in seq_lengths:
        starts.append(starts[-1] + n)
    out, o = [], 0
    for n in lengths:
        mine = []
        for b, (s0, s1) in enumerate(zip(starts[:-1], starts[1:])):
            lo, hi = max(o, s0), min(o + n, s1)
            if lo < hi:
                mine.append(Piece(b, lo - s0, hi - lo, lo - o))
        out.append(mine)
        o += n
    return out


def zigzag_bounds(n: int, world: int):
    """Chunk c of 2 * world covers [bounds[c], bounds[c + 1]); rank r holds chunks r and
    2 * world - 1 - r, in that order."""
    return [c * n // (2 * world) for c in range(2 * world + 1)]


def zigzag_pieces(n: int, world: int):
    b = zigzag_bounds(n, world)
    out = []
    for r in range(world):
        c0, c1 = r, 2 * world - 1 - r
        first = Piece(0, b[c0], b[c0 + 1] - b[c0], 0)
        second = Piece(0, b[c1], b[c1 + 1] - b[c1], first.length)
        out.append([x for x in (first, second) if x.length])
    return out


@dataclass
class Sub:
    """One attention call: local query rows [q_row, q_row + nq) against nk keys of source rank
    `src` (rows [k_row, k_row + nk) of its local tensor when src is this rank, else of the
    buffer received from it), with `pad` unseen keys appended and `pattern` already shifted."""

    q_row: int
    nq: int
    src: int
    k_row: int
    nk: int
    pad: int
    pattern: object
    whole_piece: bool


@dataclass
class Plan:
    rank: int
    world: int
    pieces: list  # per rank, its pieces
    recv: dict = field(default_factory=dict)  # src -> [(local key row at src, length)], in order
    send: dict = field(default_factory=dict)  # dst -> [(local key row here, length)], in order
    subs: list = field(default_factory=list)  # own sources first, then by source rank
    global_rows: object = None  # _global_rows.GlobalRows when the pattern has Global positions

    def recv_rows(self, src: int) -> int:
        return sum(n for _, n in self.recv.get(src, ()))

    def send_rows(self, dst: int) -> int:
        return sum(n for _, n in self.send.get(dst, ()))


class Planner:
    def __init__(self, pattern, pieces, seq_lengths):
        self.pattern, self.pieces, self.seq_lengths = pattern, pieces, seq_lengths
        self._keys = {}
        self._plans = {}
        self._need = {}
        # Global query rows are computed apart (_global_rows), so the other rows' plan leaves
        # out what they see.
        self.global_positions = global_rows(pattern)
        self.apart = bool(self.global_positions)

    def _keys_of(self, piece: Piece):
        key = (piece.seq, piece.start, piece.length)
        if key not in self._keys:
            self._keys[key] = keys_of(self.pattern, piece.start, piece.end, self.seq_lengths[piece.seq], self.apart)
        return self._keys[key]

    def need(self, r: int, s: int):
        """[(piece index at s, lo, hi)]: the keys rank r needs from rank s, in sequence positions."""
        if (r, s) not in self._need:
            self._need[(r, s)] = self._need_of(r, s)
        return self._need[(r, s)]

    def _need_of(self, r: int, s: int):
        out = []
        for pi, kp in enumerate(self.pieces[s]):
            parts = [self._keys_of(qp) for qp in self.pieces[r] if qp.seq == kp.seq]
            got = iv.close_gaps(iv.clip(iv.union(*parts), kp.start, kp.end), GAP)
            out.extend((pi, lo, hi) for lo, hi in got)
        return out

    def plan(self, me: int) -> Plan:
        """This rank's plan (computed once: its shifted patterns stay compiled in the core)."""
        if me not in self._plans:
            self._plans[me] = self._make(me)
        return self._plans[me]

    def _make(self, me: int) -> Plan:
        world = len(self.pieces)
        plan = Plan(me, world, self.pieces)
        if self.apart:
            plan.global_rows = _global_rows.make(self.pattern, self.pieces, self.seq_lengths, self.global_positions, me)
        for s in range(world):
            if s == me:
                continue
            got = self.need(me, s)
            if got:
                plan.recv[s] = [(self.pieces[s][pi].local + lo - self.pieces[s][pi].start, hi - lo) for pi, lo, hi in got]
            give = self.need(s, me)
            if give:
                plan.send[s] = [(self.pieces[me][pi].local + lo - self.pieces[me][pi].start, hi - lo) for pi, lo, hi in give]
        for s in [me] + [x for x in range(world) if x != me]:
            got = self.need(me, s)
            offset = 0
            for pi, lo, hi in got:
                kp = self.pieces[s][pi]
                base = kp.local + lo - kp.start if s == me else offset
                offset += hi - lo
                for qp in self.pieces[me]:
                    if qp.seq != kp.seq:
                        continue
                    self._add_sub(plan, qp, s, kp.seq, lo, hi, base)
        return plan

    def _add_sub(self, plan, qp: Piece, src: int, seq: int, lo: int, hi: int, base: int):
        n = self.seq_lengths[seq]
        kh = iv.hull(iv.clip(self._keys_of(qp), lo, hi))
        if kh is None:
            return
        u, v = kh
        qh = iv.hull(iv.clip(queries_of(self.pattern, u, v, n, self.apart), qp.start, qp.end))
        if qh is None:
            return
        a, b = qh
        pad = key_padding(self.pattern, a, b - a, u, v - u)
        pat = shifted(self.pattern, a, b - a, u, v - u, pad)
        if pat is None:
            return
        plan.subs.append(Sub(qp.local + a - qp.start, b - a, src, base + u - lo, v - u, pad, pat,
                             a == qp.start and b == qp.end))

    def received_rows(self, r: int) -> int:
        return sum(hi - lo for s in range(len(self.pieces)) if s != r for _, lo, hi in self.need(r, s))
