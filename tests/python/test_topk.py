"""TopKBlocks (docs/patterns.md, learned pattern): the block choice against a direct implementation of
the documented rule, and attention (forward, gradients, varlen, decode) on the chosen pattern."""
from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import as64, assert_close, assert_lse, block_mask, naive_backward, naive_forward, ref_backward, ref_forward, round_to, window_mask

torch = pytest.importorskip("torch")


# --------------------------------------------------------------------------------------------
# The documented rule (docs/patterns.md), written out directly in float64.
# --------------------------------------------------------------------------------------------


def spec_scores(q, k, bq, bk):
    """float64 scores [Hq, nqb, nkb] of one sequence: q [Nq, Hq, D], k [Nk, Hkv, D]."""
    nq, hq, d = q.shape
    nk, hkv, _ = k.shape
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    qm = np.stack([q[a * bq : (a + 1) * bq].mean(0) for a in range(nqb)], 1)  # [Hq, nqb, D]
    km = np.stack([k[c * bk : (c + 1) * bk].mean(0) for c in range(nkb)], 1)  # [Hkv, nkb, D]
    km = np.repeat(km, hq // hkv, axis=0)
    return np.einsum("had,hcd->hac", qm, km)


def spec_choice(q, k, kk, bq, bk, causal):
    """(chosen [Hq, nqb, nkb] bool, scores, candidates [nqb] or None) by the documented text."""
    nq, hq, _ = q.shape
    nk = k.shape[0]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    s = spec_scores(q, k, bq, bk)
    off = nk - nq
    chosen = np.zeros((hq, nqb, nkb), bool)
    ncand = np.full(nqb, nkb)
    for a in range(nqb):
        p_lo, p_hi = a * bq + off, min(nq, (a + 1) * bq) - 1 + off
        if causal:
            cur = [c for c in range(nkb) if any(c * bk <= p < (c + 1) * bk for p in range(max(p_lo, 0), p_hi + 1))]
            past = [c for c in range(nkb) if (c + 1) * bk - 1 < p_lo]  # every key j < p_lo
            ncand[a] = len(past)
        else:
            cur, past = [], list(range(nkb))
        for h in range(hq):
            order = sorted(past, key=lambda c: (-s[h, a, c], c))  # ties: lower index first
            for c in cur + order[:kk]:
                chosen[h, a, c] = True
    return chosen, s


def assert_same_choice(got, want, scores, kk, tol=1e-5):
    """Equal, except where float32 rounding can reorder near-equal scores at the k-th place."""
    diff = np.argwhere(got != want)
    for h, a, c in diff:
        row = scores[h, a]
        kth = np.sort(row[want[h, a]])[0] if want[h, a].any() else np.inf
        assert abs(row[c] - kth) <= tol * (np.abs(row).max() + 1), (
            f"head {h}, query block {a}: key block {c} chosen={got[h, a, c]} but the rule says "
            f"{want[h, a, c]} (score {row[c]:.6g}, k-th kept score {kth:.6g})")


# --------------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------------

CHOICE_CASES = [
    # (Nq, Nk, Hq, Hkv, D, k, (bq, bk), causal)
    (128, 128, 2, 2, 16, 2, (16, 16), True),
    (100, 100, 4, 2, 8, 3, (16, 16), True),  # partial last blocks, GQA
    (37, 200, 2, 1, 8, 2, (8, 16), True),  # Nq < Nk (a cache), bq != bk
    (200, 37, 2, 2, 8, 1, (16, 8), True),  # Nq > Nk: the first queries see nothing
    (96, 130, 3, 3, 8, 4, (32, 10), False),  # not causal
    (64, 64, 2, 1, 8, 0, (16, 16), True),  # k = 0: current blocks only
    (64, 64, 2, 1, 8, 100, (16, 16), True),  # k beyond the candidates: all past blocks
    (50, 90, 1, 1, 4, 2, (7, 9), False),
]


@pytest.mark.parametrize("case", CHOICE_CASES, ids=[str(c) for c in CHOICE_CASES])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_choice_follows_the_spec_rule(case, dtype):
    nq, nk, hq, hkv, d, kk, bs, causal = case
    rng = np.random.default_rng(nq * 7 + nk)
    q = rng.standard_normal((2, nq, hq, d))
    k = rng.standard_normal((2, nk, hkv, d))
    tq, tk = (torch.from_numpy(x).to(getattr(torch, dtype)) for x in (q, k))
    pattern = spattn.TopKBlocks(kk, block_size=bs, causal=causal)
    got = pattern.chosen_blocks(tq, tk)
    assert len(got) == 2
    for b in range(2):
        want, scores = spec_choice(as64(tq)[b], as64(tk)[b], kk, *bs, causal)
        assert got[b].shape == want.shape and got[b].dtype == bool
        assert_same_choice(got[b], want, scores, kk)
        # and exactly k past blocks (or all of them) besides the current ones
        if causal and kk < 100:
            assert (got[b].sum(-1) <= want.sum(-1)).all()


def test_ties_go_to_the_lower_block_index():
    # Every key block has the same mean: all scores tie, so the k lowest past blocks win.
    nq = nk = 128
    q = np.ones((1, nq, 2, 4), np.float32)
    k = np.ones((1, nk, 1, 4), np.float32)
    k[0, 1::2] = 3.0  # rows alternate 1 and 3: every block of 16 has mean 2
    chosen = spattn.TopKBlocks(3, block_size=16).chosen_blocks(q, k)[0]
    for a in range(8):
        want = np.zeros(8, bool)
        want[: min(a, 3)] = True  # the lowest past blocks
        want[a] = True  # the current block
        assert (chosen[:, a] == want).all(), (a, chosen[0, a].astype(int))
    # A strictly better block far back beats the ties.
    k[0, 16 * 5 : 16 * 6] = 9.0
    chosen = spattn.TopKBlocks(1, block_size=16).chosen_blocks(q, k)[0]
    assert chosen[0, 7].nonzero()[0].tolist() == [5, 7]
    assert chosen[0, 5].nonzero()[0].tolist() == [0, 5]


def test_partial_last_key_block_is_pooled_over_existing_rows():
    # Not causal, Nk = 40 with blocks of 16: the last block holds 8 rows. Its mean over those
    # 8 rows is large; padded with zeros to 16 rows it would lose to block 0.
    q = np.ones((1, 16, 1, 2), np.float32)
    k = np.zeros((1, 40, 1, 2), np.float32)
    k[0, :16] = 1.5
    k[0, 32:] = 2.0  # mean 2.0 over the 8 existing rows (1.0 if divided by 16)
    chosen = spattn.TopKBlocks(1, block_size=16, causal=False).chosen_blocks(q, k)[0]
    assert chosen[0, 0].nonzero()[0].tolist() == [2]


def test_causal_current_blocks_span_the_query_block():
    # bq = 32 over bk = 8: a query block's positions cover 4 key blocks, all kept; nothing in
    # the future; k = 0 so nothing else.
    q = np.random.default_rng(0).standard_normal((1, 64, 1, 4)).astype(np.float32)
    k = np.random.default_rng(1).standard_normal((1, 70, 1, 4)).astype(np.float32)
    chosen = spattn.TopKBlocks(0, block_size=(32, 8)).chosen_blocks(q, k)[0][0]
    off = 70 - 64
    for a in range(2):
        lo, hi = (a * 32 + off) // 8, (a * 32 + 31 + off) // 8
        assert chosen[a].nonzero()[0].tolist() == list(range(lo, min(hi, 8) + 1))


def test_nan_scores_rank_last():
    q = np.ones((1, 64, 1, 2), np.float32)
    k = np.ones((1, 64, 1, 2), np.float32)
    k[0, 0] = np.nan  # block 0's mean is NaN
    chosen = spattn.TopKBlocks(1, block_size=16, causal=False).chosen_blocks(q, k)[0]
    assert chosen[0, 0].nonzero()[0].tolist() == [1]


def test_select_returns_the_concrete_pattern_with_always():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 96, 2, 8)).astype(np.float32)
    k = rng.standard_normal((2, 96, 2, 8)).astype(np.float32)
    always = spattn.Sink(3) | spattn.SlidingWindow(5, 0)
    pattern = spattn.TopKBlocks(1, block_size=16, always=always)
    chosen = pattern.chosen_blocks(q, k)
    pats = pattern.select(q, k)
    assert len(pats) == 2
    for b in range(2):
        m = pats[b].mask(96, 96, heads=2)
        want = (block_mask(chosen[b], 16, 16, 96, 96) & window_mask(96, 96, None, 0)) | always.mask(96, 96)
        assert np.array_equal(m, want)


# --------------------------------------------------------------------------------------------
# Attention on the chosen pattern
# --------------------------------------------------------------------------------------------

ATTN_CASES = [
    # (B, Nq, Nk, Hq, Hkv, D, Dv, pattern)
    (2, 150, 150, 4, 2, 32, 16, lambda: spattn.TopKBlocks(2, block_size=32)),
    (1, 70, 200, 2, 1, 16, 16, lambda: spattn.TopKBlocks(3, block_size=(16, 24), always=spattn.Sink(5))),
    (2, 100, 90, 3, 3, 16, 8, lambda: spattn.TopKBlocks(2, block_size=16, causal=False, always=spattn.SlidingWindow(8, 8))),
    (1, 130, 130, 2, 2, 64, 64, lambda: spattn.TopKBlocks(1, block_size=64, always=spattn.Sink(1) | spattn.SlidingWindow(20, 0))),
]


def _masks(pattern, tq, tk, hq):
    """Per batch element the [Hq, Nq, Nk] mask of the chosen pattern (from select)."""
    nq, nk = tq.shape[1], tk.shape[1]
    return [p.mask(nq, nk, heads=hq) for p in pattern.select(tq, tk)]


@pytest.mark.parametrize("ci", range(len(ATTN_CASES)))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_forward_and_gradients_match_the_reference(ci, dtype):
    B, nq, nk, hq, hkv, d, dv, make = ATTN_CASES[ci]
    rng = np.random.default_rng(ci)
    q64 = rng.standard_normal((B, nq, hq, d))
    k64 = rng.standard_normal((B, nk, hkv, d))
    v64 = rng.standard_normal((B, nk, hkv, dv))
    do64 = rng.standard_normal((B, nq, hq, dv))
    dt = getattr(torch, dtype)
    q, k, v = (torch.from_numpy(x).to(dt).requires_grad_() for x in (q64, k64, v64))
    pattern = make()
    out, lse = spattn.attention(q, k, v, pattern, return_lse=True)
    out.backward(torch.from_numpy(do64).to(dt))
    masks = _masks(pattern, q.detach(), k.detach(), hq)
    r = {n: round_to(x, dtype) for n, x in (("q", q64), ("k", k64), ("v", v64), ("do", do64))}
    for b in range(B):
        sl = slice(b, b + 1)
        args = (r["q"][sl], r["k"][sl], r["v"][sl])
        ro, rl, _ = ref_forward(*args, masks[b])
        naive = None if dtype == "float32" else naive_forward(*args, masks[b], dtype)
        assert_close("out", out.detach()[sl], ro, dtype, naive)
        assert_lse(lse[sl], rl)
        grads = ref_backward(*args, r["do"][sl], masks[b])
        naive_g = [None] * 3 if dtype == "float32" else naive_backward(*args, r["do"][sl], masks[b], dtype)
        for name, got, want, nv in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), grads, naive_g):
            assert_close(name, got[sl], want, dtype, nv, mult=3.0)


def test_attention_equals_attention_on_the_selected_pattern_bitwise():
    # The forward and the backward both choose from the same q and k: the same pattern, so the
    # results equal those of the concrete pattern exactly.
    rng = np.random.default_rng(5)
    q, k, v, do = (torch.from_numpy(rng.standard_normal(s)).float() for s in ((1, 200, 4, 32), (1, 200, 2, 32), (1, 200, 2, 32), (1, 200, 4, 32)))
    pattern = spattn.TopKBlocks(2, block_size=32, always=spattn.Sink(2))
    (concrete,) = pattern.select(q, k)
    got = [x.clone().requires_grad_() for x in (q, k, v)]
    want = [x.clone().requires_grad_() for x in (q, k, v)]
    o1 = spattn.attention(*got, pattern)
    o2 = spattn.attention(*want, concrete)
    assert torch.equal(o1, o2)
    o1.backward(do)
    o2.backward(do)
    for a, b in zip(got, want):
        assert torch.equal(a.grad, b.grad)


def test_choice_is_independent_of_the_thread_count():
    code = """
import numpy as np, spattn
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 1000, 4, 64)).astype(np.float32)
k = rng.standard_normal((1, 1000, 2, 64)).astype(np.float32)
m = spattn.TopKBlocks(4, block_size=32).chosen_blocks(q, k)[0]
print(int(np.packbits(m).astype(np.uint64).sum()), int(m.sum()))
"""
    from _helpers import run_isolated
    import os

    outs = []
    for n in ("1", "2", "3"):
        os.environ["SPATTN_NUM_THREADS"] = n
        try:
            rc, out, err = run_isolated(code)
        finally:
            del os.environ["SPATTN_NUM_THREADS"]
        assert rc == 0, err
        outs.append(out.strip())
    assert outs[0] == outs[1] == outs[2]


def test_varlen_equals_each_sequence_alone():
    rng = np.random.default_rng(7)
    lq, lk = [40, 0, 97, 64], [40, 5, 120, 64]
    cq, ck = np.cumsum([0] + lq).astype(np.int32), np.cumsum([0] + lk).astype(np.int32)
    q = rng.standard_normal((cq[-1], 2, 16)).astype(np.float32)
    k = rng.standard_normal((ck[-1], 1, 16)).astype(np.float32)
    v = rng.standard_normal((ck[-1], 1, 16)).astype(np.float32)
    pattern = spattn.TopKBlocks(2, block_size=16, always=spattn.Sink(2))
    out, lse = spattn.attention(q, k, v, pattern, return_lse=True, cu_seqlens_q=cq, cu_seqlens_k=ck)
    chosen = pattern.chosen_blocks(q, k, cq, ck)
    assert len(chosen) == 4
    for b in range(4):
        qs, ks = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if lq[b] == 0:
            continue
        o, l = spattn.attention(q[None, qs], k[None, ks], v[None, ks], pattern, return_lse=True)
        np.testing.assert_array_equal(out[qs], o[0])
        np.testing.assert_array_equal(lse[:, qs], l[0])
        assert np.array_equal(chosen[b], pattern.chosen_blocks(q[None, qs], k[None, ks])[0])
    ref = spattn.reference_attention(q, k, v, pattern, cu_seqlens_q=cq, cu_seqlens_k=ck)
    np.testing.assert_allclose(out, ref, atol=2e-5)


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------


def _paged(k, v, lens, page, rng):
    """Pages of `page` rows in a shuffled order; unused rows and table entries poisoned."""
    B, ncap = k.shape[:2]
    npg = -(-ncap // page)
    order = rng.permutation(B * npg + 2)[: B * npg].reshape(B, npg)
    kp = np.full((B * npg + 2, page) + k.shape[2:], np.nan, k.dtype)
    vp = np.full((B * npg + 2, page) + v.shape[2:], np.nan, v.dtype)
    table = np.full((B, npg + 1), -5, np.int32)
    for b in range(B):
        for c in range(-(-lens[b] // page)):
            n = min(page, lens[b] - c * page)
            kp[order[b, c], :n] = k[b, c * page : c * page + n]
            vp[order[b, c], :n] = v[b, c * page : c * page + n]
            table[b, c] = order[b, c]
    return kp, vp, table


@pytest.mark.parametrize("nq", [1, 5])
@pytest.mark.parametrize("causal", [True, False])
def test_decode_matches_attention(nq, causal):
    rng = np.random.default_rng(nq + 10 * causal)
    lens = np.array([700, 64, nq, 333], np.int32)
    ncap = 700
    k = rng.standard_normal((4, ncap, 2, 32)).astype(np.float32)
    v = rng.standard_normal((4, ncap, 2, 16)).astype(np.float32)
    q = rng.standard_normal((4, nq, 4, 32)).astype(np.float32)
    pattern = spattn.TopKBlocks(3, block_size=(8, 64), causal=causal, always=spattn.Sink(4))
    want = [spattn.attention(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], pattern, return_lse=True) for b, n in enumerate(lens)]
    wo = np.concatenate([w[0] for w in want])
    wl = np.concatenate([w[1] for w in want])
    got = spattn.decode(q, k, v, lens, pattern=pattern, return_lse=True)
    np.testing.assert_allclose(got[0], wo, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got[1], wl, atol=2e-5, rtol=1e-5)
    for page in (16, 64, 50):
        kp, vp, table = _paged(k, v, lens, page, rng)
        got = spattn.decode(q, kp, vp, lens, pattern=pattern, block_table=table, return_lse=True)
        np.testing.assert_allclose(got[0], wo, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(got[1], wl, atol=2e-5, rtol=1e-5)


def test_decode_refuses_bad_table_entries_that_pooling_would_read():
    # TopKBlocks pools every past page, so every entry below cache_len must be a page.
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, 256, 1, 8)).astype(np.float32)
    v = rng.standard_normal((1, 256, 1, 8)).astype(np.float32)
    kp, vp, table = _paged(k, v, [256], 16, rng)
    table[0, 2] = kp.shape[0]  # one past the last page
    q = rng.standard_normal((1, 1, 1, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"block_table: entry \[0, 2\]"):
        spattn.decode(q, kp, vp, [256], pattern=spattn.TopKBlocks(1, block_size=16), block_table=table)
    # A window alone never reads page 2, so the same table is fine there.
    spattn.decode(q, kp, vp, [256], pattern=spattn.SlidingWindow(15, 0), block_table=table)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_argument_errors():
    with pytest.raises(ValueError, match="k must be >= 0"):
        spattn.TopKBlocks(-1)
    with pytest.raises(ValueError, match="block_size must be positive"):
        spattn.TopKBlocks(2, block_size=(0, 16))
    with pytest.raises(TypeError, match="always"):
        spattn.TopKBlocks(2, always="Sink(4)")
    with pytest.raises(ValueError, match="fixed pattern"):
        spattn.TopKBlocks(2, always=spattn.TopKBlocks(1))
    with pytest.raises(TypeError, match="causal"):
        spattn.TopKBlocks(2, causal=1)
    p = spattn.TopKBlocks(2)
    with pytest.raises(ValueError, match="always="):
        p | spattn.Sink(4)
    with pytest.raises(ValueError, match="always="):
        spattn.PerHead([p, p])
    with pytest.raises(ValueError, match=r"select\(q, k\)"):
        p.mask(64, 64)
    with pytest.raises(ValueError, match=r"select\(q, k\)"):
        p.block_layout(64, 64)
    q = np.zeros((1, 8, 2, 4), np.float32)
    with pytest.raises(ValueError, match="Hq=2 query heads must be a multiple of Hkv=3"):
        p.chosen_blocks(q, np.zeros((1, 8, 3, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        p.chosen_blocks(q, np.zeros((1, 8, 2, 4), np.float64))
    assert repr(spattn.TopKBlocks(8, block_size=(64, 32), causal=False, always=spattn.Sink(4))) == (
        "TopKBlocks(k=8, block_size=(64, 32), causal=False, always=Sink(4))")


# --------------------------------------------------------------------------------------------
# pooled keys for decode
# --------------------------------------------------------------------------------------------


def test_pool_keys_contiguous_and_paged():
    rng = np.random.default_rng(11)
    lens = np.array([100, 0, 64, 7], np.int32)
    k = rng.standard_normal((4, 128, 2, 8)).astype(np.float32)
    v = np.zeros((4, 128, 2, 8), np.float32)
    want = np.zeros((4, 4, 2, 8))
    for b, n in enumerate(lens):
        for c in range(-(-n // 32)):
            want[b, c] = k[b, c * 32 : min(n, (c + 1) * 32)].astype(np.float64).mean(0)
    got = spattn.pool_keys(k, lens, 32)
    assert got.dtype == np.float32 and got.shape == (4, 4, 2, 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    kp, _, table = _paged(k, v, lens, 16, rng)
    got = spattn.pool_keys(kp, lens, 32, block_table=table)
    assert got.shape == (4, -(-table.shape[1] * 16 // 32), 2, 8)
    np.testing.assert_allclose(got[:, :4], want, atol=1e-6)
    assert not got[:, 4:].any()
    tk = torch.from_numpy(k).to(torch.bfloat16)
    got = spattn.pool_keys(tk, torch.from_numpy(lens), 32)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    bad = table.copy()
    bad[0, 1] = 10**6
    with pytest.raises(ValueError, match=r"block_table: entry \[0, 1\]"):
        spattn.pool_keys(kp, lens, 32, block_table=bad)
    with pytest.raises(ValueError, match="cache_len"):
        spattn.pool_keys(k, [200, 0, 0, 0], 32)
    with pytest.raises(ValueError, match="block"):
        spattn.pool_keys(k, lens, 0)


@pytest.mark.parametrize("causal", [True, False])
def test_decode_with_pooled_keys_matches_attention(causal):
    rng = np.random.default_rng(12)
    lens = np.array([640, 130, 64], np.int32)
    k = rng.standard_normal((3, 640, 2, 32)).astype(np.float32)
    v = rng.standard_normal((3, 640, 2, 16)).astype(np.float32)
    q = rng.standard_normal((3, 2, 4, 32)).astype(np.float32)
    pattern = spattn.TopKBlocks(2, block_size=(64, 32), causal=causal, always=spattn.Sink(1))
    want = np.concatenate([spattn.attention(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], pattern) for b, n in enumerate(lens)])
    pooled = spattn.pool_keys(k, lens, 32)
    np.testing.assert_allclose(spattn.decode(q, k, v, lens, pattern, pooled_keys=pooled), want, atol=2e-5)
    kp, vp, table = _paged(k, v, lens, 16, rng)
    pooled = spattn.pool_keys(kp, lens, 32, block_table=table)
    np.testing.assert_allclose(spattn.decode(q, kp, vp, lens, pattern, block_table=table, pooled_keys=pooled), want, atol=2e-5)
    with pytest.raises(ValueError, match="pooled_keys: holds 1 key blocks"):
        spattn.decode(q, k, v, lens, pattern, pooled_keys=np.zeros((3, 1, 2, 32), np.float32))
    with pytest.raises(ValueError, match="only a TopKBlocks pattern"):
        spattn.decode(q, k, v, lens, spattn.Causal(), pooled_keys=pooled)
    with pytest.raises(TypeError, match="pooled_keys: expected float32"):
        spattn.decode(q, k, v, lens, pattern, pooled_keys=pooled.astype(np.float64))
    with pytest.raises(ValueError, match=r"pooled_keys: expected shape \[B=3"):
        spattn.decode(q, k, v, lens, pattern, pooled_keys=pooled[:2])
