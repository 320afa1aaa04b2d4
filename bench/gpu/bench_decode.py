"""GPU benchmark of decode (issue 11's bar): one query, Hq=32, Hkv=8, D=128, bf16, a paged
cache of 1M tokens; sliding window 4096 and dense.

    python bench/gpu/bench_decode.py [--out DIR] [--tokens 1048576] [--pages 16,256] [--calls 200]

Per (pattern, page size, mode):
  mode       how cache_len is passed (docs/api.md, "Decode on a GPU"): "host" (int32 in host
             memory: planned on the host, ends with a wait for the block-table check), "gpu"
             (on the GPU: planned on the GPU, ends with a wait for the error record), "gpu,
             deferred" (defer_errors=True: nothing waits) and "graph" (the deferred call captured
             once in a CUDA graph, each call one replay).
  call us    wall time of one call, median of --calls, each followed by a synchronisation: the
             whole cost a caller sees (planning, launches, kernels, any wait).
  kernel us  the decode kernels' own GPU time per call (plan, split and merge kernels, from
             torch.profiler), when the profiler is available.
  GB/s       bytes the call must read (K and V rows of the visited keys, Hkv heads) / time, for
             both times; "% HBM" divides by the card's bandwidth (H200 4.8 TB/s, H100 SXM
             3.35 TB/s, ...; both H200 and H100 figures when the card is not known).
The bar: window 4096 <= 50 us per call; dense >= 80% of the HBM bandwidth bound. The table is
printed last and written to DIR/table_decode.md, the numbers to DIR/bench_decode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header  # noqa: E402

# HBM bandwidth (bytes/s) by a substring of the device name, most specific first.
BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
             ("GH200", 4.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
             ("A100", 1.555e12), ("L40S", 0.864e12), ("A10", 0.6e12)]


def card_bandwidth(name: str):
    for key, bw in BANDWIDTH:
        if key in name:
            return {key: bw}
    return {"H200": 4.8e12, "H100 SXM": 3.35e12}  # unknown: both figures of the bar's cards


def kernel_us(torch, fn, calls=20):
    """GPU time per call of the decode kernels (names from cuda/src/kernels/decode.cu)."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total = 0.0
    for e in prof.key_averages():
        if "decode_kernel" in e.key or "finish_kernel" in e.key or "decode_plan" in e.key:
            total += getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0))
    return total / calls if total > 0 else None


def call_us(torch, fn, calls):
    fn()
    torch.cuda.synchronize()
    t = []
    for _ in range(calls):
        a = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append((time.perf_counter() - a) * 1e6)
    return statistics.median(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--pages", default="16,256", help="page sizes, comma-separated")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()

    import torch

    import spattn

    dev, _ = header(torch, spattn, "cuda_decode")
    bws = card_bandwidth(dev)
    hq, hkv, d, n = 32, 8, 128, args.tokens
    rows = []
    for page in (int(p) for p in args.pages.split(",") if p):
        pages = -(-n // page)
        g = torch.Generator(device="cuda").manual_seed(0)
        kp = torch.randn((pages, page, hkv, d), dtype=torch.bfloat16, device="cuda", generator=g)
        vp = torch.randn((pages, page, hkv, d), dtype=torch.bfloat16, device="cuda", generator=g)
        table = torch.randperm(pages, device="cuda", generator=g).to(torch.int32).reshape(1, pages)
        q = torch.randn((1, 1, hq, d), dtype=torch.bfloat16, device="cuda", generator=g)
        lens = torch.tensor([n], dtype=torch.int32)  # host memory: no read-back per call
        dlens = lens.cuda()
        for (name, pattern, keys), mode in ((p, m) for p in (
                ("window 4096", spattn.SlidingWindow(4095, 0), min(n, 4096)),
                ("dense", spattn.Dense(), n)) for m in ("host", "gpu", "gpu, deferred", "graph")):
            if mode == "host":
                fn = lambda: spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table)  # noqa: E731
            elif mode == "gpu":
                fn = lambda: spattn.decode(q, kp, vp, dlens, pattern=pattern, block_table=table)  # noqa: E731
            else:
                fn = lambda: spattn.decode(q, kp, vp, dlens, pattern=pattern, block_table=table,  # noqa: E731
                                           defer_errors=True)
                if mode == "graph":
                    fn()
                    torch.cuda.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        fn()
                    fn = graph.replay
            nbytes = keys * hkv * 2 * d * 2  # K and V rows, bf16
            wall = call_us(torch, fn, args.calls)
            kern = kernel_us(torch, fn)
            spattn.check_decode_errors(q.device)
            row = {"pattern": name, "page": page, "mode": mode, "tokens": n, "bytes": nbytes, "call_us": wall,
                   "kernel_us": kern, "call_GBps": nbytes / wall / 1e3,
                   "kernel_GBps": None if kern is None else nbytes / kern / 1e3}
            for card, bw in bws.items():
                row[f"call_pct_{card}"] = 100 * nbytes / (wall * 1e-6) / bw
                if kern is not None:
                    row[f"kernel_pct_{card}"] = 100 * nbytes / (kern * 1e-6) / bw
            rows.append(row)
            print(json.dumps(row), flush=True)
        del kp, vp
        torch.cuda.empty_cache()

    cards = list(bws)
    head = ("| pattern | page | cache_len | call us | kernel us | call GB/s | kernel GB/s | "
            + " | ".join(f"call % {c} | kernel % {c}" for c in cards) + " |")
    lines = [f"# decode, {dev}: 1 query, Hq={hq}, Hkv={hkv}, D={d}, bf16, paged cache of {n} tokens",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda x, f="{:.1f}": "-" if x is None else f.format(x)  # noqa: E731
    for r in rows:
        pct = " | ".join(f"{fmt(r.get(f'call_pct_{c}'))} | {fmt(r.get(f'kernel_pct_{c}'))}" for c in cards)
        lines.append(f"| {r['pattern']} | {r['page']} | {r['mode']} | {fmt(r['call_us'])} | {fmt(r['kernel_us'])} | "
                     f"{fmt(r['call_GBps'], '{:.0f}')} | {fmt(r['kernel_GBps'], '{:.0f}')} | {pct} |")
    lines += ["", "bar: window 4096 <= 50 us per call; dense >= 80% of the HBM bandwidth bound"]
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table_decode.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "bench_decode.json"), "w") as f:
        json.dump({"device": dev, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
