"""Context parallelism: sparse attention over a sequence sharded across the ranks of a
torch.distributed group (gloo for CPU tensors, NCCL for CUDA tensors). See
docs/distributed.md for how the sharding works and when to choose each mode.

    import spattn.distributed as sd
    out = sd.attention(q_shard, k_shard, v_shard, pattern=spattn.SlidingWindow(4095, 0))
"""
from ._api import attention, shard, unshard
from ._comm import reset_stats, stats

__all__ = ["attention", "shard", "unshard", "stats", "reset_stats"]
