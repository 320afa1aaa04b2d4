"""A direct float64 implementation of SPEC §1-2, for validation: materialises the scores and
the pattern's dense mask, so use it on small problems only."""
from __future__ import annotations

import numpy as np

from .patterns import Dense, Pattern

__all__ = ["reference_attention", "to_float64"]


def to_float64(x, name: str = "x") -> np.ndarray:
    """Any array (numpy, torch incl. bfloat16, anything with __dlpack__ or array-like) as a
    float64 numpy array on the CPU."""
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().to("cpu").double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        if hasattr(x, "__dlpack__"):
            return np.from_dlpack(x).astype(np.float64)
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from None


def reference_attention(q, k, v, pattern=None, scale=None, return_lse: bool = False):
    """out [B, Nq, Hq, Dv] (and lse [B, Hq, Nq]) in float64 numpy. Rows that see no key give
    out = 0 and lse = -inf."""
    pattern = Dense() if pattern is None else pattern
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern: expected a spattn pattern, got {type(pattern).__name__}")
    q, k, v = to_float64(q, "q"), to_float64(k, "k"), to_float64(v, "v")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v: expected 4 dimensions, got shapes {q.shape}, {k.shape}, {v.shape}")
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"q, k: Hq={hq} must be a multiple of Hkv={hkv}")
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    group = hq // hkv
    kh = np.repeat(k, group, axis=2)  # [B, Nk, Hq, D]
    vh = np.repeat(v, group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, kh) * scale  # [B, Hq, Nq, Nk]
    keep = pattern.mask(nq, nk, heads=hq)[None]  # [1, Hq, Nq, Nk]
    s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m_safe)
    denom = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(denom > 0, p / denom, 0.0)
        lse = np.where(denom[..., 0] > 0, m_safe[..., 0] + np.log(denom[..., 0]), -np.inf)
    out = np.einsum("bhij,bjhd->bihd", p, vh)
    return (out, lse) if return_lse else out
