"""A short Nsight Compute summary of spattn's attention kernels (run.sh --profile).

    python bench/gpu/profile.py [--out DIR] [--n 16384] [--ncu ncu]

Profiles one call of each case below (bf16, B=1, H=16, D=128) with `ncu --clock-control none`
(the clocks are left alone), keeps the report in DIR/profile.ncu-rep, and writes DIR/profile.md:
per kernel launch, its duration, speed of light (SM and memory throughput), occupancy
(theoretical and achieved), registers, local-memory spill requests, cycles per issued
instruction and the three largest warp-stall reasons.

Cases: causal window 1024, causal, random 10% blocks of 128x128 per head (forward), and the
forward and backward of a causal autograd call. Only the main kernels are profiled (the sm90a
forward, the sm80-style forward and the backward), not the small helper kernels.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import subprocess
import sys

KERNELS = "regex:^(fwd90_kernel|forward_kernel|backward_kernel)"

DRIVER = r"""
import sys, numpy as np, torch, spattn
n = int(sys.argv[1]); H, D = 16, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(1, n, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
layout = np.random.default_rng(0).random((H, n // 128, n // 128)) < 0.1
for name, pat in (("window 1024", spattn.SlidingWindow(1023, 0)), ("causal", spattn.Causal()),
                  ("random 10%", spattn.BlockSparse(layout, block_size=128))):
    spattn.attention(q, k, v, pattern=pat)
qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
spattn.attention(qg, kg, vg, pattern=spattn.Causal()).sum().backward()
torch.cuda.synchronize()
"""
CASES = ["window 1024 (fwd)", "causal (fwd)", "random 10% (fwd)", "causal autograd (fwd)",
         "causal autograd (bwd)"]

# details-page metric name -> column
DETAILS = {
    "Duration": "duration",
    "Compute (SM) Throughput": "SM %",
    "Memory Throughput": "mem %",
    "Theoretical Occupancy": "occ. theor. %",
    "Achieved Occupancy": "occ. achieved %",
    "Registers Per Thread": "regs",
    "Local Memory Spilling Requests": "spill requests",
    "Warp Cycles Per Issued Instruction": "cycles/issue",
}
STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio")


def ncu_csv(ncu: str, rep: str, page: str) -> list[dict]:
    out = subprocess.run([ncu, "--import", rep, "--csv", "--page", page], check=True,
                         capture_output=True, text=True).stdout
    start = out.find('"ID"')  # skip ==PROF== lines
    return list(csv.DictReader(io.StringIO(out[start:]))) if start >= 0 else []


def summarize(ncu: str, rep: str) -> str:
    launches: dict[str, dict] = {}
    for r in ncu_csv(ncu, rep, "details"):
        col = DETAILS.get(r.get("Metric Name", ""))
        if col is None:
            continue
        d = launches.setdefault(r["ID"], {"kernel": r.get("Kernel Name", "?").split("(")[0]})
        value, unit = r.get("Metric Value", ""), r.get("Metric Unit", "")
        d[col] = f"{value} {unit}" if col == "duration" else value
    rows = ncu_csv(ncu, rep, "raw")
    raw = rows[1:] if rows and rows[0].get("ID", "") == "" else rows  # row 0: units
    for r in raw:
        d = launches.get(r.get("ID", ""))
        if d is None:
            continue
        stalls = []
        for key, value in r.items():
            m = STALL.fullmatch(key or "")
            if m and m.group(1) not in ("selected", "not_selected"):
                try:
                    stalls.append((float(str(value).replace(",", "")), m.group(1)))
                except ValueError:
                    pass
        stalls.sort(reverse=True)
        d["top stalls (cycles/issue)"] = ", ".join(f"{n} {v:.1f}" for v, n in stalls[:3])
    cols = ["case", "kernel", *DETAILS.values(), "top stalls (cycles/issue)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, (_, d) in enumerate(sorted(launches.items(), key=lambda kv: int(kv[0]))):
        d["case"] = CASES[i] if i < len(CASES) else "?"
        lines.append("| " + " | ".join(str(d.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--ncu", default="ncu")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rep = os.path.join(args.out, "profile")
    driver = os.path.join(args.out, "profile_driver.py")
    with open(driver, "w") as fh:
        fh.write(DRIVER)
    cmd = [args.ncu, "--clock-control", "none", "--kernel-name", KERNELS, "--launch-count", str(len(CASES)),
           "--section", "SpeedOfLight", "--section", "Occupancy", "--section", "LaunchStats",
           "--section", "WarpStateStats", "--section", "MemoryWorkloadAnalysis",
           "--metrics", r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio",
           "-f", "-o", rep, sys.executable, driver, str(args.n)]
    print(" ".join(cmd), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    with open(os.path.join(args.out, "profile.log"), "w") as fh:
        fh.write(run.stdout + run.stderr)
    if run.returncode != 0 or not os.path.exists(rep + ".ncu-rep"):
        print((run.stdout + run.stderr)[-2000:])
        raise SystemExit(f"ncu failed (exit {run.returncode}); log in {args.out}/profile.log")
    table = (f"Nsight Compute, {args.n} tokens, bf16, H=16, D=128 (clocks not locked; report "
             f"{rep}.ncu-rep)\n\n" + summarize(args.ncu, rep + ".ncu-rep"))
    with open(os.path.join(args.out, "profile.md"), "w") as fh:
        fh.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
