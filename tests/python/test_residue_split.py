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
