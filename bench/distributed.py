"""Context-parallel benchmark: spattn.distributed.attention on 1, 2, ... processes.

    python bench/distributed.py [--n 1048576] [--window 512] [--ranks 1 2] [--threads 1]
                                [--heads 8] [--kv-heads 8] [--dim 64] [--repeats 3] [--backward]
    python bench/distributed.py --backend nccl --ranks 1 2 4 8 --n 16777216 --window 4096 \
                                --dtype bfloat16 --heads 16 --dim 128     # a machine with GPUs

Each configuration spawns `ranks` processes (torch.multiprocessing; gloo on the CPU with
--threads CPU threads each, NCCL with one GPU per rank), shards one random sequence of --n
tokens contiguously and times spattn.distributed.attention with a causal window of --window
keys (best of --repeats, after a warm-up; a barrier before each call; the time of a call is the
slowest rank's). One rank is the plain single-process spattn.attention on the whole sequence.
Printed per row: ms per call, speedup over one rank, bytes sent per rank per call (the largest
over ranks, read from spattn.distributed.stats()) and the halo the window needs,
(W - 1) x Hkv x (D + Dv) x element size.

--rank-work (CPU) also times, in this one process and one thread, the single call and each
rank's share of the work (its plan, with the messages replaced by slices), alternating them:
the speedup the ranks would reach on otherwise idle cores, without transfers. On a machine
whose cores are busy with other work, that is the figure the process timing cannot show.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import tempfile
import time


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dtype(torch, name):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _inputs(torch, a, n, args, device, requires_grad):
    g = torch.Generator().manual_seed(1234 + a)  # each rank makes its own shard's rows
    dt = _dtype(torch, args.dtype)
    mk = lambda h, d: torch.randn(1, n, h, d, generator=g).to(device=device, dtype=dt).requires_grad_(requires_grad)  # noqa: E731
    return mk(args.heads, args.dim), mk(args.kv_heads, args.dim), mk(args.kv_heads, args.dim)


def _time(torch, fn, repeats, sync, barrier):
    fn()
    best = float("inf")
    for _ in range(repeats):
        barrier()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _worker(rank, world, port, args, out_path):
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import torch.distributed as dist

    import spattn
    import spattn.distributed as sd

    torch.set_num_threads(args.threads)
    cuda = args.backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    pattern = spattn.SlidingWindow(args.window - 1, 0)
    if world == 1:
        q, k, v = _inputs(torch, 0, args.n, args, device, args.backward)

        def call():
            out = spattn.attention(q, k, v, pattern=pattern)
            if args.backward:
                out.backward(torch.ones_like(out))

        t = _time(torch, call, args.repeats, sync, lambda: None)
        with open(out_path, "w") as f:
            f.write(f"{t} 0\n")
        return
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    try:
        a, b = args.n * rank // world, args.n * (rank + 1) // world
        q, k, v = _inputs(torch, a, b - a, args, device, args.backward)

        def call():
            out = sd.attention(q, k, v, pattern=pattern, timeout=600)
            if args.backward:
                out.backward(torch.ones_like(out))

        sd.reset_stats()
        t = _time(torch, call, args.repeats, sync, dist.barrier)
        sent = sd.stats()["bytes_sent"] // (args.repeats + 1)  # per call (warm-up included)
        ts = torch.tensor([t, float(sent)], dtype=torch.float64, device=device)
        dist.all_reduce(ts, op=dist.ReduceOp.MAX)
        if rank == 0:
            with open(out_path, "w") as f:
                f.write(f"{ts[0].item()} {int(ts[1].item())}\n")
    finally:
        dist.destroy_process_group()


def _rank_work(args):
    """Best times of the whole call and of each rank's share, in one process, alternating."""
    import torch

    import spattn
    from spattn.distributed._plan import Planner, contiguous_pieces
    from spattn.distributed._sequence import Runner

    torch.set_num_threads(args.threads)
    pattern = spattn.SlidingWindow(args.window - 1, 0)
    q, k, v = _inputs(torch, 0, args.n, args, torch.device("cpu"), False)
    rows = [(args.n * r // max(args.ranks), args.n * (r + 1) // max(args.ranks)) for r in range(max(args.ranks))]
    planner = Planner(pattern, contiguous_pieces([b - a for a, b in rows]), [args.n])

    class Local(Runner):
        def exchange_kv(self, kk, vv, again=False):
            plan = self.plan

            class Done:
                def finish(self):
                    pass

            def get(src):
                if src == plan.rank:
                    return kk, vv
                a = rows[src][0]
                parts = plan.recv[src]
                return (torch.cat([k[:, a + x:a + x + m] for x, m in parts], 1),
                        torch.cat([v[:, a + x:a + x + m] for x, m in parts], 1))

            get.drop = lambda src: None
            return Done(), get

    jobs = {"whole": lambda: spattn.attention(q, k, v, pattern=pattern)}
    for r, (a, b) in enumerate(rows):
        run = Local(planner.plan(r), None, None, None)
        jobs[f"rank {r}"] = (lambda run=run, a=a, b=b: run.forward(q[:, a:b], k[:, a:b], v[:, a:b]))
    best = {name: float("inf") for name in jobs}
    for fn in jobs.values():
        fn()
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    slowest = max(t for name, t in best.items() if name != "whole")
    print(f"rank work in one process ({max(args.ranks)} ranks): whole call {best['whole'] * 1e3:.1f} ms, "
          + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in best.items() if name != "whole")
          + f"; whole / slowest rank = {best['whole'] / slowest:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument("--rank-work", action="store_true", help="also time each rank's share in one process (CPU)")
    args = ap.parse_args()
    args.kv_heads = args.kv_heads or args.heads

    import torch
    import torch.multiprocessing as mp

    import spattn

    elt = torch.tensor([], dtype=_dtype(torch, args.dtype)).element_size()
    halo = (args.window - 1) * args.kv_heads * 2 * args.dim * elt
    where = torch.cuda.get_device_name(0) if args.backend == "nccl" else platform.processor() or platform.machine()
    print(f"spattn {spattn.__version__}, torch {torch.__version__}, {args.backend}, {where}, "
          f"{os.cpu_count()} CPUs, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"causal window {args.window}, N={args.n:,}, H={args.heads}, Hkv={args.kv_heads}, D={args.dim}, "
          f"{args.dtype}, {'forward+backward' if args.backward else 'forward'}, {args.threads} thread(s) per rank")
    print("| ranks | ms per call | speedup | bytes sent per rank per call | halo (W-1) x Hkv x (D+Dv) x size |")
    print("|---|---|---|---|---|")
    base = None
    for world in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "result")
            mp.spawn(_worker, args=(world, _free_port(), args, path), nprocs=world, join=True)
            with open(path) as f:
                t, sent = f.read().split()
        t, sent = float(t), int(sent)
        base = base or (t if world == 1 else None)
        speed = f"{base / t:.2f}x" if base else "-"
        print(f"| {world} | {t * 1e3:.1f} | {speed} | {sent:,} | {halo if world > 1 else 0:,} |", flush=True)
    if args.rank_work:
        _rank_work(args)


if __name__ == "__main__":
    main()
