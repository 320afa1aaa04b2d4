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
    """One round of messages: `sends` {dst rank in group: 1-D tensor}, `recvs` {src: (numel,
    dtype)}. Receives are posted at once; get(src) waits for one, so work on what has arrived
    overlaps what is still in flight."""

    def __init__(self, group, sends: dict, recvs: dict, device, timeout, phase: str):
        self.timeout = timeout
        self._recv = {}
        self._send = []
        self._bufs = []  # send buffers stay alive until finish()
        posted = []  # (kind, key, buffer, peer)
        for src in sorted(recvs):
            numel, dtype = recvs[src]
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._recv[src] = [buf, len(posted)]
            posted.append(("recv", buf, global_rank(group, src)))
        for dst in sorted(sends):
            t = sends[dst].contiguous()
            count(t.numel() * t.element_size(), phase)
            self._send.append(len(posted))
            self._bufs.append(t)
            posted.append(("send", t, global_rank(group, dst)))
        if not posted:
            self._works = []
        elif dist.get_backend(group) == "nccl":
            # NCCL needs a round's sends and receives grouped (two ranks that both receive first
            # would wait on each other); it may return one work for the whole group.
            c10d = dist.distributed_c10d
            ops = [dist.P2POp(c10d.irecv if kind == "recv" else c10d.isend, t, peer, group) for kind, t, peer in posted]
            works = dist.batch_isend_irecv(ops)
            self._works = works if len(works) == len(ops) else [_All(works)] * len(ops)
        else:
            # gloo: plain isend / irecv (receives are posted first; nothing blocks).
            self._works = [(dist.irecv(t, src=peer, group=group) if kind == "recv" else dist.isend(t, dst=peer, group=group))
                           for kind, t, peer in posted]

    def get(self, src: int) -> torch.Tensor:
        buf, i = self._recv[src]
        if i is not None:
            _wait(self._works[i], self.timeout)
            self._recv[src][1] = None
        return buf

    def finish(self) -> None:
        for src in list(self._recv):
            self.get(src)
        for i in self._send:
            _wait(self._works[i], self.timeout)
        self._send = []
        self._bufs = []


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
