// TopKBlocks' selection (docs/patterns.md, learned pattern), shared by attention (api.cpp), the public
// select_blocks (select_api.cpp) and decode (cpu/decode.cpp): one sequence at a time, rows read
// through a small accessor so that contiguous tensors and paged KV caches take the same path.
#pragma once

#include <cstdint>

#include "spattn/pattern.hpp"
#include "spattn/tensor.hpp"

namespace spattn::select {

// The rows of one sequence of q or k: row j of head h starts at
//   contiguous: base + (j * s_row + h * s_head) * element size
//   paged:      base + (page * s_page + (j % page_size) * s_row + h * s_head) * element size,
//               page = table[j / page_size] (already checked to be a valid page)
// with s_dim between the D elements of a row. Strides in elements.
struct Rows {
  const char* base = nullptr;
  int64_t n = 0, heads = 0, d = 0;
  int64_t s_row = 0, s_head = 0, s_dim = 1;
  DType dtype = DType::Float32;
  // Paged rows (keys of a decode cache): table entries of this sequence, int32 or int64.
  const char* table = nullptr;
  bool table64 = false;
  int64_t table_s = 0, page_size = 0, s_page = 0;

  const char* row(int64_t j, int64_t h) const;
};

// TypeError naming `name` unless the selection reads this dtype: float32, float16 or bfloat16
// (it pools and scores with the float32 SIMD row kernels; float64 is for gradient checks of
// the other patterns).
void expect_selectable(DType dtype, const char* name);

// Rows of batch element b of a [B, N, H, D] tensor.
Rows batch_rows(const TensorView& t, int64_t b, DType dtype);

// Mean key of each key block of one sequence, kept by the caller (a decode cache's pooled
// keys): block c of kv head g at data[c * s_block + g * s_head + x * s_dim], float32, for
// c < blocks.
struct PooledKeys {
  const float* data = nullptr;
  int64_t blocks = 0, s_block = 0, s_head = 0, s_dim = 1;
};

// dst[h][c][0..dp) = mean of rows [c * bs, min(n, (c + 1) * bs)) of head h for c < nb (zero
// padding from d to dp; blocks past the rows are zero). Parallel over blocks.
void pool(const Rows& rows, int64_t bs, int64_t nb, int64_t dp, float* dst);

// The key blocks TopKBlocks keeps for one sequence: a per-head mask [Hq, nqb, nkb] over blocks
// of the pattern's (bq, bk): the top k past blocks by pooled score plus the current blocks
// (causal), or the top k of all blocks (not causal). The `always` pattern is not in it
// (concrete() unites it in, with its own element rule). Parallel over (head, query block);
// deterministic: the same inputs give the same mask whatever the thread count.
// With `given`, the key means come from it (every block the choice scores must be there:
// ValueError otherwise) and no key row is read.
BlockMask choose(const Pattern& topk, const Rows& q, const Rows& k,
                 const PooledKeys* given = nullptr);

// The mask choose() returns for a sequence of nq queries, nk keys and hq query heads, all bits
// clear: its shape [hq, ceil(nq / bq), ceil(nk / bk)] and block sizes (what a backend choosing
// on its device fills in).
BlockMask empty_mask(const Pattern& topk, int64_t nq, int64_t nk, int64_t hq);

// The pattern attention computes for that choice: BlockSparse(chosen) & Causal() (causal) or
// BlockSparse(chosen) (not), united with `always` when the pattern has one.
Pattern concrete(const Pattern& topk, BlockMask chosen);

}  // namespace spattn::select
