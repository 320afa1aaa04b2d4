"""What the torch custom-op path costs over calling the core directly (issue 13's bar: <= 5% at
N=4096 on the CPU, causal window of 512 keys).

    python bench/torch_op_overhead.py [--n 4096] [--heads 8] [--dim 64] [--rounds 30]

Both paths run in this one process on the same tensors, alternating call by call so that
machine load falls on both alike; each is timed as the median of --rounds calls.

- direct: the core through `spattn.api._forward` (what `spattn.attention` did for torch tensors
  before the operators: `_core.forward` without lse), and for forward+backward a plain
  `torch.autograd.Function` over `api._forward` / `api._backward` (the former autograd path);
- operator: `torch.ops.spattn.attention_forward` called directly (lse always computed:
  autograd needs it) and its registered autograd: what `spattn.attention` runs under
  torch.compile and other tracing. (In plain eager mode `spattn.attention` now skips the
  operators and calls the core, see torch_ops.py; bench/host_overhead.py times that path.)
"""
import argparse
import platform
import statistics
import time

import torch

import spattn
import spattn.torch_ops
from spattn import api


class _Direct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pattern):
        out, lse = api._forward(q, k, v, pattern, None, None, True, None)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern = pattern
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*api._backward(dout, q, k, v, out, lse, ctx.pattern, None, None), None)


def _median_pair(a, b, rounds):
    a(), b()  # warm-up (layouts compiled, buffers cached)
    ta, tb = [], []
    for _ in range(rounds):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"spattn {spattn.__version__}, torch {torch.__version__}")
    print(f"# B=1, N={args.n}, H={args.heads}, D={args.dim}, float32, causal window {args.window}, "
          f"median of {args.rounds} alternating calls")
    pattern = spattn.SlidingWindow(args.window - 1, 0)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.n, args.heads, args.dim, generator=gen) for _ in range(3))

    def direct_fwd():
        return api._forward(q, k, v, pattern, None, None, False, None)

    spec, data = spattn.torch_ops.pattern_spec(pattern)
    op = torch.ops.spattn.attention_forward

    def op_fwd():
        return op(q, k, v, spec, data, None, None, None)[0]

    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)

    def direct_fb():
        _Direct.apply(qg, kg, vg, pattern).backward(dout)

    def op_fb():
        op(qg, kg, vg, spec, data, None, None, None)[0].backward(dout)

    print(f"{'pass':<18}{'direct ms':>11}{'operator ms':>13}{'overhead':>10}")
    for name, a, b in (("forward", direct_fwd, op_fwd), ("forward+backward", direct_fb, op_fb)):
        ta, tb = _median_pair(a, b, args.rounds)
        print(f"{name:<18}{ta * 1e3:>11.2f}{tb * 1e3:>13.2f}{(tb / ta - 1) * 100:>9.1f}%")


if __name__ == "__main__":
    main()
