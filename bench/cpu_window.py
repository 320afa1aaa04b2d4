"""CPU benchmark: causal sliding window of 512 keys against torch SDPA on dense attention.

    python bench/cpu_window.py [--n 8192 16384] [--repeats 3] [--backward] [--dtype bfloat16]

Same run, same machine, same threads. Useful GFLOP/s count only the pairs a pattern keeps:
forward 4 * D * H * pairs, forward+backward 3.5 times that. Prints one row per (system, pass,
N) and the ratio spattn / torch dense (both float32). With --dtype bfloat16 (needs torch for the
bfloat16 arrays) spattn also runs in bfloat16, with the ratio bfloat16 / float32 of its own.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import spattn


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="also time forward+backward")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: also time spattn in bfloat16 (float32 rows stay as the baseline)")
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    if args.dtype == "bfloat16" and torch is None:
        raise SystemExit("--dtype bfloat16 needs torch (numpy has no bfloat16)")
    h, d, w = args.heads, args.dim, args.window
    pattern = spattn.SlidingWindow(w - 1, 0)
    info = spattn.info()
    print(f"# {platform.processor() or platform.machine()}, spattn {info['version']} "
          f"(simd {info['cpu_simd']}, {info['cpu_threads']} threads)"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ", torch not installed"))
    print(f"# {'float32 and bfloat16' if args.dtype == 'bfloat16' else 'float32'}, B=1, H={h}, D={d}, "
          f"causal sliding window {w}")
    rows = []
    for n in args.n:
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((1, n, h, d), dtype=np.float32) for _ in range(3))
        window_pairs = pattern.block_layout(n, n).density * n * n
        t = best_time(lambda: spattn.attention(q, k, v, pattern=pattern), args.repeats)
        ours = 4 * d * h * window_pairs / t / 1e9
        rows.append(("spattn", f"window {w}", "fwd", n, t, ours))
        if args.backward:
            dout = rng.standard_normal(q.shape, dtype=np.float32)

            def fwd_bwd():
                o, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
                spattn.attention_backward(dout, q, k, v, o, lse, pattern=pattern)

            tb = best_time(fwd_bwd, args.repeats)
            ours_b = 3.5 * 4 * d * h * window_pairs / tb / 1e9
            rows.append(("spattn", f"window {w}", "fwd+bwd", n, tb, ours_b))
        if args.dtype == "bfloat16":
            bq, bk, bv = (torch.from_numpy(x).to(torch.bfloat16) for x in (q, k, v))
            tbf = best_time(lambda: spattn.attention(bq, bk, bv, pattern=pattern), args.repeats)
            ours_bf = 4 * d * h * window_pairs / tbf / 1e9
            rows.append(("spattn bf16", f"window {w}", "fwd", n, tbf, ours_bf))
            rows.append(("ratio", "bf16 / float32", "fwd", n, float("nan"), ours_bf / ours))
            if args.backward:
                bdout = torch.from_numpy(dout).to(torch.bfloat16)

                def fwd_bwd_bf16():
                    o, lse = spattn.attention(bq, bk, bv, pattern=pattern, return_lse=True)
                    spattn.attention_backward(bdout, bq, bk, bv, o, lse, pattern=pattern)

                tbb = best_time(fwd_bwd_bf16, args.repeats)
                ours_bb = 3.5 * 4 * d * h * window_pairs / tbb / 1e9
                rows.append(("spattn bf16", f"window {w}", "fwd+bwd", n, tbb, ours_bb))
                rows.append(("ratio", "bf16 / float32", "fwd+bwd", n, float("nan"), ours_bb / ours_b))
        if torch is not None:
            # torch's layout is [B, H, N, D]; the same memory through a transpose view.
            tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (q, k, v))
            reps = max(1, args.repeats - 1)
            with torch.no_grad():
                td = best_time(lambda: F.scaled_dot_product_attention(tq, tk, tv), reps)
            dense = 4 * d * h * n * n / td / 1e9
            rows.append(("torch SDPA", "dense", "fwd", n, td, dense))
            rows.append(("ratio", "spattn / torch dense", "fwd", n, float("nan"), ours / dense))
            if args.backward:
                gq, gk, gv = (x.detach().clone().requires_grad_() for x in (tq, tk, tv))
                tdout = torch.from_numpy(dout).transpose(1, 2)

                def torch_fwd_bwd():
                    F.scaled_dot_product_attention(gq, gk, gv).backward(tdout)

                tdb = best_time(torch_fwd_bwd, reps)
                dense_b = 3.5 * 4 * d * h * n * n / tdb / 1e9
                rows.append(("torch SDPA", "dense", "fwd+bwd", n, tdb, dense_b))
                rows.append(("ratio", "spattn / torch dense", "fwd+bwd", n, float("nan"), ours_b / dense_b))
    print(f"{'system':<12} {'pattern':<22} {'pass':<8} {'N':>6} {'ms':>9} {'useful GFLOP/s':>15}")
    for name, pat, kind, n, t, g in rows:
        ms = "" if t != t else f"{t * 1e3:9.1f}"
        val = f"{g:14.2f}x" if name == "ratio" else f"{g:15.1f}"
        print(f"{name:<12} {pat:<22} {kind:<8} {n:>6} {ms:>9} {val}")


if __name__ == "__main__":
    main()
