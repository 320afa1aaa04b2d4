"""GPU forward benchmark: spattn against torch SDPA (flash and cuDNN backends) and FlexAttention.

    python bench/gpu/bench_forward.py [--out DIR] [--quick] [--no-flex] [--repeats-ms 200]

bf16, B=1, H=16, D=128 (the rows of shared/ANCHORS.md and issue #4's bar):
  causal sliding window 1024 at N = 16K and 64K, random 10% block-sparse 128x128 per head at 16K
  (spattn and FlexAttention, whose BlockMask is built from the same kv blocks, no Nq x Nk work),
  dense and causal at 16K (spattn and torch SDPA flash / cuDNN).
Useful TFLOP/s = 4 * D * H * kept pairs / time. Times are medians of CUDA-event timed runs
(triton.testing.do_bench when triton is installed). Before timing, each spattn result is
checked against FlexAttention or SDPA on the same inputs (max |diff|, printed). The table is
printed last and written to DIR/table.md, the raw numbers to DIR/bench.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def median_ms(torch, fn, rep_ms: float) -> float:
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
    except ImportError:
        pass
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while time.perf_counter() < t_end or len(times) < 5:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def kept_pairs(pattern, n, heads) -> int:
    return int(pattern._core().kept_pairs(n, n, heads))


def flex_block_mask(torch, pattern, n, heads, block, mask_mod):
    """FlexAttention BlockMask from spattn's own block layout (full and partial kv blocks per
    query block): built from kv blocks, no Nq x Nk mask evaluation."""
    import numpy as np
    from torch.nn.attention.flex_attention import BlockMask

    lay = pattern.block_layout(n, n, block=(block, block), heads=heads)
    h, nqb, nkb = int(lay.heads), int(lay.nqb), int(lay.nkb)  # h: 1 (shared layout) or heads

    def padded(indptr, indices):
        indptr = np.asarray(indptr, dtype=np.int64)
        num = np.diff(indptr).astype(np.int32)
        idx = np.zeros((len(num), nkb), dtype=np.int32)  # FlexAttention reads KV_LEN off the width
        for r in range(len(num)):
            idx[r, : num[r]] = indices[indptr[r] : indptr[r + 1]]
        shape = lambda x: torch.from_numpy(x).reshape(1, h, nqb, *x.shape[1:]).cuda()  # noqa: E731
        return shape(num), shape(idx)

    fnum, fidx = padded(lay.full_indptr, lay.full_indices)
    pnum, pidx = padded(lay.partial_indptr, lay.partial_indices)
    return BlockMask.from_kv_blocks(pnum, pidx, fnum, fidx, BLOCK_SIZE=block, mask_mod=mask_mod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true", help="only the 16K rows")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--repeats-ms", type=float, default=200.0, help="timing budget per row (ms)")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    import spattn

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    dev = torch.cuda.get_device_name(0)
    info = spattn.info()
    print(f"# {dev}, torch {torch.__version__}, spattn {info.get('version')} "
          f"(cuda archs {info.get('cuda_archs')}, kernels {info.get('cuda_kernels')}), "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    B, H, D = 1, 16, 128
    dt = torch.bfloat16

    flex = None
    if not args.no_flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
        except Exception as e:  # reported, not fatal
            print(f"# FlexAttention unavailable: {e}", flush=True)

    def inputs(n, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        # torch's native [B, H, N, D]; spattn reads the same memory as [B, N, H, D] views.
        return [torch.randn(B, H, n, D, device="cuda", dtype=dt, generator=g) for _ in range(3)]

    rows = []  # dicts: system, pattern, n, ms, tflops, check

    def add(system, pname, n, pairs, fn, check=""):
        try:
            fn()
            torch.cuda.synchronize()
            ms = median_ms(torch, fn, args.repeats_ms)
            tf = 4.0 * D * pairs / (ms * 1e-3) / 1e12  # pairs already summed over heads
            rows.append(dict(system=system, pattern=pname, n=n, ms=ms, tflops=tf, check=check))
            print(f"  {system:28s} {pname:34s} N={n:6d} {ms:9.3f} ms {tf:7.1f} TFLOP/s {check}", flush=True)
        except Exception as e:
            msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            rows.append(dict(system=system, pattern=pname, n=n, ms=None, tflops=None, check="unavailable: " + msg))
            print(f"  {system:28s} {pname:34s} N={n:6d} unavailable: {msg}", flush=True)

    def spattn_fn(q, k, v, pattern):
        qs, ks, vs = (x.transpose(1, 2) for x in (q, k, v))
        return lambda: spattn.attention(qs, ks, vs, pattern=pattern)

    def diff(a_bnhd, b_bhnd):
        return (a_bnhd.transpose(1, 2).float() - b_bhnd.float()).abs().max().item()

    # ---- sparse patterns: spattn vs FlexAttention
    W = 1024
    sizes = [16384] if args.quick else [16384, 65536]
    cases = [("causal sliding window 1024", n, spattn.SlidingWindow(W - 1, 0),
              lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W)) for n in sizes]
    n_bs = 16384
    gen = np.random.default_rng(0)
    layout = gen.random((H, n_bs // 128, n_bs // 128)) < 0.1
    lay_t = torch.from_numpy(layout).cuda()

    def bs_mod(b, h, qi, ki):
        return lay_t[h, qi // 128, ki // 128]

    cases.append(("random block-sparse 10% 128x128 per head", n_bs,
                  spattn.BlockSparse(layout, block_size=128), bs_mod))

    for pname, n, pattern, mask_mod in cases:
        print(f"# {pname}, N={n}", flush=True)
        q, k, v = inputs(n)
        pairs = kept_pairs(pattern, n, H)
        f_sp = spattn_fn(q, k, v, pattern)
        check = ""
        f_flex = None
        if flex is not None:
            try:
                t0 = time.perf_counter()
                bm = flex_block_mask(torch, pattern, n, H, 128, mask_mod)
                t_mask = time.perf_counter() - t0
                f_flex = lambda: flex(q, k, v, block_mask=bm)  # noqa: E731
                t0 = time.perf_counter()
                ref = f_flex()
                torch.cuda.synchronize()
                t_comp = time.perf_counter() - t0
                out = f_sp()
                torch.cuda.synchronize()
                check = f"max|spattn-flex| {diff(out, ref):.2e} (mask {t_mask:.2f} s, compile {t_comp:.1f} s)"
                del ref, out
            except Exception as e:
                print(f"  FlexAttention failed: {str(e).splitlines()[0][:200]}", flush=True)
                f_flex = None
        add("spattn", pname, n, pairs, f_sp, check)
        if f_flex is not None:
            add("FlexAttention", pname, n, pairs, f_flex)
        del q, k, v
        torch.cuda.empty_cache()

    # ---- dense and causal at 16K: spattn vs SDPA flash and cuDNN
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n = 16384
    q, k, v = inputs(n, seed=1)
    for pname, pattern, causal in (("dense", spattn.Dense(), False), ("causal", spattn.Causal(), True)):
        print(f"# {pname}, N={n}", flush=True)
        pairs = kept_pairs(pattern, n, H)
        f_sp = spattn_fn(q, k, v, pattern)
        check = ""
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            check = f"max|spattn-sdpa| {diff(f_sp(), ref):.2e}"
            del ref
        except Exception as e:
            check = f"no check: {str(e).splitlines()[0][:80]}"
        add("spattn", pname, n, pairs, f_sp, check)
        for label, backend in (("torch SDPA flash (FA2)", SDPBackend.FLASH_ATTENTION),
                               ("torch SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
            def f(backend=backend):
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            add(label, pname, n, pairs, f)

    # ---- table
    def ratio(r):
        if not r["ms"] or r["system"] != "spattn":
            return ""
        other = next((x for x in rows if x["pattern"] == r["pattern"] and x["n"] == r["n"] and x["ms"]
                      and x["system"] in ("FlexAttention", "torch SDPA flash (FA2)")), None)
        return f"{r['tflops'] / other['tflops']:.2f}x {other['system'].split()[0]}" if other else ""

    lines = [f"GPU forward, {dev}, bf16, B={B}, H={H}, D={D}, {time.strftime('%Y-%m-%d')}",
             "",
             "| system | pattern | N | ms | useful TFLOP/s | spattn vs |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ms = f"{r['ms']:.3f}" if r["ms"] else "-"
        tf = f"{r['tflops']:.0f}" if r["tflops"] else r["check"]
        lines.append(f"| {r['system']} | {r['pattern']} | {r['n'] // 1024}K | {ms} | {tf} | {ratio(r)} |")
    table = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write(table + "\n")
    with open(os.path.join(args.out, "bench.json"), "w") as fh:
        json.dump(dict(device=dev, torch=torch.__version__, info=info, rows=rows), fh, indent=1)
    print(table, flush=True)
    if any(r["system"] == "spattn" and not r["ms"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
