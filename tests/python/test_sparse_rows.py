"""The CPU's sparse-rows path (cpp/src/cpu/sparse_rows.cpp): patterns whose rows keep a few
scattered keys (LogSparse) run row by row over each row's key list instead of over blocks. Its
results must be those of the block path for the same pairs: `LogSparse(l) & Causal()` keeps
the same pairs (LogSparse keeps only rel >= 0) but is an intersection, so it walks the blocks.
Forward and backward (tests/python/test_score_modifiers.py also checks both, with the score
modifiers, against a float64 reference).
"""
import numpy as np
import pytest

import spattn
from spattn.reference import reference_attention

torch = pytest.importorskip("torch")


def _pair(local):
    return spattn.LogSparse(local), spattn.LogSparse(local) & spattn.Causal()


def _inputs(b, nq, nk, hq, hkv, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return mk(b, nq, hq, d), mk(b, nk, hkv, d), mk(b, nk, hkv, dv)


SHAPES = [  # b, nq, nk, hq, hkv, d, dv
    (1, 300, 300, 2, 2, 64, 64),
    (2, 97, 131, 4, 2, 32, 24),   # Nq < Nk: rows aligned to the end
    (1, 131, 97, 2, 1, 40, 40),   # Nq > Nk: the first rows keep nothing
    (1, 1, 1, 1, 1, 16, 16),
    (1, 0, 5, 1, 1, 16, 16),
    (1, 70, 0, 1, 1, 16, 16),
    (1, 1000, 1000, 3, 3, 128, 96),
]


@pytest.mark.parametrize("local", [0, 1, 7, 64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_block_path(local, shape, dtype):
    b, nq, nk, hq, hkv, d, dv = shape
    q, k, v = _inputs(b, nq, nk, hq, hkv, d, dv, dtype, seed=local)
    rows, blocks = _pair(local)
    o1, l1 = spattn.attention(q, k, v, pattern=rows, scale=0.2, return_lse=True)
    o2, l2 = spattn.attention(q, k, v, pattern=blocks, scale=0.2, return_lse=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(o1.float(), o2.float(), atol=tol, rtol=tol)
    assert torch.equal(torch.isneginf(l1), torch.isneginf(l2))
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    if dtype == torch.float32 and nq and nk:
        ref = reference_attention(q.numpy(), k.numpy(), v.numpy(), rows, scale=0.2)
        ref = ref[0] if isinstance(ref, tuple) else ref
        np.testing.assert_allclose(o1.numpy(), ref, atol=2e-5)


def test_strided_views_and_outputs():
    # q, k, v as transposed views, out written into a strided view of a bigger buffer
    q0, k0, v0 = _inputs(2, 257, 257, 4, 4, 48, 48, torch.float32, seed=3)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q0, k0, v0))
    assert not q.is_contiguous()
    rows, blocks = _pair(4)
    big = torch.full((2, 257, 4, 96), 7.0)
    out = big[..., ::2]
    spattn.attention(q, k, v, pattern=rows, out=out)
    ref = spattn.attention(q0, k0, v0, pattern=blocks)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=2e-6)
    assert torch.all(big[..., 1::2] == 7.0)


def test_nonfinite_inputs_as_the_block_path():
    # NaN and Inf in q and k: the same rows come out NaN (docs/semantics.md; the checker of
    # tests/python/nonfinite_rule.py covers LogSparse too)
    q, k, v = _inputs(1, 200, 200, 2, 2, 32, 32, torch.float32, seed=4)
    q[0, 50, 0, 3] = float("nan")
    k[0, 10, 1, 0] = float("inf")
    rows, blocks = _pair(2)
    o1, l1 = spattn.attention(q, k, v, pattern=rows, return_lse=True)
    o2, l2 = spattn.attention(q, k, v, pattern=blocks, return_lse=True)
    assert torch.isnan(o2).any()
    assert torch.equal(torch.isnan(o1), torch.isnan(o2))
    assert torch.equal(torch.isnan(l1), torch.isnan(l2))
    fin = torch.isfinite(o2)
    torch.testing.assert_close(o1[fin], o2[fin], atol=1e-5, rtol=1e-5)
    # NaN in v reaches exactly the rows that keep that key (the block path may also reach the
    # other rows of the blocks it visits: 0 * NaN)
    v[0, 100, 0, 5] = float("nan")
    o3 = spattn.attention(q, k, v, pattern=spattn.LogSparse(2))
    keeps = torch.from_numpy(np.asarray(spattn.LogSparse(2).mask(200, 200))[0, :, 100])
    assert keeps.sum() > 3
    assert torch.equal(torch.isnan(o3[0, :, 0, 5]), keeps | torch.isnan(o1[0, :, 0, 5]))


@pytest.mark.parametrize("local", [0, 3, 64])
@pytest.mark.parametrize("shape", SHAPES[:6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_the_block_path(local, shape, dtype):
    b, nq, nk, hq, hkv, d, dv = shape
    q, k, v = _inputs(b, nq, nk, hq, hkv, d, dv, dtype, seed=7 + local)
    do = torch.randn(b, nq, hq, dv, generator=torch.Generator().manual_seed(99)).to(dtype)
    rows, blocks = _pair(local)
    out, lse = spattn.attention(q, k, v, pattern=blocks, scale=0.3, return_lse=True)
    g1 = spattn.attention_backward(do, q, k, v, out, lse, pattern=rows, scale=0.3)
    g2 = spattn.attention_backward(do, q, k, v, out, lse, pattern=blocks, scale=0.3)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    for a, r in zip(g1, g2):
        torch.testing.assert_close(a.float(), r.float(), atol=tol, rtol=tol)


def test_autograd_through_the_rows_path():
    q, k, v = _inputs(1, 150, 150, 2, 1, 32, 32, torch.float32, seed=5)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    rows, blocks = _pair(3)
    g1 = torch.autograd.grad(spattn.attention(q, k, v, pattern=rows).square().sum(), (q, k, v))
    g2 = torch.autograd.grad(spattn.attention(q, k, v, pattern=blocks).square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
