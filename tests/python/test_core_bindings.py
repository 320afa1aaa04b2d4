"""The pybind11 layer itself (spattn._core): exception mapping, Pattern argument conversion and
the shapes/dtypes of what it returns. What the patterns mean is tested in test_patterns.py."""
import numpy as np
import pytest

from spattn import _core


def test_errors_map_to_python_classes():
    with pytest.raises(ValueError):  # spattn::ValueError from the core
        _core.Pattern.sliding_window(-3, 2)
    with pytest.raises(TypeError, match=r"^left: expected an int or None, got str$"):
        _core.Pattern.sliding_window("a", 0)
    with pytest.raises(TypeError, match="right"):
        _core.Pattern.sliding_window(1, 2.5)
    with pytest.raises(TypeError, match="right"):
        _core.Pattern.sliding_window(1, True)
    assert not issubclass(TypeError, ValueError)  # the two are kept apart


def test_sliding_window_bounds_accept_any_int():
    for w in (2**40, 2**62, 2**63 - 1, 2**70, np.int64(5)):
        assert _core.Pattern.sliding_window(w, w).mask(3, 4).all()
    assert _core.Pattern.sliding_window(None, None).mask(2, 3).all()
    try:  # clamped to -unbounded: an (almost) empty window, or refused as one
        p = _core.Pattern.sliding_window(-(2**70), None)
    except ValueError:
        return
    assert not p.mask(2, 2).any()


def test_mask_and_layout_types():
    p = _core.Pattern.causal()
    m = p.mask(5, 7, 2)
    assert m.dtype == np.bool_ and m.shape == (2, 5, 7)
    d = p.block_layout(100, 130, 32, 64, 1)
    assert set(d) == {"full_rowptr", "full_ranges", "partial_rowptr", "partial_ranges", "heads",
                      "nqb", "nkb", "block"}
    assert d["full_rowptr"].dtype == np.int64 and d["partial_rowptr"].dtype == np.int64
    assert d["full_ranges"].dtype == np.int32 and d["partial_ranges"].dtype == np.int32
    assert d["full_ranges"].ndim == 2 and d["full_ranges"].shape[1] == 2
    assert (d["nqb"], d["nkb"], d["block"]) == (4, 3, (32, 64))
    assert len(d["full_rowptr"]) == d["heads"] * d["nqb"] + 1
    assert p.kept_pairs(4, 4, 1) == 10.0
    assert "Pattern" in repr(p) and isinstance(p.describe(), str) and p.heads() == 1


def test_block_sparse_bits():
    bits = np.zeros((2, 2, 3), np.int32)
    bits[0, 0, 0] = 7  # any nonzero keeps
    bits[1, 1, 2] = 1
    p = _core.Pattern.block_sparse(bits, 2, 2)
    m = p.mask(4, 6, 2)
    assert m[0, :2, :2].all() and m[0].sum() == 4
    assert m[1, 2:, 4:].all() and m[1].sum() == 4
    assert p.heads() == 2
    p = _core.Pattern.block_sparse(np.ones((1, 3, 3), bool)[:, ::-1], 1, 1)  # strided view
    assert p.mask(3, 3).all()
    with pytest.raises(TypeError):
        _core.Pattern.block_sparse([[[1]]], 1, 1)
    with pytest.raises(TypeError, match="dtype"):
        _core.Pattern.block_sparse(np.ones((1, 1, 1), np.float32), 1, 1)
    with pytest.raises(ValueError, match="3 dimensions"):
        _core.Pattern.block_sparse(np.ones((1, 1), bool), 1, 1)
    with pytest.raises(ValueError):
        _core.Pattern.block_sparse(np.ones((1, 1, 1), bool), 0, 1)


def test_producer_errors_name_the_argument():
    torch = pytest.importorskip("torch")
    q = np.zeros((1, 2, 1, 4), np.float32)
    t = torch.zeros(1, 2, 1, 4, requires_grad=True)
    with pytest.raises(BufferError, match=r"^k: torch\.Tensor could not be exported.*detach"):
        _core.forward(q, t, q, _core.Pattern.dense())
    m = torch.empty(1, 2, 1, 4, device="meta")
    with pytest.raises(Exception, match=r"^v: "):
        _core.forward(q, q, m, _core.Pattern.dense())


def test_info_is_str_dict():
    i = _core.info()
    assert isinstance(i, dict) and "version" in i
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in i.items())


def test_thread_limit_is_honoured():
    from spattn import _core

    if _core.info()["cpu_threads"] == "1":
        pytest.skip("one CPU thread: nothing to limit")
    assert _core._threads_used(64, 1) == 1
    assert _core._threads_used(64, 0) >= 2  # 64 tasks of 2 ms: every thread takes some


def test_torch_thread_budget_reaches_spattn():
    torch = pytest.importorskip("torch")
    import spattn

    q = torch.randn(1, 64, 2, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = spattn.attention(q, q, q, spattn.Causal())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, spattn.attention(q, q, q, spattn.Causal()))  # same bits either way
    with pytest.raises(ValueError, match="num_threads"):
        spattn._core.forward(q, q, q, spattn.Causal()._core(), None, None, True, None, None, -1)


def test_large_outputs_reuse_cached_memory_within_the_limit():
    from _helpers import run_isolated

    code = """
import numpy as np, spattn
q = np.random.default_rng(0).standard_normal((1, 2048, 8, 64)).astype(np.float32)  # out: 4 MB
def addr(a):
    return a.__array_interface__["data"][0]
o = spattn.attention(q, q, q, spattn.SlidingWindow(7, 0))
first = addr(o)
del o
o = spattn.attention(q, q, q, spattn.SlidingWindow(7, 0))
print(addr(o) == first, spattn.info()["cpu_buffer_cache"])
outs = [spattn.attention(q, q, q, spattn.SlidingWindow(7, 0)) for _ in range(4)]
del outs, o
print(spattn.info()["cpu_buffer_cache"])
"""
    import os

    rc, out, err = run_isolated(code)
    assert rc == 0, err
    reused, cached = out.strip().splitlines()
    assert reused.startswith("True"), out  # the freed block came back, already faulted in
    assert cached.startswith("20 MB in 5 blocks"), out  # five 4 MB outputs (rounded to 2 MB)
    os.environ["SPATTN_CPU_CACHE_MB"] = "9"
    try:
        rc, out, err = run_isolated(code)
    finally:
        del os.environ["SPATTN_CPU_CACHE_MB"]
    assert rc == 0, err
    assert out.strip().splitlines()[1].startswith("8 MB in 2 blocks (limit 9 MB)"), out
