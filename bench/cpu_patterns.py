"""CPU benchmark of the issue-15 patterns against a 1D sliding window of the same density.

    python bench/cpu_patterns.py [--only neighborhood slidingtile longnet] [--heads 8]
                                 [--dim 64] [--repeats 3] [--longnet-n 65536]

Same run, same machine, same threads, float32 forward. Useful GFLOP/s count only the pairs a
pattern keeps: 4 * D * pairs (pairs summed over heads). Each pattern is timed next to its
baseline, a SlidingWindow with (about) the same number of kept pairs, and the ratio of their
useful GFLOP/s is printed (issue 15's bars: Neighborhood 2D >= 0.8, LongNet >= 0.7;
tile-aligned SlidingTile: 0 partial blocks).

- neighborhood: a 64x64 grid (4096 tokens), 13x13 window, against SlidingWindow(84, 84)
  (169 keys per row, fewer at the ends).
- slidingtile: a 64x64 grid in 8x8 tiles, 3x3 tiles, against SlidingWindow(288, 287) (576).
- longnet: 64K tokens, segments 2048/8192/32768, dilations 1/4/16, causal, against the causal
  window with the same kept pairs.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import spattn


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles and caches the layouts)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def useful(pattern, n: int, heads: int, d: int, repeats: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, n, heads, d), dtype=np.float32) for _ in range(3))
    pairs = pattern._core().kept_pairs(n, n, heads)
    t = best_time(lambda: spattn.attention(q, k, v, pattern), repeats)
    return pairs, t, 4.0 * d * pairs / t / 1e9


def blocks(pattern, n: int, heads: int = 1):
    lay = pattern.block_layout(n, n, block=(64, 64), heads=heads)
    count = lambda r: int((np.asarray(r)[:, 1] - np.asarray(r)[:, 0]).sum()) if len(r) else 0
    return count(lay.full_ranges), count(lay.partial_ranges)


def row(name, pairs, t, gf, extra=""):
    print(f"  {name:<44} {pairs / 1e6:9.2f} M pairs {t * 1e3:9.1f} ms {gf:8.1f} useful GFLOP/s {extra}")


def compare(title, pattern, baseline, n, args, heads=None, bar=None):
    heads = heads or args.heads
    print(f"{title} (N={n}, heads={heads}, D={args.dim})")
    p1, t1, g1 = useful(pattern, n, heads, args.dim, args.repeats)
    if isinstance(pattern, spattn.LongNet):  # runs as levels on residue classes, not one walk
        note = "[levels on per-head residue classes: full blocks but the diagonal]"
    else:
        full, part = blocks(pattern, n, heads)
        note = f"[{full} full, {part} partial 64x64 blocks]"
    row(repr(pattern), p1, t1, g1, note)
    p0, t0, g0 = useful(baseline, n, heads, args.dim, args.repeats)
    row(repr(baseline), p0, t0, g0)
    ratio = g1 / g0
    verdict = "" if bar is None else (" (bar >= %.1f: %s)" % (bar, "met" if ratio >= bar else "NOT met"))
    print(f"  ratio of useful GFLOP/s: {ratio:.2f}{verdict}\n")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=["neighborhood", "slidingtile", "longnet"])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--longnet-n", type=int, default=65536)
    args = ap.parse_args()
    info = spattn.info()
    print(f"spattn {info['version']}, {platform.machine()}, simd {info.get('cpu_simd')}, "
          f"threads {info.get('cpu_threads')}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    if "neighborhood" in args.only:
        compare("Neighborhood 2D", spattn.Neighborhood((64, 64), 13), spattn.SlidingWindow(84, 84),
                4096, args, bar=0.8)
    if "slidingtile" in args.only:
        compare("SlidingTile 2D, tile-aligned", spattn.SlidingTile((64, 64), (8, 8), 3),
                spattn.SlidingWindow(288, 287), 4096, args)
    if "longnet" in args.only:
        n = args.longnet_n
        p = spattn.LongNet((2048, 8192, 32768), (1, 4, 16))
        per_row = p._core().kept_pairs(n, n, args.heads) / (n * args.heads)
        # the causal window W with the same kept pairs: n*W - W*(W-1)/2 = pairs per head
        pairs = per_row * n
        w = int(round(n + 0.5 - np.sqrt((n + 0.5) ** 2 - 2 * pairs)))
        compare("LongNet", p, spattn.SlidingWindow(w - 1, 0), n, args, bar=0.7)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
