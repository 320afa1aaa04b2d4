"""The documented behaviour for NaN and Inf inputs (README, "NaN and Inf"), as a checker.

A score is s = scale * q . k in float64; kept scores follow the pattern. Per query row:
  - a kept score that is NaN or +Inf: the row's out is all NaN and its lse NaN;
  - every kept score -Inf (or no kept key): out 0 and lse -Inf, like a row that sees no key;
  - otherwise -Inf scores weigh 0, and out and lse are the float64 reference's.
Only q and k are poisoned here (a NaN or Inf in v reaches exactly the rows whose weights for
that key are not zero, plus possibly the rows of the same visited block: 0 * NaN is NaN).
"""
from __future__ import annotations

import math
import random

import numpy as np

import spattn

PATTERNS = [lambda: spattn.Dense(), lambda: spattn.Causal(), lambda: spattn.SlidingWindow(5, 2),
            lambda: spattn.Sink(2) | spattn.SlidingWindow(3, 0), lambda: spattn.Dilated(4, 1, 2),
            lambda: spattn.Strided(3), lambda: spattn.LogSparse(1)]


def expected(q, k, v, mask, scale):
    """(out, lse) float64 under the rule above; q, k, v float64 [B, N, H, D]."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    ke, ve = np.repeat(k, hq // hkv, axis=2), np.repeat(v, hq // hkv, axis=2)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.einsum("bihd,bjhd->bhij", q, ke) * scale
    m = np.broadcast_to(mask[None], s.shape)
    bad = (np.isnan(s) | (s == np.inf)) & m
    fin = m & np.isfinite(s)
    out = np.zeros((b, nq, hq, v.shape[3]))
    lse = np.full((b, hq, nq), -np.inf)
    for bb in range(b):
        for h in range(hq):
            for i in range(nq):
                if bad[bb, h, i].any():
                    out[bb, i, h] = np.nan
                    lse[bb, h, i] = np.nan
                    continue
                row = np.where(fin[bb, h, i], s[bb, h, i], -np.inf)
                if not np.isfinite(row).any():
                    continue
                mx = row.max()
                w = np.where(np.isfinite(row), np.exp(row - mx), 0.0)
                out[bb, i, h] = w @ ve[bb, :, h] / w.sum()
                lse[bb, h, i] = math.log(w.sum()) + mx
    return out, lse


def check_nonfinite_rule(r: random.Random):
    b, nq, nk, hkv = r.randint(1, 2), r.randint(1, 40), r.randint(1, 40), r.randint(1, 2)
    hq, d = hkv * r.randint(1, 2), r.choice([1, 4, 16])
    g = np.random.default_rng(r.randrange(2**32))
    q = g.standard_normal((b, nq, hq, d)).astype(np.float32)
    k = g.standard_normal((b, nk, hkv, d)).astype(np.float32)
    v = g.standard_normal((b, nk, hkv, d)).astype(np.float32)
    for _ in range(r.randint(1, 3)):
        x = r.choice([q, k])
        idx = tuple(r.randrange(n) for n in x.shape)
        x[idx] = r.choice([np.nan, np.inf, -np.inf])
    pattern = r.choice(PATTERNS)()
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    mask = pattern.mask(nq, nk, heads=hq)
    want, want_lse = expected(*(x.astype(np.float64) for x in (q, k, v)), mask, 1 / math.sqrt(d))
    out, lse = np.asarray(out, np.float64), np.asarray(lse, np.float64)
    nan_rows = np.isnan(want).all(-1)                       # [b, nq, hq]
    assert np.isnan(out[nan_rows]).all(), "a row with a NaN or +Inf score is not NaN"
    assert np.isnan(lse.transpose(0, 2, 1)[nan_rows]).all(), "lse of a row with a NaN or +Inf score is not NaN"
    ok = ~nan_rows
    assert np.isfinite(out[ok]).all(), "NaN or Inf leaked into a row whose kept scores are finite or -Inf"
    err = np.abs(out[ok] - want[ok])
    assert (err <= 2e-5 * np.maximum(1.0, np.abs(want[ok]))).all(), f"finite rows differ (max {err.max():.3g})"
    lt, wt = lse.transpose(0, 2, 1)[ok], want_lse.transpose(0, 2, 1)[ok]
    assert (np.isneginf(lt) == np.isneginf(wt)).all(), "-inf lse where the rule says otherwise"
    f = np.isfinite(wt)
    assert (np.abs(lt[f] - wt[f]) <= 1e-4 * np.maximum(1.0, np.abs(wt[f]))).all(), "lse differs"
