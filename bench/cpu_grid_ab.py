"""CPU A/B of the grid neighbourhood forward: CPU time per call on one thread, cases alternating
in one process (the machine is shared: process time, best of several rounds).

    SPATTN_NUM_THREADS=1 python bench/cpu_grid_ab.py [--dtype float32|bfloat16|float16]
        [--rounds 5] [--calls 3] [--cases nbhd_tiles nbhd_walk window ...]

Cases (N = 4096, H = 8, D = 64, B = 1, forward only):
- nbhd_tiles: Neighborhood((64, 64), 13), the gathered grid tiles (cpp/src/cpu/grid_tiles.cpp)
- nbhd_walk: the same with SPATTN_GRID_TILES=0 (the block walk in row-major order)
- window: SlidingWindow(84, 84), the same density (169 keys per row, fewer at the ends)
- slidingtile: SlidingTile((64, 64), (8, 8), 3), and window576: SlidingWindow(288, 287)
- causal512_16k: causal SlidingWindow(511, 0) at N = 16384 (bench/cpu_window.py's case)
Prints ms per call and useful GFLOP/s (4 * D * kept pairs per second), and the Neighborhood /
window ratio of useful GFLOP/s (issue 15's bar: >= 0.8). Run it on two builds (PYTHONPATH) to
compare them; nbhd_tiles on a build without the tiles runs the block walk.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import spattn

CASES = {
    "nbhd_tiles": (lambda: spattn.Neighborhood((64, 64), 13), 4096, "1"),
    "nbhd_walk": (lambda: spattn.Neighborhood((64, 64), 13), 4096, "0"),
    "window": (lambda: spattn.SlidingWindow(84, 84), 4096, "1"),
    "slidingtile": (lambda: spattn.SlidingTile((64, 64), (8, 8), 3), 4096, "1"),
    "window576": (lambda: spattn.SlidingWindow(288, 287), 4096, "1"),
    "causal512_16k": (lambda: spattn.SlidingWindow(511, 0), 16384, "1"),
}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=["nbhd_tiles", "nbhd_walk", "window"])
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    H, D = 8, 64
    torch.manual_seed(0)
    data = {n: [torch.randn(1, n, H, D).to(dt) for _ in range(3)] for n in {CASES[c][1] for c in a.cases}}
    pats = {c: CASES[c][0]() for c in a.cases}
    pairs = {c: H * float(pats[c].mask(CASES[c][1], CASES[c][1]).sum()) if CASES[c][1] <= 4096
             else H * sum(min(i + 1, 512) for i in range(CASES[c][1])) for c in a.cases}

    def run(c: str) -> float:
        os.environ["SPATTN_GRID_TILES"] = CASES[c][2]
        q, k, v = data[CASES[c][1]]
        t0 = time.process_time()
        for _ in range(a.calls):
            spattn.attention(q, k, v, pats[c])
        return (time.process_time() - t0) / a.calls

    for c in a.cases:
        run(c)  # warm-up: layouts compiled and cached
    best = {c: float("inf") for c in a.cases}
    for _ in range(a.rounds):
        for c in a.cases:
            best[c] = min(best[c], run(c))
    print(f"spattn {spattn.__version__} ({os.path.dirname(spattn.__file__)}), {a.dtype}, "
          f"threads {os.environ.get('SPATTN_NUM_THREADS', 'default')}")
    for c in a.cases:
        print(f"  {c:14s} {best[c] * 1e3:8.2f} ms  {4 * D * pairs[c] / best[c] / 1e9:7.1f} useful GFLOP/s")
    if "window" in best:
        for c in ("nbhd_tiles", "nbhd_walk"):
            if c in best:
                print(f"  ratio {c} / window (useful GFLOP/s): {best['window'] / best[c] * pairs[c] / pairs['window']:.3f}")


if __name__ == "__main__":
    main()
