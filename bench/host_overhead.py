"""Host (Python and dispatch) cost per call of spattn on torch tensors, against the bare core.

    python bench/host_overhead.py [--sizes 64:16 4096:512] [--heads 8] [--dim 64]
                                  [--rounds 15] [--calls 0] [--threads 0]

One process, the same tensors; the paths alternate batch by batch so that machine load falls on
all alike. Each figure is the time per call of the fastest of --rounds batches (a batch is
--calls calls; 0: enough calls for about 20 ms): on a shared machine the fastest batch is the
one least disturbed by other processes. CPU tensors only: the GPU's host figure (issue
11's bar, <= 30 us per call) is NOT measured here.

Paths (float32, B=1, causal window of `w` keys, SlidingWindow(w - 1, 0)):
- core: `_core.forward` on DLPack capsules from torch's C exporter, out back through
  `torch.from_dlpack`, no lse: the least a Python call can do;
- api._forward: the direct call of the core (what `spattn.attention` did on torch tensors
  before the torch operators of issue 13);
- attention: `spattn.attention(q, k, v, pattern=...)` on plain tensors;
- attention, grad: the same on tensors that require grad (forward only: the autograd graph is
  recorded, nothing is run backward);
- custom op: `torch.ops.spattn.attention_forward` called directly, eager (what every call paid
  before the eager fast path);
- fwd+bwd rows: a forward and `.backward(dout)`: through spattn.attention, and through the core
  directly (forward with lse, then `_core.backward`).
The ratio column is each row's time over the `core` row's (fwd+bwd rows: over `core fwd+bwd`).
--threads 1 (torch.set_num_threads, which spattn follows) runs the kernels on the calling
thread: no thread-pool wake-ups, so on a loaded machine the small rows show the host cost.
"""
import argparse
import gc
import platform
import time

import torch

import spattn
from spattn import _core, api
from spattn._interop import plain


def _batch_time(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _fastest(fns, rounds, calls):
    for fn in fns.values():
        fn()  # warm-up: layouts compiled, buffers cached, operators registered
    if calls <= 0:  # about 20 ms per batch of the slowest path
        slowest = max(_batch_time(fn, 3) for fn in fns.values())
        calls = max(1, min(2000, int(0.02 / max(slowest, 1e-7))))
    acc = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()  # each batch starts with no garbage of the previous one's autograd graphs
            acc[name].append(_batch_time(fn, calls))
    return {name: min(t) for name, t in acc.items()}, calls


def _paths(n, window, heads, dim):
    pattern = spattn.SlidingWindow(window - 1, 0)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, dim, generator=gen) for _ in range(3))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)
    threads = torch.get_num_threads()
    core_pattern = pattern._core()

    def core():
        o, _ = _core.forward(plain(q), plain(k), plain(v), core_pattern, None, None, False, None, None, threads)
        return torch.from_dlpack(o)

    def core_fb():
        o, lse = _core.forward(plain(q), plain(k), plain(v), core_pattern, None, None, True, None, None, threads)
        o, lse = torch.from_dlpack(o), torch.from_dlpack(lse)
        g = _core.backward(plain(dout), plain(q), plain(k), plain(v), plain(o), plain(lse), core_pattern, None, None,
                           None, threads)
        return [torch.from_dlpack(x) for x in g]

    def direct():
        return api._forward(q, k, v, pattern, None, None, False, None)

    def attention():
        return spattn.attention(q, k, v, pattern=pattern)

    def attention_grad():
        return spattn.attention(qg, kg, vg, pattern=pattern)

    spec, data = spattn.torch_ops.pattern_spec(pattern)

    def custom_op():
        return torch.ops.spattn.attention_forward(q, k, v, spec, data, None, None, None)

    def attention_fb():
        spattn.attention(qg, kg, vg, pattern=pattern).backward(dout)

    fwd = {"core": core, "api._forward": direct, "attention": attention, "attention, grad": attention_grad,
           "custom op": custom_op}
    fb = {"core fwd+bwd": core_fb, "attention fwd+bwd": attention_fb}
    return fwd, fb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["64:16", "4096:512"], help="N:window pairs")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=0, help="calls per batch (0: about 20 ms per batch)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import spattn.torch_ops  # noqa: F401  (registers the operators before any timing)

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"spattn {spattn.__version__}, torch {torch.__version__}; CPU tensors (GPU host cost not measured)")
    print(f"# float32, B=1, H={args.heads}, D={args.dim}, causal window; fastest of {args.rounds} "
          f"alternating batches")
    print(f"{'N':>6} {'window':>6}  {'path':<20}{'us/call':>11}{'ratio':>8}")
    for size in args.sizes:
        n, window = (int(x) for x in size.split(":"))
        fwd, fb = _paths(n, window, args.heads, args.dim)
        for group, base in ((fwd, "core"), (fb, "core fwd+bwd")):
            t, calls = _fastest(group, args.rounds, args.calls)
            for name, s in t.items():
                print(f"{n:>6} {window:>6}  {name:<20}{s * 1e6:>11.1f}{s / t[base]:>8.3f}")
            print(f"{'':>14}({calls} calls per batch)")


if __name__ == "__main__":
    main()
