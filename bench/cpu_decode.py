"""Decode latency over a KV cache, and TopKBlocks prefill: spattn vs torch SDPA, one command.

    python bench/cpu_decode.py [--sizes 32768 262144 1048576] [--dtype bfloat16] [--prefill-n 16384]

Decode: one new query (B=1, Nq=1), Hq=32, Hkv=8, D=128. Caches in spattn's [B, N, Hkv, D]
layout; torch SDPA gets its own contiguous [B, Hkv, N, D] copy of the same keys (its preferred
layout) with enable_gqa=True (no expanded K/V). spattn is also timed on that torch layout,
passed as a transposed view (no copy). TopKBlocks(8, block_size=64) is timed twice: pooling
the keys from the cache inside the call, and with pooled_keys computed once beforehand (what a
serving loop keeps up to date, one entry per 64 new tokens; the pooling time is printed too).

Prefill (--prefill-n, 0 to skip): float32, B=1, H=8, D=64: TopKBlocks(8, block_size=64)
(causal) against spattn's causal and dense attention and torch SDPA dense, all forward; the
selection alone (pattern.chosen_blocks) is timed too and reported as a share of the TopKBlocks
attention. Columns: ms (best of the repeats) and ratios.
"""
from __future__ import annotations

import argparse
import time

import torch

import spattn


def best_ms(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32768, 262144, 1048576])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-sdpa", action="store_true", help="skip torch SDPA (slow at 1M)")
    ap.add_argument("--prefill-n", type=int, default=16384, help="TopKBlocks prefill length (0: skip)")
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    H, HKV, D = 32, 8, 128
    info = spattn.info()
    print(f"spattn {info['version']} ({info['cpu_simd']}, {info['cpu_threads']} threads), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); dtype {a.dtype}; B=1, Nq=1, Hq={H}, Hkv={HKV}, D={D}")
    patterns = [
        ("dense", spattn.Dense()),
        ("SlidingWindow(4095, 0)", spattn.SlidingWindow(4095, 0)),
        ("Sink(4) | SlidingWindow(4095, 0)", spattn.Sink(4) | spattn.SlidingWindow(4095, 0)),
        ("TopKBlocks(8, 64)", TOPK),
    ]
    rows = []
    for n in a.sizes:
        g = torch.Generator().manual_seed(n)
        q = torch.randn(1, 1, H, D, generator=g).to(dt)
        k = torch.empty(1, n, HKV, D, dtype=dt)
        v = torch.empty(1, n, HKV, D, dtype=dt)
        for t in (k, v):  # fill in slices: a float32 temporary of 1M rows would be 4 GB
            for s in range(0, n, 65536):
                t[:, s : s + 65536] = torch.randn(1, min(65536, n - s), HKV, D, generator=g).to(dt)
        cl = torch.tensor([n], dtype=torch.int32)
        res = {}
        for name, p in patterns:
            reps = a.reps if name == "dense" else max(a.reps, 20)
            res[name] = best_ms(lambda: spattn.decode(q, k, v, cl, pattern=p), reps)
        t0 = time.perf_counter()
        pooled = spattn.pool_keys(k, cl, 64)
        res["pool_keys"] = (time.perf_counter() - t0) * 1e3
        res["TopKBlocks(8, 64), pooled_keys"] = best_ms(lambda: spattn.decode(q, k, v, cl, pattern=TOPK, pooled_keys=pooled), max(a.reps, 20))
        del pooled
        kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()  # [B, Hkv, N, D]
        res["dense, torch layout view"] = best_ms(lambda: spattn.decode(q, kt.transpose(1, 2), vt.transpose(1, 2), cl), a.reps)
        if not a.no_sdpa:
            qt = q.transpose(1, 2)
            with torch.no_grad():
                ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
                got = spattn.decode(q, k, v, cl)
                err = (ref.transpose(1, 2).float() - got.float()).abs().max().item()
                res["torch SDPA dense"] = best_ms(
                    lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True), a.reps)
            res["max |spattn - sdpa|"] = err
        del kt, vt
        rows.append((n, res))
        print(f"  N={n}: " + ", ".join(f"{k_}={v_:.3g}" for k_, v_ in res.items()), flush=True)
        del k, v

    print()
    hdr = ["N", "dense ms", "win4096 ms", "sink+win ms", "topk ms", "topk+pooled ms", "pool_keys ms (once)",
           "dense/win", "dense/topk+pooled", "dense (torch-layout view) ms", "SDPA ms", "SDPA/dense"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for n, r in rows:
        d, w, sw = r["dense"], r["SlidingWindow(4095, 0)"], r["Sink(4) | SlidingWindow(4095, 0)"]
        tk, tp = r["TopKBlocks(8, 64)"], r["TopKBlocks(8, 64), pooled_keys"]
        sd = r.get("torch SDPA dense")
        cells = [f"{n:,}", f"{d:.2f}", f"{w:.3f}", f"{sw:.3f}", f"{tk:.2f}", f"{tp:.3f}", f"{r['pool_keys']:.1f}",
                 f"{d / w:.0f}x", f"{d / tp:.0f}x",
                 f"{r['dense, torch layout view']:.2f}", f"{sd:.1f}" if sd else "-", f"{sd / d:.1f}x" if sd else "-"]
        print("| " + " | ".join(cells) + " |")
    if a.prefill_n:
        prefill(a.prefill_n, a.reps, not a.no_sdpa)


def prefill(n, reps, sdpa):
    H, D = 8, 64
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, n, H, D, generator=g) for _ in range(3))
    flops_pairs = {}
    res = {}
    res["select"] = best_ms(lambda: TOPK.chosen_blocks(q, k), max(reps, 5))
    res["topk"] = best_ms(lambda: spattn.attention(q, k, v, TOPK), reps)
    (concrete,) = TOPK.select(q, k)
    flops_pairs["topk"] = concrete.block_layout(n, n, heads=H).density * n * n * H
    res["causal"] = best_ms(lambda: spattn.attention(q, k, v, spattn.Causal()), reps)
    res["dense"] = best_ms(lambda: spattn.attention(q, k, v), 1)
    if sdpa:
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        with torch.no_grad():
            res["sdpa"] = best_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), 1)
    print(f"\nTopKBlocks prefill, float32, B=1, N={n:,}, H={H}, D={D}; kept pairs: "
          f"{flops_pairs['topk'] / (n * n * H):.3%} of dense")
    hdr = ["topk ms (with selection)", "selection ms", "selection share", "causal ms", "dense ms", "SDPA dense ms",
           "causal/topk", "dense/topk", "SDPA/topk"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    t = res["topk"]
    sd = res.get("sdpa")
    cells = [f"{t:.1f}", f"{res['select']:.2f}", f"{res['select'] / t:.1%}", f"{res['causal']:.0f}", f"{res['dense']:.0f}",
             f"{sd:.0f}" if sd else "-", f"{res['causal'] / t:.1f}x", f"{res['dense'] / t:.1f}x", f"{sd / t:.1f}x" if sd else "-"]
    print("| " + " | ".join(cells) + " |")


TOPK = spattn.TopKBlocks(8, block_size=64)


if __name__ == "__main__":
    main()
