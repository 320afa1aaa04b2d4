"""`spattn bench`: time a pattern against dense attention in one run (docs/api.md).

    from spattn import bench
    result = bench.run(spattn.SlidingWindow(511, 0), 4096, backward=True)
    print(bench.format_table(result))

Rows: spattn on the pattern; spattn with Dense(); torch's scaled_dot_product_attention (dense)
where torch is installed; FlexAttention with the pattern as a BlockMask when asked (flex=True:
on the CPU it needs torch.compile, which takes a while the first time). Each row is timed
`repeats` times after one warm-up call, and the median is reported, with useful GFLOP/s
(forward 4*D*kept pairs per batch element, forward+backward 3.5x that: the work the pattern
needs, whatever the implementation does) and the speed-up over spattn's dense row.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .patterns import Dense, Pattern

__all__ = ["run", "format_table", "BenchResult", "Row"]

_BWD_FACTOR = 3.5  # forward + backward FLOPs / forward FLOPs (backward = 2.5x forward)
_FLEX_MASK_LIMIT = 1 << 28  # elements of the lookup mask behind FlexAttention's mask_mod


@dataclass
class Row:
    impl: str
    pass_: str            # "fwd" or "fwd+bwd"
    ms: float | None      # median milliseconds, None when not run
    note: str = ""        # why it was not run, or an extra fact (compile time)
    gflops: float | None = None
    vs_dense: float | None = None


@dataclass
class BenchResult:
    label: str
    batch: int
    nq: int
    nk: int
    heads: int
    dim: int
    dtype: str
    kept_pairs: int        # over all heads, per batch element
    density: float
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)


class _Progress:
    def __init__(self, total: int, enabled: bool, stream):
        self.total, self.enabled, self.stream, self.i = total, enabled, stream, 0

    def start(self, label: str):
        self.i += 1
        if self.enabled:
            print(f"[{self.i}/{self.total}] {label} ...", end="", file=self.stream, flush=True)

    def done(self, what: str):
        if self.enabled:
            print(f" {what}", file=self.stream, flush=True)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: threads, page faults, caches, compilation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def run(pattern, n: int, nk: int | None = None, heads: int = 8, dim: int = 64, batch: int = 1,
        dtype: str = "float32", backward: bool = False, repeats: int = 3, dense: bool = True,
        dense_max_n: int = 8192, torch_sdpa: bool = True, flex: bool = False, text: str | None = None,
        progress: bool = True, stream=None, seed: int = 0) -> BenchResult:
    """Time `pattern` (a Pattern, or pattern text) on a [batch, n, heads, dim] problem against
    dense attention. Returns a BenchResult; `format_table` prints it."""
    import spattn

    stream = sys.stderr if stream is None else stream
    nq = int(n)
    nk = nq if nk is None else int(nk)
    for name, v in (("n", nq), ("nk", nk), ("heads", heads), ("dim", dim), ("batch", batch), ("repeats", repeats)):
        if int(v) <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {v}")
    if isinstance(pattern, str):
        from .pattern_syntax import parse

        text = pattern if text is None else text
        pattern = parse(pattern, n=nq, nk=nk)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern: expected a spattn pattern or pattern text, got {type(pattern).__name__}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}")
    own_heads = max(1, int(pattern._core().heads()))
    if own_heads > 1 and own_heads != heads:
        raise ValueError(f"heads: the pattern has {own_heads} heads, got heads={heads}")
    pattern._core().check(nq, nk, heads)

    kept = int(pattern._core().kept_pairs(nq, nk, heads))
    density = kept / (heads * nq * nk)
    fwd_flops = 4.0 * dim * batch * kept
    result = BenchResult(text or repr(pattern), batch, nq, nk, heads, dim, dtype, kept, density)

    try:
        import torch
    except ImportError:
        torch = None
    if torch is None and dtype == "bfloat16":
        raise TypeError("dtype: bfloat16 needs torch (numpy has no bfloat16)")

    # ---- inputs: torch tensors where torch is installed (one set for every row), else numpy
    rng = np.random.default_rng(seed)
    shapes = [(batch, nq, heads, dim), (batch, nk, heads, dim), (batch, nk, heads, dim), (batch, nq, heads, dim)]
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    if torch is not None:
        tdt = getattr(torch, dtype)
        q, k, v, dout = (torch.from_numpy(a).to(tdt) for a in arrays)
    else:
        q, k, v, dout = (a.astype(dtype) for a in arrays)

    passes = ["fwd", "fwd+bwd"] if backward else ["fwd"]
    run_dense = dense and max(nq, nk) <= dense_max_n
    if dense and not run_dense:
        result.notes.append(f"dense rows skipped: N={max(nq, nk)} > --dense-max-n {dense_max_n}")
    elif not dense:
        result.notes.append("dense rows skipped (--no-dense)")
    run_sdpa = run_dense and torch_sdpa and torch is not None
    if run_dense and torch_sdpa and torch is None:
        result.notes.append("torch SDPA: torch is not installed")

    def spattn_fn(pat, p):
        if p == "fwd":
            return lambda: spattn.attention(q, k, v, pattern=pat)

        def both():
            out, lse = spattn.attention(q, k, v, pattern=pat, return_lse=True)
            spattn.attention_backward(dout, q, k, v, out, lse, pattern=pat)

        return both

    def sdpa_fn(p):
        import torch.nn.functional as F

        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, N, D] views
        if p == "fwd":
            def fwd():
                with torch.no_grad():
                    F.scaled_dot_product_attention(qt, kt, vt)
            return fwd
        qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
        do = dout.transpose(1, 2)

        def both():
            for x in (qg, kg, vg):
                x.grad = None
            F.scaled_dot_product_attention(qg, kg, vg).backward(do)

        return both

    steps = []  # (impl, pass, label, factory)
    for p in passes:
        steps.append(("spattn", p, f"spattn {p}", lambda p=p: spattn_fn(pattern, p)))
    if run_dense:
        for p in passes:
            steps.append(("spattn dense", p, f"spattn dense {p}", lambda p=p: spattn_fn(Dense(), p)))
    if run_sdpa:
        for p in passes:
            steps.append(("torch SDPA dense", p, f"torch SDPA dense {p}", lambda p=p: sdpa_fn(p)))
    flex_state = {}
    if flex:
        if torch is None:
            result.rows.extend(Row("flex attention", p, None, "unavailable: torch is not installed") for p in passes)
        else:
            for p in passes:
                steps.append(("flex attention", p, f"flex attention {p}",
                              lambda p=p: _flex_fn(torch, pattern, q, k, v, dout, nq, nk, heads, own_heads, p, flex_state)))

    bar = _Progress(len(steps), progress, stream)
    for impl, p, label, factory in steps:
        bar.start(label)
        if impl == "flex attention" and "error" in flex_state:
            result.rows.append(Row(impl, p, None, "unavailable: " + flex_state["error"]))
            bar.done("unavailable")
            continue
        try:
            fn = factory()
            t0 = time.perf_counter()
            ms = _time(fn, repeats)
            total = time.perf_counter() - t0
            note = ""
            if impl == "flex attention" and p == passes[0]:
                note = f"first call (compile) {total - ms * repeats / 1e3:.1f} s"
            result.rows.append(Row(impl, p, ms, note))
            bar.done(f"{ms:.2f} ms")
        except Exception as e:  # a baseline that cannot run is reported, never fatal
            if impl == "spattn":
                raise
            reason = _first_line(e)
            if impl == "flex attention":
                flex_state["error"] = reason
            result.rows.append(Row(impl, p, None, "unavailable: " + reason))
            bar.done("unavailable")

    # ---- derived columns
    for r in result.rows:
        if r.ms:
            flops = fwd_flops * (_BWD_FACTOR if r.pass_ == "fwd+bwd" else 1.0)
            r.gflops = flops / (r.ms * 1e-3) / 1e9
    for p in passes:
        base = next((r.ms for r in result.rows if r.pass_ == p and r.ms and r.impl == "spattn dense"), None)
        if base is None:
            base = next((r.ms for r in result.rows if r.pass_ == p and r.ms and "dense" in r.impl), None)
        for r in result.rows:
            if r.pass_ == p and r.ms and base:
                r.vs_dense = base / r.ms
    order = {"spattn": 0, "spattn dense": 1, "torch SDPA dense": 2, "flex attention": 3}
    result.rows.sort(key=lambda r: (passes.index(r.pass_), order.get(r.impl, 9)))
    return result


def _flex_fn(torch, pattern, q, k, v, dout, nq, nk, heads, own_heads, p, state):
    """FlexAttention with a BlockMask whose mask_mod looks the pattern's mask up (the mask is the
    pattern's definition, docs/patterns.md). Built once, shared by the fwd and fwd+bwd rows."""
    if "fn" not in state:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if own_heads * nq * nk > _FLEX_MASK_LIMIT:
            raise RuntimeError(f"the {own_heads}x{nq}x{nk} lookup mask is too large (limit {_FLEX_MASK_LIMIT:,})")
        m = torch.from_numpy(pattern.mask(nq, nk, heads=own_heads))
        if own_heads == 1:
            m2 = m[0]

            def mask_mod(b, h, q_idx, kv_idx):
                return m2[q_idx, kv_idx]
        else:
            def mask_mod(b, h, q_idx, kv_idx):
                return m[h, q_idx, kv_idx]

        block_mask = create_block_mask(mask_mod, B=None, H=None if own_heads == 1 else heads,
                                       Q_LEN=nq, KV_LEN=nk, device="cpu")
        state["fn"] = torch.compile(flex_attention, dynamic=False)
        state["mask"] = block_mask
    fa, bm = state["fn"], state["mask"]
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    if p == "fwd":
        def fwd():
            with torch.no_grad():
                fa(qt, kt, vt, block_mask=bm)
        return fwd
    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (qt, kt, vt))
    do = dout.transpose(1, 2).contiguous()

    def both():
        for x in (qg, kg, vg):
            x.grad = None
        fa(qg, kg, vg, block_mask=bm).backward(do)

    return both


def format_table(result: BenchResult) -> str:
    """The result as a plain-text table with a header line and notes."""
    import spattn

    threads = spattn.info().get("cpu_threads", "?")
    size = f"N={result.nq}" if result.nq == result.nk else f"Nq={result.nq} Nk={result.nk}"
    lines = [
        f"spattn bench: {result.label}",
        f"  B={result.batch} {size} H={result.heads} D={result.dim} {result.dtype}, threads={threads}; "
        f"kept pairs {result.kept_pairs:,} (density {result.density:.2%})",
        "",
    ]
    header = f"{'implementation':<18} {'pass':<8} {'ms':>10} {'GFLOP/s':>9} {'vs dense':>9}"
    lines += [header, "-" * len(header)]
    for r in result.rows:
        if r.ms is None:
            lines.append(f"{r.impl:<18} {r.pass_:<8} {'-':>10} {'-':>9} {'-':>9}  {r.note}")
            continue
        g = f"{r.gflops:9.1f}" if r.gflops is not None else f"{'-':>9}"
        vd = f"{r.vs_dense:8.2f}x" if r.vs_dense is not None else f"{'-':>9}"
        lines.append(f"{r.impl:<18} {r.pass_:<8} {r.ms:10.2f} {g} {vd}" + (f"  {r.note}" if r.note else ""))
    lines.append("")
    lines.append("GFLOP/s are useful FLOPs: forward 4*D*H*kept pairs (per batch element), fwd+bwd 3.5x that; "
                 "'vs dense' = dense ms / ms (above 1: faster than dense).")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
