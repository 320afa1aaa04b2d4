"""Differential fuzzing (hypothesis): random pattern trees (every leaf kind, unions,
intersections, PerHead, TopKBlocks), random shapes (lengths 0 and 1, Nq != Nk, GQA), memory
layouts (views, transposes, negative and zero strides), dtypes and scales, variable-length
batches, decode over contiguous and paged caches, and merges, all compared with a float64
reference (_helpers.ref_forward / ref_backward, documented masks from fuzz_cases). About a third
of the float32 forward and backward cases also draw score modifiers (softcap, ALiBi, sinks),
compared with spattn.reference_attention (modifier_ref.py: gradients by the chain rule).

The example counts add up to 2,200 per run; SPATTN_FUZZ_SCALE=N multiplies them (the longer
campaign, tests/reliability/campaign.sh)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spattn
from _helpers import (
    as64,
    assert_close,
    f32_backward_allowance,
    assert_lse,
    naive_backward,
    naive_forward,
    ref_backward,
    ref_forward,
    round_to,
)
from fuzz_cases import LAYOUTS, build, describe, examples, lay_out, spec_mask, trees
from modifier_ref import ref_modified

torch = pytest.importorskip("torch")


def _round(x64, dtype):
    return round_to(x64, dtype) if dtype != "float32" else x64.astype(np.float32).astype(np.float64)


@st.composite
def problems(draw, max_n=48, allow_zero=True):
    lo = 0 if allow_zero else 1
    b = draw(st.integers(lo, 3))
    nq, nk = draw(st.integers(lo, max_n)), draw(st.integers(lo, max_n))
    if draw(st.integers(0, 3)) == 0:  # Nq == Nk in a quarter of the cases: LongNet needs it
        nk = nq
    hkv = draw(st.integers(1, 3))
    hq = hkv * draw(st.integers(1, 3))
    d = draw(st.sampled_from([1, 3, 8, 16, 33, 64]))
    dv = draw(st.sampled_from([d, 1, 5, 16, 40]))
    dtype = draw(st.sampled_from(["float32", "float32", "float16", "bfloat16"]))
    framework = "torch" if dtype != "float32" else draw(st.sampled_from(["numpy", "torch"]))
    scale = draw(st.one_of(st.none(), st.floats(0.02, 2.0), st.floats(-1.0, -0.05)))
    seed = draw(st.integers(0, 2**32))
    return dict(b=b, nq=nq, nk=nk, hq=hq, hkv=hkv, d=d, dv=dv, dtype=dtype, framework=framework,
                scale=scale, seed=seed)


@st.composite
def modifiers(draw, hq):
    """Score modifiers, drawn in about one case in three: softcap, ALiBi slopes, sinks (a head
    may have none: -inf), each on or off."""
    if draw(st.integers(0, 2)) != 0:
        return {}
    floats = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    mods = {}
    if draw(st.booleans()):
        mods["softcap"] = draw(st.floats(0.25, 30.0))
    if draw(st.booleans()):
        mods["alibi_slopes"] = np.array(draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=hq, max_size=hq)),
                                        np.float32)
    if draw(st.booleans()):
        sinks = draw(st.lists(st.one_of(floats, st.just(-np.inf)), min_size=hq, max_size=hq))
        mods["sinks"] = np.array(sinks, np.float32)
    return mods


def _inputs(draw, pr):
    rng = np.random.default_rng(pr["seed"])
    b, nq, nk, hq, hkv, d, dv = (pr[x] for x in ("b", "nq", "nk", "hq", "hkv", "d", "dv"))
    vals = {"q": rng.standard_normal((b, nq, hq, d)), "k": rng.standard_normal((b, nk, hkv, d)),
            "v": rng.standard_normal((b, nk, hkv, dv)), "do": rng.standard_normal((b, nq, hq, dv))}
    arrays, values, layouts = {}, {}, {}
    for name, x in vals.items():
        kind = draw(st.sampled_from(LAYOUTS))
        arrays[name], values[name] = lay_out(_round(x, pr["dtype"]), kind, pr["dtype"], pr["framework"], rng)
        layouts[name] = kind
    return arrays, values, layouts


def _ctx(pr, tree, layouts):
    return f"{describe(tree)} {pr} layouts={layouts}"


def _check_mask(pattern, tree, nq, nk, hq):
    want = spec_mask(tree, nq, nk, hq)
    got = pattern.mask(nq, nk, heads=hq)
    assert np.array_equal(got, want), f"mask differs from the documented rule for {describe(tree)} at Nq={nq}, Nk={nk}"
    return want


@settings(max_examples=examples(900))
@given(data=st.data())
def test_fuzz_forward(data):
    pr = data.draw(problems())
    tree = data.draw(trees(pr["nq"], pr["nk"], pr["hq"]))
    pattern = build(tree)
    mask = _check_mask(pattern, tree, pr["nq"], pr["nk"], pr["hq"])
    arrays, vals, layouts = _inputs(data.draw, pr)
    use_out = data.draw(st.booleans())
    out_buf = None
    if use_out:
        shape = (pr["b"], pr["nq"], pr["hq"], pr["dv"])
        out_buf = (np.full(shape, np.nan, np.float32) if pr["framework"] == "numpy"
                   else torch.full(shape, float("nan"), dtype=getattr(torch, pr["dtype"])))
    mods = data.draw(modifiers(pr["hq"])) if pr["dtype"] == "float32" else {}
    out, lse = spattn.attention(arrays["q"], arrays["k"], arrays["v"], pattern=pattern, scale=pr["scale"],
                                return_lse=True, out=out_buf, **mods)
    if use_out:
        assert out is out_buf
    if mods:  # the shared reference with the score modifiers (its pattern's mask was checked above)
        ref, ref_lse = spattn.reference_attention(vals["q"], vals["k"], vals["v"], pattern, pr["scale"], True, **mods)
    else:
        ref, ref_lse, _ = ref_forward(vals["q"], vals["k"], vals["v"], mask, pr["scale"])
    naive = None
    if pr["dtype"] != "float32":
        naive = naive_forward(vals["q"], vals["k"], vals["v"], mask, pr["dtype"], pr["scale"])
    ctx = _ctx(pr, tree, layouts) + (f" modifiers={mods}" if mods else "")
    assert_close(f"out [{ctx}]", out, ref, pr["dtype"], naive)
    assert_lse(lse, ref_lse)


@settings(max_examples=examples(300))
@given(data=st.data())
def test_fuzz_backward(data):
    pr = data.draw(problems(max_n=40))
    tree = data.draw(trees(pr["nq"], pr["nk"], pr["hq"]))
    pattern = build(tree)
    mask = _check_mask(pattern, tree, pr["nq"], pr["nk"], pr["hq"])
    arrays, vals, layouts = _inputs(data.draw, pr)
    q, k, v, do = (arrays[x] for x in ("q", "k", "v", "do"))
    mods = data.draw(modifiers(pr["hq"])) if pr["dtype"] == "float32" else {}
    out, lse = spattn.attention(q, k, v, pattern=pattern, scale=pr["scale"], return_lse=True, **mods)
    grads = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern, scale=pr["scale"], **mods)
    if mods:  # the shared reference and the chain rule (its pattern's mask was checked above)
        *_, refs = ref_modified(vals["q"], vals["k"], vals["v"], pattern, pr["scale"], mods.get("softcap"),
                                mods.get("alibi_slopes"), mods.get("sinks"), dout=vals["do"])
        assert len(grads) == 3 + ("sinks" in mods)
        if "sinks" in mods:
            assert_close(f"dsinks [{_ctx(pr, tree, layouts)} modifiers={mods}]", grads[3], refs[3], "float32")
        refs = refs[:3]
    else:
        refs = ref_backward(vals["q"], vals["k"], vals["v"], vals["do"], mask, pr["scale"])
    naive = (None,) * 3
    allow = (None,) * 3
    if pr["dtype"] != "float32":
        naive = naive_backward(vals["q"], vals["k"], vals["v"], vals["do"], mask, pr["dtype"], pr["scale"])
    elif not mods:
        allow = f32_backward_allowance(vals["q"], vals["k"], vals["v"], vals["do"], mask, pr["scale"])
    ctx = _ctx(pr, tree, layouts) + (f" modifiers={mods}" if mods else "")
    for name, g, r, nv, al in zip(("dq", "dk", "dv"), grads, refs, naive, allow):
        assert_close(f"{name} [{ctx}]", g, r, pr["dtype"], nv, mult=3.0, allowance=al)


@settings(max_examples=examples(150))
@given(data=st.data())
def test_fuzz_topk(data):
    """TopKBlocks: attention equals the float64 reference on the pattern select() returns."""
    pr = data.draw(problems(max_n=40, allow_zero=False))
    bq, bk = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 16))
    always = data.draw(st.one_of(st.none(), trees(pr["nq"], pr["nk"], pr["hq"], per_head=False,
                                                  globals_ok=False, block_layouts=False)))
    topk = spattn.TopKBlocks(data.draw(st.integers(0, 4)), block_size=(bq, bk), causal=data.draw(st.booleans()),
                             always=None if always is None else build(always))
    arrays, vals, layouts = _inputs(data.draw, pr)
    out, lse = spattn.attention(arrays["q"], arrays["k"], arrays["v"], pattern=topk, scale=pr["scale"],
                                return_lse=True)
    chosen = topk.select(arrays["q"], arrays["k"])
    assert len(chosen) == pr["b"]
    for b, p in enumerate(chosen):
        mask = p.mask(pr["nq"], pr["nk"], heads=pr["hq"])
        sl = slice(b, b + 1)
        ref, ref_lse, _ = ref_forward(vals["q"][sl], vals["k"][sl], vals["v"][sl], mask, pr["scale"])
        naive = None
        if pr["dtype"] != "float32":
            naive = naive_forward(vals["q"][sl], vals["k"][sl], vals["v"][sl], mask, pr["dtype"], pr["scale"])
        assert_close(f"out[{b}] [TopK {bq}x{bk} always={always and describe(always)} {pr}]", out[sl], ref,
                     pr["dtype"], naive)
        assert_lse(lse[sl], ref_lse)


@settings(max_examples=examples(300))
@given(data=st.data())
def test_fuzz_varlen(data):
    hkv = data.draw(st.integers(1, 2))
    hq = hkv * data.draw(st.integers(1, 3))
    d, dv = data.draw(st.sampled_from([1, 8, 16, 33])), data.draw(st.sampled_from([1, 8, 24]))
    lens = data.draw(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=0, max_size=4))
    tree = data.draw(trees(30, 30, hq, globals_ok=False, block_layouts=False))
    pattern = build(tree)
    dtype = data.draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    kind = data.draw(st.sampled_from(["int32", "int64", "list"]))
    scale = data.draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    lq, lk = [a for a, _ in lens], [b for _, b in lens]
    cq, ck = np.concatenate([[0], np.cumsum(lq)]).astype(np.int64), np.concatenate([[0], np.cumsum(lk)]).astype(np.int64)
    q64 = _round(rng.standard_normal((int(cq[-1]), hq, d)), dtype)
    k64 = _round(rng.standard_normal((int(ck[-1]), hkv, d)), dtype)
    v64 = _round(rng.standard_normal((int(ck[-1]), hkv, dv)), dtype)
    conv = (lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype)))
    q, k, v = conv(q64), conv(k64), conv(v64)
    offs = {"int32": lambda c: torch.from_numpy(c.astype(np.int32)), "int64": lambda c: c,
            "list": lambda c: c.tolist()}[kind]
    out, lse = spattn.attention(q, k, v, pattern=pattern, scale=scale, return_lse=True,
                                cu_seqlens_q=offs(cq), cu_seqlens_k=offs(ck))
    assert tuple(out.shape) == (int(cq[-1]), hq, dv) and tuple(lse.shape) == (hq, int(cq[-1]))
    for s, (a, b) in enumerate(lens):
        rows, keys = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
        mask = spec_mask(tree, a, b, hq)
        ref, ref_lse, _ = ref_forward(q64[None, rows], k64[None, keys], v64[None, keys], mask, scale)
        naive = None if dtype == "float32" else naive_forward(q64[None, rows], k64[None, keys], v64[None, keys],
                                                              mask, dtype, scale)
        assert_close(f"out seq {s} [{describe(tree)} lens={lens} {dtype}]", out[rows][None], ref, dtype, naive)
        assert_lse(lse[:, rows][None], ref_lse)


@settings(max_examples=examples(300))
@given(data=st.data())
def test_fuzz_decode(data):
    B = data.draw(st.integers(1, 3))
    nq = data.draw(st.integers(0, 8))
    hkv = data.draw(st.integers(1, 2))
    hq = hkv * data.draw(st.integers(1, 4))
    d, dv = data.draw(st.sampled_from([1, 8, 16, 64])), data.draw(st.sampled_from([1, 8, 24]))
    ncap = data.draw(st.integers(0, 70))
    lens = data.draw(st.lists(st.integers(0, ncap), min_size=B, max_size=B))
    tree = data.draw(trees(nq, max(lens) if lens else 0, hq, globals_ok=False, block_layouts=False))
    pattern = build(tree)
    dtype = data.draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    paged = data.draw(st.booleans()) and ncap > 0
    scale = data.draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    q64 = _round(rng.standard_normal((B, nq, hq, d)), dtype)
    k64 = _round(rng.standard_normal((B, ncap, hkv, d)), dtype)
    v64 = _round(rng.standard_normal((B, ncap, hkv, dv)), dtype)
    conv = (lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype)))
    table = None
    if paged:
        page = data.draw(st.integers(1, 16))
        npg = -(-ncap // page)
        pages = B * npg + data.draw(st.integers(0, 3))
        order = rng.permutation(pages)[:B * npg].reshape(B, npg)
        kp = np.full((pages, page, hkv, d), np.nan)
        vp = np.full((pages, page, hkv, dv), np.nan)
        for b in range(B):
            for c in range(npg):
                n = min(page, lens[b] - c * page)
                if n > 0:
                    kp[order[b, c], :n] = k64[b, c * page:c * page + n]
                    vp[order[b, c], :n] = v64[b, c * page:c * page + n]
        table = np.concatenate([order, np.full((B, data.draw(st.integers(0, 2))), 0)], axis=1).astype(np.int32)
        kc, vc = conv(kp), conv(vp)
    else:
        kc, vc = conv(k64), conv(v64)
    out, lse = spattn.decode(conv(q64), kc, vc, torch.tensor(lens, dtype=torch.int32), pattern=pattern,
                             block_table=None if table is None else torch.from_numpy(table), scale=scale,
                             return_lse=True)
    for b, n in enumerate(lens):
        sl = slice(b, b + 1)
        if n == 0:
            assert (as64(out[sl]) == 0).all() and np.isneginf(as64(lse[sl])).all()
            continue
        mask = spec_mask(tree, nq, n, hq)
        ref, ref_lse, _ = ref_forward(q64[sl], k64[sl, :n], v64[sl, :n], mask, scale)
        naive = None if dtype == "float32" else naive_forward(q64[sl], k64[sl, :n], v64[sl, :n], mask, dtype, scale)
        assert_close(f"decode out[{b}] [{describe(tree)} lens={lens} paged={paged} {dtype}]", out[sl], ref, dtype,
                     naive)
        assert_lse(lse[sl], ref_lse)


@settings(max_examples=examples(250))
@given(data=st.data())
def test_fuzz_merge(data):
    """merge() against the float64 formula, rows no part saw included."""
    parts = data.draw(st.integers(1, 4))
    b, n, h, dv = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 20)), data.draw(st.integers(1, 3)),
                   data.draw(st.integers(1, 40)))
    dtype = data.draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    outs64 = [_round(rng.standard_normal((b, n, h, dv)), dtype) for _ in range(parts)]
    lses64 = [(rng.standard_normal((b, h, n)) * 5).astype(np.float32).astype(np.float64) for _ in range(parts)]
    for l in lses64:
        l[rng.random(l.shape) < 0.3] = -np.inf
    conv = (lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype)))
    out, lse = spattn.merge([conv(o) for o in outs64], [torch.from_numpy(l.astype(np.float32)) for l in lses64])
    L = np.stack(lses64)                                                  # [P, b, h, n]
    top = np.max(L, axis=0)
    seen = np.isfinite(top)
    w = np.where(seen, np.exp(L - np.where(seen, top, 0.0)), 0.0)        # [P, b, h, n]
    tot = w.sum(0)
    ref_lse = np.where(seen, np.log(np.where(seen, tot, 1.0)) + np.where(seen, top, 0.0), -np.inf)
    wn = w / np.where(seen, tot, 1.0)
    ref = sum(wn[p].transpose(0, 2, 1)[..., None] * outs64[p] for p in range(parts))
    tol = 2e-6 if dtype == "float32" else {"float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    got = as64(out)
    assert got.shape == ref.shape
    assert (np.abs(got - ref) <= tol * np.maximum(np.abs(ref), 1.0) * 2).all(), (
        f"merge: max error {np.abs(got - ref).max() if got.size else 0} ({parts} parts, {dtype})")
    assert_lse(lse, ref_lse)
