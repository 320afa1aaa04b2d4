// TopKBlocks' selection as a public call (docs/patterns.md, learned pattern): which key blocks the
// pattern keeps for given q and k. attention_forward, attention_backward and decode select by
// themselves; this is for inspection, and for callers that want to reuse one choice.
#pragma once

#include <vector>

#include "spattn/dlpack.hpp"
#include "spattn/options.hpp"
#include "spattn/pattern.hpp"

namespace spattn {

// q [B, Nq, Hq, D], k [B, Nk, Hkv, D] (checked like attention_forward's). Returns, per batch
// element, the chosen blocks as a per-head mask [Hq, ceil(Nq/bq), ceil(Nk/bk)] over the
// pattern's (bq, bk) blocks: the top k by pooled score, plus the current blocks when causal.
// ValueError unless `topk` is a TopKBlocks pattern.
// On a CUDA device the blocks are chosen there (attention's kernels, its rule: docs/patterns.md)
// on options.stream, with workspaces from options.allocator, and the masks are copied back to
// the host: the call waits for the stream (so it cannot be captured in a CUDA graph). On the
// CPU, options.num_threads bounds the threads. Other options are ignored.
std::vector<BlockMask> select_blocks(const DLTensor& q, const DLTensor& k, const Pattern& topk,
                                     const Options& options = Options{});

// Variable-length batches: q [Tq, Hq, D], k [Tk, Hkv, D], offsets as attention_forward_varlen
// (read to the host first). On a CUDA device every sequence is chosen there and all the masks
// come back in one copy.
std::vector<BlockMask> select_blocks_varlen(const DLTensor& q, const DLTensor& k,
                                            const DLTensor& cu_seqlens_q,
                                            const DLTensor& cu_seqlens_k, const Pattern& topk,
                                            const Options& options = Options{});

// The concrete pattern attention computes for one sequence whose chosen blocks are `chosen`:
// (BlockSparse(chosen) & Causal()) | always, without the Causal() when not causal and without
// always when there is none.
Pattern selected_pattern(const Pattern& topk, BlockMask chosen);

}  // namespace spattn
