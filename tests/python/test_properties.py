"""Property-based tests (hypothesis): random shapes, windows and layouts against the reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import spattn
from _helpers import (
    assert_close,
    assert_lse,
    block_mask,
    check_layout,
    naive_backward,
    naive_forward,
    ref_backward,
    ref_forward,
    round_to,
    to_framework,
    window_mask,
)

bound = st.one_of(st.none(), st.integers(-20, 100))


@st.composite
def windows(draw):
    left = draw(bound)
    if left is None:
        right = draw(bound)
    else:
        right = draw(st.one_of(st.none(), st.integers(max(-left, -20), 100)))
    return left, right


@st.composite
def patterns(draw, nq, nk, hq):
    """(pattern, mask [1 or Hq, Nq, Nk], description)."""
    kind = draw(st.sampled_from(["Dense", "Causal", "SlidingWindow", "BlockSparse"]))
    if kind == "Dense":
        return spattn.Dense(), np.ones((1, nq, nk), bool), "Dense()"
    if kind == "Causal":
        return spattn.Causal(), window_mask(nq, nk, None, 0)[None], "Causal()"
    if kind == "SlidingWindow":
        left, right = draw(windows())
        return (spattn.SlidingWindow(left, right), window_mask(nq, nk, left, right)[None],
                f"SlidingWindow({left}, {right})")
    bq, bk = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    per_head = draw(st.booleans())
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]))
    seed = draw(st.integers(0, 2**31))
    layout = np.random.default_rng(seed).random((hq if per_head else 1, -(-nq // bq), -(-nk // bk))) < density
    return (spattn.BlockSparse(layout, block_size=(bq, bk)), block_mask(layout, bq, bk, nq, nk),
            f"BlockSparse(per_head={per_head}, density={density}, seed={seed}, block=({bq}, {bk}))")


@st.composite
def problems(draw, max_n=80):
    b = draw(st.integers(1, 2))
    nq, nk = draw(st.integers(1, max_n)), draw(st.integers(1, max_n))
    hkv = draw(st.integers(1, 2))
    hq = hkv * draw(st.integers(1, 3))
    d = draw(st.sampled_from([1, 2, 8, 16, 33, 64, 128]))
    dv = draw(st.sampled_from([d, 1, 8, 24, 64]))
    pattern, mask, desc = draw(patterns(nq, nk, hq))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, nq, hq, d))
    k = rng.standard_normal((b, nk, hkv, d))
    v = rng.standard_normal((b, nk, hkv, dv))
    do = rng.standard_normal((b, nq, hq, dv))
    transposed = draw(st.booleans())
    return dict(q=q, k=k, v=v, do=do, pattern=pattern, mask=mask, desc=desc, transposed=transposed)


def _inputs(pr, framework, dtype):
    xs = []
    for name in ("q", "k", "v"):
        x = round_to(pr[name], dtype) if dtype != "float32" else pr[name].astype(np.float32).astype(np.float64)
        if pr["transposed"]:  # pass a [B, H, N, D] buffer as a transposed view
            buf = to_framework(np.ascontiguousarray(x.transpose(0, 2, 1, 3)), framework, dtype)
            t = buf.transpose(0, 2, 1, 3) if framework == "numpy" else buf.transpose(1, 2)
        else:
            t = to_framework(x, framework, dtype)
        xs.append((x, t))
    return xs


@settings(max_examples=60)
@given(pr=problems(), framework=st.sampled_from(["numpy", "torch"]))
def test_forward_property(pr, framework):
    (q64, q), (k64, k), (v64, v) = _inputs(pr, framework, "float32")
    ref, lse, _ = ref_forward(q64, k64, v64, pr["mask"])
    out, l = spattn.attention(q, k, v, pattern=pr["pattern"], return_lse=True)
    assert_close(f"out [{pr['desc']}]", out, ref, "float32")
    assert_lse(l, lse)


@settings(max_examples=40)
@given(pr=problems(max_n=64), dtype=st.sampled_from(["float16", "bfloat16"]))
def test_forward_low_precision_property(pr, dtype):
    (q64, q), (k64, k), (v64, v) = _inputs(pr, "torch", dtype)
    ref, lse, _ = ref_forward(q64, k64, v64, pr["mask"])
    naive = naive_forward(q64, k64, v64, pr["mask"], dtype)
    out, l = spattn.attention(q, k, v, pattern=pr["pattern"], return_lse=True)
    assert_close(f"out [{pr['desc']}]", out, ref, dtype, naive)
    assert_lse(l, lse)


@settings(max_examples=40)
@given(pr=problems(max_n=64), framework=st.sampled_from(["numpy", "torch"]))
def test_backward_property(pr, framework):
    (q64, q), (k64, k), (v64, v) = _inputs(pr, framework, "float32")
    do64 = pr["do"].astype(np.float32).astype(np.float64)
    do = to_framework(do64, framework, "float32")
    grads = ref_backward(q64, k64, v64, do64, pr["mask"])
    out, lse = spattn.attention(q, k, v, pattern=pr["pattern"], return_lse=True)
    got = spattn.attention_backward(do, q, k, v, out, lse, pattern=pr["pattern"])
    for name, g, ref in zip(("dq", "dk", "dv"), got, grads):
        assert_close(f"{name} [{pr['desc']}]", g, ref, "float32")


@settings(max_examples=30)
@given(pr=problems(max_n=64), dtype=st.sampled_from(["float32", "float16", "bfloat16"]))
def test_autograd_property(pr, dtype):
    xs = _inputs(pr, "torch", dtype)
    leaves = []
    for x64, t in xs:
        base = t._base if t._base is not None else t
        leaf = base.detach().clone().requires_grad_()
        leaves.append((x64, leaf, leaf.transpose(1, 2) if pr["transposed"] else leaf))
    do64 = round_to(pr["do"], dtype) if dtype != "float32" else pr["do"].astype(np.float32).astype(np.float64)
    do = to_framework(do64, "torch", dtype)
    q64, k64, v64 = (x for x, _, _ in leaves)
    out = spattn.attention(*(view for _, _, view in leaves), pattern=pr["pattern"])
    out.backward(do)
    grads = ref_backward(q64, k64, v64, do64, pr["mask"])
    naive = naive_backward(q64, k64, v64, do64, pr["mask"], dtype) if dtype != "float32" else (None,) * 3
    for name, (_, leaf, _), ref, nv in zip(("dq", "dk", "dv"), leaves, grads, naive):
        g = leaf.grad.transpose(1, 2) if pr["transposed"] else leaf.grad
        assert_close(f"{name} [{pr['desc']}]", g, ref, dtype, nv, mult=3.0)


@settings(max_examples=80)
@given(data=st.data())
def test_mask_and_layout_property(data):
    nq, nk = data.draw(st.integers(1, 150)), data.draw(st.integers(1, 150))
    heads = data.draw(st.integers(1, 3))
    pattern, mask, desc = data.draw(patterns(nq, nk, heads))
    m = pattern.mask(nq, nk, heads=heads)
    assert m.shape == (heads, nq, nk) and m.dtype == np.bool_
    assert np.array_equal(m, np.broadcast_to(mask, m.shape)), desc
    bq, bk = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 70))
    check_layout(pattern, nq, nk, bq, bk, heads=heads)
