// The CPU backend's entry points. The caller (api.cpp) has already checked every shape, dtype
// and device, compiled the layout with cpu_tile_size() and made the predicate.
#pragma once

#include <cstdint>

#include "backend/backend.hpp"
#include "spattn/layout.hpp"
#include "spattn/predicate.hpp"
#include "spattn/tensor.hpp"

namespace spattn::cpu {

// Query and key tile sizes the CPU kernels walk the layout with.
struct TileSize {
  int64_t bq, bk;
};
TileSize cpu_tile_size();

// Cache blocking, decided once from the data cache sizes read at run time (cache_sizes() in
// thread_pool.hpp). The kernels walk the layout in 64 x 64 tiles (cpu_tile_size()); what the
// caches decide is how the score products S^T = K Q^T (forward and backward) and dP^T = V dO^T
// (backward) are split along the head dimension:
//
//   head_chunk = the largest multiple of 16 with head_chunk * 64 queries * 4 bytes <= L1d,
//                between 16 and 256; L1d unknown: 32 KB is assumed (head_chunk 128).
//
// The micro-kernel streams key rows past the packed Q^T (or dO^T) panel, which it rereads for
// every 4 key rows: the panel is the operand that must stay in L1d. With 32 KB (this
// project's Zen 4 machine) D <= 128 runs in one pass, D = 256 in two; with 48 KB (recent Intel
// cores) D <= 192 in one. The per-thread scratch of a tile (forward: Q^T, O, S^T, K and V
// blocks, about 80 KB at D = 64) must fit in L2; `l2_fits` reports whether it does for D = Dv
// = 256, the largest head dim.
struct Blocking {
  int64_t l1d = 0, l2 = 0;  // bytes read at run time (0: unknown)
  int64_t head_chunk = 128;
  bool l2_fits = true;
};
const Blocking& cpu_blocking();
// One line for `spattn info`, e.g. "64x64 tiles, head-dim chunk 128 (L1d 32K)".
const char* blocking_desc();

// Views are [B, Nq, Hq, D] (q), [B, Nk, Hkv, D] (k), [B, Nk, Hkv, Dv] (v), [B, Nq, Hq, Dv]
// (out, dout), [B, Hq, Nq] float32 (lse; float64 for float64 inputs), any strides. All other
// float tensors share `dtype`. Float64 runs in attention_f64.cpp (the backend routes it there).
struct ForwardArgs {
  TensorView q, k, v, out;
  TensorView lse;  // data == nullptr: not wanted
  DType dtype;
  double scale;               // the SIMD kernels round it to float
  const BlockLayout* layout;  // bq x bk == cpu_tile_size(); 1 or Hq heads
  Predicate pred;
  backend::ScoreMods mods = {};  // host pointers
};

struct BackwardArgs {
  TensorView dout, q, k, v, out, lse;
  TensorView dq, dk, dv;  // written, same shapes and dtype as q, k, v
  DType dtype;
  double scale;
  const BlockLayout* layout;
  Predicate pred;
  // The layout holds every key its rows see (false for one part of a union run in parts): then,
  // for float16/bfloat16, delta = rowsum(dO * O) is recomputed exactly from P and dP instead of
  // being read off the rounded `out` (see exact_delta in attention_tiles.hpp).
  bool rows_complete = true;
  backend::ScoreMods mods = {};  // softcap and ALiBi (host pointers); sinks are ignored
};

void forward(const ForwardArgs& a);
// The forward of a pattern whose rows keep few scattered keys, row by row over their key lists
// (sparse_rows.cpp); false (nothing done) when the pattern is not one, or its rows keep too
// many keys for that to pay.
bool forward_sparse_rows(const ForwardArgs& a);
bool backward_sparse_rows(const BackwardArgs& a);  // its backward, likewise
// The forward of a grid neighbourhood (Neighborhood on 2 or 3 dims) in gathered tiles: a query
// tile is a patch of the grid, its keys the box its neighbourhoods lie in (grid_tiles.cpp);
// false (nothing done) for other patterns, or with SPATTN_GRID_TILES=0. Its backward is the
// block walk's.
bool forward_grid_tiles(const ForwardArgs& a);
void backward(const BackwardArgs& a);

// backend::Backend::sink_grad on host memory.
void sink_grad(const TensorView& dout, const TensorView& out, const TensorView& lse,
               const backend::ScoreMods& mods, const TensorView& dsinks, DType dtype);

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
