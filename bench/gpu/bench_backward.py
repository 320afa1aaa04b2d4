"""GPU forward+backward benchmark: spattn against torch SDPA (flash and cuDNN) and FlexAttention.

    python bench/gpu/bench_backward.py [--out DIR] [--no-flex] [--repeats-ms 200]

bf16, B=1, H=16, D=128 (the rows of shared/ANCHORS.md and issue #5's bar): causal sliding
window 1024 and random 10% block-sparse 128x128 per head at N = 16K (spattn and FlexAttention,
whose BlockMask is built from the same kv blocks), dense and causal at 16K (spattn and torch SDPA
flash / cuDNN). One timed call = forward + backward (torch.autograd.grad of the output against a
fixed random dout). Useful TFLOP/s = 3.5 * 4 * D * H * kept pairs / time. Times are medians of
CUDA-event timed runs (triton.testing.do_bench when installed). Before timing, spattn's
gradients are compared with FlexAttention's or SDPA's on the same inputs (max |diff| per
gradient, printed). The table is printed last and written to DIR/table_bwd.md, the raw numbers
to DIR/bench_bwd.json.

On a compute-capability 9.0 GPU with the sm90a backward compiled for bf16 D=128, every pattern
also gets two rows of the sm90a backward (opted in per call with SPATTN_CUDA_BACKWARD=sm90a),
one per way of forming dQ (issue #12, "measure both"): "spattn sm90a, dQ pass" (the query-major
dQ kernel, deterministic, the default) and "spattn sm90a, dQ tma" (SPATTN_CUDA_DQ=tma: TMA
reduce-add of fp32 dQ tiles from the dK/dV kernel, then a conversion). --no-sm90a drops them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Rows, compiled_flex, flex_block_mask, header, kept_pairs, random_layout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--repeats-ms", type=float, default=200.0, help="timing budget per row (ms)")
    ap.add_argument("--no-sm90a", action="store_true", help="no rows for the sm90a backward's dQ variants")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    import spattn

    dev, info = header(torch, spattn, "cuda_backward_kernels")
    B, H, D = 1, 16, 128
    dt = torch.bfloat16
    flex = compiled_flex(torch, args.no_flex)

    def inputs(n, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        # torch's native [B, H, N, D]; spattn reads the same memory as [B, N, H, D] views.
        qkv = [torch.randn(B, H, n, D, device="cuda", dtype=dt, generator=g).requires_grad_() for _ in range(3)]
        dout = torch.randn(B, H, n, D, device="cuda", dtype=dt, generator=g)
        return qkv, dout

    def fwd_bwd(attn, q, k, v, dout):
        """One forward + backward; attn maps [B, H, N, D] tensors to the [B, H, N, D] output."""
        def f():
            out = attn(q, k, v)
            return torch.autograd.grad(out, (q, k, v), dout)
        return f

    def spattn_attn(pattern):
        return lambda q, k, v: spattn.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                pattern=pattern).transpose(1, 2)

    # The sm90a backward's two dQ variants, where they run (env read on every call).
    sm90a = (not args.no_sm90a and torch.cuda.get_device_capability() == (9, 0)
             and "bfloat16:" in str(info.get("cuda_sm90a_backward_kernels", ""))
             and "128" in str(info.get("cuda_sm90a_backward_kernels", "")).split("bfloat16:")[-1].split(";")[0])
    sm90a_rows = [("spattn sm90a, dQ pass", dict(SPATTN_CUDA_BACKWARD="sm90a", SPATTN_CUDA_DQ="pass")),
                  ("spattn sm90a, dQ tma", dict(SPATTN_CUDA_BACKWARD="sm90a", SPATTN_CUDA_DQ="tma"))] if sm90a else []

    def with_env(f, env):
        """f with os.environ updated for the call (spattn reads these on every call)."""
        def g():
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                return f()
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        return g

    def add_sm90a(pname, n, pairs, f_sp, g_ref, ref_name):
        """The sm90a rows of one pattern, each checked against g_ref (or unchecked if None)."""
        for system, env in sm90a_rows:
            f = with_env(f_sp, env)
            check = ""
            if g_ref is not None:
                try:
                    check = f"vs {ref_name} {gdiff(f(), g_ref)}"
                except Exception as e:
                    check = f"no check: {str(e).splitlines()[0][:80]}"
            add(system, pname, n, pairs, f, check)

    def gdiff(ga, gb):
        return " ".join(f"{n}:{(a.float() - b.float()).abs().max().item():.2e}" for n, a, b in zip(("dq", "dk", "dv"), ga, gb))

    rows = Rows(torch, 3.5 * 4.0 * D, args.repeats_ms)  # forward + backward: 3.5x the forward
    add = rows.add

    # ---- sparse patterns: spattn vs FlexAttention
    W, n = 1024, 16384
    layout, bs_mod = random_layout(np, torch, H, n)
    cases = [
        ("causal sliding window 1024", spattn.SlidingWindow(W - 1, 0), lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W)),
        ("random block-sparse 10% 128x128 per head", spattn.BlockSparse(layout, block_size=128), bs_mod),
    ]
    for pname, pattern, mask_mod in cases:
        print(f"# {pname}, N={n}, forward+backward", flush=True)
        (q, k, v), dout = inputs(n)
        pairs = kept_pairs(pattern, n, H)
        f_sp = fwd_bwd(spattn_attn(pattern), q, k, v, dout)
        check, f_flex, g_ref = "", None, None
        if flex is not None:
            try:
                bm = flex_block_mask(torch, pattern, n, H, 128, mask_mod)
                f_flex = fwd_bwd(lambda a, b_, c: flex(a, b_, c, block_mask=bm), q, k, v, dout)
                t0 = time.perf_counter()
                g_ref = f_flex()
                torch.cuda.synchronize()
                t_comp = time.perf_counter() - t0
                check = f"vs flex {gdiff(f_sp(), g_ref)} (compile {t_comp:.1f} s)"
            except Exception as e:
                print(f"  FlexAttention failed: {str(e).splitlines()[0][:200]}", flush=True)
                f_flex, g_ref = None, None
        add("spattn", pname, n, pairs, f_sp, check)
        add_sm90a(pname, n, pairs, f_sp, g_ref, "flex")
        del g_ref
        if f_flex is not None:
            add("FlexAttention", pname, n, pairs, f_flex)
        del q, k, v, dout
        torch.cuda.empty_cache()

    # ---- dense and causal at 16K: spattn vs SDPA flash and cuDNN
    from torch.nn.attention import SDPBackend, sdpa_kernel

    (q, k, v), dout = inputs(n, seed=1)
    for pname, pattern, causal in (("dense", spattn.Dense(), False), ("causal", spattn.Causal(), True)):
        print(f"# {pname}, N={n}, forward+backward", flush=True)
        pairs = kept_pairs(pattern, n, H)
        f_sp = fwd_bwd(spattn_attn(pattern), q, k, v, dout)

        def sdpa(backend):
            def attn(a, b_, c):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(a, b_, c, is_causal=causal)
            return fwd_bwd(attn, q, k, v, dout)

        check, g_ref = "", None
        try:
            g_ref = sdpa(SDPBackend.FLASH_ATTENTION)()
            check = f"vs sdpa flash {gdiff(f_sp(), g_ref)}"
        except Exception as e:
            check = f"no check: {str(e).splitlines()[0][:80]}"
        add("spattn", pname, n, pairs, f_sp, check)
        add_sm90a(pname, n, pairs, f_sp, g_ref, "sdpa flash")
        del g_ref
        add("torch SDPA flash (FA2)", pname, n, pairs, sdpa(SDPBackend.FLASH_ATTENTION))
        add("torch SDPA cuDNN", pname, n, pairs, sdpa(SDPBackend.CUDNN_ATTENTION))

    rows.finish(f"GPU forward+backward, {dev}, bf16, B={B}, H={H}, D={D}", args.out, "table_bwd.md",
                "bench_bwd.json", dict(device=dev, torch=torch.__version__, info=info))

if __name__ == "__main__":
    main()
