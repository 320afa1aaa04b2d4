"""GPU forward benchmark: spattn against torch SDPA (flash and cuDNN backends) and FlexAttention.

    python bench/gpu/bench_forward.py [--out DIR] [--quick] [--no-flex] [--repeats-ms 200]
                                      [--dims 64,256] [--long 1M,12M]

bf16, B=1, H=16, D=128 (the rows of shared/ANCHORS.md and issue #4's bar):
  causal sliding window 1024 at N = 16K and 64K, random 10% block-sparse 128x128 per head at 16K
  (spattn and FlexAttention, whose BlockMask is built from the same kv blocks, no Nq x Nk work),
  dense and causal at 16K (spattn and torch SDPA flash / cuDNN);
  the window and dense rows again at D=64 and D=256 (--dims);
  a causal window 4096 at 1M and 12M tokens, H=8 (--long), with FlexAttention beside it where
  its BlockMask tables fit in the GPU's free memory;
  float32 (the SIMT kernels) window 1024 and causal at 16K, beside SDPA's memory-efficient backend.
Useful TFLOP/s = 4 * D * H * kept pairs / time. Times are medians of CUDA-event timed runs
(triton.testing.do_bench when triton is installed). Before timing, each spattn result is
checked against FlexAttention or SDPA on the same inputs (max |diff|, printed). The table is
printed last and written to DIR/table.md, the raw numbers to DIR/bench.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (Rows, compiled_flex, flex_block_mask, flex_mask_bytes, header,  # noqa: E402
                    kept_pairs, random_layout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true", help="only the 16K rows")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--repeats-ms", type=float, default=200.0, help="timing budget per row (ms)")
    ap.add_argument("--dims", default="64,256",
                    help="other head dims for the window and dense rows ('' for none; --quick: none)")
    ap.add_argument("--long", default="1M,12M",
                    help="token counts of the window-4096 H=8 rows ('' for none; --quick: none)")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    import spattn

    dev, info = header(torch, spattn, "cuda_kernels")
    B, H, D = 1, 16, 128
    dt = torch.bfloat16
    flex = compiled_flex(torch, args.no_flex)

    def inputs(n, seed=0, h=H, d=D):
        g = torch.Generator(device="cuda").manual_seed(seed)
        # torch's native [B, H, N, D]; spattn reads the same memory as [B, N, H, D] views.
        return [torch.randn(B, h, n, d, device="cuda", dtype=dt, generator=g) for _ in range(3)]

    rows = Rows(torch, 4.0 * D, args.repeats_ms)
    add = rows.add

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
    layout, bs_mod = random_layout(np, torch, H, n_bs)
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

    del q, k, v
    torch.cuda.empty_cache()

    # ---- float32 (the SIMT kernels, cuda/README.md) at 16K: the window row and the causal row,
    # the latter beside torch SDPA's memory-efficient backend (which takes float32)
    if "float32" in info.get("cuda_kernels", ""):
        n = 16384
        g = torch.Generator(device="cuda").manual_seed(4)
        q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.float32, generator=g) for _ in range(3))
        for pname, pattern, causal in (("float32 sliding window 1024", spattn.SlidingWindow(W - 1, 0), False),
                                       ("float32 causal", spattn.Causal(), True)):
            print(f"# {pname}, N={n}", flush=True)
            pairs = kept_pairs(pattern, n, H)
            f_sp = spattn_fn(q, k, v, pattern)
            if not causal:
                add("spattn", pname, n, pairs, f_sp)
                continue
            def f():
                with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            try:
                check = f"max|spattn-sdpa| {diff(f_sp(), f()):.2e}"
            except Exception as e:
                check, f = f"no check: {str(e).splitlines()[0][:80]}", None
            add("spattn", pname, n, pairs, f_sp, check)
            if f is not None:
                add("torch SDPA mem-efficient", pname, n, pairs, f)
        del q, k, v
        torch.cuda.empty_cache()

    # ---- other head dims: the window row (vs FlexAttention) and the dense row (vs SDPA)
    dims = [] if args.quick else [int(x) for x in args.dims.split(",") if x.strip()]
    for d in dims:
        n = 16384
        q, k, v = inputs(n, seed=2, d=d)
        pname = f"causal sliding window 1024, D={d}"
        pattern = spattn.SlidingWindow(W - 1, 0)
        pairs = kept_pairs(pattern, n, H)
        print(f"# {pname}, N={n}", flush=True)
        add("spattn", pname, n, pairs, spattn_fn(q, k, v, pattern), flops_per_pair=4.0 * d)
        if flex is not None:
            try:
                bm = flex_block_mask(torch, pattern, n, H, 128, cases[0][3])
                add("FlexAttention", pname, n, pairs, lambda: flex(q, k, v, block_mask=bm),
                    flops_per_pair=4.0 * d)
            except Exception as e:
                print(f"  FlexAttention failed: {str(e).splitlines()[0][:200]}", flush=True)
        pname = f"dense, D={d}"
        pairs = kept_pairs(spattn.Dense(), n, H)
        print(f"# {pname}, N={n}", flush=True)
        add("spattn", pname, n, pairs, spattn_fn(q, k, v, spattn.Dense()), flops_per_pair=4.0 * d)
        for label, backend in (("torch SDPA flash (FA2)", SDPBackend.FLASH_ATTENTION),
                               ("torch SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
            def f(backend=backend):
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, k, v)
            add(label, pname, n, pairs, f, flops_per_pair=4.0 * d)
        del q, k, v
        torch.cuda.empty_cache()

    # ---- long contexts: causal window 4096, H=8 (FlexAttention where its BlockMask fits)
    longs = [] if args.quick else [int(float(x[:-1]) * (1 << 20)) if x.upper().endswith("M") else int(x)
                                   for x in args.long.split(",") if x.strip()]
    for n in longs:
        h, w = 8, 4096
        pname = "causal sliding window 4096, H=8"
        pattern = spattn.SlidingWindow(w - 1, 0)
        print(f"# {pname}, N={n}", flush=True)
        try:
            q, k, v = inputs(n, seed=3, h=h)
        except torch.OutOfMemoryError:
            print("  inputs do not fit in GPU memory", flush=True)
            continue
        pairs = kept_pairs(pattern, n, h)
        add("spattn", pname, n, pairs, spattn_fn(q, k, v, pattern))
        if flex is not None:
            free, _ = torch.cuda.mem_get_info()
            need = flex_mask_bytes(n, 128, 1)
            # the host builds the same tables first (numpy), and the kernel needs its output
            if need + q.numel() * q.element_size() > free:
                print(f"  FlexAttention skipped: its BlockMask tables need {need / 2**30:.1f} GiB, "
                      f"{free / 2**30:.1f} GiB free", flush=True)
                rows.rows.append(dict(system="FlexAttention", pattern=pname, n=n, ms=None, tflops=None,
                                      check=f"does not fit ({need / 2**30:.0f} GiB BlockMask)"))
            else:
                try:
                    bm = flex_block_mask(torch, pattern, n, 1, 128,
                                         lambda b, hh, qi, ki: (qi >= ki) & (qi - ki < w))
                    add("FlexAttention", pname, n, pairs, lambda: flex(q, k, v, block_mask=bm))
                    del bm
                except Exception as e:
                    print(f"  FlexAttention failed: {str(e).splitlines()[0][:200]}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()

    rows.finish(f"GPU forward, {dev}, bf16, B={B}, H={H}, D={D}", args.out, "table.md", "bench.json",
                dict(device=dev, torch=torch.__version__, info=info))

if __name__ == "__main__":
    main()
