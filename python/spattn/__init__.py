"""spattn: sparse attention for any array library, on the CPU (and CUDA as it lands).

    import spattn
    out = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(255, 0))

See SPEC.md for what every pattern means; `spattn info` for what this build holds.
"""
from .api import attention, attention_backward, decode, info, pool_keys
from .merge import merge
from .patterns import (
    BigBird,
    BlockLayout,
    BlockSparse,
    Causal,
    Dense,
    Dilated,
    Fixed,
    Global,
    Intersection,
    Pattern,
    PerHead,
    Sink,
    SlidingWindow,
    Strided,
    TopKBlocks,
    Union,
)
from .reference import reference_attention

__version__ = info()["version"]

__all__ = [
    "attention",
    "attention_backward",
    "decode",
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
    "__version__",
]
