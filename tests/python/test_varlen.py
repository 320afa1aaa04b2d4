"""Variable-length batches (docs/api.md): q [Tq, Hq, D], k/v [Tk, Hkv, D/Dv], cu_seqlens [B+1].

Every sequence is checked against the float64 reference of _helpers (docs/patterns.md masks, written
independently of the library), computed for that sequence alone with its own Nq, Nk.
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import (
    Case,
    as64,
    assert_close,
    assert_lse,
    naive_backward,
    naive_forward,
    ref_backward,
    ref_forward,
    round_to,
    torch,
)

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def offsets(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def make(lens_q, lens_k, hq, hkv, d, dv, seed=0):
    """float64 q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv], dout [Tq, Hq, Dv], int32 offsets."""
    rng = np.random.default_rng(seed)
    tq, tk = int(sum(lens_q)), int(sum(lens_k))
    q = rng.standard_normal((tq, hq, d))
    k = rng.standard_normal((tk, hkv, d))
    v = rng.standard_normal((tk, hkv, dv))
    do = rng.standard_normal((tq, hq, dv))
    return q, k, v, do, offsets(lens_q), offsets(lens_k)


def per_sequence(fn, q, k, v, do, cq, ck, case, hq, scale=None):
    # case: a _helpers.Case, or a spattn pattern whose mask() is then the definition
    """Concatenated per-sequence results of fn(q_b, k_b, v_b, do_b, mask_b) -> (out, lse, dq, dk, dv)
    (each [1, ...] as _helpers returns them). Empty sequences: out 0, lse -inf, gradients 0."""
    tq, tk, dv_ = q.shape[0], k.shape[0], v.shape[2]
    out = np.zeros((tq, hq, dv_))
    lse = np.full((hq, tq), -np.inf)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(len(cq) - 1):
        q0, q1, k0, k1 = int(cq[b]), int(cq[b + 1]), int(ck[b]), int(ck[b + 1])
        if q1 == q0 or k1 == k0:
            continue
        if isinstance(case, Case):
            _, mask = case.build(q1 - q0, k1 - k0, hq)
        else:
            mask = case.mask(q1 - q0, k1 - k0, heads=hq)
        r = fn(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], do[None, q0:q1], mask)
        if r[0] is not None:
            out[q0:q1] = r[0][0]
        if r[1] is not None:
            lse[:, q0:q1] = r[1][0]
        if r[2] is not None:
            dq[q0:q1], dk[k0:k1], dv[k0:k1] = r[2][0], r[3][0], r[4][0]
    return out, lse, dq, dk, dv


def reference(q, k, v, do, cq, ck, case, hq, scale=None):
    def fn(qb, kb, vb, dob, mask):
        o, l, _ = ref_forward(qb, kb, vb, mask, scale)
        g = ref_backward(qb, kb, vb, dob, mask, scale)
        return (o, l) + g

    return per_sequence(fn, q, k, v, do, cq, ck, case, hq, scale)


def the_pattern(case, lens_q, lens_k, hq):
    """One pattern object for the whole batch (a BlockSparse Case gives the same layout for
    every sequence with the same block counts)."""
    b = next((i for i in range(len(lens_q)) if lens_q[i] and lens_k[i]), 0)
    return case.build(max(lens_q[b], 1), max(lens_k[b], 1), hq)[0]


CASES = [
    # lens_q, lens_k, Hq, Hkv, D, Dv, case
    ([5, 70, 1, 33], [5, 70, 1, 33], 4, 2, 32, 24, Case("Dense")),
    ([17, 64, 3], [17, 100, 9], 2, 2, 16, 16, Case("Causal")),  # Nq_b != Nk_b
    ([40, 7, 65], [50, 7, 30], 3, 1, 24, 40, Case("SlidingWindow", 8, 0)),  # Nq_b > Nk_b in one
    ([0, 20, 9, 0, 12], [4, 0, 9, 0, 30], 4, 2, 16, 8, Case("SlidingWindow", 3, 5)),  # empties
    ([33, 1, 80], [80, 65, 2], 6, 1, 8, 8, Case("Causal")),  # MQA
    ([20, 32, 17], [40, 33, 48], 2, 1, 16, 16, Case("BlockSparse", 16, 16, seed=3)),  # 2x3 blocks each
]


@pytest.mark.parametrize("ci", range(len(CASES)))
def test_forward_lse_and_gradients_numpy(ci):
    lens_q, lens_k, hq, hkv, d, dv, case = CASES[ci]
    q, k, v, do, cq, ck = make(lens_q, lens_k, hq, hkv, d, dv, seed=ci)
    p = the_pattern(case, lens_q, lens_k, hq)
    q32, k32, v32, do32 = (x.astype(np.float32) for x in (q, k, v, do))
    out, lse = spattn.attention(q32, k32, v32, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    assert isinstance(out, np.ndarray) and out.shape == (q.shape[0], hq, dv) and out.dtype == np.float32
    assert lse.shape == (hq, q.shape[0]) and lse.dtype == np.float32
    r_out, r_lse, r_dq, r_dk, r_dv = reference(q32, k32, v32, do32, cq, ck, case, hq)
    assert_close("out", out, r_out, "float32")
    assert_lse(lse, r_lse)
    dq, dk, dvv = spattn.attention_backward(do32, q32, k32, v32, out, lse, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck)
    assert dq.shape == q.shape and dk.shape == k.shape and dvv.shape == v.shape
    assert_close("dq", dq, r_dq, "float32")
    assert_close("dk", dk, r_dk, "float32")
    assert_close("dv", dvv, r_dv, "float32")
    # the library's own reference agrees with the independent one
    ro, rl = spattn.reference_attention(q32, k32, v32, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    np.testing.assert_allclose(ro, r_out, rtol=1e-10, atol=1e-12)
    assert np.array_equal(np.isneginf(rl), np.isneginf(r_lse))
    fin = np.isfinite(r_lse)
    np.testing.assert_allclose(rl[fin], r_lse[fin], rtol=1e-10, atol=1e-10)


# Every other pattern, where this build has it, against its own mask() applied per sequence.
MORE = [
    "Dilated(4, 1, 2)",
    "Strided(5)",
    "Fixed(8, 2)",
    "Global([0, 5])",
    "Sink(3)",
    "BigBird(16, 3, 1, 1, 0)",
    "PerHead([Causal(), SlidingWindow(3, 0), Dense(), Sink(2)])",
    "Causal() | Sink(2)",
    "SlidingWindow(10, 0) & Strided(3)",
]


@pytest.mark.parametrize("expr", MORE)
def test_more_patterns(expr):
    try:
        p = eval(expr, {n: getattr(spattn, n) for n in dir(spattn) if n[:1].isupper()})
    except (NameError, AttributeError, TypeError) as e:
        pytest.skip(f"{expr}: not in this build ({e})")
    lens_q, lens_k, hq, hkv = [23, 0, 50, 9], [23, 7, 64, 9], 4, 2
    q, k, v, do, cq, ck = make(lens_q, lens_k, hq, hkv, 16, 16, seed=len(expr))
    q, k, v, do = (x.astype(np.float32) for x in (q, k, v, do))
    out, lse = spattn.attention(q, k, v, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    grads = spattn.attention_backward(do, q, k, v, out, lse, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck)
    r = reference(q, k, v, do, cq, ck, p, hq)
    assert_close("out", out, r[0], "float32")
    assert_lse(lse, r[1])
    for name, g, rg in zip(("dq", "dk", "dv"), grads, r[2:]):
        assert_close(name, g, rg, "float32")


def test_empty_sequences_give_zeros_and_neg_inf():
    lens_q, lens_k = [0, 6, 0, 5], [7, 0, 0, 5]
    q, k, v, do, cq, ck = (x.astype(np.float32) if x.dtype.kind == "f" else x for x in make(lens_q, lens_k, 2, 2, 8, 8))
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    assert (out[0:6] == 0).all() and np.isneginf(lse[:, 0:6]).all()  # sequence 1: no keys
    assert np.isfinite(lse[:, 6:]).all()
    dq, dk, dv = spattn.attention_backward(do, q, k, v, out, lse, pattern=spattn.Causal(), cu_seqlens_q=cq, cu_seqlens_k=ck)
    assert (dq[0:6] == 0).all()  # queries without keys
    assert (dk[0:7] == 0).all() and (dv[0:7] == 0).all()  # keys without queries (sequence 0)
    for g in (dq, dk, dv):
        assert np.isfinite(g).all()


def test_no_sequences_and_all_empty():
    q = np.zeros((0, 2, 8), np.float32)
    k = np.zeros((0, 1, 8), np.float32)
    v = np.zeros((0, 1, 4), np.float32)
    z = np.zeros(1, np.int32)
    out, lse = spattn.attention(q, k, v, cu_seqlens_q=z, cu_seqlens_k=z, return_lse=True)
    assert out.shape == (0, 2, 4) and lse.shape == (2, 0)
    cz = np.zeros(4, np.int32)  # three empty sequences
    out = spattn.attention(q, k, v, cu_seqlens_q=cz, cu_seqlens_k=cz)
    assert out.shape == (0, 2, 4)


def test_equal_lengths_match_the_dense_batch():
    b, n, hq, hkv, d = 3, 37, 4, 2, 16
    q, k, v, do, cq, ck = make([n] * b, [n] * b, hq, hkv, d, d, seed=7)
    q, k, v, do = (x.astype(np.float32) for x in (q, k, v, do))
    p = spattn.SlidingWindow(5, 2)
    o1, l1 = spattn.attention(q, k, v, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    o2, l2 = spattn.attention(q.reshape(b, n, hq, d), k.reshape(b, n, hkv, d), v.reshape(b, n, hkv, d), pattern=p,
                              return_lse=True)
    np.testing.assert_array_equal(o1, o2.reshape(b * n, hq, d))
    np.testing.assert_array_equal(l1, l2.transpose(1, 0, 2).reshape(hq, b * n))


def test_strided_inputs_and_out_buffer():
    lens_q, lens_k = [9, 30], [12, 30]
    q, k, v, do, cq, ck = make(lens_q, lens_k, 2, 2, 16, 16, seed=3)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    case = Case("Causal")
    # q: a slice with row padding; k: a [Hkv, Tk, D] array seen as [Tk, Hkv, D]
    qs = np.zeros((q.shape[0], 2, 24), np.float32)
    qs[:, :, :16] = q
    qs = qs[:, :, :16]
    kt = np.ascontiguousarray(k.transpose(1, 0, 2)).transpose(1, 0, 2)
    out = np.full((q.shape[0], 2, 16), 7.0, np.float32)
    r = spattn.attention(qs, kt, v, pattern=spattn.Causal(), cu_seqlens_q=cq, cu_seqlens_k=ck, out=out)
    assert r is out
    assert_close("out", out, reference(q, k, v, do, cq, ck, case, 2)[0], "float32")


def test_cu_seqlens_kinds_int64_and_lists():
    lens_q, lens_k = [3, 10], [8, 10]
    q, k, v, _, cq, ck = make(lens_q, lens_k, 2, 1, 8, 8)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    want = spattn.attention(q, k, v, pattern=spattn.Causal(), cu_seqlens_q=cq, cu_seqlens_k=ck)
    for a, b in ((cq.astype(np.int64), ck.astype(np.int64)), (cq.tolist(), tuple(ck.tolist()))):
        got = spattn.attention(q, k, v, pattern=spattn.Causal(), cu_seqlens_q=a, cu_seqlens_k=b)
        np.testing.assert_array_equal(got, want)
    cq_s = np.zeros(6, np.int32)[::2]  # a strided offsets array
    cq_s[:] = cq
    got = spattn.attention(q, k, v, pattern=spattn.Causal(), cu_seqlens_q=cq_s, cu_seqlens_k=ck)
    np.testing.assert_array_equal(got, want)


def test_block_layout_must_fit_every_sequence():
    lens_q, lens_k = [16, 40], [16, 16]
    q, k, v, _, cq, ck = make(lens_q, lens_k, 2, 1, 8, 8)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    p = spattn.BlockSparse(np.ones((1, 1, 1), bool), block_size=(16, 16))
    out = np.full((q.shape[0], 2, 8), 3.0, np.float32)
    with pytest.raises(ValueError, match=r"sequence 1 \(Nq=40, Nk=16\)"):
        spattn.attention(q, k, v, pattern=p, cu_seqlens_q=cq, cu_seqlens_k=ck, out=out)
    assert (out == 3.0).all(), "nothing may be written when a later sequence does not fit"


# --------------------------------------------------------------------------------------------
# torch: all three dtypes, autograd
# --------------------------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_dtypes_forward_and_backward(dtype):
    lens_q, lens_k, hq, hkv, d, dv = [0, 33, 70, 5], [3, 50, 70, 0], 4, 2, 32, 32
    case = Case("SlidingWindow", 16, 0)
    q, k, v, do, cq, ck = make(lens_q, lens_k, hq, hkv, d, dv, seed=11)
    q, k, v, do = (round_to(x, dtype) for x in (q, k, v, do))
    dt = getattr(torch, dtype)
    tq, tk, tv, tdo = (torch.from_numpy(x).to(dt) for x in (q, k, v, do))
    tcq, tck = torch.from_numpy(cq), torch.from_numpy(ck)
    p = case.build(1, 1, hq)[0]
    out, lse = spattn.attention(tq, tk, tv, pattern=p, cu_seqlens_q=tcq, cu_seqlens_k=tck, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == dt and lse.dtype == torch.float32
    r_out, r_lse, r_dq, r_dk, r_dv = reference(q, k, v, do, cq, ck, case, hq)
    grads = spattn.attention_backward(tdo, tq, tk, tv, out, lse, pattern=p, cu_seqlens_q=tcq, cu_seqlens_k=tck)
    if dtype == "float32":
        naive = [None] * 4
    else:
        nf = per_sequence(lambda qb, kb, vb, dob, m: (naive_forward(qb, kb, vb, m, dtype), None, None),
                          q, k, v, do, cq, ck, case, hq)
        nb = per_sequence(lambda qb, kb, vb, dob, m: (None, None) + naive_backward(qb, kb, vb, dob, m, dtype),
                          q, k, v, do, cq, ck, case, hq)
        naive = [nf[0], nb[2], nb[3], nb[4]]
    assert_close("out", out, r_out, dtype, naive[0])
    assert_lse(lse, r_lse)
    for name, g, r, nv in zip(("dq", "dk", "dv"), grads, (r_dq, r_dk, r_dv), naive[1:]):
        assert isinstance(g, torch.Tensor) and g.dtype == dt
        assert_close(name, g, r, dtype, nv, mult=3.0)


@needs_torch
def test_torch_autograd():
    lens_q, lens_k, hq, hkv, d, dv = [12, 0, 40], [20, 6, 33], 4, 1, 16, 24
    case = Case("Causal")
    q, k, v, do, cq, ck = make(lens_q, lens_k, hq, hkv, d, dv, seed=5)
    tq, tk, tv = (torch.from_numpy(x).float().requires_grad_() for x in (q, k, v))
    tdo = torch.from_numpy(do).float()
    out = spattn.attention(tq, tk, tv, pattern=spattn.Causal(), cu_seqlens_q=torch.from_numpy(cq),
                           cu_seqlens_k=torch.from_numpy(ck).long())
    assert out.requires_grad
    (out * tdo).sum().backward()
    q32, k32, v32, do32 = (as64(torch.from_numpy(x).float()) for x in (q, k, v, do))
    r_out, _, r_dq, r_dk, r_dv = reference(q32, k32, v32, do32, cq, ck, case, hq)
    assert_close("out", out, r_out, "float32")
    assert_close("dq", tq.grad, r_dq, "float32")
    assert_close("dk", tk.grad, r_dk, "float32")
    assert_close("dv", tv.grad, r_dv, "float32")


# --------------------------------------------------------------------------------------------
# bad offsets: checked before any kernel runs, messages name the argument
# --------------------------------------------------------------------------------------------


def _small():
    q, k, v, do, cq, ck = make([4, 6], [5, 5], 2, 1, 8, 8)
    return tuple(x.astype(np.float32) for x in (q, k, v, do)) + (cq, ck)


BAD = [
    # (cu_seqlens_q, cu_seqlens_k, error, message regex)
    ([0, 6, 4, 10], [0, 5, 5, 10], ValueError, r"cu_seqlens_q: offsets must be non-decreasing"),
    ([0, 4, 10], [5, 5, 10], ValueError, r"cu_seqlens_k: the first offset must be 0"),
    ([1, 4, 10], [0, 5, 10], ValueError, r"cu_seqlens_q: the first offset must be 0"),
    ([0, 4, 9], [0, 5, 10], ValueError, r"cu_seqlens_q: the last offset must equal Tq = 10"),
    ([0, 4, 10], [0, 5, 11], ValueError, r"cu_seqlens_k: the last offset must equal Tk = 10"),
    ([0, 4, 10], [0, 10], ValueError, r"cu_seqlens_q, cu_seqlens_k: expected the same number of offsets"),
    ([0, -4, 10], [0, 5, 10], ValueError, r"cu_seqlens_q: offsets must be non-decreasing"),
    ([0, 40, 10], [0, 5, 10], ValueError, r"cu_seqlens_q: offsets must be non-decreasing"),
    (np.array([0, 4, 10], np.float32), [0, 5, 10], TypeError, r"cu_seqlens_q: expected int32"),
    ([0, 4, 10], np.array([0, 5, 10], np.float64), TypeError, r"cu_seqlens_k: expected int32"),
    ([0.0, 4.0, 10.0], [0, 5, 10], TypeError, r"cu_seqlens_q: expected int32"),
    (np.array([[0, 4, 10]], np.int32), [0, 5, 10], ValueError, r"cu_seqlens_q: expected 1 dimension"),
    ([0, 4, 10], np.zeros(0, np.int32), ValueError, r"cu_seqlens_k: expected 1 dimension \[B\+1\] holding at least one"),
    ("0,4,10", [0, 5, 10], TypeError, r"cu_seqlens_q: expected an int32 array"),
]


@pytest.mark.parametrize("bi", range(len(BAD)))
def test_bad_cu_seqlens(bi):
    q, k, v, do, _, _ = _small()
    bq, bk, err, msg = BAD[bi]
    if bi % 2 == 0:  # int32 arrays; the others pass as Python lists (int64 for the core)
        bq = np.array(bq, np.int32) if isinstance(bq, list) and bq and isinstance(bq[0], int) else bq
        bk = np.array(bk, np.int32) if isinstance(bk, list) and bk and isinstance(bk[0], int) else bk
    out = np.full((10, 2, 8), 5.0, np.float32)
    with pytest.raises(err, match=msg):
        spattn.attention(q, k, v, cu_seqlens_q=bq, cu_seqlens_k=bk, out=out)
    assert (out == 5.0).all(), "out was written although the offsets were refused"
    with pytest.raises(err, match=msg):
        spattn.attention_backward(do, q, k, v, out, np.zeros((2, 10), np.float32), cu_seqlens_q=bq, cu_seqlens_k=bk)


def test_python_sequence_offsets_are_checked_too():
    q, k, v, _, _, _ = _small()
    with pytest.raises(ValueError, match=r"cu_seqlens_q: offsets must be non-decreasing"):
        spattn.attention(q, k, v, cu_seqlens_q=[0, 6, 4, 10], cu_seqlens_k=(0, 5, 5, 10))
    with pytest.raises(TypeError, match=r"cu_seqlens_k"):
        spattn.attention(q, k, v, cu_seqlens_q=[0, 4, 10], cu_seqlens_k=[0, 5.5, 10])


def test_both_or_neither():
    q, k, v, do, cq, ck = _small()
    with pytest.raises(ValueError, match=r"cu_seqlens_q, cu_seqlens_k: .*needs both"):
        spattn.attention(q, k, v, cu_seqlens_q=cq)
    with pytest.raises(ValueError, match=r"cu_seqlens_q, cu_seqlens_k: .*needs both"):
        spattn.attention(q, k, v, cu_seqlens_k=ck)
    with pytest.raises(ValueError, match=r"needs both"):
        spattn.attention_backward(do, q, k, v, q, np.zeros((2, 10), np.float32), cu_seqlens_q=cq)


def test_shapes_with_offsets():
    q, k, v, do, cq, ck = _small()
    with pytest.raises(ValueError, match=r"q: expected 3 dimensions \[Tq, Hq, D\]"):
        spattn.attention(q[None], k, v, cu_seqlens_q=cq, cu_seqlens_k=ck)
    with pytest.raises(ValueError, match=r"k: expected 3 dimensions \[Tk, Hkv, D\]"):
        spattn.attention(q, k[None], v, cu_seqlens_q=cq, cu_seqlens_k=ck)
    with pytest.raises(ValueError, match=r"v: expected Tk=10 keys"):
        spattn.attention(q, k, v[:9], cu_seqlens_q=cq, cu_seqlens_k=ck)
    out, lse = spattn.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    with pytest.raises(ValueError, match=r"lse: expected 2 dimensions \[Hq, Tq\]"):
        spattn.attention_backward(do, q, k, v, out, lse[None], cu_seqlens_q=cq, cu_seqlens_k=ck)
    with pytest.raises(ValueError, match=r"out: expected shape \[10, 2, 8\] \[Tq, Hq, Dv\]"):
        spattn.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, out=np.zeros((10, 2, 7), np.float32))
    with pytest.raises(ValueError, match=r"lse: expected shape \[2, 10\] \[Hq, Tq\]"):
        spattn.attention_backward(do, q, k, v, out, lse.T.copy(), cu_seqlens_q=cq, cu_seqlens_k=ck)


def test_reference_checks_offsets():
    q, k, v, _, cq, ck = _small()
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        spattn.reference_attention(q, k, v, cu_seqlens_q=[0, 11, 10], cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="needs both"):
        spattn.reference_attention(q, k, v, cu_seqlens_q=cq)
