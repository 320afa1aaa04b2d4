"""The device side of one call, for CUDA arrays of torch or cupy: the framework's current stream
(spattn queues its work there, so it is ordered with the caller's, and can be captured in a CUDA
graph), and the framework's allocator for results and workspaces (torch's or cupy's caching
allocator: visible to `torch.cuda.memory_allocated`, reused, captured with the graph).

Everything else (CPU arrays, other frameworks) gets `None`: spattn then allocates results itself
and runs CUDA work on the legacy default stream, as the DLPack protocol assumes by default.
Never imports a framework the caller does not already use.
"""
from __future__ import annotations

from ._interop import package_of


class CudaCall:
    """stream: the cudaStream_t as an int (0: the legacy default stream); empty(shape, dtype):
    a new framework array on the device (dtype: 'like' for q's dtype, or 'lse' for the dtype of
the lse of q: float32, float64 for float64 q);
    workspace(nbytes) -> (device pointer, owner)."""

    __slots__ = ("stream", "empty", "workspace")

    def __init__(self, stream, empty, workspace):
        self.stream, self.empty, self.workspace = stream, empty, workspace


def _current_stream(torch, dev):
    """torch's current stream on dev as an int: the C accessor when torch has it (a tenth of the
    cost of torch.cuda.current_stream), else the public one."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return int(raw(dev.index if dev.index is not None else torch.cuda.current_device()))
    return int(torch.cuda.current_stream(dev).cuda_stream)


def _torch_call(x):
    import torch

    dev = x.device
    like = x.dtype

    lse = torch.float64 if like == torch.float64 else torch.float32

    def empty(shape, dtype="like"):
        return torch.empty(shape, dtype=like if dtype == "like" else lse, device=dev)

    def workspace(nbytes):
        t = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=dev)
        return t.data_ptr(), t

    return CudaCall(_current_stream(torch, dev), empty, workspace)


def _cupy_call(x):
    import cupy

    like = x.dtype

    lse = cupy.float64 if like == cupy.float64 else cupy.float32

    def empty(shape, dtype="like"):
        with x.device:
            return cupy.empty(shape, dtype=like if dtype == "like" else lse)

    def workspace(nbytes):
        with x.device:
            a = cupy.empty(max(int(nbytes), 1), dtype=cupy.uint8)
        return int(a.data.ptr), a

    return CudaCall(int(cupy.cuda.get_current_stream().ptr), empty, workspace)


def cuda_call(x):
    """A CudaCall for a CUDA array of torch or cupy, else None."""
    package = package_of(x)
    if package == "torch":
        if getattr(x, "is_cuda", False):
            return _torch_call(x)
    elif package in ("cupy", "cupyx"):
        return _cupy_call(x)
    return None
