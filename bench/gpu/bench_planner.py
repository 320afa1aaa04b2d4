"""GPU benchmark of the planner (issue 11): host overhead per call, block-sparse end to end
against the kernel alone, dilated and strided against a window of equal density.

    python bench/gpu/bench_planner.py [--out DIR] [--repeats-ms 200]

bf16, B=1, H=16, D=128, N=16K unless a row says otherwise. For each pattern:
  kernel   GPU time of one call replayed from a CUDA graph (no host work at all);
  e2e      GPU-stream time per call of back-to-back eager calls (CUDA events around 50 calls):
           what a model sees; e2e / kernel is the issue's "end to end vs the kernel" ratio;
  host     wall time of one eager call, issue only (no synchronisation), median of 200: the
           host overhead, hidden by the pipeline while it stays under the kernel time;
  sync     wall time of call + torch.cuda.synchronize(), median, minus the kernel time: the
           overhead a caller that waits sees (includes launch latency and the sync itself).
Useful TFLOP/s = 4 * D * H * kept pairs / time. The table is printed last and written to
DIR/table_planner.md, the numbers to DIR/bench_planner.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header, kept_pairs, median_ms, random_layout  # noqa: E402


def graph_ms(torch, fn, reps=20):
    """GPU time of fn from a CUDA graph replay (median of reps)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return median_ms(torch, g.replay, 100)


def eager_stream_ms(torch, fn, calls=50):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def host_us(torch, fn, calls=200):
    torch.cuda.synchronize()
    t = []
    for i in range(calls):
        a = time.perf_counter()
        fn()
        t.append((time.perf_counter() - a) * 1e6)
        if i % 20 == 19:
            torch.cuda.synchronize()  # keep the queue short
    torch.cuda.synchronize()
    return statistics.median(t)


def sync_us(torch, fn, calls=100):
    torch.cuda.synchronize()
    t = []
    for _ in range(calls):
        a = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append((time.perf_counter() - a) * 1e6)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--repeats-ms", type=float, default=200.0)
    ap.add_argument("--skip-1m", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    import spattn

    dev, info = header(torch, spattn, "cuda_kernels")
    B, H, D, N = 1, 16, 128, 16384
    dt = torch.bfloat16

    def qkv(n, h=H, hkv=None):
        g = torch.Generator(device="cuda").manual_seed(n)
        hkv = hkv or h
        return (torch.randn(B, n, h, D, dtype=dt, device="cuda", generator=g),
                torch.randn(B, n, hkv, D, dtype=dt, device="cuda", generator=g),
                torch.randn(B, n, hkv, D, dtype=dt, device="cuda", generator=g))

    layout, _ = random_layout(np, torch, H, N, 128, 0.1)
    rows = []

    def row(name, pattern, n=N, h=H, note=""):
        q, k, v = qkv(n, h)
        fn = lambda: spattn.attention(q, k, v, pattern=pattern)  # noqa: E731
        first_a = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first_ms = (time.perf_counter() - first_a) * 1e3
        kern = graph_ms(torch, fn)
        e2e = eager_stream_ms(torch, fn)
        host = host_us(torch, fn)
        sync = sync_us(torch, fn)
        pairs = kept_pairs(pattern, n, h)
        r = dict(pattern=name, n=n, heads=h, first_call_ms=first_ms, kernel_ms=kern, e2e_ms=e2e,
                 e2e_over_kernel=e2e / kern, host_issue_us=host, sync_wall_minus_kernel_us=sync - kern * 1e3,
                 tflops_kernel=4 * D * pairs / kern / 1e9, tflops_e2e=4 * D * pairs / e2e / 1e9, note=note)
        rows.append(r)
        print(json.dumps(r), flush=True)
        return r

    row("random 10% blocks 128x128 per head", spattn.BlockSparse(layout, block_size=128))
    row("causal window 1024", spattn.SlidingWindow(1023, 0))
    row("causal", spattn.Causal())
    # Dilated and strided against windows keeping the same number of pairs.
    w = row("causal window 256", spattn.SlidingWindow(255, 0))
    d4 = row("dilated(255, 0, 4): 256 keys", spattn.Dilated(255, 0, 4))
    st = row("strided(128)", spattn.Strided(128))
    wst = row("causal window 64 (density of strided(128))", spattn.SlidingWindow(63, 0))
    row("window 511 | strided 256", spattn.SlidingWindow(511, 0) | spattn.Strided(256))
    if not args.skip_1m:
        row("causal window 4096, 1M tokens (H=8)", spattn.SlidingWindow(4095, 0), n=1 << 20, h=8)

    ratios = {
        "dilated(255,0,4) / window 256 (useful TFLOP/s, e2e)": d4["tflops_e2e"] / w["tflops_e2e"],
        "strided(128) / window 64 (useful TFLOP/s, e2e)": st["tflops_e2e"] / wst["tflops_e2e"],
    }
    lines = [f"# spattn planner on {dev}", "",
             "| pattern | N | first call ms | kernel ms | e2e ms | e2e/kernel | host issue us | sync wall - kernel us | TFLOP/s e2e |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pattern']} | {r['n']} | {r['first_call_ms']:.2f} | {r['kernel_ms']:.3f} | {r['e2e_ms']:.3f} | "
                     f"{r['e2e_over_kernel']:.3f} | {r['host_issue_us']:.1f} | {r['sync_wall_minus_kernel_us']:.1f} | "
                     f"{r['tflops_e2e']:.0f} |")
    lines.append("")
    for k, v in ratios.items():
        lines.append(f"- {k}: {v:.2f}x")
    table = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table_planner.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "bench_planner.json"), "w") as f:
        json.dump(dict(rows=rows, ratios=ratios, info=info), f, indent=1)
    print(table)


if __name__ == "__main__":
    main()
