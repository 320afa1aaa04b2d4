"""The score modifiers' float64 reference for the tests: out and lse from
spattn.reference_attention (docs/score_modifiers.md: every kept score s = scale q.k;
s = c tanh(s / c); s -= slope_h |i + Nk - Nq - j|; softmax over the kept keys plus exp(sink_h) in
the denominator, no value row), and the gradients by the chain rule on its probabilities.
test_score_modifiers.py checks the reference against a hand-written case and these gradients
against finite differences."""
import numpy as np

import spattn


def ref_modified(q, k, v, pattern, scale, softcap=None, slopes=None, sinks=None, dout=None):
    """float64 out [B,Nq,Hq,Dv], lse [B,Hq,Nq] and, with dout, (dq, dk, dv, dsinks)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    mods = dict(softcap=softcap, alibi_slopes=slopes, sinks=sinks)
    out, lse = spattn.reference_attention(q, k, v, pattern, scale, True, **mods)
    if dout is None:
        return out, lse
    B, Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    g = Hq // Hkv
    scale = 1 / np.sqrt(D) if scale is None else scale
    # P[b, h, i, j]: the reference's output for one-hot values v[j] = e_j
    onehot = np.broadcast_to(np.eye(Nk)[None, :, None, :], (B, Nk, Hkv, Nk))
    p = np.einsum("bihj->bhij", spattn.reference_attention(q, k, onehot, pattern, scale, **mods))
    ke, ve = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    do = np.asarray(dout, np.float64)
    dp = np.einsum("bihd,bjhd->bhij", do, ve)
    delta = np.einsum("bihd,bihd->bhi", do, out)
    ds = p * (dp - delta[..., None])
    if softcap is not None:  # the softcap's derivative at the scaled score
        t = np.tanh(np.einsum("bihd,bjhd->bhij", q, ke) * scale / softcap)
        ds = ds * (1 - t * t)
    dq = np.einsum("bhij,bjhd->bihd", ds, ke) * scale
    dke = np.einsum("bhij,bihd->bjhd", ds, q) * scale
    dve = np.einsum("bhij,bihd->bjhd", p, do)
    dk = dke.reshape(B, Nk, Hkv, g, D).sum(3)
    dv = dve.reshape(B, Nk, Hkv, g, v.shape[3]).sum(3)
    sk = np.full((Hq,), -np.inf) if sinks is None else np.asarray(sinks, np.float64)
    with np.errstate(invalid="ignore"):
        psink = np.where(np.isfinite(lse), np.exp(sk[None, :, None] - np.where(np.isfinite(lse), lse, 0)), 0.0)
    dsinks = -(psink * delta).sum(axis=(0, 2))
    return out, lse, (dq, dk, dv, dsinks)
