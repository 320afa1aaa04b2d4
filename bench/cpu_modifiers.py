"""CPU benchmark: what each score modifier (softcap, ALiBi, sinks, all three) costs over the plain
kernel, forward and forward+backward, in the same run.

    python bench/cpu_modifiers.py [--n 16384] [--window 512] [--heads 8] [--dim 64]
                                  [--dtype bfloat16 float32] [--repeats 7] [--threads T]

A causal sliding window of `window` keys, B = 1. The variants are timed round-robin (plain,
softcap, alibi, sinks, all, plain, ...) so that load from other processes falls on all of them
alike; each time is the best of `repeats`. The ratio is variant time / plain time (the bar of
issue 15: <= 1.15 for each modifier). Needs torch for bfloat16.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import spattn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"], choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (spattn follows it); 0: all")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    n, h, d = args.n, args.heads, args.dim
    info = spattn.info()
    print(f"spattn {info['version']}, {platform.machine()}, SIMD {info['cpu_simd']}, {torch.get_num_threads()} threads, "
          f"N={n}, window={args.window}, H={h}, D={d}, {time.strftime('%Y-%m-%d %H:%M')}")
    pattern = spattn.SlidingWindow(args.window - 1, 0)
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])
    sinks = torch.linspace(-1.0, 1.0, h)
    variants = {
        "plain": {},
        "softcap": dict(softcap=30.0),
        "alibi": dict(alibi_slopes=slopes),
        "sinks": dict(sinks=sinks),
        "all three": dict(softcap=30.0, alibi_slopes=slopes, sinks=sinks),
    }
    for dtype in args.dtype:
        gen = torch.Generator().manual_seed(0)
        q, k, v, do = (torch.randn(1, n, h, d, generator=gen).to(getattr(torch, dtype)) for _ in range(4))

        def fwd(kw):
            return lambda: spattn.attention(q, k, v, pattern=pattern, **kw)

        def fwd_bwd(kw):
            def run():
                out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True, **kw)
                spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern, **kw)
            return run

        for label, make in (("forward", fwd), ("fwd+bwd", fwd_bwd)):
            fns = {name: make(kw) for name, kw in variants.items()}
            best = {name: float("inf") for name in fns}
            for fn in fns.values():
                fn()  # warm-up
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
            base = best["plain"]
            row = ", ".join(f"{name} {best[name] / base:.3f}x" for name in fns if name != "plain")
            print(f"{dtype:9s} {label:8s} plain {base * 1e3:8.1f} ms | {row}")


if __name__ == "__main__":
    main()
