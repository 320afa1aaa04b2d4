"""The `spattn` command (docs/api.md): `spattn info`, `spattn demo`, `spattn show`, `spattn bench`."""
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


def _pattern_arg(text: str, n: int, nk):
    from .pattern_syntax import parse

    return parse(text, n=n, nk=nk)


def _show(args) -> int:
    try:
        from . import viz

        viz._pyplot()
    except ImportError:
        print("spattn show needs matplotlib: pip install spattn[viz]", file=sys.stderr)
        return 2
    try:
        pattern = _pattern_arg(args.pattern, args.n, args.nk)
        fig = viz.plot(pattern, args.n, nk=args.nk, head=args.head, block=args.block,
                       heads=args.heads, title=args.pattern, dpi=args.dpi, query=args.query)
        if args.text:
            if viz.grid_of(pattern) is None:
                raise ValueError("--text draws a grid pattern's neighbourhood (neighborhood, slidingtile)")
            print(viz.neighborhood_text(pattern, args.n, args.nk, args.query, args.head, args.heads or 1))
    except (ValueError, TypeError) as e:
        print(f"spattn show: {e}", file=sys.stderr)
        return 1
    fig.savefig(args.output, dpi=args.dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"wrote {args.output}")
    return 0


def _bench(args) -> int:
    from . import bench

    try:
        pattern = _pattern_arg(args.pattern, args.n, args.nk)
    except (ValueError, TypeError) as e:
        print(f"spattn bench: {e}", file=sys.stderr)
        return 1
    try:
        results = bench.run(
            pattern, args.n, nk=args.nk, heads=args.heads, dim=args.dim, batch=args.batch,
            dtype=args.dtype, backward=args.backward, repeats=args.repeats, dense=not args.no_dense,
            dense_max_n=args.dense_max_n, torch_sdpa=not args.no_torch, flex=not (args.no_flex or args.no_torch),
            text=args.pattern, progress=not args.quiet,
        )
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"spattn bench: {e}", file=sys.stderr)
        return 1
    print(bench.format_table(results))
    return 0


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


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

    from .pattern_syntax import SYNTAX_HELP

    p = sub.add_parser(
        "show", help="draw a pattern's mask and block layout to a PNG (needs matplotlib)",
        description="Draw the mask of PATTERN for an N x NK problem next to its block layout "
        "(full blocks blue, partial blocks orange), titled with the density and the kept pairs. "
        "Large N is drawn pooled or from the block layout, never materialised. "
        "Needs matplotlib: pip install spattn[viz].",
        epilog=SYNTAX_HELP + "\nexample:\n  spattn show 'sink(4) | window(255,0)' --n 2048 -o window.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", metavar="PATTERN", help="pattern text, e.g. 'window(511,0)' (syntax below)")
    p.add_argument("--n", type=_positive, required=True, help="query length N")
    p.add_argument("--nk", type=_positive, default=None, help="key length (default N; queries align bottom right)")
    p.add_argument("--heads", type=_positive, default=None, help="query heads (default: the pattern's own, 1 if shared)")
    p.add_argument("--head", type=int, default=0, help="which head to draw (default 0)")
    p.add_argument("--block", type=_positive, default=64, help="block size of the layout panel (default 64)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="where to write the picture")
    p.add_argument("--dpi", type=_positive, default=110, help="resolution of the PNG (default 110)")
    p.add_argument("--query", type=int, default=None,
                   help="grid patterns: the query token whose neighbourhood the third panel draws "
                        "on the grid (default: the middle of the grid)")
    p.add_argument("--text", action="store_true",
                   help="grid patterns: also print the query's neighbourhood as text (# kept, Q the query)")
    p.set_defaults(run=_show)

    p = sub.add_parser(
        "bench", help="time a pattern against dense attention, torch SDPA and FlexAttention",
        description="Time spattn on PATTERN (forward, and forward+backward with --backward) against "
        "spattn's own dense attention and, where torch is installed, torch SDPA (dense) and "
        "FlexAttention with the pattern as a BlockMask (--no-flex skips it: on the CPU it "
        "compiles for several seconds first). Prints ms, useful GFLOP/s "
        "(forward 4*D*H*kept pairs, forward+backward 3.5x that) and the speed-up over dense. "
        "A progress line per step goes to stderr.",
        epilog=SYNTAX_HELP + "\nexample:\n  spattn bench 'window(511,0)' --n 8192 --backward",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", metavar="PATTERN", help="pattern text, e.g. 'window(511,0)' (syntax below)")
    p.add_argument("--n", type=_positive, required=True, help="query length N")
    p.add_argument("--nk", type=_positive, default=None, help="key length (default N)")
    p.add_argument("--heads", type=_positive, default=8, help="query heads (default 8)")
    p.add_argument("--dim", type=_positive, default=64, help="head dimension D (default 64)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--repeats", type=_positive, default=3, help="timed runs per row, the median is shown (default 3)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense rows (slow at large N)")
    p.add_argument("--dense-max-n", type=_positive, default=8192,
                   help="skip the dense rows above this N, with a note (default 8192)")
    p.add_argument("--no-torch", action="store_true", help="skip torch SDPA even where torch is installed")
    p.add_argument("--no-flex", action="store_true",
                   help="skip torch FlexAttention (timed by default where torch has it; "
                        "torch.compile on the CPU takes several seconds the first time)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
