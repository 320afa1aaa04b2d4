"""Point-to-point exchange over torch.distributed (gloo for CPU tensors, NCCL for CUDA ones),
and the count of the bytes spattn.distributed sends. No transport of its own: isend / irecv
and all_gather of the group's backend."""
from __future__ import annotations

import threading

import torch
import torch.distributed as dist

_lock = threading.Lock()
_stats = {"bytes_sent": 0, "messages": 0, "forward_bytes": 0, "backward_bytes": 0, "metadata_bytes": 0}


def stats() -> dict:
    """What this process sent through spattn.distributed since the last reset_stats():
    bytes_sent (everything), forward_bytes and backward_bytes (K/V halos, dK/dV partials,
    head-mode all-to-alls), metadata_bytes (the shard lengths and checks exchanged per call),
    messages (point-to-point sends and collectives)."""
    with _lock:
        return dict(_stats)


def reset_stats() -> None:
    with _lock:
        for key in _stats:
            _stats[key] = 0


def count(nbytes: int, phase: str) -> None:
    with _lock:
        _stats["bytes_sent"] += int(nbytes)
        _stats["messages"] += 1
        _stats[phase + "_bytes"] += int(nbytes)


def global_rank(group, r: int) -> int:
    if group is None or group is dist.group.WORLD:
        return r
    return dist.get_global_rank(group, r)


def _wait(work, timeout):
    try:
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout)
    except RuntimeError as e:
        text = str(e).lower()
        if "timed out" in text or "timeout" in text:
            what = f"timed out after {timeout or 'the group timeout'} waiting for another rank of the group"
        elif "connection" in text:
            what = "another rank of the group closed its connection"
        else:
            raise
        raise RuntimeError(
            f"spattn.distributed: {what} (a rank that does not make the same call, or failed before it); "
            f"torch.distributed said: {e}"
        ) from e


class Exchange:
    """One round of messages. sends: {dst rank in group: tensor or list of tensors} (each part
    one message; contiguous slices of the caller's tensors are sent without a copy). recvs:
    {src: (part sizes, dtype)}: the parts land one after another in one flat buffer. get(src)
    waits for one source, so work on what has arrived overlaps what is still in flight.

    depth: on gloo, at most this many sources are being received at a time (the next is posted
    when one is taken), so a rank that takes every earlier shard (causal) holds a few at once,
    as in a ring; None posts all. NCCL posts a round as one group."""

    def __init__(self, group, sends: dict, recvs: dict, device, timeout, phase: str, depth=None):
        self.group, self.timeout = group, timeout
        self.nccl = dist.get_backend(group) == "nccl"
        self._order = sorted(recvs)
        self._recv = {}  # src -> [buffer, [works] or None (done)]
        self._spec = {src: recvs[src] for src in self._order}
        self._device = device
        self._depth = None if self.nccl else depth
        self._posted = 0
        self._sends = []  # (tensor, work)
        parts = []
        for dst in sorted(sends):
            msg = sends[dst] if isinstance(sends[dst], (list, tuple)) else [sends[dst]]
            for t in msg:
                t = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
                count(t.numel() * t.element_size(), phase)
                parts.append((t, global_rank(group, dst)))
        if self.nccl:
            # NCCL needs a round's sends and receives grouped (two ranks that both receive first
            # would wait on each other); it may return one work for the whole group.
            c10d = dist.distributed_c10d
            ops, where = [], []
            for src in self._order:
                buf, views = self._alloc(src)
                self._recv[src] = [buf, []]
                for v in views:
                    where.append(src)
                    ops.append(dist.P2POp(c10d.irecv, v, global_rank(group, src), group))
            for t, peer in parts:
                where.append(t)
                ops.append(dist.P2POp(c10d.isend, t, peer, group))
            works = dist.batch_isend_irecv(ops) if ops else []
            if len(works) != len(ops):
                works = [_All(works)] * len(ops)
            for w, key in zip(works, where):
                if isinstance(key, torch.Tensor):
                    self._sends.append((key, w))
                else:
                    self._recv[key][1].append(w)
            self._posted = len(self._order)
        else:
            # gloo: plain irecv / isend; receives first, then sends (nothing blocks).
            self._post(self._depth or len(self._order))
            self._sends = [(t, dist.isend(t, dst=peer, group=group)) for t, peer in parts]

    def _alloc(self, src):
        sizes, dtype = self._spec[src]
        sizes = [sizes] if isinstance(sizes, int) else list(sizes)
        buf = torch.empty(sum(sizes), dtype=dtype, device=self._device)
        return buf, list(buf.split(sizes)) if sizes else []

    def _post(self, count_: int):
        while self._posted < len(self._order) and count_ > 0:
            src = self._order[self._posted]
            buf, views = self._alloc(src)
            peer = global_rank(self.group, src)
            self._recv[src] = [buf, [dist.irecv(v, src=peer, group=self.group) for v in views]]
            self._posted += 1
            count_ -= 1

    def get(self, src: int) -> torch.Tensor:
        if src not in self._recv:
            self._post(self._order.index(src) + 1 - self._posted)
        buf, works = self._recv[src]
        if works is not None:
            for w in works:
                _wait(w, self.timeout)
            self._recv[src][1] = None
            self._post(1)
        return buf

    def release(self, src: int) -> None:
        """Drops this exchange's reference to a received buffer (taken and no longer needed)."""
        self.get(src)
        self._recv[src][0] = None

    def finish(self) -> None:
        for src in self._order:
            if src not in self._recv or self._recv[src][1] is not None:
                self.get(src)
        for _, w in self._sends:
            _wait(w, self.timeout)
        self._sends = []


class _All:
    """Waits for every work of a coalesced group."""

    def __init__(self, works):
        self.works, self.done = works, False

    def wait(self, *timeout):
        if not self.done:
            for w in self.works:
                w.wait(*timeout)
            self.done = True


def all_gather_int64(values, group, device, timeout) -> list:
    """Each rank's list of ints (same length everywhere), as a list per rank."""
    world = dist.get_world_size(group)
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    outs = [torch.empty_like(mine) for _ in range(world)]
    count(mine.numel() * 8 * (world - 1), "metadata")
    _wait(dist.all_gather(outs, mine, group=group, async_op=True), timeout)
    return [o.tolist() for o in outs]
