"""spattn: sparse attention for any array library, on the CPU (and CUDA as it lands).

    import spattn
    out = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(255, 0))

See docs/patterns.md for what every pattern means; `spattn info` for what this build holds.
"""
from .api import attention, attention_backward, check_decode_errors, decode, info, pool_keys
from .merge import merge
# Every pattern class (patterns.__all__): a new kind's class is exported by being listed there.
from .patterns import *  # noqa: F401,F403
from .recipes import vision_language
from .reference import reference_attention

__version__ = info()["version"]


def __getattr__(name):
    # spattn.jax, spattn.torch_ops and spattn.integrations import their framework, so they are
    # loaded on first use (`spattn.jax.attention(...)` works without `import spattn.jax`).
    if name in ("jax", "torch_ops", "integrations"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'spattn' has no attribute {name!r}")

__all__ = [
    "attention",
    "attention_backward",
    "decode",
    "check_decode_errors",
    "pool_keys",
    "reference_attention",
    "info",
    "merge",
    "Pattern",
    "Dense",
    "Causal",
    "SlidingWindow",
    "BlockSparse",
    "BlockLayout",
    "Dilated",
    "Strided",
    "Fixed",
    "Global",
    "Sink",
    "BigBird",
    "Union",
    "Intersection",
    "PerHead",
    "TopKBlocks",
    "Neighborhood",
    "SlidingTile",
    "LongNet",
    "vision_language",
    "__version__",
]
