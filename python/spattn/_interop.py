"""Results back in the caller's framework.

`_core` returns results as `DLPackTensor` holders (one-shot `__dlpack__` producers);
`to_framework` hands one to the array library of an example array, zero-copy. The library is
chosen from ``type(like).__module__``, so torch, cupy and jax are imported only when the caller
already uses them.
"""
from __future__ import annotations

__all__ = ["to_framework", "is_array"]


def _from_numpy(holder):
    import numpy as np

    return np.from_dlpack(holder)


def _from_torch(holder):
    import torch

    return torch.from_dlpack(holder)


def _from_cupy(holder):
    import cupy

    return cupy.from_dlpack(holder)


def _from_jax(holder):
    import jax.numpy as jnp

    if hasattr(jnp, "from_dlpack"):
        return jnp.from_dlpack(holder)
    import jax.dlpack

    return jax.dlpack.from_dlpack(holder)


_BY_PACKAGE = {
    "numpy": _from_numpy,
    "torch": _from_torch,
    "cupy": _from_cupy,
    "cupyx": _from_cupy,
    "jax": _from_jax,
    "jaxlib": _from_jax,
}


def package_of(x) -> str:
    """The top-level package of x's type: "numpy", "torch", "cupy", "jax", ... ("" if none)."""
    return (getattr(type(x), "__module__", None) or "").partition(".")[0]


def to_framework(holder, like):
    """`holder` as the same kind of array as `like` (numpy for anything unknown)."""
    package = package_of(like)
    if package == "torch" and like.device.type == "cpu":  # the result of a CPU call is on the CPU
        return _torch_from_cpu_holder(holder)
    return _BY_PACKAGE.get(package, _from_numpy)(holder)


def _torch_from_cpu_holder(holder):
    """A CPU result as a torch tensor through torch's C importer: torch.from_dlpack's Python
    side (device query, stream logic, retries) costs about a microsecond per result, and a CPU
    holder needs none of it."""
    importer = _FROM_DLPACK.fn
    if importer is None:
        import torch

        importer = _FROM_DLPACK.fn = getattr(torch._C, "_from_dlpack", None) or False
    if importer is False:  # an exotic torch without it
        return _from_torch(holder)
    return importer(holder.__dlpack__(max_version=(1, 0)))


class _Slot:
    fn = None


_FROM_DLPACK = _Slot()


def is_array(x) -> bool:
    """True for objects that speak DLPack (`__dlpack__` and `__dlpack_device__`)."""
    return hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")


def detached(x):
    """A torch tensor that requires grad cannot cross DLPack; outside autograd its data can."""
    return x.detach() if getattr(x, "requires_grad", False) and hasattr(x, "detach") else x


def plain(x):
    """x ready for the core. A CPU or CUDA torch tensor becomes a DLPack capsule made by torch's
    C exporter: torch's Python ``__dlpack__`` and ``__dlpack_device__`` cost about 15 us each per
    tensor, several times a whole call's budget on a GPU. No stream handling is lost: spattn
    runs CUDA work on torch's current stream, the stream the tensors are ready on. Anything
    else (other frameworks, other torch devices, whose errors the core words) passes as it is."""
    if type(x) in _TORCH_PLAIN:  # the common case first: no module-name lookup
        if x.device.type in ("cpu", "cuda"):
            return _TO_DLPACK(x.detach() if x.requires_grad else x)
    elif package_of(x) == "torch" and getattr(x, "device", None) is not None:
        if x.device.type in ("cpu", "cuda") and _TO_DLPACK is not None:
            if x.requires_grad:
                x = x.detach()
            return _TO_DLPACK(x)
    return detached(x)


def _torch_exporter():
    import sys

    torch = sys.modules.get("torch")  # only when the caller already uses torch
    return getattr(getattr(torch, "_C", None), "_to_dlpack", None)


class _Lazy:
    """torch._C._to_dlpack, looked up on first use (never imports torch). The first call also
    records torch.Tensor in _TORCH_PLAIN, the type plain() then recognises at once."""

    def __init__(self):
        self.fn = None

    def __call__(self, x):
        if self.fn is None:
            self.fn = _torch_exporter()
            if self.fn is None:  # an exotic torch without it: its public exporter
                import torch.utils.dlpack

                self.fn = torch.utils.dlpack.to_dlpack
            import torch

            _TORCH_PLAIN.add(torch.Tensor)
        return self.fn(x)


_TORCH_PLAIN: set = set()
_TO_DLPACK = _Lazy()
