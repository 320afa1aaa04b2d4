"""TopKBlocks on CUDA tensors: the blocks are chosen on the GPU (pooling, scoring and top-k
kernels, cuda/src/kernels/topk_select.cu) and attention runs over that choice, forward and
backward; and select_blocks (chosen_blocks, select), which chooses with the same kernels and
copies the masks back to the host.

Skipped cleanly without torch, without a CUDA device, or with a spattn built without CUDA:
nothing here touches the GPU at import or collection (the `cuda` fixture asks, inside each
test). Each check chooses on the CPU from the same rounded inputs (pattern.select on CPU
tensors) and compares the GPU's attention with the float64 reference over the CPU's choice
(the FlashAttention rule of _helpers.assert_close), and with the GPU's own attention over the
CPU-selected concrete pattern (the same kept pairs: equal up to rounding; a block chosen
differently shows as a difference of the size of the values). Cases: sizes that are not
multiples of the blocks, Nq != Nk both ways, causal and not, GQA, always patterns, k = 0 and
k past the candidates, many exact ties, strided views, batches, and query blocks with hundreds
of candidates (the radix select's passes).
"""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from _helpers import as64, assert_close, assert_lse, compiled_cuda_kernels, cuda_torch_or_skip, eps, naive_backward, naive_forward, ref_backward, ref_forward


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_kernels")


CASES = [
    # (B, Nq, Nk, Hq, Hkv, pattern)
    (2, 300, 300, 4, 2, lambda: spattn.TopKBlocks(2, block_size=32)),
    (1, 70, 200, 2, 1, lambda: spattn.TopKBlocks(3, block_size=(16, 24), always=spattn.Sink(5))),
    (2, 257, 190, 3, 3, lambda: spattn.TopKBlocks(2, block_size=16, causal=False, always=spattn.SlidingWindow(8, 8))),
    (1, 130, 130, 2, 2, lambda: spattn.TopKBlocks(1, block_size=64, always=spattn.Sink(1) | spattn.SlidingWindow(20, 0))),
    (1, 200, 400, 4, 1, lambda: spattn.TopKBlocks(0, block_size=(40, 24))),
    (1, 333, 333, 2, 1, lambda: spattn.TopKBlocks(100, block_size=(24, 40), causal=False)),
    (1, 1500, 1500, 2, 2, lambda: spattn.TopKBlocks(7, block_size=(64, 8))),  # ~190 candidates
]


def _tensors(torch, arrays, dtype):
    dt = getattr(torch, dtype)
    ts = [torch.from_numpy(np.ascontiguousarray(x)).to(dt) for x in arrays]
    return ts, [as64(x) for x in ts]  # the inputs the kernels really see


def _data(b, nq, nk, hq, hkv, d, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # integers: pooled means and scores tie exactly, often
        draw = lambda *s: rng.integers(-1, 2, s).astype(np.float64)
    else:
        draw = rng.standard_normal
    return draw(b, nq, hq, d), draw(b, nk, hkv, d), rng.standard_normal((b, nk, hkv, d)), rng.standard_normal((b, nq, hq, d))


def _cpu_masks(pattern, q, k, hq):
    """Per batch element, the CPU's concrete pattern and its [Hq, Nq, Nk] mask."""
    pats = pattern.select(q, k)
    return pats, [p.mask(q.shape[1], k.shape[1], heads=hq) for p in pats]


def _forward(torch, b, nq, nk, hq, hkv, make, dtype, d, seed, ties=False, views=None):
    pattern = make()
    (qt, kt, vt, _), (q64, k64, v64, _) = _tensors(torch, _data(b, nq, nk, hq, hkv, d, seed, ties), dtype)
    pats, masks = _cpu_masks(pattern, qt, kt, hq)
    q, k, v = (x.cuda() for x in (qt, kt, vt))
    if views is not None:
        q, k, v = (views(x) for x in (q, k, v))
    out, lse = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
    torch.cuda.synchronize()
    got = out.float().cpu().numpy()
    assert not np.isnan(got).any()
    for i in range(b):
        sl = slice(i, i + 1)
        ro, rl, _ = ref_forward(q64[sl], k64[sl], v64[sl], masks[i])
        assert_close("out", got[sl], ro, dtype, naive=naive_forward(q64[sl], k64[sl], v64[sl], masks[i], dtype))
        assert_lse(lse[sl].cpu().numpy(), rl)
        same = spattn.attention(q[sl], k[sl], v[sl], pattern=pats[i]).float().cpu().numpy()
        diff = np.abs(got[sl] - same).max()
        assert diff <= 4 * eps(dtype) * max(1.0, np.abs(same).max()), f"batch {i}: the GPU chose other blocks (max diff {diff})"


@pytest.mark.parametrize("ci", range(len(CASES)))
def test_forward_matches_the_cpu_choice(cuda, ci):
    b, nq, nk, hq, hkv, make = CASES[ci]
    for dtype, d in compiled_cuda_kernels("cuda_kernels"):
        _forward(cuda, b, nq, nk, hq, hkv, make, dtype, d, seed=ci)


@pytest.mark.parametrize("ci", range(len(CASES)))
def test_ties_are_broken_as_on_the_cpu(cuda, ci):
    b, nq, nk, hq, hkv, make = CASES[ci]
    dtype, d = compiled_cuda_kernels("cuda_kernels")[0]
    _forward(cuda, b, nq, nk, hq, hkv, make, dtype, d, seed=100 + ci, ties=True)


def test_strided_views(cuda):
    dtype, d = compiled_cuda_kernels("cuda_kernels")[0]
    # [B, H, N, D] storage seen as [B, N, H, D]: rows far apart, heads adjacent rows.
    views = lambda x: x.transpose(1, 2).contiguous().transpose(1, 2)
    _forward(cuda, 2, 150, 220, 2, 1, lambda: spattn.TopKBlocks(2, block_size=24, always=spattn.Sink(2)), dtype, d, seed=7, views=views)


def test_forward_with_the_sm80_kernel_on_hopper(cuda, monkeypatch):
    """On a Hopper GPU the sm90a forward's tile is the default; the sm80-style kernel's tile
    (128 x 64) is forced here, so both layouts the selection writes are run."""
    monkeypatch.setenv("SPATTN_CUDA_FORWARD", "sm80")
    dtype, d = compiled_cuda_kernels("cuda_kernels")[0]
    for ci in (0, 2, 6):
        b, nq, nk, hq, hkv, make = CASES[ci]
        _forward(cuda, b, nq, nk, hq, hkv, make, dtype, d, seed=200 + ci)


def _backward(torch, ci):
    b, nq, nk, hq, hkv, make = CASES[ci]
    if not spattn.info().get("cuda_backward_kernels"):
        pytest.skip("no CUDA backward in this build")
    for dtype, d in compiled_cuda_kernels("cuda_backward_kernels"):
        pattern = make()
        ts, (q64, k64, v64, do64) = _tensors(torch, _data(b, nq, nk, hq, hkv, d, seed=ci), dtype)
        _, masks = _cpu_masks(pattern, ts[0], ts[1], hq)
        dev = [x.cuda() for x in ts]
        q, k, v = (x.detach().requires_grad_() for x in dev[:3])
        out = spattn.attention(q, k, v, pattern=pattern)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dev[3])
        torch.cuda.synchronize()
        for i in range(b):
            sl = slice(i, i + 1)
            args = (q64[sl], k64[sl], v64[sl], do64[sl], masks[i])
            ref = ref_backward(*args)
            naive = naive_backward(*args, dtype)
            for name, got, r, n in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, naive):
                g = got[sl].float().cpu().numpy()
                assert not np.isnan(g).any(), f"{name} has NaN"
                assert_close(name, g, r, dtype, naive=n, mult=3.0)


SELECT_DTYPES = ("float32", "float16", "bfloat16")


def _same_masks(got, want, what):
    assert len(got) == len(want), f"{what}: {len(got)} masks, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == np.bool_ and g.shape == w.shape, f"{what}[{i}]: {g.dtype} {g.shape}, expected {w.shape}"
        assert np.array_equal(g, w), f"{what}[{i}]: {int((g != w).sum())} blocks chosen otherwise than on the CPU"


@pytest.mark.parametrize("ci", range(len(CASES)))
@pytest.mark.parametrize("ties", (False, True))
def test_chosen_blocks_on_the_gpu_equal_the_cpus(cuda, ci, ties):
    """select_blocks on CUDA tensors chooses on the GPU (select_topk) and returns host masks:
    the CPU's masks bit for bit (an x86-64 build), every dtype the selection reads (it has no
    head-dim limit: D = 40 and 128), exact ties included."""
    torch = cuda
    b, nq, nk, hq, hkv, make = CASES[ci]
    pattern = make()
    for dtype in SELECT_DTYPES:
        for d in (40, 128):
            (qt, kt, _, _), _ = _tensors(torch, _data(b, nq, nk, hq, hkv, d, seed=300 + ci, ties=ties), dtype)
            want = pattern.chosen_blocks(qt, kt)
            _same_masks(pattern.chosen_blocks(qt.cuda(), kt.cuda()), want, f"{dtype} D={d}")
    # select: the concrete patterns of those masks.
    got = pattern.select(qt.cuda(), kt.cuda())
    for i, p in enumerate(pattern.select(qt, kt)):
        assert np.array_equal(got[i].mask(nq, nk, heads=hq), p.mask(nq, nk, heads=hq))


def test_chosen_blocks_on_the_gpu_strided_and_on_a_side_stream(cuda):
    """Strided views, and torch's current stream not the default one (the choice is queued there
    and its copy back waited for)."""
    torch = cuda
    pattern = spattn.TopKBlocks(3, block_size=24, always=spattn.Sink(2))
    (qt, kt, _, _), _ = _tensors(torch, _data(2, 150, 220, 4, 2, 64, seed=11), "bfloat16")
    want = pattern.chosen_blocks(qt, kt)
    views = lambda x: x.cuda().transpose(1, 2).contiguous().transpose(1, 2)
    _same_masks(pattern.chosen_blocks(views(qt), views(kt)), want, "strided")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        q, k = qt.cuda(), kt.cuda()
        got = pattern.chosen_blocks(q, k)
    _same_masks(got, want, "side stream")


@pytest.mark.parametrize("offsets_on", ("cuda", "list"))
def test_chosen_blocks_varlen_on_the_gpu(cuda, offsets_on):
    """Varlen: every sequence chosen on the GPU with its own sizes (empty ones included), all
    masks back in one copy, equal to the CPU's; offsets as a CUDA tensor or a list."""
    torch = cuda
    lens_q, lens_k = [130, 0, 64, 257, 1], [200, 17, 64, 257, 90]
    cq, ck = np.cumsum([0] + lens_q), np.cumsum([0] + lens_k)
    rng = np.random.default_rng(5)
    for make in (CASES[0][5], CASES[2][5], CASES[6][5]):
        pattern = make()
        hq, hkv = 4, 2
        q = torch.from_numpy(rng.standard_normal((int(cq[-1]), hq, 64))).to(torch.float16)
        k = torch.from_numpy(rng.standard_normal((int(ck[-1]), hkv, 64))).to(torch.float16)
        want = pattern.chosen_blocks(q, k, cu_seqlens_q=cq.tolist(), cu_seqlens_k=ck.tolist())
        if offsets_on == "cuda":
            oq = torch.tensor(cq, dtype=torch.int32, device="cuda")
            ok = torch.tensor(ck, dtype=torch.int32, device="cuda")
        else:
            oq, ok = cq.tolist(), ck.tolist()
        got = pattern.chosen_blocks(q.cuda(), k.cuda(), cu_seqlens_q=oq, cu_seqlens_k=ok)
        _same_masks(got, want, f"varlen {pattern}")


def test_chosen_blocks_with_cupy(cuda):
    """cupy arrays: chosen on cupy's current stream, equal to the CPU's."""
    cupy = pytest.importorskip("cupy")
    pattern = spattn.TopKBlocks(2, block_size=32)
    q, k, _, _ = _data(2, 300, 300, 4, 2, 64, seed=21)
    q, k = q.astype(np.float32), k.astype(np.float32)
    want = pattern.chosen_blocks(q, k)
    _same_masks(pattern.chosen_blocks(cupy.asarray(q), cupy.asarray(k)), want, "cupy")


def test_chosen_blocks_refuses_a_graph_capture(cuda):
    """The masks come back to the host, so the call waits: refused while capturing, before
    anything is queued (the capture itself stays valid)."""
    torch = cuda
    pattern = spattn.TopKBlocks(2, block_size=32)
    q = torch.randn(1, 128, 2, 64, device="cuda", dtype=torch.bfloat16)
    pattern.chosen_blocks(q, q)  # warm up (device facts read once, outside the capture)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with pytest.raises(RuntimeError, match="capturing a CUDA graph"):
            pattern.chosen_blocks(q, q)


@pytest.mark.parametrize("ci", range(len(CASES)))
def test_backward_matches_the_reference(cuda, ci):
    _backward(cuda, ci)


@pytest.mark.parametrize("ci", (0, 2, 6))
def test_backward_with_the_sm90a_kernel(cuda, monkeypatch, ci):
    """The opt-in sm90a backward walks both the columns and the rows the selection writes."""
    torch = cuda
    if not spattn.info().get("cuda_sm90a_backward_kernels"):
        pytest.skip("no sm90a backward in this build")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90a backward runs on compute capability 9.0 only")
    monkeypatch.setenv("SPATTN_CUDA_BACKWARD", "sm90a")
    _backward(torch, ci)
