"""CPU benchmark: Document, PrefixLM and LogSparse against a causal sliding window of the same
density (same run, same threads), forward only.

    python bench/cpu_new_patterns.py [--n 16384] [--heads 8] [--dim 64] [--repeats 3]

Useful GFLOP/s count only kept pairs (4 * D * H * pairs). The window that matches a pattern
keeps the same number of pairs per query on average: SlidingWindow(W - 1, 0), W = density * N.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import spattn


def best_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    n, H, D = a.n, a.heads, a.dim
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, n, H, D), dtype=np.float32) for _ in range(3))
    cu = list(range(0, n, 2048)) + [n]
    pats = {
        "LogSparse()": spattn.LogSparse(),
        "LogSparse(local=64)": spattn.LogSparse(64),
        "PrefixLM(n/8)": spattn.PrefixLM(n // 8),
        "Document(2048s)&Causal": spattn.Document(cu) & spattn.Causal(),
    }
    print(f"# spattn {spattn.__version__}, {spattn.info().get('cpu_threads', '?')} threads, "
          f"float32, B=1, H={H}, D={D}, N={n}")
    print(f"{'pattern':28s} {'density':>9s} {'ms':>9s} {'GFLOP/s':>8s}   {'window W':>8s} {'ms':>9s} {'GFLOP/s':>8s}  ratio")
    for name, p in pats.items():
        lay = p.block_layout(n, n)
        dens = lay.density
        pairs = dens * n * n
        t = best_time(lambda: spattn.attention(q, k, v, pattern=p), a.repeats)
        w = max(1, round(dens * n))
        win = spattn.SlidingWindow(w - 1, 0)
        wpairs = win.block_layout(n, n).density * n * n
        tw = best_time(lambda: spattn.attention(q, k, v, pattern=win), a.repeats)
        g, gw = 4 * D * H * pairs / t / 1e9, 4 * D * H * wpairs / tw / 1e9
        print(f"{name:28s} {dens:9.5f} {t * 1e3:9.1f} {g:8.1f}   {w:8d} {tw * 1e3:9.1f} {gw:8.1f}  {g / gw:5.2f}x")


if __name__ == "__main__":
    main()
