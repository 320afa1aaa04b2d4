// The CPU backend's entry points. The caller (api.cpp) has already checked every shape, dtype
// and device, compiled the layout with cpu_tile_size() and made the predicate.
#pragma once

#include <cstdint>

#include "spattn/layout.hpp"
#include "spattn/predicate.hpp"
#include "spattn/tensor.hpp"

namespace spattn::cpu {

// Query and key tile sizes the CPU kernels walk the layout with.
struct TileSize {
  int64_t bq, bk;
};
TileSize cpu_tile_size();

// Views are [B, Nq, Hq, D] (q), [B, Nk, Hkv, D] (k), [B, Nk, Hkv, Dv] (v), [B, Nq, Hq, Dv]
// (out, dout), [B, Hq, Nq] float32 (lse), any strides. All float tensors share `dtype`.
struct ForwardArgs {
  TensorView q, k, v, out;
  TensorView lse;  // data == nullptr: not wanted
  DType dtype;
  float scale;
  const BlockLayout* layout;  // bq x bk == cpu_tile_size(); 1 or Hq heads
  Predicate pred;
};

struct BackwardArgs {
  TensorView dout, q, k, v, out, lse;
  TensorView dq, dk, dv;  // written, same shapes and dtype as q, k, v
  DType dtype;
  float scale;
  const BlockLayout* layout;
  Predicate pred;
  // The layout holds every key its rows see (false for one part of a union run in parts): then,
  // for float16/bfloat16, delta = rowsum(dO * O) is recomputed exactly from P and dP instead of
  // being read off the rounded `out` (see exact_delta in attention_tiles.hpp).
  bool rows_complete = true;
};

void forward(const ForwardArgs& a);
void backward(const BackwardArgs& a);

// The SIMD level the kernels run with on this CPU ("avx512 (+bf16)": AVX-512, and bfloat16
// products on AVX512_BF16; "avx512", "avx2", "portable").
const char* simd_level();

// The data caches the CPU kernels see, e.g. "L1d 32K, L2 1024K, L3 32768K (per cpu0)".
const char* cache_desc();

}  // namespace spattn::cpu

namespace spattn::cpu {

// Exact merge of partial results over disjoint key sets: outs[k] [B, N, H, Dv] with lses[k]
// [B, H, N] float32 → out, lse (same shapes). All outs and out share `dtype`.
struct MergeArgs {
  const TensorView* outs;
  const TensorView* lses;
  int nparts;
  TensorView out, lse;
  DType dtype;
};
void merge(const MergeArgs& a);

}  // namespace spattn::cpu

namespace spattn::cpu {

// dst = sum of srcs[0..n), all [B, N, H, D] of one dtype, any strides (float32 accumulation).
void sum(const TensorView& dst, const TensorView* srcs, int n, DType dtype);

}  // namespace spattn::cpu
