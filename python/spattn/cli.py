"""The `spattn` command (SPEC §4): `spattn info`, `spattn demo`."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _info(args) -> int:
    import spattn

    facts = spattn.info()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")
    if args.cmake_dir:
        from ._cmake import cmake_dir

        print(f"{'cmake_dir':<{width}}  {cmake_dir()}")
    return 0


def _demo(args) -> int:
    """A short end-to-end run: a causal sliding window, checked against the float64 reference,
    then timed on a longer sequence."""
    import spattn

    rng = np.random.default_rng(0)
    w, h, d = args.window, args.heads, args.dim
    pattern = spattn.SlidingWindow(w - 1, 0)
    print(f"spattn {spattn.__version__}: causal sliding window of {w} keys, H={h}, D={d}, float32")

    n_check = 300
    q, k, v = (rng.standard_normal((1, n_check, h, d), dtype=np.float32) for _ in range(3))
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    ref, ref_lse = spattn.reference_attention(q, k, v, pattern=pattern, return_lse=True)
    err = float(np.abs(out - ref).max())
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dq, dk, dv = spattn.attention_backward(dout, q, k, v, out, lse, pattern=pattern)
    ok = err < 1e-4 and all(np.isfinite(g).all() for g in (dq, dk, dv))
    print(f"  check vs float64 reference (N={n_check}): max |out - ref| = {err:.2e}  {'ok' if ok else 'FAILED'}")

    n = args.n
    q, k, v = (rng.standard_normal((1, n, h, d), dtype=np.float32) for _ in range(3))
    spattn.attention(q, k, v, pattern=pattern)  # warm-up: threads, page faults
    t0 = time.perf_counter()
    spattn.attention(q, k, v, pattern=pattern)
    fwd = time.perf_counter() - t0
    pairs = pattern.block_layout(n, n).density * n * n
    print(f"  forward  N={n}: {fwd * 1e3:8.1f} ms, {4 * d * h * pairs / fwd / 1e9:6.1f} useful GFLOP/s")
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    t0 = time.perf_counter()
    spattn.attention_backward(out, q, k, v, out, lse, pattern=pattern)
    bwd = time.perf_counter() - t0
    print(f"  backward N={n}: {bwd * 1e3:8.1f} ms, {2.5 * 4 * d * h * pairs / bwd / 1e9:6.1f} useful GFLOP/s")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="spattn", description="Sparse attention for any array library.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, backends, compiled architectures, SIMD level, threads")
    p.add_argument("--cmake-dir", action="store_true", help="also print the folder for CMAKE_PREFIX_PATH (find_package(spattn))")
    p.set_defaults(run=_info)
    p = sub.add_parser("demo", help="a short run on a built-in default: check against the reference, then time")
    p.add_argument("--n", type=int, default=8192, help="sequence length to time (default 8192)")
    p.add_argument("--window", type=int, default=512, help="keys per query, self included (default 512)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
