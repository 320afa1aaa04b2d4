"""NaN and Inf in the inputs (README, "NaN and Inf"): never silently dropped, never spread to
rows that do not depend on them. The rule itself is written out in nonfinite_rule.py."""
import random

import numpy as np
import pytest

import spattn
from nonfinite_rule import check_nonfinite_rule


@pytest.mark.parametrize("chunk", range(4))
def test_nan_and_inf_in_q_and_k_follow_the_rule(chunk):
    for seed in range(chunk * 60, chunk * 60 + 60):
        check_nonfinite_rule(random.Random(seed))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_nan_score_gives_nan_row_in_low_precision(dtype):
    torch = pytest.importorskip("torch")
    q, k, v = (torch.randn(1, 70, 2, 16).to(getattr(torch, dtype)) for _ in range(3))
    q[0, 5, 1, 3] = float("nan")
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
    assert torch.isnan(out[0, 5, 1]).all() and torch.isnan(lse[0, 1, 5])
    others = torch.ones(70, 2, dtype=torch.bool)
    others[5, 1] = False
    assert torch.isfinite(out[0][others]).all()


def test_nan_in_decode_query_and_merge_lse():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 1, 2, 8)).astype(np.float32)
    k = rng.standard_normal((2, 50, 1, 8)).astype(np.float32)
    v = rng.standard_normal((2, 50, 1, 8)).astype(np.float32)
    q[1, 0, 0, 2] = np.nan
    out, lse = spattn.decode(q, k, v, np.array([50, 40], np.int32), return_lse=True)
    assert np.isnan(out[1, 0, 0]).all() and np.isnan(lse[1, 0, 0])
    assert np.isfinite(out[0]).all() and np.isfinite(out[1, 0, 1]).all()
    o = rng.standard_normal((1, 3, 2, 4)).astype(np.float32)
    l1 = rng.standard_normal((1, 2, 3)).astype(np.float32)
    l2 = l1.copy()
    l2[0, 1, 2] = np.nan
    m, ml = spattn.merge([o, o.copy()], [l1, l2])
    assert np.isnan(m[0, 2, 1]).all() and np.isnan(ml[0, 1, 2])
    assert np.isfinite(np.delete(m.reshape(-1, 4), 2 * 2 + 1, axis=0)).all()


def test_nan_in_unvisited_blocks_is_never_read():
    # Keys outside the window's blocks are never read: NaN there changes nothing.
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 512, 1, 16)).astype(np.float32) for _ in range(3))
    ref = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(15, 0))
    k2, v2 = k.copy(), v.copy()
    k2[0, :256] = np.nan
    v2[0, :256] = np.nan
    got = spattn.attention(q[:, 384:], k2, v2, pattern=spattn.SlidingWindow(15, 0))
    np.testing.assert_array_equal(got, ref[:, 384:])
