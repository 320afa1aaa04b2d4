"""Shared by the GPU benchmarks (bench_forward.py, bench_backward.py): timing, kept pairs,
FlexAttention's BlockMask from spattn's layout, the run header, the result rows and the table."""
from __future__ import annotations

import json
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


def flex_mask_bytes(n: int, block: int, mask_heads: int) -> int:
    """Device bytes of the BlockMask flex_block_mask builds: two [mask_heads, n/block, n/block]
    int32 index tables (partial and full kv blocks), as wide as the number of key blocks."""
    nb = -(-n // block)
    return 2 * mask_heads * nb * nb * 4


def header(torch, spattn, kernels_key: str) -> tuple[str, dict]:
    """(device name, spattn.info()) after printing the run's header line; exits without CUDA."""
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    dev = torch.cuda.get_device_name(0)
    info = spattn.info()
    print(f"# {dev}, torch {torch.__version__}, spattn {info.get('version')} "
          f"(cuda archs {info.get('cuda_archs')}, {kernels_key} {info.get(kernels_key)}), "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    return dev, info


def compiled_flex(torch, skip: bool):
    """torch.compile(flex_attention), or None (skipped, or unavailable: reported, not fatal)."""
    if skip:
        return None
    try:
        from torch.nn.attention.flex_attention import flex_attention

        return torch.compile(flex_attention, dynamic=False)
    except Exception as e:
        print(f"# FlexAttention unavailable: {e}", flush=True)
        return None


def random_layout(np, torch, heads: int, n: int, block: int = 128, density: float = 0.1):
    """A per-head random block layout [heads, n/block, n/block] (seed 0, numpy) and, for
    FlexAttention's mask_mod, the same on the GPU."""
    layout = np.random.default_rng(0).random((heads, n // block, n // block)) < density
    lay_t = torch.from_numpy(layout).cuda()
    return layout, lambda b, h, qi, ki: lay_t[h, qi // block, ki // block]


class Rows:
    """Timed rows: useful TFLOP/s = flops_per_pair * pairs / time (pairs summed over heads)."""

    def __init__(self, torch, flops_per_pair: float, repeats_ms: float):
        self.torch, self.flops_per_pair, self.repeats_ms = torch, flops_per_pair, repeats_ms
        self.rows = []  # dicts: system, pattern, n, ms, tflops, check

    def add(self, system, pname, n, pairs, fn, check="", flops_per_pair=None):
        """flops_per_pair: for rows whose head dim differs from the run's (default: the run's)."""
        try:
            fn()
            self.torch.cuda.synchronize()
            ms = median_ms(self.torch, fn, self.repeats_ms)
            tf = (flops_per_pair or self.flops_per_pair) * pairs / (ms * 1e-3) / 1e12
            self.rows.append(dict(system=system, pattern=pname, n=n, ms=ms, tflops=tf, check=check))
            print(f"  {system:28s} {pname:34s} N={n:6d} {ms:9.3f} ms {tf:7.1f} TFLOP/s {check}", flush=True)
        except Exception as e:
            msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            self.rows.append(dict(system=system, pattern=pname, n=n, ms=None, tflops=None, check="unavailable: " + msg))
            print(f"  {system:28s} {pname:34s} N={n:6d} unavailable: {msg}", flush=True)

    def _ratio(self, r):
        """spattn (and its variants, "spattn ...") against each peer timed on the same row:
        FlexAttention, SDPA flash, cuDNN."""
        if not r["ms"] or not r["system"].startswith("spattn"):
            return ""
        out = []
        for system, short in (("FlexAttention", "Flex"), ("torch SDPA flash (FA2)", "FA2"),
                              ("torch SDPA cuDNN", "cuDNN")):
            other = next((x for x in self.rows if x["pattern"] == r["pattern"] and x["n"] == r["n"]
                          and x["ms"] and x["system"] == system), None)
            if other:
                out.append(f"{r['tflops'] / other['tflops']:.2f}x {short}")
        return ", ".join(out)

    def finish(self, title: str, out_dir: str, table_name: str, json_name: str, meta: dict):
        """Print the table last, write it and the raw rows, exit 1 if a spattn row failed."""
        lines = [f"{title}, {time.strftime('%Y-%m-%d')}",
                 "",
                 "| system | pattern | N | ms | useful TFLOP/s | spattn vs |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            ms = f"{r['ms']:.3f}" if r["ms"] else "-"
            tf = f"{r['tflops']:.0f}" if r["tflops"] else r["check"]
            n = f"{r['n'] >> 20}M" if r["n"] >= 1 << 20 else f"{r['n'] // 1024}K"
            lines.append(f"| {r['system']} | {r['pattern']} | {n} | {ms} | {tf} | {self._ratio(r)} |")
        table = "\n".join(lines)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, table_name), "w") as fh:
            fh.write(table + "\n")
        with open(os.path.join(out_dir, json_name), "w") as fh:
            json.dump(dict(meta, rows=self.rows), fh, indent=1)
        print(table, flush=True)
        if any(r["system"] == "spattn" and not r["ms"] for r in self.rows):
            sys.exit(1)
