"""Dilated and strided patterns run as residue classes (ordinary windows on row-strided views)
once each class holds enough queries; below that they walk their block layout. Both paths must
give the reference's forward, lse and gradients, including rows and keys no one sees."""
import numpy as np
import pytest

import spattn
from _helpers import assert_close, assert_lse, ref_backward, ref_forward

CASES = [
    # (pattern, Nq, Nk): each problem is big enough for the split (Nq >= 32 * d) unless noted
    (spattn.Dilated(5, 3, 2), 97, 97),
    (spattn.Dilated(7, 0, 3), 130, 100),
    (spattn.Dilated(None, 2, 2), 70, 150),
    (spattn.Dilated(4, None, 2), 66, 66),
    (spattn.Strided(3), 130, 130),
    (spattn.Strided(2, causal=False), 80, 33),
    (spattn.Strided(4), 140, 200),
    (spattn.Strided(5), 20, 50),  # too few queries per class: block walk
    (spattn.Dilated(3, 1, 7), 50, 50),  # block walk
]


@pytest.mark.parametrize("pattern, nq, nk", CASES, ids=[f"{c[0]!r}-{c[1]}x{c[2]}" for c in CASES])
def test_forward_and_gradients(pattern, nq, nk):
    rng = np.random.default_rng(nq * 1000 + nk)
    q = rng.standard_normal((2, nq, 4, 24), dtype=np.float32)
    k = rng.standard_normal((2, nk, 2, 24), dtype=np.float32)
    v = rng.standard_normal((2, nk, 2, 40), dtype=np.float32)
    dout = rng.standard_normal((2, nq, 4, 40), dtype=np.float32)
    mask = pattern.mask(nq, nk)
    ref_out, ref_lse, _ = ref_forward(q, k, v, mask)
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    assert_close("out", out, ref_out, "float32")
    assert_lse(lse, ref_lse)
    dq, dk, dv = spattn.attention_backward(dout, q, k, v, out, lse, pattern=pattern)
    rdq, rdk, rdv = ref_backward(q, k, v, dout, mask)
    assert_close("dq", dq, rdq, "float32")
    assert_close("dk", dk, rdk, "float32")
    assert_close("dv", dv, rdv, "float32")


def test_strided_views_and_low_precision_through_torch():
    torch = pytest.importorskip("torch")
    pattern = spattn.Dilated(6, 2, 2)
    n = 128
    rng = np.random.default_rng(7)
    # [B, H, N, D] tensors passed as transposed views: the classes stride a non-contiguous view.
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, n, 32), dtype=np.float32)).to(torch.bfloat16) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2).requires_grad_() for x in (q, k, v))
    out = spattn.attention(qt, kt, vt, pattern=pattern)
    out.float().sum().backward()
    ref_out, _, _ = ref_forward(qt.detach().float().numpy(), kt.detach().float().numpy(), vt.detach().float().numpy(), pattern.mask(n, n))
    assert (out.detach().float().numpy() - ref_out).__abs__().max() < 0.05
    for g in (qt.grad, kt.grad, vt.grad):
        assert torch.isfinite(g.float()).all()


UNIONS = [
    # window | residue pattern: the window is walked, the rest runs as residue windows, merged
    (spattn.Strided(3) | spattn.SlidingWindow(2, 0), 130, 130),  # the Sparse Transformer's heads
    (spattn.SlidingWindow(4, 1) | spattn.Strided(2), 100, 70),
    (spattn.Dilated(6, 6, 2) | spattn.Causal(), 90, 120),
    (spattn.Strided(2, causal=False) | spattn.SlidingWindow(-3, 9), 64, 64),
    (spattn.Strided(2, causal=False) | spattn.Dense(), 64, 80),  # the window holds everything
    (spattn.Strided(3) | spattn.SlidingWindow(2, 0), 40, 40),  # too small: block walk
]


@pytest.mark.parametrize("pattern, nq, nk", UNIONS, ids=[f"{c[0]!r}-{c[1]}x{c[2]}" for c in UNIONS])
def test_window_residue_unions(pattern, nq, nk):
    test_forward_and_gradients(pattern, nq, nk)


def test_union_in_low_precision_follows_the_flashattention_rule():
    pytest.importorskip("torch")
    from _helpers import naive_backward, naive_forward, round_to

    pattern = spattn.Strided(4) | spattn.SlidingWindow(7, 0)
    n = 160
    rng = np.random.default_rng(11)
    for dtype in ("float16", "bfloat16"):
        q, k, v, do = (round_to(rng.standard_normal((1, n, 2, 32)), dtype) for _ in range(4))
        mask = pattern.mask(n, n)
        ref, _, _ = ref_forward(q, k, v, mask)
        import torch

        t = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in (q, k, v, do)]
        out, lse = spattn.attention(*t[:3], pattern=pattern, return_lse=True)
        assert_close("out", out, ref, dtype, naive=naive_forward(q, k, v, mask, dtype))
        grads = spattn.attention_backward(t[3], *t[:3], out, lse, pattern=pattern)
        for name, g, r, nv in zip("qkv", grads, ref_backward(q, k, v, do, mask), naive_backward(q, k, v, do, mask, dtype)):
            assert_close("d" + name, g, r, dtype, naive=nv, mult=3.0)
