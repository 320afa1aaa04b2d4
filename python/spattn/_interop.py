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


def to_framework(holder, like):
    """`holder` as the same kind of array as `like` (numpy for anything unknown)."""
    package = (getattr(type(like), "__module__", None) or "").partition(".")[0]
    return _BY_PACKAGE.get(package, _from_numpy)(holder)


def is_array(x) -> bool:
    """True for objects that speak DLPack (`__dlpack__` and `__dlpack_device__`)."""
    return hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")


def detached(x):
    """A torch tensor that requires grad cannot cross DLPack; outside autograd its data can."""
    return x.detach() if getattr(x, "requires_grad", False) and hasattr(x, "detach") else x
