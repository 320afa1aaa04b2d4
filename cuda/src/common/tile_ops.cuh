// Small CuTe building blocks shared by the attention kernels (fwd/forward_kernel.cuh,
// bwd/backward_kernel.cuh): accumulator views, quad reductions, predicated tile loads and the
// two register-blocked products (operands from shared memory by ldmatrix, the next k slice
// loaded while the current one multiplies).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>

#ifndef SPATTN_CUDA_ARCH_NS
#error "SPATTN_CUDA_ARCH_NS must name the architecture namespace (set by cuda/CMakeLists.txt)"
#endif

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::tileops {

using namespace cute;

// The accumulator of an m16n8 MMA tile, ((2 cols, 2 row halves), MMA_M, MMA_N), seen as
// (rows, cols) = ((2 row halves, MMA_M), (2 cols, MMA_N)), so that softmax works on rows.
template <class L>
__device__ __forceinline__ auto rows_cols(L const& acc) {
  static_assert(decltype(rank(acc))::value == 3 && decltype(size<0>(acc))::value == 4);
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<2>(acc)));
}

// The same accumulator as the A operand of the next m16n8k16 product: two neighbouring n8
// tiles form one k16 tile, ((2, 2), MMA_M, MMA_N) -> (((2, 2), 2), MMA_M, MMA_N / 2).
template <class L>
__device__ __forceinline__ auto acc_as_a(L const& acc) {
  auto d = logical_divide(acc, Shape<X, X, _2>{});  // ((2, 2), MMA_M, (2, MMA_N / 2))
  return make_layout(make_layout(get<0>(d), get<2, 0>(d)), get<1>(d), get<2, 1>(d));
}

// x, which the compiler can no longer see through: a value recomputed from it is not merged
// with the same value computed earlier (and kept in registers all the while).
__device__ __forceinline__ int opaque(int x) {
  asm volatile("" : "+r"(x));
  return x;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Tile rows [0, valid) from global to shared memory by cp.async; the others are zero-filled.
// src/dst: a thread's partition (CPY, CPY_M, CPY_K); coord: the same partition of an identity
// tensor (row, col) of the tile.
template <class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void load_rows(TiledCopy const& tc, Src const& src, Dst&& dst,
                                          Coord const& coord, int valid) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(dst); ++m) {
    if (get<0>(coord(0, m, 0)) < valid) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(dst); ++k) copy(tc, src(_, m, k), dst(_, m, k));
    } else {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(dst); ++k) clear(dst(_, m, k));
    }
  }
}

// acc += A B^T over the k mode, A and B read from shared memory by ldmatrix, the next k slice
// loaded while the current one multiplies.
template <class Mma, class Acc, class RA, class RB, class SA, class SB, class CpA, class CpB,
          class ThrCpA, class ThrCpB>
__device__ __forceinline__ void gemm_ss(Mma& mma, Acc& acc, RA& rA, RB& rB, SA const& sA,
                                        SB const& sB, CpA const& cpA, CpB const& cpB,
                                        ThrCpA const& tA, ThrCpB const& tB) {
  Tensor rA_v = tA.retile_D(rA);
  Tensor rB_v = tB.retile_D(rB);
  copy(cpA, sA(_, _, 0), rA_v(_, _, 0));
  copy(cpB, sB(_, _, 0), rB_v(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) {
      copy(cpA, sA(_, _, k + 1), rA_v(_, _, k + 1));
      copy(cpB, sB(_, _, k + 1), rB_v(_, _, k + 1));
    }
    gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// acc += A B^T with A already in registers (P) and B from shared memory (V^T).
template <class Mma, class Acc, class RA, class RB, class SB, class CpB, class ThrCpB>
__device__ __forceinline__ void gemm_rs(Mma& mma, Acc& acc, RA const& rA, RB& rB, SB const& sB,
                                        CpB const& cpB, ThrCpB const& tB) {
  Tensor rB_v = tB.retile_D(rB);
  copy(cpB, sB(_, _, 0), rB_v(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) copy(cpB, sB(_, _, k + 1), rB_v(_, _, k + 1));
    gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::tileops
