"""Shared helpers for the spattn test suite.

Everything here is written from docs/patterns.md and docs/api.md, independently of the library: the docs/patterns.md mask
table, a float64 numpy reference for the forward pass and the gradients, a naive
low-precision torch implementation (materialised scores in fp16/bf16) for the
FlashAttention tolerance rule, and a runner for code that might crash the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

try:  # torch is optional for the library; the suite uses it when installed.
    import torch
except ImportError:  # pragma: no cover
    torch = None


HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------------------------
# docs/patterns.md, written out directly.
# --------------------------------------------------------------------------------------------


def window_mask(nq: int, nk: int, left, right) -> np.ndarray:
    """[Nq, Nk] bool: -right <= rel <= left, rel = (i + Nk - Nq) - j, None = unbounded."""
    i = np.arange(nq, dtype=np.int64)[:, None]
    j = np.arange(nk, dtype=np.int64)[None, :]
    rel = i + (nk - nq) - j
    m = np.ones((nq, nk), dtype=bool)
    if right is not None:
        m &= rel >= -right
    if left is not None:
        m &= rel <= left
    return m


def block_mask(layout: np.ndarray, bq: int, bk: int, nq: int, nk: int) -> np.ndarray:
    """[Hl, Nq, Nk] bool: layout[h, i // bq, j // bk], indexed by query row i (no offset)."""
    layout = np.asarray(layout, dtype=bool)
    ia = np.arange(nq) // bq
    jc = np.arange(nk) // bk
    return layout[:, ia][:, :, jc]


class Case:
    """A pattern description: builds the spattn pattern and the documented mask for a problem."""

    def __init__(self, kind, *args, **kw):
        self.kind = kind
        self.args = args
        self.kw = kw

    def __repr__(self):
        a = ", ".join(repr(x) for x in self.args)
        k = ", ".join(f"{n}={v!r}" for n, v in self.kw.items())
        return f"{self.kind}({', '.join(s for s in (a, k) if s)})"

    def build(self, nq: int, nk: int, hq: int):
        """(pattern, mask [1 or Hq, Nq, Nk])."""
        import spattn

        if self.kind == "Dense":
            return spattn.Dense(), np.ones((1, nq, nk), dtype=bool)
        if self.kind == "Causal":
            return spattn.Causal(), window_mask(nq, nk, None, 0)[None]
        if self.kind == "SlidingWindow":
            left, right = self.args
            return spattn.SlidingWindow(left, right), window_mask(nq, nk, left, right)[None]
        if self.kind == "BlockSparse":
            bq, bk = self.args
            per_head = self.kw.get("per_head", False)
            density = self.kw.get("density", 0.4)
            seed = self.kw.get("seed", 0)
            empty_row = self.kw.get("empty_row", False)
            nqb, nkb = -(-nq // bq), -(-nk // bk)
            rng = np.random.default_rng(seed)
            layout = rng.random((hq if per_head else 1, nqb, nkb)) < density
            if empty_row:
                layout[:, nqb // 2, :] = False
            bs = self.kw.get("block_size", (bq, bk))
            return spattn.BlockSparse(layout, block_size=bs), block_mask(layout, bq, bk, nq, nk)
        raise ValueError(self.kind)


def check_ranges(lay, rows, nkb):
    """The range form of a BlockLayout (what the compile returns) against its lazily expanded
    CSR properties: well formed, and expanding each range by hand gives the same blocks."""
    fp, pp = np.asarray(lay.full_rowptr), np.asarray(lay.partial_rowptr)
    fr, pr = np.asarray(lay.full_ranges), np.asarray(lay.partial_ranges)
    assert fp.dtype == np.int64 and pp.dtype == np.int64
    assert fr.dtype == np.int32 and pr.dtype == np.int32
    expanded = {}
    for name, ptr, rng in (("full", fp, fr), ("partial", pp, pr)):
        assert rng.ndim == 2 and rng.shape[1] == 2, rng.shape
        assert ptr.shape == (rows + 1,) and ptr[0] == 0 and ptr[-1] == len(rng)
        assert (np.diff(ptr) >= 0).all()
        if len(rng):
            assert (rng[:, 0] < rng[:, 1]).all(), f"{name}: empty range"
            assert rng[:, 0].min() >= 0 and rng[:, 1].max() <= nkb
        rows_blocks = []
        for r in range(rows):
            seg = rng[ptr[r]:ptr[r + 1]]
            assert (seg[1:, 0] >= seg[:-1, 1]).all(), f"{name} row {r}: ranges overlap or descend"
            blocks = [c for lo, hi in seg.tolist() for c in range(lo, hi)]
            rows_blocks.append(blocks)
        expanded[name] = rows_blocks
    for name, indptr, indices in (("full", lay.full_indptr, lay.full_indices),
                                  ("partial", lay.partial_indptr, lay.partial_indices)):
        indptr, indices = np.asarray(indptr), np.asarray(indices)
        assert indptr.dtype == np.int64 and indices.dtype == np.int32
        for r in range(rows):
            got = indices[indptr[r]:indptr[r + 1]].tolist()
            assert got == expanded[name][r], (name, r, got, expanded[name][r])
            assert lay.row(0 if lay.heads == 1 else r // lay.nqb, r % lay.nqb)[
                0 if name == "full" else 1].tolist() == got


def check_layout(p, nq, nk, bq, bk, heads, want_heads=None):
    """block_layout() against mask(): docs/api.md / the brief's definition."""
    lay = p.block_layout(nq, nk, block=(bq, bk), heads=heads)
    m = p.mask(nq, nk, heads=heads)
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    assert lay.nqb == nqb and lay.nkb == nkb, (lay.nqb, lay.nkb, nqb, nkb)
    assert tuple(int(x) for x in lay.block) == (bq, bk)
    lh = int(lay.heads)
    assert lh in (1, heads)
    if want_heads is not None:
        assert lh == want_heads, f"layout heads {lh}, expected {want_heads}"
    if lh == 1:  # a shared layout must really be head-independent
        for h in range(heads):
            assert np.array_equal(m[h], m[0])
    rows = lh * nqb
    check_ranges(lay, rows, nkb)
    fp, fi = np.asarray(lay.full_indptr), np.asarray(lay.full_indices)
    pp, pi = np.asarray(lay.partial_indptr), np.asarray(lay.partial_indices)
    for ptr, idx in ((fp, fi), (pp, pi)):
        assert ptr.shape == (rows + 1,), ptr.shape
        assert ptr[0] == 0 and ptr[-1] == len(idx)
        assert (np.diff(ptr) >= 0).all()
        if len(idx):
            assert idx.min() >= 0 and idx.max() < nkb
    # per block: how many kept pairs, how many existing pairs
    kept = np.add.reduceat(np.add.reduceat(m.astype(np.int64), np.arange(0, nq, bq), axis=1),
                           np.arange(0, nk, bk), axis=2)  # [heads, nqb, nkb]
    rsz = np.minimum(bq, nq - np.arange(nqb) * bq)
    csz = np.minimum(bk, nk - np.arange(nkb) * bk)
    size = rsz[:, None] * csz[None, :]
    for h in range(lh):
        for a in range(nqb):
            r = h * nqb + a
            full = fi[fp[r]:fp[r + 1]]
            part = pi[pp[r]:pp[r + 1]]
            assert (np.diff(full) > 0).all(), f"row {r}: full blocks not ascending: {full}"
            assert (np.diff(part) > 0).all(), f"row {r}: partial blocks not ascending: {part}"
            assert not set(full.tolist()) & set(part.tolist()), f"row {r}: block both full and partial"
            anyk = kept[h, a] > 0
            allk = kept[h, a] == size[a]
            visited = np.zeros(nkb, dtype=bool)
            visited[full] = True
            visited[part] = True
            assert np.array_equal(visited, anyk), (
                f"row {r}: visits {np.flatnonzero(visited).tolist()}, mask has keys in "
                f"{np.flatnonzero(anyk).tolist()}")
            assert allk[full].all(), f"row {r}: a 'full' block is not full: {full[~allk[full]]}"
            assert not allk[part].any(), f"row {r}: a 'partial' block is in fact full: {part[allk[part]]}"
    dens = float(lay.density)
    assert abs(dens - m.mean()) <= 1e-9, (dens, m.mean())
    return lay


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

DTYPES = ["float32", "float16", "bfloat16"]


def rand_qkv(b, nq, nk, hq, hkv, d, dv, seed=0, scale=1.0):
    """float64 numpy q, k, v, dout with standard normal entries (times `scale`)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, nq, hq, d)) * scale
    k = rng.standard_normal((b, nk, hkv, d)) * scale
    v = rng.standard_normal((b, nk, hkv, dv))
    do = rng.standard_normal((b, nq, hq, dv))
    return q, k, v, do


def to_framework(x64: np.ndarray, framework: str, dtype: str):
    """x64 rounded to `dtype`, as a numpy array or a torch tensor."""
    if framework == "numpy":
        assert dtype != "bfloat16", "numpy has no bfloat16"
        return x64.astype(dtype)
    t = torch.from_numpy(np.ascontiguousarray(x64)).to(getattr(torch, dtype))
    return t


def as64(x) -> np.ndarray:
    """Any numpy array or torch tensor as a float64 numpy array."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x).astype(np.float64)


def fa_atol(dtype: str) -> float:
    """FlashAttention's tests add atol = 2 * max |(r + 0.3 - 0.3) - r| (arithmetic in the low
    precision) over the reference tensor: on any tensor of more than a few elements that is one
    unit in the last place at 0.3 (2**-12 in float16, 2**-9 in bfloat16). We use that bound, so
    that a tensor of one or two elements does not get an accidentally tiny atol."""
    return {"float16": 2.0**-12, "bfloat16": 2.0**-9}[dtype]


def eps(dtype: str) -> float:
    return {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]


# --------------------------------------------------------------------------------------------
# float64 reference: forward and gradients (analytic), numpy only
# --------------------------------------------------------------------------------------------


def _expand_kv(x: np.ndarray, hq: int) -> np.ndarray:
    hkv = x.shape[2]
    assert hq % hkv == 0
    return np.repeat(x, hq // hkv, axis=2)  # query head h reads kv head h // (hq // hkv)


def ref_forward(q, k, v, mask, scale=None):
    """float64 (out [B, Nq, Hq, Dv], lse [B, Hq, Nq], P [B, Hq, Nq, Nk]).

    mask is [1 or Hq, Nq, Nk] bool. Rows that see no key: out = 0, lse = -inf, P = 0.
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, nq, hq, d = q.shape
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    ke, ve = _expand_kv(k, hq), _expand_kv(v, hq)
    s = np.einsum("bihd,bjhd->bhij", q, ke) * scale
    m = np.broadcast_to(np.asarray(mask, dtype=bool)[None], s.shape)
    s = np.where(m, s, -np.inf)
    rowany = m.any(-1)
    mx = np.where(rowany, s.max(-1, initial=-np.inf), 0.0)
    p = np.where(m, np.exp(s - mx[..., None]), 0.0)
    l = p.sum(-1)
    with np.errstate(divide="ignore"):
        lse = np.where(rowany, np.log(np.where(rowany, l, 1.0)) + mx, -np.inf)
    p = p / np.where(rowany, l, 1.0)[..., None]
    out = np.einsum("bhij,bjhd->bihd", p, ve)
    return out, lse, p


def ref_backward(q, k, v, dout, mask, scale=None):
    """float64 (dq, dk, dv) of sum(out * dout), analytic."""
    q, k, v, dout = (np.asarray(x, dtype=np.float64) for x in (q, k, v, dout))
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    dv_ = v.shape[3]
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    out, _, p = ref_forward(q, k, v, mask, scale)
    ke, ve = _expand_kv(k, hq), _expand_kv(v, hq)
    dp = np.einsum("bihd,bjhd->bhij", dout, ve)
    di = np.einsum("bihd,bihd->bhi", dout, out)
    ds = p * (dp - di[..., None])
    dq = scale * np.einsum("bhij,bjhd->bihd", ds, ke)
    dke = scale * np.einsum("bhij,bihd->bjhd", ds, q)
    dve = np.einsum("bhij,bihd->bjhd", p, dout)
    g = hq // hkv
    dk = dke.reshape(b, nk, hkv, g, d).sum(3)
    dvv = dve.reshape(b, nk, hkv, g, dv_).sum(3)
    return dq, dk, dvv


def f32_backward_allowance(q, k, v, dout, mask, scale=None):
    """Per-element error allowances of a float32 (dq, dk, dv): c * eps32 * the same sums with
    every term in absolute value (dS = P * (dP - delta) with |dP| and |delta| bounded by
    P |dO| |V|^T). A dq or dk made of large cancelling terms (a large scale and large keys,
    one key whose dP - delta is exactly 0 in float64) is only as exact as those terms allow in
    float32, however small the result."""
    q, k, v, dout = (np.asarray(x, dtype=np.float64) for x in (q, k, v, dout))
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    _, _, p = ref_forward(q, k, v, mask, scale)
    ke, ve = _expand_kv(np.abs(k), hq), _expand_kv(np.abs(v), hq)
    dpa = np.einsum("bihd,bjhd->bhij", np.abs(dout), ve)
    dsa = p * (dpa + np.einsum("bhij,bhij->bhi", p, dpa)[..., None])
    c = 2 * np.finfo(np.float32).eps
    aq = c * abs(scale) * np.einsum("bhij,bjhd->bihd", dsa, ke)
    ake = c * abs(scale) * np.einsum("bhij,bihd->bjhd", dsa, np.abs(q))
    ak = ake.reshape(b, nk, hkv, hq // hkv, d).sum(3)
    return aq, ak, np.zeros(v.shape)


# --------------------------------------------------------------------------------------------
# naive attention in torch, in any dtype (materialised scores and probabilities in that dtype)
# --------------------------------------------------------------------------------------------


def naive_torch(q, k, v, mask, scale=None):
    """Attention done naively in the dtype of q (torch tensors, BSHD). Differentiable.

    Rows that see no key give 0 (and zero gradients) rather than NaN.
    """
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    g = hq // hkv
    qt = q.transpose(1, 2)
    kt = k.repeat_interleave(g, dim=2).transpose(1, 2)
    vt = v.repeat_interleave(g, dim=2).transpose(1, 2)
    m = torch.from_numpy(np.ascontiguousarray(mask))[None]  # [1, Hm, Nq, Nk]
    rowany = m.any(-1, keepdim=True)
    s = (qt @ kt.transpose(-1, -2)) * scale
    s = s.masked_fill(~m, float("-inf"))
    s = torch.where(rowany, s, torch.zeros((), dtype=s.dtype))
    p = torch.softmax(s, dim=-1)
    p = p * rowany.to(p.dtype)
    return (p @ vt).transpose(1, 2)


def naive_forward(q64, k64, v64, mask, dtype, scale=None) -> np.ndarray:
    """float64 copy of the naive result computed in `dtype` from inputs rounded to `dtype`."""
    t = [torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype)) for x in (q64, k64, v64)]
    with torch.no_grad():
        return as64(naive_torch(*t, mask, scale))


def naive_backward(q64, k64, v64, do64, mask, dtype, scale=None):
    """float64 copies of (dq, dk, dv), computed naively in `dtype` with torch autograd."""
    dt = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(np.ascontiguousarray(x)).to(dt).requires_grad_() for x in (q64, k64, v64))
    do = torch.from_numpy(np.ascontiguousarray(do64)).to(dt)
    out = naive_torch(q, k, v, mask, scale)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return as64(dq), as64(dk), as64(dv)


def round_to(x64: np.ndarray, dtype: str) -> np.ndarray:
    """x64 rounded to dtype and back to float64 (the values the library actually sees)."""
    return as64(torch.from_numpy(np.ascontiguousarray(x64)).to(getattr(torch, dtype)))


# --------------------------------------------------------------------------------------------
# tolerances
# --------------------------------------------------------------------------------------------

F32_RTOL = 2e-5  # float32 vs float64, relative to the largest reference magnitude


def assert_close(name, actual, ref, dtype, naive=None, mult=2.0, allowance=None):
    """The FlashAttention rule.

    float32: max |actual - ref| <= 2e-5 * max(|ref|, 1) (fixed relative tolerance), plus, per
    element, `allowance` where given (f32_backward_allowance: the rounding float32 terms of
    that size carry).
    float16/bfloat16: max |actual - ref| <= mult * max |naive - ref| + atol, where `naive` is the
    same math done naively in that precision and atol the one FlashAttention's own tests add
    (see fa_atol): an ulp at 0.3 in that precision. The atol is what any
    arithmetic on values of order one costs in that precision; without it a gradient that is a
    small difference of order-one terms (dS = P * (dP - rowsum(dO * O)) with O rounded to the
    input dtype, as in every FlashAttention-style backward) could never pass, whatever the kernel.
    """
    actual = as64(actual)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != {ref.shape}"
    assert np.isfinite(actual).all(), f"{name}: non-finite values at {np.argwhere(~np.isfinite(actual))[:5].tolist()}"
    if actual.size == 0:
        return
    err = np.abs(actual - ref)
    mag = float(np.abs(ref).max())
    where = np.unravel_index(int(err.argmax()), err.shape)
    if dtype == "float32":
        tol = F32_RTOL * max(mag, 1.0)
        if allowance is not None:
            excess = err - np.asarray(allowance, dtype=np.float64)
            where = np.unravel_index(int(excess.argmax()), err.shape)
            assert excess.max() <= tol, (
                f"{name}: float32 error {err[where]:.3g} at {where} > {tol:.3g} + allowance "
                f"{float(np.asarray(allowance)[where]):.3g} (actual {actual[where]!r}, ref {ref[where]!r})")
            return
        assert err.max() <= tol, (
            f"{name}: float32 max error {err.max():.3g} at {where} > {tol:.3g} "
            f"(actual {actual[where]!r}, ref {ref[where]!r}, max|ref| {mag:.3g})")
    else:
        assert naive is not None
        base = float(np.abs(np.asarray(naive, dtype=np.float64) - ref).max())
        tol = mult * base + fa_atol(dtype)
        assert err.max() <= tol, (
            f"{name}: {dtype} max error {err.max():.3g} at {where} > {mult} x naive error "
            f"{base:.3g} + slack (tol {tol:.3g}; actual {actual[where]!r}, ref {ref[where]!r})")


def assert_lse(actual, ref):
    """lse is float32: exact -inf where the reference has -inf, else close."""
    a = as64(actual)
    ref = np.asarray(ref)
    assert a.shape == ref.shape, f"lse: shape {a.shape} != {ref.shape}"
    neg = np.isneginf(ref)
    assert np.array_equal(np.isneginf(a), neg), (
        f"lse: -inf at {np.argwhere(np.isneginf(a))[:5].tolist()} but expected at "
        f"{np.argwhere(neg)[:5].tolist()}")
    assert not np.isnan(a).any(), "lse has NaN"
    fin = ~neg
    if fin.any():
        err = np.abs(a[fin] - ref[fin])
        tol = 1e-5 * np.maximum(np.abs(ref[fin]), 1.0) * 10
        assert (err <= tol).all(), f"lse: max error {err.max():.3g}"


def check_float32_attention(pattern, q, k, v, do, mask):
    """spattn.attention on float32 torch tensors, and its autograd gradients for dout `do`,
    against the float64 reference of `mask` ([Hq, Nq, Nk])."""
    import torch

    import spattn

    out_ref, lse_ref, _ = ref_forward(q, k, v, mask)
    dq_ref, dk_ref, dv_ref = ref_backward(q, k, v, do, mask)
    qt, kt, vt = (torch.from_numpy(x).float().requires_grad_() for x in (q, k, v))
    out, lse = spattn.attention(qt, kt, vt, pattern=pattern, return_lse=True)
    assert_close("out", out, out_ref, "float32")
    assert_lse(lse, lse_ref)
    out.backward(torch.from_numpy(do).float())
    assert_close("dq", qt.grad, dq_ref, "float32")
    assert_close("dk", kt.grad, dk_ref, "float32")
    assert_close("dv", vt.grad, dv_ref, "float32")


# --------------------------------------------------------------------------------------------
# CUDA tests (tests/python/test_cuda_*.py): what the build holds, skipping without a GPU
# --------------------------------------------------------------------------------------------


def compiled_cuda_kernels(info_key: str):
    """[(dtype, D)] listed by spattn.info()[info_key] ("float16:64,128;bfloat16:64,128",
    info_key "cuda_kernels" or "cuda_backward_kernels"); bfloat16 D=128 (in every CUDA build)
    if unparseable."""
    import spattn

    out = []
    for part in str(spattn.info().get(info_key, "")).split(";"):
        name, _, dims = part.partition(":")
        if name.strip() in ("float16", "bfloat16") and dims:
            for d in dims.split(","):
                if d.strip().isdigit():
                    out.append((name.strip(), int(d)))
    # SPATTN_TEST_KERNELS="bfloat16:128,float16:64" narrows the list (a short GPU session tests
    # a sample of a full build's kernels; bench/gpu/run.sh sets it).
    only = os.environ.get("SPATTN_TEST_KERNELS", "").strip()
    if only:
        keep = {(n.strip(), int(d)) for n, _, d in (x.partition(":") for x in only.split(",")) if d.strip().isdigit()}
        out = [x for x in out if x in keep]
    return out or [("bfloat16", 128)]


def cuda_torch_or_skip(info_key: str):
    """torch, once a CUDA device and a CUDA build of spattn with kernels under info_key are
    there; skips the test otherwise. Asked inside a test, never at import or collection."""
    import pytest

    import spattn

    torch = pytest.importorskip("torch")
    info = spattn.info()
    if info.get("cuda_compiled") != "yes":
        pytest.skip("spattn was built without CUDA")
    if not info.get(info_key):
        pytest.skip(f"this spattn build has no {info_key} (see spattn.info())")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


def cuda_test_patterns(nq: int, nk: int, hq: int) -> dict:
    """The patterns the CUDA tests compare against the reference, by name."""
    import spattn

    rng = np.random.default_rng(nq * 7 + nk)
    lay64 = rng.random((hq, -(-nq // 64), -(-nk // 64))) < 0.3
    lay128 = rng.random((hq, -(-nq // 128), -(-nk // 128))) < 0.3
    return {
        "causal": spattn.Causal(),
        "window(255,0)": spattn.SlidingWindow(255, 0),
        "window(100,20)": spattn.SlidingWindow(100, 20),
        "dense": spattn.Dense(),
        "blocksparse64 per head": spattn.BlockSparse(lay64, block_size=64),
        "blocksparse128 per head": spattn.BlockSparse(lay128, block_size=128),
        "sink(4)|window(127,0)": spattn.Sink(4) | spattn.SlidingWindow(127, 0),
        "global": spattn.Global([0, 5, min(nk, nq) - 1]),
        "bigbird": spattn.BigBird(64, 3, 1, 2, seed=3),
        "dilated(32,0,3)": spattn.Dilated(32, 0, 3),
    }


# --------------------------------------------------------------------------------------------
# isolated execution
# --------------------------------------------------------------------------------------------


def run_isolated(code: str, timeout: float = 120.0):
    """Run `code` in a fresh interpreter (cwd = this folder) and return (rc, stdout, stderr).

    For calls that might crash the process: a crash shows up as a non-zero rc.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=HERE, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


# --------------------------------------------------------------------------------------------
# unusual views of torch tensors, for the GPU tests' stride handling
# --------------------------------------------------------------------------------------------


def bhsd_view(x):
    """torch's [B, H, N, D] memory layout, passed as a [B, N, H, D] view."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def misaligned_view(x):
    """x's values in rows of D + 1 elements, starting one element in: no 16-byte loads or TMA
    descriptors can take it as it is (the library repacks it)."""
    import torch

    b, n, h, dd = x.shape
    buf = torch.zeros((b, n, h, dd + 1), dtype=x.dtype, device=x.device)
    buf[..., 1:] = x
    return buf[..., 1:]
