"""Forward pass (docs/api.md): spattn.attention against the float64 reference."""

import functools
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import spattn
from _helpers import (
    Case,
    as64,
    assert_close,
    assert_lse,
    naive_forward,
    rand_qkv,
    ref_forward,
    round_to,
    run_isolated,
    to_framework,
    window_mask,
)

# (B, Nq, Nk, Hq, Hkv, D, Dv, pattern)
FWD_CASES = [
    (1, 1, 1, 1, 1, 64, 64, Case("Dense")),
    (2, 97, 97, 4, 4, 64, 64, Case("Causal")),
    (1, 97, 255, 4, 2, 64, 64, Case("Causal")),  # Nq < Nk, GQA
    (1, 255, 97, 4, 1, 32, 48, Case("Causal")),  # Nq > Nk: empty rows; MQA; Dv != D
    (1, 1025, 1025, 2, 1, 64, 64, Case("SlidingWindow", 255, 0)),
    (1, 1, 1025, 8, 2, 128, 128, Case("Causal")),  # one query over a long cache
    (1, 255, 255, 2, 2, 256, 256, Case("Dense")),  # largest head dim
    (1, 97, 97, 2, 2, 256, 200, Case("SlidingWindow", 16, 16)),
    (1, 97, 97, 3, 3, 3, 5, Case("SlidingWindow", 2000, 2000)),  # window wider than sequence, odd D
    (1, 97, 255, 2, 1, 40, 24, Case("SlidingWindow", -3, 5)),  # future-only window: last rows empty
    (1, 97, 97, 2, 2, 64, 64, Case("SlidingWindow", None, 7)),
    (1, 255, 97, 2, 2, 64, 64, Case("SlidingWindow", 1000, 0)),  # wider than Nk, Nq > Nk
    (2, 97, 130, 4, 2, 64, 64, Case("BlockSparse", 16, 32, seed=1)),
    (1, 255, 97, 4, 2, 64, 32, Case("BlockSparse", 7, 5, per_head=True, seed=2, empty_row=True)),
    (1, 1025, 1025, 2, 2, 64, 64, Case("BlockSparse", 64, 64, per_head=True, density=0.3, seed=3)),
    (1, 97, 97, 2, 2, 64, 64, Case("BlockSparse", 16, 16, block_size=16, seed=4)),
]


def case_id(c):
    b, nq, nk, hq, hkv, d, dv, pat = c
    return f"B{b}-{nq}x{nk}-H{hq}/{hkv}-D{d}/{dv}-{pat!r}".replace(" ", "")


COMBOS = [("numpy", "float32"), ("torch", "float32"), ("numpy", "float16"), ("torch", "float16"),
          ("torch", "bfloat16")]


@functools.lru_cache(maxsize=None)
def _problem(ci, dtype):
    """Inputs (float64, rounded to dtype), pattern, mask, reference, naive result."""
    b, nq, nk, hq, hkv, d, dv, case = FWD_CASES[ci]
    q, k, v, _ = rand_qkv(b, nq, nk, hq, hkv, d, dv, seed=ci)
    q, k, v = (round_to(x, dtype) for x in (q, k, v))
    pattern, mask = case.build(nq, nk, hq)
    out, lse, _ = ref_forward(q, k, v, mask)
    naive = None if dtype == "float32" else naive_forward(q, k, v, mask, dtype)
    return q, k, v, pattern, mask, out, lse, naive


@pytest.mark.parametrize("framework,dtype", COMBOS, ids=[f"{a}-{b}" for a, b in COMBOS])
@pytest.mark.parametrize("ci", range(len(FWD_CASES)), ids=[case_id(c) for c in FWD_CASES])
def test_forward_matches_reference(ci, framework, dtype):
    q64, k64, v64, pattern, mask, ref_out, ref_lse, naive = _problem(ci, dtype)
    q, k, v = (to_framework(x, framework, dtype) for x in (q64, k64, v64))
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    kind = np.ndarray if framework == "numpy" else torch.Tensor
    assert isinstance(out, kind) and isinstance(lse, kind), (type(out), type(lse))
    assert str(out.dtype).split(".")[-1] == dtype
    assert str(lse.dtype).split(".")[-1] == "float32"
    assert tuple(out.shape) == ref_out.shape
    assert tuple(lse.shape) == ref_lse.shape
    assert_close("out", out, ref_out, dtype, naive)
    assert_lse(lse, ref_lse)
    # rows that see no key: exactly 0
    empty = ~np.broadcast_to(mask, (q64.shape[2],) + mask.shape[1:]).any(-1)  # [Hq, Nq]
    if empty.any():
        o = as64(out).transpose(0, 2, 1, 3)  # [B, Hq, Nq, Dv]
        assert (o[:, empty] == 0).all(), "a row that sees no key must give out = 0"
    # without return_lse: just the output, the same values
    out2 = spattn.attention(q, k, v, pattern=pattern)
    assert isinstance(out2, kind)
    assert np.array_equal(as64(out2), as64(out))


@pytest.mark.parametrize("ci", [0, 2, 3, 9, 13])
def test_reference_attention_matches_helper(ci):
    q, k, v, pattern, mask, ref_out, ref_lse, _ = _problem(ci, "float32")
    r = spattn.reference_attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                                   pattern=pattern)
    assert isinstance(r, np.ndarray) and r.dtype == np.float64
    np.testing.assert_allclose(r, ref_out, rtol=1e-10, atol=1e-12)
    r, lse = spattn.reference_attention(q.astype(np.float32), k.astype(np.float32),
                                        v.astype(np.float32), pattern=pattern, return_lse=True)
    assert lse.shape == ref_lse.shape
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(np.asarray(lse)[fin], ref_lse[fin], rtol=1e-10, atol=1e-10)


def direct_attention(q, k, v, allowed, scale):
    """The most literal reading of attention, with loops: q [Nq, Hq, D] etc."""
    nq, hq, d = q.shape
    nk, hkv, dv = v.shape
    out = np.zeros((nq, hq, dv))
    lse = np.full((hq, nq), -np.inf)
    for h in range(hq):
        g = h // (hq // hkv)
        for i in range(nq):
            js = [j for j in range(nk) if allowed(i, j)]
            if not js:
                continue
            s = np.array([scale * sum(q[i, h, t] * k[j, g, t] for t in range(d)) for j in js])
            w = np.exp(s - s.max())
            lse[h, i] = np.log(w.sum()) + s.max()
            w /= w.sum()
            for n, j in enumerate(js):
                out[i, h] += w[n] * v[j, g]
    return out, lse


@pytest.mark.parametrize(
    "nq,nk,hq,hkv,pattern,allowed",
    [
        (3, 3, 1, 1, spattn.Dense(), lambda i, j: True),
        (4, 2, 2, 1, spattn.Causal(), lambda i, j: i + (2 - 4) - j >= 0),  # rows 0, 1 empty
        (3, 6, 4, 2, spattn.SlidingWindow(1, 0), lambda i, j: 0 <= i + 3 - j <= 1),
        (5, 4, 2, 2, spattn.SlidingWindow(-1, 2), lambda i, j: -2 <= i - 1 - j <= -1),
        (5, 7, 2, 1, spattn.BlockSparse(np.array([[[1, 0, 1], [0, 0, 0], [0, 1, 0]]], dtype=bool), (2, 3)),
         lambda i, j: [[1, 0, 1], [0, 0, 0], [0, 1, 0]][i // 2][j // 3] == 1),
    ],
)
def test_reference_attention_against_direct_computation(nq, nk, hq, hkv, pattern, allowed):
    rng = np.random.default_rng(nq * 10 + nk)
    q = rng.standard_normal((1, nq, hq, 3)).astype(np.float32)
    k = rng.standard_normal((1, nk, hkv, 3)).astype(np.float32)
    v = rng.standard_normal((1, nk, hkv, 2)).astype(np.float32)
    for scale in (None, 0.7):
        sc = 1 / np.sqrt(3) if scale is None else scale
        want, want_lse = direct_attention(q[0].astype(np.float64), k[0].astype(np.float64),
                                          v[0].astype(np.float64), allowed, sc)
        out, lse = spattn.reference_attention(q, k, v, pattern=pattern, scale=scale, return_lse=True)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        np.testing.assert_allclose(out[0], want, rtol=1e-12, atol=1e-12)
        assert np.array_equal(np.isneginf(lse[0]), np.isneginf(want_lse))
        fin = np.isfinite(want_lse)
        np.testing.assert_allclose(np.asarray(lse)[0][fin], want_lse[fin], rtol=1e-12)
        # and the library itself on the same tiny problem
        o2, l2 = spattn.attention(q, k, v, pattern=pattern, scale=scale, return_lse=True)
        np.testing.assert_allclose(o2[0], want, rtol=1e-5, atol=1e-6)
        assert np.array_equal(np.isneginf(l2[0]), np.isneginf(want_lse))


def test_reference_attention_torch_input_gives_float64_numpy():
    q, k, v, _ = rand_qkv(1, 5, 6, 2, 1, 8, 8)
    t = [torch.from_numpy(x).float() for x in (q, k, v)]
    r = spattn.reference_attention(*t, pattern=spattn.Causal())
    assert isinstance(r, np.ndarray) and r.dtype == np.float64
    want, _, _ = ref_forward(*(as64(x) for x in t), window_mask(5, 6, None, 0)[None])
    np.testing.assert_allclose(r, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# empty rows, scale, magnitudes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_empty_rows(dtype):
    # Causal with Nq > Nk: the first Nq - Nk queries see no key; an all-empty BlockSparse too.
    q64, k64, v64, _ = rand_qkv(2, 40, 9, 2, 1, 16, 16, seed=5)
    q, k, v = (to_framework(x, "torch", dtype) for x in (q64, k64, v64))
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
    o, l = as64(out), as64(lse)
    assert (o[:, :31] == 0).all() and np.isneginf(l[:, :, :31]).all()
    assert np.isfinite(o).all() and not np.isnan(l).any() and np.isfinite(l[:, :, 31:]).all()
    nothing = spattn.BlockSparse(np.zeros((1, 3, 1), dtype=bool), block_size=(16, 16))
    out, lse = spattn.attention(q, k, v, pattern=nothing, return_lse=True)
    assert (as64(out) == 0).all() and np.isneginf(as64(lse)).all()


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0, 2.5])
def test_explicit_scale(scale):
    q, k, v, _ = rand_qkv(1, 97, 97, 2, 2, 32, 32, seed=6)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    mask = window_mask(97, 97, 20, 0)[None]
    ref, lse, _ = ref_forward(q, k, v, mask, scale=scale)
    out, l = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(20, 0), scale=scale, return_lse=True)
    assert_close("out", out, ref, "float32")
    assert_lse(l, lse)


def test_default_scale_is_inverse_sqrt_d():
    q, k, v, _ = rand_qkv(1, 33, 33, 1, 1, 48, 16, seed=7)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    a = spattn.attention(q, k, v)
    b = spattn.attention(q, k, v, scale=1 / np.sqrt(48))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pattern", [Case("Dense"), Case("Causal"), Case("SlidingWindow", 40, 3)], ids=repr)
def test_large_scores_are_stable(pattern):
    # scores up to ~100: an online softmax that does not rescale correctly overflows or drifts.
    q, k, v, _ = rand_qkv(1, 255, 255, 2, 2, 64, 64, seed=8, scale=3.5)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    p, mask = pattern.build(255, 255, 2)
    ref, lse, _ = ref_forward(q, k, v, mask)
    out, l = spattn.attention(q, k, v, pattern=p, return_lse=True)
    assert_close("out", out, ref, "float32")
    assert_lse(l, lse)


# ------------------------------------------------------------------------------------------
# strides, views, out=, result kinds
# ------------------------------------------------------------------------------------------


def _bhnd(framework, dtype, b, h, n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, n, d))
    return to_framework(x, framework, dtype)


@pytest.mark.parametrize("framework,dtype", COMBOS, ids=[f"{a}-{b}" for a, b in COMBOS])
def test_transposed_bhnd_views(framework, dtype):
    b, nq, nk, hq, hkv, d, dv = 2, 97, 130, 4, 2, 64, 40
    qb = _bhnd(framework, dtype, b, hq, nq, d, 1)
    kb = _bhnd(framework, dtype, b, hkv, nk, d, 2)
    vb = _bhnd(framework, dtype, b, hkv, nk, dv, 3)
    q, k, v = (x.transpose(0, 2, 1, 3) if framework == "numpy" else x.transpose(1, 2) for x in (qb, kb, vb))
    if framework == "torch":
        assert not q.is_contiguous()
    else:
        assert not q.flags.c_contiguous
    pattern, mask = Case("SlidingWindow", 31, 2).build(nq, nk, hq)
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    q64, k64, v64 = as64(q), as64(k), as64(v)
    ref, ref_lse, _ = ref_forward(q64, k64, v64, mask)
    naive = None if dtype == "float32" else naive_forward(q64, k64, v64, mask, dtype)
    assert_close("out", out, ref, dtype, naive)
    assert_lse(lse, ref_lse)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_sliced_views_with_byte_offsets(framework):
    rng = np.random.default_rng(11)
    big = to_framework(rng.standard_normal((3, 120, 5, 80)), framework, "float32")
    # views that start inside a larger buffer, with all strides non-compact
    q = big[1:3, 5:102, 1:5, 3:67]  # [2, 97, 4, 64]
    k = big[0:2, 7:120:1, 0:2, 10:74]  # [2, 113, 2, 64]
    v = big[1:3, 2:115, 3:5, 16:56]  # [2, 113, 2, 40]
    pattern, mask = Case("Causal").build(97, 113, 4)
    ref, lse, _ = ref_forward(as64(q), as64(k), as64(v), mask)
    out, l = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    assert_close("out", out, ref, "float32")
    assert_lse(l, lse)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_non_unit_last_stride(framework):
    rng = np.random.default_rng(12)
    big = to_framework(rng.standard_normal((1, 50, 2, 64)), framework, "float32")
    q, k, v = big[:, :, :, ::2], big[:, :, :, 1::2], big[:, :, :, ::4]
    pattern, mask = Case("SlidingWindow", 10, 10).build(50, 50, 2)
    ref, _, _ = ref_forward(as64(q), as64(k), as64(v), mask)
    assert_close("out", spattn.attention(q, k, v, pattern=pattern), ref, "float32")


def test_numpy_negative_strides():
    # numpy exports negative strides through DLPack; docs/api.md: any strides. Run isolated: a wrong
    # pointer computation would crash the interpreter.
    rc, out, err = run_isolated("""
        import numpy as np, spattn
        from _helpers import rand_qkv, ref_forward, window_mask, assert_close
        q, k, v, _ = rand_qkv(1, 37, 41, 2, 1, 16, 8, seed=13)
        q, k, v = (np.ascontiguousarray(x, dtype=np.float32)[:, ::-1] for x in (q, k, v))
        ref, _, _ = ref_forward(q, k, v, window_mask(37, 41, None, 0)[None])
        assert_close("out", spattn.attention(q, k, v, pattern=spattn.Causal()), ref, "float32")
        print("OK")
    """)
    assert rc == 0 and "OK" in out, f"rc={rc}\n{out}\n{err[-3000:]}"


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_out_parameter(framework):
    q64, k64, v64, _ = rand_qkv(1, 97, 97, 2, 1, 32, 24, seed=14)
    q, k, v = (to_framework(x, framework, "float32") for x in (q64, k64, v64))
    pattern, mask = Case("Causal").build(97, 97, 2)
    ref, ref_lse, _ = ref_forward(as64(q), as64(k), as64(v), mask)
    zeros = (lambda s: np.zeros(s, np.float32)) if framework == "numpy" else (lambda s: torch.zeros(s))
    # a compact out
    out = zeros((1, 97, 2, 24))
    res = spattn.attention(q, k, v, pattern=pattern, out=out)
    assert res is out
    assert_close("out", out, ref, "float32")
    # out as a [B, H, N, Dv] buffer seen through a transposed view
    buf = zeros((1, 2, 97, 24))
    view = buf.transpose(0, 2, 1, 3) if framework == "numpy" else buf.transpose(1, 2)
    res, lse = spattn.attention(q, k, v, pattern=pattern, out=view, return_lse=True)
    assert res is view
    assert_close("out (view)", buf.transpose(0, 2, 1, 3) if framework == "numpy" else buf.transpose(1, 2),
                 ref, "float32")
    assert_lse(lse, ref_lse)
    # a slice of a larger buffer: nothing outside the slice is touched
    big = zeros((1, 99, 2, 30)) + 7
    view = big[:, 1:98, :, 3:27]
    spattn.attention(q, k, v, pattern=pattern, out=view)
    assert_close("out (slice)", view, ref, "float32")
    b = as64(big)
    b[:, 1:98, :, 3:27] = 7
    assert (b == 7).all(), "attention wrote outside out="


def test_read_only_inputs():
    q, k, v, _ = rand_qkv(1, 20, 30, 2, 2, 16, 16, seed=15)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    for x in (q, k, v):
        x.flags.writeable = False
    ref, _, _ = ref_forward(q, k, v, window_mask(20, 30, None, 0)[None])
    assert_close("out", spattn.attention(q, k, v, pattern=spattn.Causal()), ref, "float32")


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_inputs_are_not_modified(framework):
    q64, k64, v64, _ = rand_qkv(1, 33, 33, 2, 2, 16, 16, seed=16)
    q, k, v = (to_framework(x, framework, "float16") for x in (q64, k64, v64))
    before = [as64(x).copy() for x in (q, k, v)]
    spattn.attention(q, k, v, pattern=spattn.Causal())
    for b, x in zip(before, (q, k, v)):
        assert np.array_equal(b, as64(x))


def test_torch_requires_grad_under_no_grad():
    q, k, v, _ = rand_qkv(1, 10, 10, 1, 1, 8, 8, seed=17)
    q, k, v = (torch.from_numpy(x).float().requires_grad_() for x in (q, k, v))
    with torch.no_grad():
        out = spattn.attention(q, k, v)
    assert isinstance(out, torch.Tensor) and not out.requires_grad


def test_batch_elements_are_independent():
    q, k, v, _ = rand_qkv(3, 40, 50, 2, 1, 16, 16, seed=18)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    whole = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(7, 7))
    for bi in range(3):
        one = spattn.attention(q[bi:bi + 1], k[bi:bi + 1], v[bi:bi + 1], pattern=spattn.SlidingWindow(7, 7))
        np.testing.assert_allclose(whole[bi:bi + 1], one, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------


def test_info():
    info = spattn.info()
    assert isinstance(info, dict)
    assert "version" in info and "backends" in info
    assert re.match(r"^\d+\.\d+\.\d+", str(info["version"])), info["version"]
    assert "cpu" in str(info["backends"]).lower()
    if hasattr(spattn, "__version__"):
        assert str(info["version"]) == spattn.__version__


def _spattn_script():
    name = "spattn.exe" if os.name == "nt" else "spattn"
    cand = os.path.join(os.path.dirname(sys.executable), name)
    return cand if os.path.exists(cand) else shutil.which("spattn")


@pytest.mark.parametrize("how", ["module", "script"])
def test_cli_info(how):
    if how == "module":
        cmd = [sys.executable, "-m", "spattn", "info"]
    else:
        script = _spattn_script()
        assert script, "the `spattn` command is not installed with the package"
        cmd = [script, "info"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert str(spattn.info()["version"]) in p.stdout
    assert "cpu" in p.stdout.lower()


# ------------------------------------------------------------------------------------------
# SIMD levels and float16 conversion (each level this CPU can run, forced with SPATTN_SIMD)
# ------------------------------------------------------------------------------------------

_SIMD_CAPS = ["portable", "avx2", "avx512"]

# Runs in a fresh interpreter under one SPATTN_SIMD cap; prints the level, then checks:
# - float16 in and out exactly: each query sees only itself (P = 1), so out must equal v bit
#   for bit for every finite float16 (subnormals and 65504 included; -0 compares equal to 0);
# - float16 rounding: two keys of equal score, out = float16(float32(v0 + v1) / 2), rounded to
#   nearest even like numpy, over random bit patterns (ties and subnormal results included);
# - a float16 causal forward within the suite's tolerance of the float64 reference, and float32
#   with its fixed tolerance, on this level's kernels.
_SIMD_CHECK = r"""
import numpy as np, spattn
from _helpers import Case, assert_close, naive_forward, rand_qkv, ref_forward, round_to
print(spattn.info()["cpu_simd"])
bits = np.arange(65536, dtype=np.uint16).view(np.float16)
fin = bits[np.isfinite(bits)]
n = -(-fin.size // 64)
v = np.zeros(n * 64, np.float16)
v[: fin.size] = fin
v = v.reshape(1, n, 1, 64)
z = np.zeros_like(v)
out = spattn.attention(z, z, v, pattern=spattn.SlidingWindow(0, 0))
assert out.dtype == np.float16
assert np.array_equal(out.astype(np.float32), v.astype(np.float32)), "float16 round trip not exact"

rng = np.random.default_rng(7)
v = rng.integers(0, 65536, size=(1, 4096, 1, 64), dtype=np.uint16).view(np.float16)
v = np.where(np.isfinite(v), v, np.float16(0)).astype(np.float16)
v[:, :, :, :8] = v[:, :, :, :8] / np.float16(4096)  # more subnormal results
z = np.zeros_like(v)
out = spattn.attention(z, z, v, pattern=spattn.SlidingWindow(1, 0))
v32 = v.astype(np.float32)
want = np.empty_like(v)
want[:, 0] = v[:, 0]
want[:, 1:] = ((v32[:, :-1] + v32[:, 1:]) * np.float32(0.5)).astype(np.float16)
bad = out.view(np.uint16) != want.view(np.uint16)
bad &= ~((out == 0) & (want == 0))  # -0 and +0
assert not bad.any(), f"float16 rounding differs at {np.argwhere(bad)[:5].tolist()}"

for dtype in ("float16", "float32"):
    q, k, v, _ = rand_qkv(1, 200, 200, 2, 1, 64, 64, seed=3)
    q, k, v = (round_to(x, dtype) for x in (q, k, v))
    pattern, mask = Case("Causal").build(200, 200, 2)
    ref, _, _ = ref_forward(q, k, v, mask)
    naive = None if dtype == "float32" else naive_forward(q, k, v, mask, dtype)
    xs = [x.astype(dtype) for x in (q, k, v)]
    assert_close("out", spattn.attention(*xs, pattern=pattern), ref, dtype, naive)
print("ok")
"""


@functools.lru_cache(maxsize=None)
def _level_under(cap):
    rc, out, err = run_isolated(f"import os; os.environ['SPATTN_SIMD'] = {cap!r}\n"
                                "import spattn; print(spattn.info()['cpu_simd'])")
    assert rc == 0, err
    return out.strip()


@pytest.mark.parametrize("cap", _SIMD_CAPS)
def test_simd_level_float16_conversion_and_forward(cap):
    level = _level_under(cap)
    if not level.startswith(cap):
        pytest.skip(f"this CPU cannot run the {cap} kernels (SPATTN_SIMD={cap} gives {level})")
    rc, out, err = run_isolated(f"import os; os.environ['SPATTN_SIMD'] = {cap!r}\n" + _SIMD_CHECK,
                                timeout=300)
    assert rc == 0, err[-3000:]
    lines = out.split()
    assert lines[0] == level and lines[-1] == "ok", out
