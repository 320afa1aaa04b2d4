"""spattn.distributed's plan without processes: shifted sub-problem patterns against the global
mask, the closed-form key / query reach against the mask, and whole plans run rank by rank in
one process (the messages replaced by slices) against a single call."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spattn  # noqa: E402
from spattn.distributed._plan import Planner, contiguous_pieces, zigzag_pieces  # noqa: E402
from spattn.distributed._reach import Unsupported, check_supported, keys_of, queries_of  # noqa: E402
from spattn.distributed._shift import key_padding, shifted  # noqa: E402

from _dist_worker import run_plan  # noqa: E402

S = spattn
N = 150
_LAYOUT = np.random.default_rng(0).random((3, 10, 10)) < 0.3

PATTERNS = {
    "window": S.SlidingWindow(20, 0),
    "window_both": S.SlidingWindow(13, 9),
    "window_future": S.SlidingWindow(-2, 7),
    "causal": S.Causal(),
    "dense": S.Dense(),
    "dilated": S.Dilated(6, 0, 3),
    "dilated_both": S.Dilated(4, 3, 5),
    "strided": S.Strided(7),
    "strided_bidir": S.Strided(4, causal=False),
    "global_window": S.Global([0, 9, 101]) | S.SlidingWindow(10, 0),
    "sink_window": S.Sink(3) | S.SlidingWindow(10, 0),
    "block_sparse": S.BlockSparse(_LAYOUT, 16),
    "per_head": S.PerHead([S.SlidingWindow(5, 0), S.Dilated(3, 1, 2), S.Sink(2) | S.Causal()]),
    "intersection": S.Causal() & S.Dilated(None, None, 3),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_shifted_sub_problems_keep_the_global_pairs(name):
    pattern = PATTERNS[name]
    whole = pattern.mask(N, N, heads=3)
    rng = np.random.default_rng(1)
    for _ in range(25):
        j0, k0 = (int(x) for x in rng.integers(0, N - 1, 2))
        nq, nk = int(rng.integers(1, N - j0 + 1)), int(rng.integers(1, N - k0 + 1))
        pad = key_padding(pattern, j0, nq, k0, nk)
        sub = shifted(pattern, j0, nq, k0, nk, pad)
        want = whole[:, j0:j0 + nq, k0:k0 + nk]
        got = np.zeros_like(want) if sub is None else np.broadcast_to(sub.mask(nq, nk + pad, heads=3)[:, :, :nk], want.shape)
        assert np.array_equal(got, want), (name, j0, nq, k0, nk, pad, sub)
        if sub is not None and pad:
            assert not sub.mask(nq, nk + pad, heads=3)[:, :, nk:].any()


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_reach_holds_every_kept_pair(name):
    pattern = PATTERNS[name]
    kept = pattern.mask(N, N, heads=3).any(axis=0)
    rng = np.random.default_rng(2)
    for _ in range(25):
        a = int(rng.integers(0, N - 1))
        b = int(rng.integers(a + 1, N + 1))
        keys = np.zeros(N, bool)
        for lo, hi in keys_of(pattern, a, b, N):
            keys[lo:hi] = True
        assert not (kept[a:b].any(axis=0) & ~keys).any(), (name, a, b)
        queries = np.zeros(N, bool)
        for lo, hi in queries_of(pattern, a, b, N):
            queries[lo:hi] = True
        assert not (kept[:, a:b].any(axis=1) & ~queries).any(), (name, a, b)


def test_window_reach_is_exact():
    assert keys_of(S.SlidingWindow(4095, 0), 10000, 20000, 1 << 20) == [(10000 - 4095, 20000)]
    assert queries_of(S.SlidingWindow(4095, 0), 0, 100, 1 << 20) == [(0, 100 + 4095)]


def test_unsupported_patterns_name_head_mode():
    for p in (S.BigBird(16), S.Fixed(16, 2), S.TopKBlocks(2, 16), S.Causal() | S.Fixed(8, 1)):
        with pytest.raises(Unsupported, match="mode='heads'"):
            check_supported(p)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_plan_rank_by_rank_equals_single_call(name):
    run_plan(PATTERNS[name], [40, 31, 50, 29])


def test_plan_zigzag_varlen_and_bfloat16():
    planner = run_plan(S.Causal(), [38, 37, 37, 38], layout="zigzag")
    # Zigzag gives every rank the same causal work (kept pairs), up to rounding of the chunks.
    work = [sum(p + 1 for pc in ps for p in range(pc.start, pc.end)) for ps in planner.pieces]
    assert max(work) - min(work) <= 0.05 * max(work), work
    plain = [sum(p + 1 for pc in ps for p in range(pc.start, pc.end)) for ps in contiguous_pieces([38, 37, 37, 38])]
    assert max(plain) > 3 * min(plain)
    run_plan(S.Sink(2) | S.SlidingWindow(12, 0), [40, 31, 50, 29], cu=[0, 25, 26, 100, 150])
    run_plan(S.SlidingWindow(20, 3), [40, 31, 50, 29], dtype=torch.bfloat16)


def test_window_halo_is_the_window_and_causal_skips_later_ranks():
    pieces = contiguous_pieces([1000] * 4)
    planner = Planner(S.SlidingWindow(255, 0), pieces, [4000])
    assert [planner.received_rows(r) for r in range(4)] == [0, 255, 255, 255]
    assert planner.need(2, 1) == [(0, 1745, 2000)] and planner.need(2, 0) == [] and planner.need(1, 2) == []
    causal = Planner(S.Causal(), pieces, [4000])
    assert [causal.received_rows(r) for r in range(4)] == [0, 1000, 2000, 3000]
    assert all(causal.need(r, s) == [] for r in range(4) for s in range(r + 1, 4))


def test_torch_merge_equals_spattn_merge():
    """The merge used on devices where spattn.merge does not run (CUDA), checked on the CPU."""
    from spattn.distributed._merge import torch_merge

    g = torch.Generator().manual_seed(4)
    outs = [torch.randn(2, 7, 3, 5, generator=g) for _ in range(3)]
    lses = [torch.randn(2, 3, 7, generator=g) for _ in range(3)]
    for l in lses:
        l[0, 1, 2] = float("-inf")  # a row no part saw
    lses[1][1, 0, 0] = float("-inf")
    want_o, want_l = S.merge(outs, lses)
    got_o, got_l = torch_merge(outs, lses)
    assert (got_o - want_o).abs().max() <= 1e-6
    assert torch.equal(torch.isneginf(got_l), torch.isneginf(want_l))
    fin = torch.isfinite(want_l)
    assert (got_l[fin] - want_l[fin]).abs().max() <= 1e-6
    assert torch.all(got_o[0, 2, 1] == 0)
