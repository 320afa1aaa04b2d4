"""CPU benchmark: dilated and strided patterns against a sliding window keeping the same number
of keys per query (issue 3's bar: useful GFLOP/s at least 0.8x the window's).

    python bench/cpu_dilated.py [--n 16384] [--repeats 3]

Same run, same machine. Useful GFLOP/s = 4 * D * H * kept_pairs / time, kept pairs counted from
each pattern's own layout, so the comparison is per useful pair.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import spattn


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="time forward+backward too")
    args = ap.parse_args()
    n, h, d = args.n, args.heads, args.dim
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, n, h, d), dtype=np.float32) for _ in range(3))
    dout = rng.standard_normal(q.shape, dtype=np.float32)
    # (pattern, the window that keeps the same number of keys per query)
    pairs = [
        (spattn.Dilated(511, 0, 4), spattn.SlidingWindow(511, 0)),
        (spattn.Dilated(255, 256, 2), spattn.SlidingWindow(255, 256)),
        (spattn.Strided(16), spattn.SlidingWindow(n // 32 - 1, 0)),
        (spattn.Strided(64, causal=False), spattn.SlidingWindow(n // 128, n // 128 - 1)),
        # local + strided (Sparse Transformer): ~512 window keys + ~n/32 strided, 32 shared
        (spattn.Strided(16) | spattn.SlidingWindow(511, 0), spattn.SlidingWindow(512 + n // 32 - 32 - 1, 0)),
    ]
    info = spattn.info()
    print(f"# spattn {info['version']} ({info['cpu_simd']}, {info['cpu_threads']} threads), "
          f"float32, B=1, H={h}, D={d}, N={n}")
    print(f"{'pattern':<46} {'pass':<8} {'ms':>8} {'GFLOP/s':>8}   {'same-keys window':<26} {'ms':>8} {'GFLOP/s':>8} {'ratio':>6}")

    def measure(p, backward):
        kept = p.block_layout(n, n).density * n * n
        if backward:
            def run():
                o, lse = spattn.attention(q, k, v, pattern=p, return_lse=True)
                spattn.attention_backward(dout, q, k, v, o, lse, pattern=p)
            flops = 3.5 * 4 * d * h * kept
        else:
            def run():
                spattn.attention(q, k, v, pattern=p)
            flops = 4 * d * h * kept
        t = best_time(run, args.repeats)
        return t, flops / t / 1e9

    for pattern, window in pairs:
        for backward in ([False, True] if args.backward else [False]):
            tp, gp = measure(pattern, backward)
            tw, gw = measure(window, backward)
            kind = "fwd+bwd" if backward else "fwd"
            print(f"{pattern!r:<46} {kind:<8} {tp * 1e3:8.1f} {gp:8.1f}   {window!r:<26} {tw * 1e3:8.1f} {gw:8.1f} {gp / gw:5.2f}x")


if __name__ == "__main__":
    main()
