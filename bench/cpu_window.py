"""CPU benchmark: causal sliding window of 512 keys against torch SDPA (dense) and FlexAttention.

    python bench/cpu_window.py [--n 8192 16384] [--repeats 3] [--backward]
                               [--dtype float32|bfloat16|float16] [--no-flex]

Same run, same machine, same threads. Useful GFLOP/s count only the pairs a pattern keeps:
forward 4 * D * H * pairs, forward+backward 3.5 times that. Prints one row per (system, pass,
N) and the ratios spattn / torch dense (both float32) and spattn / FlexAttention (same dtype).
With --dtype bfloat16 (needs torch for the bfloat16 arrays) or float16, spattn also runs in
that dtype, with the ratio to its own float32 forward.

FlexAttention (torch.compile'd, CPU, forward only: it has no CPU backward) runs the same window
as a closed-form mask_mod, (q >= k) & (q - k < window), on contiguous [B, H, N, D] copies of
the same arrays. Its one-off costs, create_block_mask and the first (compiling) call, are
excluded from its timing (warm-up) and printed separately. Without torch, or where
flex_attention cannot be imported or compiled, its rows are skipped with the reason printed.
"""
from __future__ import annotations

import argparse
import platform
import time
import traceback

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


class Flex:
    """FlexAttention forward on the causal window, compiled once per (dtype, N)."""

    def __init__(self, torch, window: int):
        self.torch, self.window = torch, window
        self.error = None
        self.fn = None
        self.masks = {}
        self.notes = []
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            self.create_block_mask = create_block_mask
            self.fn = self.torch.compile(flex_attention, dynamic=False)
        except Exception as e:  # noqa: BLE001 - any failure only skips the flex rows
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]

    def mask(self, n: int):
        if n not in self.masks:
            w = self.window

            def mask_mod(b, h, q_idx, kv_idx):
                return (q_idx >= kv_idx) & (q_idx - kv_idx < w)

            t0 = time.perf_counter()
            self.masks[n] = self.create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu")
            self.notes.append(f"create_block_mask N={n}: {time.perf_counter() - t0:.2f} s")
        return self.masks[n]

    def time_fwd(self, q, k, v, label: str, repeats: int):
        """Best forward time in seconds (None, reason printed, if flex cannot run)."""
        if self.error:
            return None
        torch = self.torch
        try:
            n = q.shape[1]
            bm = self.mask(n)
            tq, tk, tv = (x.transpose(1, 2).contiguous() for x in (q, k, v))
            with torch.no_grad():
                t0 = time.perf_counter()
                self.fn(tq, tk, tv, block_mask=bm)  # compiles for this dtype and shape
                self.notes.append(f"first call (compile) {label} N={n}: {time.perf_counter() - t0:.1f} s")

                def fwd():
                    self.fn(tq, tk, tv, block_mask=bm)

                return best_time(fwd, repeats)
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]
            traceback.print_exc(limit=2)
            return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="also time forward+backward")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="bfloat16 / float16: also time spattn (and flex) in that dtype (float32 rows "
                         "stay as the baseline)")
    ap.add_argument("--no-flex", action="store_true", help="skip the FlexAttention rows")
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
    print(f"# {'float32' if args.dtype == 'float32' else 'float32 and ' + args.dtype}, B=1, H={h}, D={d}, "
          f"causal sliding window {w}")
    flex = None
    if args.no_flex:
        print("# flex attention: skipped (--no-flex)")
    elif torch is None:
        print("# flex attention: skipped (torch is not installed)")
    else:
        flex = Flex(torch, w)
        if flex.error:
            print(f"# flex attention: skipped ({flex.error})")
            flex = None
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
        if args.dtype == "float16":
            hq, hk, hv = (x.astype(np.float16) for x in (q, k, v))
            thf = best_time(lambda: spattn.attention(hq, hk, hv, pattern=pattern), args.repeats)
            ours_hf = 4 * d * h * window_pairs / thf / 1e9
            rows.append(("spattn fp16", f"window {w}", "fwd", n, thf, ours_hf))
            rows.append(("ratio", "fp16 / float32", "fwd", n, float("nan"), ours_hf / ours))
        if flex is not None:
            flex_dtypes = [("float32", torch.float32, ours, "spattn")]
            if args.dtype == "bfloat16":
                flex_dtypes.append(("bf16", torch.bfloat16, ours_bf, "spattn bf16"))
            elif args.dtype == "float16":
                flex_dtypes.append(("fp16", torch.float16, ours_hf, "spattn fp16"))
            for tag, tdt, mine, mine_name in flex_dtypes:
                xs = tuple(torch.from_numpy(x).to(tdt) for x in (q, k, v))
                tf = flex.time_fwd(*xs, tag, args.repeats)
                if tf is None:
                    print(f"# flex attention {tag} N={n}: skipped ({flex.error})")
                    flex.error = None  # the next dtype may still work
                    continue
                theirs = 4 * d * h * window_pairs / tf / 1e9
                rows.append((f"flex {tag}", f"window {w}", "fwd", n, tf, theirs))
                rows.append(("ratio", f"{mine_name} / flex {tag}", "fwd", n, float("nan"), mine / theirs))
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
    print(f"{'system':<12} {'pattern':<26} {'pass':<8} {'N':>6} {'ms':>9} {'useful GFLOP/s':>15}")
    for name, pat, kind, n, t, g in rows:
        ms = "" if t != t else f"{t * 1e3:9.1f}"
        val = f"{g:14.2f}x" if name == "ratio" else f"{g:15.1f}"
        print(f"{name:<12} {pat:<26} {kind:<8} {n:>6} {ms:>9} {val}")
    if flex is not None and flex.notes:
        print("# flex attention one-off costs (not in its timing): " + "; ".join(flex.notes))


if __name__ == "__main__":
    main()
