"""spattn.merge: exact combination of attention over disjoint key sets."""
import numpy as np
import pytest

import spattn


def _rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _parts_by_key_ranges(q, k, v, cuts):
    """Dense attention of q over each key range [cuts[i], cuts[i+1])."""
    outs, lses = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        o, l = spattn.attention(q, k[:, a:b], v[:, a:b], pattern=spattn.Dense(), return_lse=True,
                                scale=1 / np.sqrt(q.shape[-1]))
        outs.append(o)
        lses.append(l)
    return outs, lses


@pytest.mark.parametrize("cuts", [[0, 40, 97], [0, 1, 50, 96, 97], [0, 97]])
def test_merge_of_key_ranges_equals_whole(cuts):
    rng = np.random.default_rng(0)
    q, k, v = _rand(rng, 2, 33, 4, 16), _rand(rng, 2, 97, 2, 16), _rand(rng, 2, 97, 2, 24)
    outs, lses = _parts_by_key_ranges(q, k, v, cuts)
    out, lse = spattn.merge(outs, lses)
    ref, ref_lse = spattn.reference_attention(q, k, v, return_lse=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=2e-5)


def test_merge_of_complementary_block_layouts():
    rng = np.random.default_rng(1)
    n, bs = 130, 16
    q, k, v = (_rand(rng, 1, n, 2, 32) for _ in range(3))
    nb = -(-n // bs)
    layout = rng.random((2, nb, nb)) < 0.4
    parts = [spattn.BlockSparse(layout, bs), spattn.BlockSparse(~layout, bs)]
    results = [spattn.attention(q, k, v, pattern=p, return_lse=True) for p in parts]
    out, lse = spattn.merge([r[0] for r in results], [r[1] for r in results])
    whole, whole_lse = spattn.attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, whole, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(lse, whole_lse, atol=2e-5, rtol=2e-5)


def test_rows_no_part_saw_give_zero_and_minus_inf():
    rng = np.random.default_rng(2)
    q, k, v = _rand(rng, 1, 8, 1, 8), _rand(rng, 1, 8, 1, 8), _rand(rng, 1, 8, 1, 8)
    # Future-only windows: the last rows see nothing in either part.
    p1 = spattn.SlidingWindow(-1, 1)
    p2 = spattn.SlidingWindow(-2, 2)
    o1, l1 = spattn.attention(q, k, v, pattern=p1, return_lse=True)
    o2, l2 = spattn.attention(q, k, v, pattern=p2, return_lse=True)
    out, lse = spattn.merge([o1, o2], [l1, l2])
    assert np.all(out[0, -1] == 0) and np.isneginf(lse[0, 0, -1])
    assert np.isfinite(out).all()
    ref, ref_lse = spattn.reference_attention(q, k, v, pattern=spattn.SlidingWindow(-1, 2), return_lse=True)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))


def test_varlen_shapes_and_strided_views():
    rng = np.random.default_rng(3)
    outs = [_rand(rng, 4, 30, 16)[:, ::2] for _ in range(3)]  # [H=4, T=15, Dv] → transposed below
    outs = [np.swapaxes(o, 0, 1) for o in outs]  # [T, H, Dv], non-contiguous
    lses = [_rand(rng, 4, 15) for _ in range(3)]
    out, lse = spattn.merge(outs, lses)
    w = np.exp(np.stack(lses).astype(np.float64))
    expect_lse = np.log(w.sum(0))
    expect = sum((w[i] / w.sum(0)).T[..., None] * outs[i] for i in range(3))
    np.testing.assert_allclose(lse, expect_lse, rtol=1e-5)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6)


def test_torch_low_precision_and_kind():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    q, k, v = (torch.from_numpy(_rand(rng, 1, 50, 2, 16)).to(torch.bfloat16) for _ in range(3))
    parts = [spattn.attention(q, k[:, a:b], v[:, a:b], return_lse=True, scale=0.25) for a, b in [(0, 20), (20, 50)]]
    out, lse = spattn.merge([p[0] for p in parts], [p[1] for p in parts])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    whole = spattn.attention(q, k, v, scale=0.25)
    assert (out.float() - whole.float()).abs().max() < 0.02


@pytest.mark.parametrize(
    "case, exc, words",
    [
        ("empty", ValueError, "outs"),
        ("lengths", ValueError, "lses"),
        ("shape", ValueError, "outs[1]"),
        ("lse_dtype", TypeError, "lses[0]"),
        ("lse_shape", ValueError, "lses[1]"),
        ("not_list", TypeError, "outs"),
    ],
)
def test_bad_inputs(case, exc, words):
    rng = np.random.default_rng(5)
    o = [_rand(rng, 1, 5, 2, 4), _rand(rng, 1, 5, 2, 4)]
    l = [_rand(rng, 1, 2, 5), _rand(rng, 1, 2, 5)]
    args = {
        "empty": ([], []),
        "lengths": (o, l[:1]),
        "shape": ([o[0], o[1][:, :4]], l),
        "lse_dtype": (o, [l[0].astype(np.float64), l[1]]),
        "lse_shape": (o, [l[0], l[1][:, :, :4]]),
        "not_list": (3, l),
    }[case]
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        spattn.merge(*args)
