"""attention_backward(deterministic=True) on the CPU: bitwise identical gradients from run to run,
equal to the default CPU result (the CPU backward sums in a fixed order and uses no atomics, so
the flag costs nothing there), through every entry: numpy arrays, torch tensors (the
spattn::attention_backward operator, whose schema carries the flag), torch autograd under
torch.use_deterministic_algorithms(True), and variable-length batches. The CUDA side is in
tests/python/test_cuda_sm90_backward.py (GPU only).
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn

PATTERNS = {
    "causal": spattn.Causal(),
    "sink|window": spattn.Sink(3) | spattn.SlidingWindow(40, 0),
    "bigbird": spattn.BigBird(32, window=3, globals=1, randoms=2, seed=1),
}


def _data(seed, b=2, nq=150, nk=170, hq=4, hkv=2, d=32, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((b, nq, hq, d), (b, nk, hkv, d), (b, nk, hkv, d), (b, nq, hq, d))]


def _grads_numpy(q, k, v, do, pattern, **kw):
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    return [np.asarray(x) for x in spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern, **kw)]


@pytest.mark.parametrize("name", list(PATTERNS))
def test_numpy_bitwise_and_equal_to_default(name):
    pattern = PATTERNS[name]
    q, k, v, do = _data(1)
    default = _grads_numpy(q, k, v, do, pattern)
    runs = [_grads_numpy(q, k, v, do, pattern, deterministic=True) for _ in range(3)]
    for run in runs:
        for a, b in zip(run, default):
            assert a.tobytes() == b.tobytes()


def test_rejects_non_bool():
    q, k, v, do = _data(2, b=1, nq=8, nk=8, hq=1, hkv=1, d=8)
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
    with pytest.raises(TypeError, match="deterministic"):
        spattn.attention_backward(do, q, k, v, out, lse, pattern=spattn.Causal(), deterministic="yes")


def test_torch_operator_and_autograd():
    torch = pytest.importorskip("torch")
    q, k, v, do = (torch.from_numpy(x).to(torch.bfloat16) for x in _data(3, d=64))
    pattern = spattn.Sink(2) | spattn.SlidingWindow(50, 0)
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    default = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern)
    for _ in range(2):
        det = spattn.attention_backward(do, q, k, v, out, lse, pattern=pattern, deterministic=True)
        assert all(torch.equal(a, b) for a, b in zip(det, default))
    # The operator's schema carries the flag (torch.compile and AOT see it).
    schema = str(torch.ops.spattn.attention_backward.default._schema)
    assert "bool deterministic=False" in schema

    def autograd_grads():
        qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
        spattn.attention(qg, kg, vg, pattern=pattern).backward(do)
        return qg.grad, kg.grad, vg.grad

    plain = autograd_grads()
    torch.use_deterministic_algorithms(True)
    try:
        det1, det2 = autograd_grads(), autograd_grads()
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b, c in zip(plain, det1, det2):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_varlen():
    lens_q, lens_k = [40, 0, 75], [60, 9, 75]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    rng = np.random.default_rng(5)
    q = rng.standard_normal((int(cu_q[-1]), 2, 16)).astype(np.float32)
    k, v = (rng.standard_normal((int(cu_k[-1]), 1, 16)).astype(np.float32) for _ in range(2))
    do = rng.standard_normal(q.shape).astype(np.float32)
    kw = dict(pattern=spattn.Causal(), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    out, lse = spattn.attention(q, k, v, return_lse=True, **kw)
    a = [np.asarray(x) for x in spattn.attention_backward(do, q, k, v, out, lse, **kw)]
    b = [np.asarray(x) for x in spattn.attention_backward(do, q, k, v, out, lse, deterministic=True, **kw)]
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
