// The plain-data boundary between the common CPU code (forward.cpp, backward.cpp) and the
// per-ISA kernel translation units (isa_*.cpp). Only structs and function declarations here:
// no inline code, so nothing in this header can be compiled twice with different target flags.
#pragma once

#include <cstdint>

namespace spattn::cpu {

enum : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };  // kF64: attention_f64.cpp only

// A 4-d tensor: data at element [0,0,0,0], strides in elements (any sign).
struct T4 {
  void* data = nullptr;
  int64_t s[4] = {0, 0, 0, 0};
};

// Everything a tile kernel needs, already checked and flattened.
struct Problem {
  int dtype = kF32;
  int64_t B = 0, Nq = 0, Nk = 0, Hq = 0, Hkv = 0, D = 0, Dv = 0, group = 1;  // group = Hq / Hkv
  int64_t Dp = 0, Dvp = 0;  // D, Dv rounded up to multiples of 16
  float scale = 1.f;        // softmax scale
  float scale2 = 1.f;       // scale * log2(e): scores are kept in base-2 units
  // Block layout (CSR over ranges [lo, hi) of key blocks, see layout.hpp), tiles of 64 x 64.
  int64_t lheads = 1, nqb = 0, nkb = 0;
  const int64_t *full_ptr = nullptr, *part_ptr = nullptr;
  const int32_t *full_lo = nullptr, *full_hi = nullptr, *part_lo = nullptr, *part_hi = nullptr;
  // Element rule on partial blocks. window: the tile caller passes each row's exact key
  // interval [lo, hi]. Otherwise mask_fn fills m[k * 64 + q] (1 = kept) for the
  // nk x mq block at (i0, j0) of head h.
  bool window = true;
  void (*mask_fn)(const void* ctx, int64_t h, int64_t i0, int mq, int64_t j0, int nk,
                  uint8_t* m) = nullptr;
  const void* mask_ctx = nullptr;
  // Optional (not window): for a partial block, each row's kept keys as one interval in block
  // coordinates, rlo/rhi as window_ranges gives them (rows q >= mq keep [0, 64]); false when
  // some row's keys are not one interval (then mask_fn decides).
  bool (*range_fn)(const void* ctx, int64_t h, int64_t i0, int mq, int ncol, int64_t j0, int nk,
                   int32_t* rlo, int32_t* rhi) = nullptr;
  // Tensors: q [B,Nq,Hq,D], k [B,Nk,Hkv,D], v [B,Nk,Hkv,Dv], o/dout [B,Nq,Hq,Dv]; dq/dk/dv like
  // q/k/v. lse [B,Hq,Nq] float32 (data null: not wanted in the forward).
  T4 q, k, v, o, dout, dq, dk, dv;
  float* lse = nullptr;
  // Head-dim chunk of the S^T = K Q^T and dP^T = V dO^T products, a multiple of 16 (see
  // cpu_blocking() in attention_cpu.hpp): each chunk's Q^T / dO^T rows stay in L1d while the
  // key rows stream past them. >= D: one pass.
  int64_t kc = 1 << 30;
  bool exact_delta = false;  // backward: recompute delta from P and dP (low-precision inputs)
  // Score modifiers (options.hpp, Modifiers), in the kernels' base-2 units: a kept score s2 =
  // log2(e) * scale * q.k becomes softcap2 * tanh(s2 / softcap2) (softcap2 = softcap * log2 e;
  // 0: none), then s2 - alibi2[h] * |rel| (alibi2[h] = slope_h * log2 e; null: none) with
  // rel = rel_step * (i - j) + rel_base for row i and key j of this problem (rel_step 1 and
  // rel_base Nk - Nq, except on the row-strided views of residue classes). mods: either one
  // is set. sink2[h] = sink_h * log2 e (null: none) joins each row's softmax denominator in the
  // forward (the backward needs no sink: its lse already holds it).
  bool mods = false;
  float softcap2 = 0.f;
  const float* alibi2 = nullptr;
  int64_t rel_step = 1, rel_base = 0;
  const float* sink2 = nullptr;
  int64_t lse_s[3] = {0, 0, 0};
};

constexpr int kTile = 64;
constexpr int kTileGroups = kTile / 16;  // 16-query groups of a tile

// A gathered query tile of a grid pattern (grid_tiles.cpp builds them; attention_grid.hpp runs
// them): 64 queries that form a patch of a grid, and the box of cells their neighbourhoods lie
// in, its keys gathered in one packed order. Grids have 3 dims here (leading dims of extent 1);
// dim 2 is the fastest-varying one of the grid. The box's key k, in packed order, is the cell
// (c0, c1, c2) with k = (c2 * e[0] + c0) * e[1] + c1: dim 2 outermost, so that queries that
// share their lines (dims 0 and 1) and sit side by side in dim 2 need contiguous key ranges.
struct GridTile {
  int64_t row[kTile];               // each column's query row (-1: padding, keeps nothing)
  int32_t lo[3][kTile], hi[3][kTile];  // its kept cells per dim, box coordinates, inclusive
  // Per 16-query group, the union of its rows' lo..hi per dim (lo > hi: no row).
  int32_t glo[3][kTileGroups], ghi[3][kTileGroups];
  int32_t e[3];                      // box extents
  int64_t base, step[3];             // key token of cell c: base + sum c[t] * step[t]
};

// One set of kernels, compiled for one instruction set.
struct KernelTable {
  const char* name;  // "avx512bf16", "avx512", "avx2", "portable"
  // Floats of scratch one thread needs (64-byte aligned base).
  int64_t (*fwd_ws_floats)(const Problem& p);
  int64_t (*bwd_ws_floats)(const Problem& p);
  // Forward of query tile a of head h, batch b. lo/hi: the rows' key intervals (window only).
  void (*fwd_tile)(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                   const int64_t* hi, float* ws);
  // Backward of query tile a of head h: writes dq rows, accumulates dK (unscaled) and dV of
  // key block c into dk_acc/dv_acc rows (c - kb_lo) * 64 .. (row strides Dp / Dvp).
  void (*bwd_tile)(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                   const int64_t* hi, float* dk_acc, float* dv_acc, int64_t kb_lo, float* ws);
  // Sum the nsrc partial dK/dV blocks of key block c (kv head g, batch b), scale dK, write
  // dk/dv rows of that block (zeros when nsrc == 0).
  void (*bwd_store)(const Problem& p, int64_t b, int64_t g, int64_t c, const float* const* dk_src,
                    const float* const* dv_src, int nsrc);
  // Forward of a gathered grid tile (GridTile) of head h, batch b: writes its rows of out/lse.
  int64_t (*fwd_grid_ws_floats)(const Problem& p);
  void (*fwd_grid_tile)(const Problem& p, int64_t b, int64_t h, const GridTile& t, float* ws);
  // dst[0..n) = sum_k w[k] * src_k[0..n) for nsrc rows of one dtype (element strides given),
  // accumulated in float32 (tmp: 2 * n floats of scratch). Merges partial attention results.
  void (*weighted_sum_row)(int dtype, int n, const void* const* src, const int64_t* src_stride,
                           const float* w, int nsrc, void* dst, int64_t dst_stride, float* tmp);
};

// The table chosen for this CPU (once; SPATTN_SIMD=portable|avx2|avx512|avx512bf16 may lower
// it): float32 and float16 problems, merges and sums.
const KernelTable* kernels();
// The table for problems of one dtype: kernels(), except bfloat16 on CPUs with AVX512_BF16
// (vdpbf16ps), which gets kernels_avx512bf16().
const KernelTable* kernels_for(int dtype);

const KernelTable* kernels_portable();
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();
const KernelTable* kernels_avx512bf16();
#endif

}  // namespace spattn::cpu
