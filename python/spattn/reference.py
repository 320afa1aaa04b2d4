"""A direct float64 implementation of docs/api.md, docs/patterns.md and docs/score_modifiers.md, for validation:
materialises the scores and the pattern's dense mask, so use it on small problems only."""
from __future__ import annotations

import numpy as np

from .patterns import Dense, Pattern, TopKBlocks

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


def _offsets(x, name: str, total: int) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().to("cpu").numpy()
    elif hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        x = np.from_dlpack(x)
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind == "f":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected int32 offsets [B+1], got dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name}: expected 1 dimension [B+1] holding at least one offset, got shape {list(a.shape)}")
    a = a.astype(np.int64)
    if a[0] != 0 or (np.diff(a) < 0).any() or a[-1] != total:
        raise ValueError(f"{name}: expected offsets from 0, non-decreasing, ending at {total}; got {a.tolist()}")
    return a


def _no_key_lse(hq: int, t: int, mods: dict) -> np.ndarray:
    """lse [hq, t] of rows that see no key: the sink logit, -inf without sinks."""
    sinks = mods.get("sinks")
    if sinks is None:
        return np.full((hq, t), -np.inf)
    return np.repeat(_per_head(sinks, "sinks", hq)[:, None], t, axis=1)


def _per_head(x, name: str, hq: int) -> np.ndarray:
    a = to_float64(x, name)
    if a.shape != (hq,):
        raise ValueError(f"{name}: expected shape [{hq}] (one per query head), got {list(a.shape)}")
    return a


def _reference_varlen(q, k, v, pattern, scale, return_lse, cu_seqlens_q, cu_seqlens_k, mods):
    """Each sequence of a variable-length batch on its own, through the dense-batch reference."""
    q, k, v = to_float64(q, "q"), to_float64(k, "k"), to_float64(v, "v")
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(
            f"q, k, v: expected 3 dimensions [T, H, D] with cu_seqlens, got shapes {q.shape}, {k.shape}, {v.shape}")
    cq = _offsets(cu_seqlens_q, "cu_seqlens_q", q.shape[0])
    ck = _offsets(cu_seqlens_k, "cu_seqlens_k", k.shape[0])
    if len(cq) != len(ck):
        raise ValueError(f"cu_seqlens_q, cu_seqlens_k: expected the same number of offsets, got {len(cq)} and {len(ck)}")
    hq, d, dv = q.shape[1], q.shape[2], v.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    out = np.zeros((q.shape[0], hq, dv))
    lse = _no_key_lse(hq, q.shape[0], mods)
    for b in range(len(cq) - 1):
        q0, q1, k0, k1 = int(cq[b]), int(cq[b + 1]), int(ck[b]), int(ck[b + 1])
        if q1 == q0 or k1 == k0:  # no query, or no key: out 0, lse -inf (the sink with sinks)
            continue
        o, l = reference_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], pattern, scale, True, **mods)
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return (out, lse) if return_lse else out


def _reference_topk(q, k, v, pattern, scale, return_lse, cu_seqlens_q, cu_seqlens_k, mods):
    """TopKBlocks: each batch element (or sequence) on the concrete pattern pattern.select
    chooses from the inputs as given (the choice itself is tested on its own against the documented rule
    rule); the attention on it in float64 as for any fixed pattern."""
    chosen = pattern.select(q, k, cu_seqlens_q, cu_seqlens_k)
    q, k, v = to_float64(q, "q"), to_float64(k, "k"), to_float64(v, "v")
    if cu_seqlens_q is None:
        parts = [reference_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], p, scale, True, **mods)
                 for b, p in enumerate(chosen)]
        if not parts:
            return reference_attention(q, k, v, Dense(), scale, return_lse, **mods)
        out, lse = np.concatenate([o for o, _ in parts]), np.concatenate([l for _, l in parts])
        return (out, lse) if return_lse else out
    cq = _offsets(cu_seqlens_q, "cu_seqlens_q", q.shape[0])
    ck = _offsets(cu_seqlens_k, "cu_seqlens_k", k.shape[0])
    out = np.zeros((q.shape[0], q.shape[1], v.shape[2]))
    lse = _no_key_lse(q.shape[1], q.shape[0], mods)
    for b, p in enumerate(chosen):
        q0, q1, k0, k1 = int(cq[b]), int(cq[b + 1]), int(ck[b]), int(ck[b + 1])
        if q1 == q0 or k1 == k0:
            continue
        o, l = reference_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], p, scale, True, **mods)
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return (out, lse) if return_lse else out


def reference_attention(q, k, v, pattern=None, scale=None, return_lse: bool = False, cu_seqlens_q=None,
                        cu_seqlens_k=None, *, softcap=None, alibi_slopes=None, sinks=None):
    """out [B, Nq, Hq, Dv] (and lse [B, Hq, Nq]) in float64 numpy. Rows that see no key give
    out = 0 and lse = -inf (the sink logit with sinks).

    With cu_seqlens_q / cu_seqlens_k (a variable-length batch, docs/api.md): q [Tq, Hq, D],
    k/v [Tk, Hkv, D/Dv]; each sequence is computed separately; out [Tq, Hq, Dv], lse [Hq, Tq].

    The score modifiers of docs/score_modifiers.md, in its order: ``softcap=c`` caps the scaled
    score (s = c tanh(s / c)), then ``alibi_slopes`` [Hq] subtract slope_h |rel| with
    rel = i + Nk - Nq - j (each sequence's own in a varlen batch), and ``sinks`` [Hq] add
    exp(sink_h) to each row's denominator, lse included."""
    mods = {key: val for key, val in (("softcap", softcap), ("alibi_slopes", alibi_slopes), ("sinks", sinks))
            if val is not None}
    pattern = Dense() if pattern is None else pattern
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern: expected a spattn pattern, got {type(pattern).__name__}")
    if isinstance(pattern, TopKBlocks):
        return _reference_topk(q, k, v, pattern, scale, return_lse, cu_seqlens_q, cu_seqlens_k, mods)
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise ValueError("cu_seqlens_q, cu_seqlens_k: a variable-length batch needs both offset arrays")
        return _reference_varlen(q, k, v, pattern, scale, return_lse, cu_seqlens_q, cu_seqlens_k, mods)
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
    if softcap is not None:
        c = float(softcap)
        if not (np.isfinite(c) and c > 0):
            raise ValueError(f"softcap: expected a finite number > 0, got {c}")
        s = c * np.tanh(s / c)
    if alibi_slopes is not None:
        rel = (np.arange(nq)[:, None] + nk - nq) - np.arange(nk)[None, :]  # [Nq, Nk]
        s = s - _per_head(alibi_slopes, "alibi_slopes", hq)[:, None, None] * np.abs(rel)
    keep = pattern.mask(nq, nk, heads=hq)[None]  # [1, Hq, Nq, Nk]
    s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    sink = None
    if sinks is not None:  # one more logit per row that takes mass and adds no value
        sink = np.broadcast_to(_per_head(sinks, "sinks", hq)[None, :, None, None], m.shape)
        m = np.maximum(m, sink)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m_safe)
    denom = p.sum(axis=-1, keepdims=True)
    if sink is not None:
        denom = denom + np.exp(sink - m_safe)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(denom > 0, p / denom, 0.0)
        lse = np.where(denom[..., 0] > 0, m_safe[..., 0] + np.log(denom[..., 0]), -np.inf)
    out = np.einsum("bhij,bjhd->bihd", p, vh)
    return (out, lse) if return_lse else out
