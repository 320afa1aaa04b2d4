// The float32 CUDA kernels' tiling (cuda/src/f32/): which scores and output elements each
// thread owns, how tiles are laid out in shared memory, and how much shared memory that takes,
// as SPATTN_HD functions so that the host test (tests/cpp/test_cuda_f32_logic.cpp) checks the
// same arithmetic the kernels run.
//
// The float32 kernels are SIMT (no tensor cores: mma.sync has no fp32 x fp32 product, and TF32
// would round the inputs to 10 mantissa bits, far outside the CPU's float32 tolerance). They
// walk exactly the layouts of the float16 / bfloat16 kernels: the forward the 128 x 64 tile of
// forward_logic.hpp (RowWalk, masks, online softmax, score modifiers), the backward the 64 x 64
// tile of backward_logic.hpp (ColumnWalk, bwd_prob / bwd_ds, the same preprocess and dq
// conversion kernels). Only the products differ: register-blocked outer products over tiles in
// shared memory, each thread owning a small block of rows x strided columns.
#pragma once

#include <cmath>
#include <cstdint>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/hostdevice.hpp"

// Loop unrolling in the kernels (the host compiler, running the same code in the tests, does
// without).
#if defined(__CUDACC__)
#define SPATTN_F32_UNROLL _Pragma("unroll")
#define SPATTN_F32_UNROLL4 _Pragma("unroll 4")
#else
#define SPATTN_F32_UNROLL
#define SPATTN_F32_UNROLL4
#endif

namespace spattn::cuda {

constexpr int kF32Threads = 256;

// Shared-memory row stride of a tile of `cols` floats: one float of padding, so that the
// threads of a warp reading one element of different rows hit different banks.
SPATTN_HD constexpr int f32_stride(int cols) { return cols + 1; }

// The largest dynamic shared memory a CTA may use on every supported device (sm_80: 163 KB).
constexpr int64_t kF32MaxSmem = 166912;

// ---------------------------------------------------------------------------------------------
// Forward: 128 x 64 score tile; thread t owns rows fwd_row(t, i) (i < 4) and score columns
// fwd_col(t, j) (j < 8), output columns fwd_col(t, j) (j < D / 8). The 8 threads of one row
// group are 8 consecutive lanes of a warp (row reductions are 3 xor shuffles).

constexpr int kF32FwdRows = 4;                               // rows per thread
constexpr int kF32FwdLanes = 8;                              // threads per row group
constexpr int kF32FwdCols = kFwdBlockN / kF32FwdLanes;       // score columns per thread
static_assert(kF32Threads / kF32FwdLanes * kF32FwdRows == kFwdBlockM, "rows cover the tile");

SPATTN_HD constexpr int f32_fwd_row(int t, int i) {
  return t / kF32FwdLanes + (kF32Threads / kF32FwdLanes) * i;
}
SPATTN_HD constexpr int f32_fwd_col(int t, int j) { return t % kF32FwdLanes + kF32FwdLanes * j; }

// Shared memory (floats): Q [128][D+1], K [64][D+1], V [64][D] (read along rows only), P
// [128][64+1].
SPATTN_HD constexpr int64_t f32_fwd_off_k(int d) { return int64_t(kFwdBlockM) * f32_stride(d); }
SPATTN_HD constexpr int64_t f32_fwd_off_v(int d) {
  return f32_fwd_off_k(d) + int64_t(kFwdBlockN) * f32_stride(d);
}
SPATTN_HD constexpr int64_t f32_fwd_off_p(int d) { return f32_fwd_off_v(d) + int64_t(kFwdBlockN) * d; }
SPATTN_HD constexpr int64_t f32_fwd_smem_bytes(int d) {
  return (f32_fwd_off_p(d) + int64_t(kFwdBlockM) * f32_stride(kFwdBlockN)) * 4;
}

// ---------------------------------------------------------------------------------------------
// Backward: 64 x 64 score tile; thread t owns query rows bwd_row(t, i) and key columns
// bwd_col(t, j) (i, j < 4) of S, P, dP and dS; of dK and dV (keys x D) rows bwd_row(t, i) (as
// keys) and columns bwd_col(t, j) (j < D / 16); of the dQ tile (queries x D) likewise.

constexpr int kF32BwdRows = 4;
constexpr int kF32BwdLanes = 16;
constexpr int kF32BwdCols = kBwdBlockN / kF32BwdLanes;
static_assert(kF32Threads / kF32BwdLanes * kF32BwdRows == kBwdBlockM, "rows cover the tile");
static_assert(kBwdBlockM == kBwdBlockN, "dK / dV rows reuse the query-row mapping");

SPATTN_HD constexpr int f32_bwd_row(int t, int i) {
  return t / kF32BwdLanes + (kF32Threads / kF32BwdLanes) * i;
}
SPATTN_HD constexpr int f32_bwd_col(int t, int j) { return t % kF32BwdLanes + kF32BwdLanes * j; }

// Shared memory (floats): K, V, Q, dO [64][D+1] each, then P and dS [64][64+1].
SPATTN_HD constexpr int64_t f32_bwd_tile(int d) { return int64_t(kBwdBlockN) * f32_stride(d); }
SPATTN_HD constexpr int64_t f32_bwd_off_p(int d) { return 4 * f32_bwd_tile(d); }
SPATTN_HD constexpr int64_t f32_bwd_off_ds(int d) {
  return f32_bwd_off_p(d) + int64_t(kBwdBlockM) * f32_stride(kBwdBlockN);
}
SPATTN_HD constexpr int64_t f32_bwd_smem_bytes(int d) {
  return (f32_bwd_off_ds(d) + int64_t(kBwdBlockM) * f32_stride(kBwdBlockN)) * 4;
}

// Head dims the float32 kernels can be built for: the column mappings need D % 16 == 0, and
// both kernels' shared memory must fit.
SPATTN_HD constexpr bool f32_head_dim_ok(int d) {
  return d > 0 && d % 16 == 0 && f32_fwd_smem_bytes(d) <= kF32MaxSmem &&
         f32_bwd_smem_bytes(d) <= kF32MaxSmem;
}

// ---------------------------------------------------------------------------------------------
// Tile loads: a rows x d tile of a [.., N, .., D] tensor (row r at base + r * row_stride) into
// shared memory with row stride f32_stride(d), as float4 pieces. Piece x (of rows * d / 4) is
// row x / (d / 4), columns 4 * (x % (d / 4)) ..+3; thread t loads pieces t, t + 256, ...
// Rows at or past `valid` are zero-filled, never read.

SPATTN_HD constexpr int f32_piece_row(int x, int d) { return x / (d / 4); }
SPATTN_HD constexpr int f32_piece_col(int x, int d) { return 4 * (x % (d / 4)); }

// ---------------------------------------------------------------------------------------------
// The products.

// acc[i][j] += sum over k < kK of A(i, k) * B(k, j), both read from shared memory:
//   A(i, k) = a[a_row[i] + k * a_ks], B(k, j) = b[k * b_ks + b_col[j]],
// a_row / b_col being element offsets of the thread's rows / columns (f32_logic.hpp's mappings
// times the strides), so that a transposed operand is only other strides. One routine serves
// Q K^T, P V, dO V^T, P^T dO, dS^T Q and dS K: per k, kI + kJ shared loads feed kI * kJ FMAs.
template <int kI, int kJ, int kK>
SPATTN_HD void outer_products(float (&acc)[kI][kJ], const float* a, const int (&a_row)[kI],
                              int a_ks, const float* b, int b_ks, const int (&b_col)[kJ]) {
  SPATTN_F32_UNROLL4
  for (int k = 0; k < kK; ++k) {
    float av[kI], bv[kJ];
    SPATTN_F32_UNROLL
    for (int i = 0; i < kI; ++i) av[i] = a[a_row[i] + k * a_ks];
    SPATTN_F32_UNROLL
    for (int j = 0; j < kJ; ++j) bv[j] = b[k * b_ks + b_col[j]];
    SPATTN_F32_UNROLL
    for (int i = 0; i < kI; ++i)
      SPATTN_F32_UNROLL
      for (int j = 0; j < kJ; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

}  // namespace spattn::cuda
