"""Document, PrefixLM and LogSparse (issue 15, items 3 and 4): masks written here from the
definitions, with numpy only, against mask(), the block layout, and attention outputs and
gradients against the float64 reference; their text form, errors, and `spattn show`.

Definitions (rel = p - j, p = i + Nk - Nq, bottom-right alignment):
- Document(cu_seqlens): p >= 0 and p, j in the same document [cu[t], cu[t+1]);
- PrefixLM(n): j <= p or j < n;
- LogSparse(local): rel >= 0 and (rel <= local or rel a power of two).
"""
from __future__ import annotations

import numpy as np
import pytest

import spattn
from spattn.pattern_syntax import parse
from _helpers import assert_close, assert_lse, check_layout, rand_qkv, ref_backward, ref_forward

# --------------------------------------------------------------------------------------------
# independent masks
# --------------------------------------------------------------------------------------------


def _pos(nq, nk):
    p = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    return p, j


def doc_mask(cu, nq, nk):
    cu = np.asarray(cu)
    assert cu[-1] == nk
    p, j = _pos(nq, nk)
    # the document of position x: the last t with cu[t] <= x (empty documents hold nothing)
    doc_of = lambda x: np.searchsorted(cu, x, side="right") - 1  # noqa: E731
    pc = np.clip(p, 0, max(nk - 1, 0))
    return (p >= 0) & (doc_of(pc) == doc_of(j))


def prefix_mask(n, nq, nk):
    p, j = _pos(nq, nk)
    return (j <= p) | (j < n)


def logsparse_mask(local, nq, nk):
    p, j = _pos(nq, nk)
    rel = p - j
    pow2 = (rel > 0) & ((rel & (rel - 1)) == 0)
    return (rel >= 0) & ((rel <= local) | pow2)


def _random_cu(rng, total, docs):
    cuts = np.sort(rng.choice(np.arange(1, total), size=min(docs, total - 1), replace=False)) if total > 1 else []
    return [0, *map(int, cuts), total]


SIZES = [(1, 1), (7, 7), (97, 97), (255, 255), (100, 255), (255, 100), (1, 300), (64, 64), (130, 129)]


def _cases(nq, nk):
    """(pattern, independent mask) pairs for an Nq x Nk problem."""
    rng = np.random.default_rng(nq * 1000 + nk)
    out = []
    for docs in (1, 3, 11):
        cu = _random_cu(rng, nk, docs)
        out.append((spattn.Document(cu), doc_mask(cu, nq, nk)))
    if nk >= 4:  # empty documents (repeated offsets) and a document of one key
        cu = [0, 1, 1, nk // 2, nk // 2, nk]
        out.append((spattn.Document(cu), doc_mask(cu, nq, nk)))
    for n in (0, 1, 5, nk // 2, nk, nk + 10):
        out.append((spattn.PrefixLM(n), prefix_mask(n, nq, nk)))
    for local in (0, 1, 3, 17, 1000):
        out.append((spattn.LogSparse(local), logsparse_mask(local, nq, nk)))
    return out


@pytest.mark.parametrize("nq,nk", SIZES)
def test_mask_matches_the_definition(nq, nk):
    for p, want in _cases(nq, nk):
        got = p.mask(nq, nk)
        assert got.shape == (1, nq, nk)
        assert np.array_equal(got[0], want), f"{p!r} {nq}x{nk}: {np.argwhere(got[0] != want)[:5].tolist()}"


@pytest.mark.parametrize("nq,nk", [(97, 97), (255, 255), (100, 255), (255, 100), (130, 129), (1, 300)])
@pytest.mark.parametrize("block", [(16, 16), (64, 64), (32, 48), (7, 5), (1, 1)])
def test_block_layout_is_exact(nq, nk, block):
    # check_layout: every block holding a kept pair is visited, 'full' blocks are full,
    # 'partial' ones are not, and density equals the mask's.
    for p, _ in _cases(nq, nk):
        check_layout(p, nq, nk, block[0], block[1], heads=1, want_heads=1)


def test_document_blocks_inside_a_document_are_full():
    cu = [0, 128, 192, 512]
    lay = spattn.Document(cu).block_layout(512, 512, block=(64, 64))
    for a in range(8):
        full = set(lay.row(0, a)[0].tolist())
        part = set(lay.row(0, a)[1].tolist())
        if a < 2:  # rows of document 0: its square [0, 128) is two full blocks
            assert full == {0, 1} and part == set()
        elif a == 2:  # document 1 fills block 2 exactly
            assert full == {2} and part == set()
        else:
            assert full == set(range(3, 8)) and part == set()
    # a boundary inside a block: that block is partial for every row touching it
    lay = spattn.Document([0, 100, 256]).block_layout(256, 256, block=(64, 64))
    assert lay.row(0, 1)[1].tolist() == [0, 1, 2, 3]  # queries 64..127 cross the boundary at 100
    assert lay.row(0, 0)[0].tolist() == [0] and lay.row(0, 0)[1].tolist() == [1]


def test_logsparse_layout_lists_few_blocks():
    n, b = 16384, 64
    lay = spattn.LogSparse().block_layout(n, n, block=(b, b))
    per_row = [len(lay.row(0, a)[0]) + len(lay.row(0, a)[1]) for a in range(lay.nqb)]
    # the band (1-2 blocks) plus one or two blocks per power of two >= b: O(log N)
    assert max(per_row) <= 2 + 2 * int(np.log2(n)), max(per_row)
    assert sum(per_row) <= lay.nqb * (3 + np.log2(lay.nkb))  # on average ~log2(blocks) per row


def test_prefixlm_equals_causal_or_sink():
    for nq, nk in [(97, 97), (40, 120), (120, 40)]:
        for n in (0, 3, 50):
            assert np.array_equal(spattn.PrefixLM(n).mask(nq, nk),
                                  (spattn.Causal() | spattn.Sink(n)).mask(nq, nk))


# --------------------------------------------------------------------------------------------
# combinations, per head
# --------------------------------------------------------------------------------------------


def _combos(nq, nk):
    cu = _random_cu(np.random.default_rng(7), nk, 4)
    causal = lambda: _pos(nq, nk)[0] >= _pos(nq, nk)[1]  # noqa: E731
    p, j = _pos(nq, nk)
    win = (p - j >= 0) & (p - j <= 9)
    return [
        ("doc&causal", spattn.Document(cu) & spattn.Causal(), doc_mask(cu, nq, nk) & causal()),
        ("logsparse|sink", spattn.LogSparse(2) | spattn.Sink(3), logsparse_mask(2, nq, nk) | (j < 3)),
        ("prefix&doc", spattn.PrefixLM(20) & spattn.Document(cu), prefix_mask(20, nq, nk) & doc_mask(cu, nq, nk)),
        ("doc&logsparse", spattn.Document(cu) & spattn.LogSparse(), doc_mask(cu, nq, nk) & logsparse_mask(0, nq, nk)),
        ("logsparse|window", spattn.LogSparse() | spattn.SlidingWindow(9, 0), logsparse_mask(0, nq, nk) | win),
    ]


@pytest.mark.parametrize("nq,nk", [(97, 97), (60, 150), (150, 60)])
def test_unions_and_intersections(nq, nk):
    for name, p, want in _combos(nq, nk):
        assert np.array_equal(p.mask(nq, nk)[0], want), name
        check_layout(p, nq, nk, 16, 16, heads=1)
        check_layout(p, nq, nk, 64, 32, heads=1)


def test_per_head():
    nq, nk = 90, 120
    cu = [0, 30, 31, 120]
    p = spattn.PerHead([spattn.Document(cu), spattn.PrefixLM(40), spattn.LogSparse(3), spattn.Causal()])
    m = p.mask(nq, nk, heads=4)
    pp, j = _pos(nq, nk)
    assert np.array_equal(m[0], doc_mask(cu, nq, nk))
    assert np.array_equal(m[1], prefix_mask(40, nq, nk))
    assert np.array_equal(m[2], logsparse_mask(3, nq, nk))
    assert np.array_equal(m[3], pp >= j)
    check_layout(p, nq, nk, 16, 16, heads=4, want_heads=4)


# --------------------------------------------------------------------------------------------
# attention: forward and backward against the float64 reference
# --------------------------------------------------------------------------------------------


def _attn_cases(nq, nk):
    cu = _random_cu(np.random.default_rng(nq + nk), nk, 5)
    return [
        ("Document", spattn.Document(cu)),
        ("Document&Causal", spattn.Document(cu) & spattn.Causal()),
        ("PrefixLM", spattn.PrefixLM(nk // 3)),
        ("LogSparse", spattn.LogSparse()),
        ("LogSparse4|Sink", spattn.LogSparse(4) | spattn.Sink(2)),
        ("PerHead", spattn.PerHead([spattn.Document(cu) & spattn.Causal(), spattn.PrefixLM(7),
                                     spattn.LogSparse(1), spattn.LogSparse()])),
    ]


@pytest.mark.parametrize("nq,nk", [(97, 97), (255, 255), (80, 130), (130, 80), (1, 77)])
def test_forward_and_backward_numpy(nq, nk):
    hq, hkv = 4, 2
    q, k, v, do = rand_qkv(1, nq, nk, hq, hkv, 16, 8, seed=nq * 7 + nk)
    q32, k32, v32, do32 = (x.astype(np.float32) for x in (q, k, v, do))
    for name, p in _attn_cases(nq, nk):
        mask = p.mask(nq, nk, heads=hq)
        out_ref, lse_ref, _ = ref_forward(q, k, v, mask)
        out, lse = spattn.attention(q32, k32, v32, pattern=p, return_lse=True)
        assert_close(f"{name} out", out, out_ref, "float32")
        assert_lse(lse, lse_ref)
        dq, dk, dv = spattn.attention_backward(do32, q32, k32, v32, out, lse, pattern=p)
        dq_ref, dk_ref, dv_ref = ref_backward(q, k, v, do, mask)
        assert_close(f"{name} dq", dq, dq_ref, "float32")
        assert_close(f"{name} dk", dk, dk_ref, "float32")
        assert_close(f"{name} dv", dv, dv_ref, "float32")


@pytest.mark.parametrize("nq,nk", [(97, 97), (80, 130)])
def test_forward_and_gradients_torch(nq, nk):
    # torch goes through the custom operators: the pattern crosses them as text (+ arrays)
    torch = pytest.importorskip("torch")
    hq, hkv = 4, 2
    q, k, v, do = rand_qkv(1, nq, nk, hq, hkv, 16, 8, seed=nq + 3 * nk)
    for name, p in _attn_cases(nq, nk):
        mask = p.mask(nq, nk, heads=hq)
        out_ref, lse_ref, _ = ref_forward(q, k, v, mask)
        dq_ref, dk_ref, dv_ref = ref_backward(q, k, v, do, mask)
        qt, kt, vt = (torch.from_numpy(x).float().requires_grad_() for x in (q, k, v))
        out = spattn.attention(qt, kt, vt, pattern=p)
        assert_close(f"{name} out", out, out_ref, "float32")
        out.backward(torch.from_numpy(do).float())
        assert_close(f"{name} dq", qt.grad, dq_ref, "float32")
        assert_close(f"{name} dk", kt.grad, dk_ref, "float32")
        assert_close(f"{name} dv", vt.grad, dv_ref, "float32")


def test_document_in_a_kv_cache_decode():
    # Nq < Nk: the new queries are the last positions of the packed sequence
    nk, nq = 200, 3
    cu = [0, 50, 120, 200]
    p = spattn.Document(cu) & spattn.Causal()
    q, k, v, _ = rand_qkv(1, nq, nk, 2, 2, 16, 16, seed=3)
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    out_ref, _, _ = ref_forward(q, k, v, p.mask(nq, nk, heads=2))
    out = spattn.decode(q32, k32, v32, np.array([nk], dtype=np.int32), pattern=p)
    assert_close("decode out", out, out_ref, "float32")


# --------------------------------------------------------------------------------------------
# construction, checks, text
# --------------------------------------------------------------------------------------------


def test_document_two_ways_to_construct():
    ids = [5, 5, 5, 2, 2, 9, 0, 0, 0, 0]
    a = spattn.Document(segment_ids=ids)
    b = spattn.Document([0, 3, 5, 6, 10])
    c = spattn.Document(cu_seqlens=np.array([0, 3, 5, 6, 10], dtype=np.int32))
    assert a.cu_seqlens == b.cu_seqlens == c.cu_seqlens == (0, 3, 5, 6, 10)
    assert np.array_equal(a.mask(10, 10), b.mask(10, 10))
    ids_arr = np.array(ids)
    want = ids_arr[:, None] == ids_arr[None, :]
    assert np.array_equal(a.mask(10, 10)[0], want)
    assert repr(b) == "Document(cu_seqlens=[0, 3, 5, 6, 10])"


@pytest.mark.parametrize("make,exc,match", [
    (lambda: spattn.Document([1, 5]), ValueError, "cu_seqlens must start with 0"),
    (lambda: spattn.Document([]), ValueError, "cu_seqlens must start with 0"),
    (lambda: spattn.Document([0, 5, 3]), ValueError, "non-decreasing"),
    (lambda: spattn.Document(segment_ids=[1, 1, 2, 1]), ValueError, "document 1 appears in two separate runs"),
    (lambda: spattn.Document(), TypeError, "exactly one of cu_seqlens"),
    (lambda: spattn.Document([0, 2], segment_ids=[0, 0]), TypeError, "exactly one of cu_seqlens"),
    (lambda: spattn.Document("0,4"), TypeError, "cu_seqlens"),
    (lambda: spattn.Document([0.0, 4.0]), TypeError, "cu_seqlens"),
    (lambda: spattn.Document(np.zeros((2, 2), dtype=np.int64)), ValueError, "1-D"),
    (lambda: spattn.PrefixLM(-1), ValueError, "PrefixLM: n must be >= 0"),
    (lambda: spattn.PrefixLM(2.5), TypeError, "PrefixLM: n"),
    (lambda: spattn.LogSparse(-3), ValueError, "LogSparse: local must be >= 0"),
    (lambda: spattn.LogSparse(None), TypeError, "LogSparse: local"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_document_length_must_match_nk():
    p = spattn.Document([0, 10, 20])
    with pytest.raises(ValueError, match=r"cu_seqlens end at 20, but the problem has Nk=21"):
        p.mask(21, 21)
    q = np.zeros((1, 21, 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] == Nk"):
        spattn.attention(q, q, q, pattern=p)
    # Nq > Nk is allowed: the first queries lie before the sequence and see nothing
    m = p.mask(25, 20)[0]
    assert not m[:5].any() and m[5:].any()


def test_repr():
    assert repr(spattn.PrefixLM(16)) == "PrefixLM(16)"
    assert repr(spattn.LogSparse()) == "LogSparse()"
    assert repr(spattn.LogSparse(3)) == "LogSparse(local=3)"
    assert repr(spattn.Document([0, 2]) & spattn.Causal()) == "Document(cu_seqlens=[0, 2]) & Causal()"


def test_text_syntax():
    n = 64
    for text, want in [
        ("document(0, 10, 64)", spattn.Document([0, 10, 64])),
        ("doc(0,64)", spattn.Document([0, 64])),
        ("prefixlm(12)", spattn.PrefixLM(12)),
        ("prefix_lm(n=3)", spattn.PrefixLM(3)),
        ("logsparse", spattn.LogSparse()),
        ("logsparse(local=5) | sink(2)", spattn.LogSparse(5) | spattn.Sink(2)),
        ("document(0,30,64) & causal", spattn.Document([0, 30, 64]) & spattn.Causal()),
    ]:
        got = parse(text)
        assert repr(got) == repr(want), text
        assert np.array_equal(got.mask(n, n), want.mask(n, n)), text
    got = parse("document(@0) & causal", data=[np.array([0, 7, 64])])
    assert repr(got) == "Document(cu_seqlens=[0, 7, 64]) & Causal()"
    with pytest.raises(ValueError, match="logsparse"):
        parse("logsparse(-1)")
    with pytest.raises(ValueError, match="non-decreasing"):
        parse("document(0, 9, 4)")


def test_torch_op_text_round_trip():
    pytest.importorskip("torch")
    from spattn import torch_ops

    for p in (spattn.Document([0, 5, 12]) & spattn.Causal(), spattn.PrefixLM(4), spattn.LogSparse(2)):
        text, data = torch_ops.pattern_spec(p)
        assert not text.startswith("#"), text  # a real text form, not an object reference
        back = parse(text, data=[d.numpy() for d in data])
        assert np.array_equal(back.mask(12, 12), p.mask(12, 12)), text


def test_spattn_show(tmp_path):
    pytest.importorskip("matplotlib")
    from spattn import cli

    for i, text in enumerate(["document(0,100,300,512) & causal", "prefixlm(100)", "logsparse(local=4)"]):
        out = tmp_path / f"p{i}.png"
        assert cli.main(["show", text, "--n", "512", "-o", str(out)]) == 0
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
