"""spattn.distributed on a CUDA device (skipped without one; nothing touches the GPU at import
or collection). Run on a GPU machine: python -m pytest tests/python/test_distributed_cuda.py -q

- each rank's plan run in turn on CUDA tensors (messages replaced by slices: the shifted
  sub-problems, the CUDA kernels and the torch merge), against one CUDA call;
- a one-rank NCCL group through the public call, forward and backward (several GPUs are
  needed for more: bench/distributed.py --backend nccl)."""
import datetime
import socket

import pytest

import spattn
from _helpers import cuda_torch_or_skip


@pytest.fixture
def cuda():
    return cuda_torch_or_skip("cuda_kernels")


@pytest.mark.parametrize("name", ["window", "causal", "sink_window", "global_window", "dilated"])
def test_plan_rank_by_rank_on_cuda(cuda, name):
    from _dist_worker import run_plan

    S = spattn
    pattern = {
        "window": S.SlidingWindow(100, 0),
        "causal": S.Causal(),
        "sink_window": S.Sink(4) | S.SlidingWindow(60, 0),
        "global_window": S.Global([0, 300]) | S.SlidingWindow(60, 0),
        "dilated": S.Dilated(30, 0, 3),
    }[name]
    run_plan(pattern, [200, 130, 250, 190], dtype=cuda.bfloat16, device="cuda", d=128, tol=3e-2)


def test_nccl_group_of_one_forward_and_backward(cuda):
    import torch.distributed as dist

    import spattn.distributed as sd

    if not dist.is_nccl_available():
        pytest.skip("torch has no NCCL")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    torch = cuda
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 1000, 4, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
        pattern = spattn.SlidingWindow(255, 0)
        qs, ks, vs = (x.clone().requires_grad_() for x in (q, k, v))
        out = sd.attention(qs, ks, vs, pattern=pattern, timeout=60)
        out.float().sum().backward()
        qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
        ref = spattn.attention(qr, kr, vr, pattern=pattern)
        ref.float().sum().backward()
        for got, want in ((out, ref), (qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
            assert (got.float() - want.float()).abs().max() <= 1e-2 * want.float().abs().max()
    finally:
        dist.destroy_process_group()
