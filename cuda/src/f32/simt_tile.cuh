// Device helpers of the float32 SIMT kernels (f32/forward_f32.cuh, f32/backward_f32.cuh):
// tile loads into padded shared memory and row-group reductions. The register-blocked product
// of two shared-memory tiles (outer_products) is in spattn/cuda/f32_logic.hpp with the thread ->
// element mappings, so that the host test runs it too.
#pragma once

#include <cstdint>

#include "spattn/cuda/f32_logic.hpp"

#ifndef SPATTN_CUDA_ARCH_NS
#error "SPATTN_CUDA_ARCH_NS must name the architecture namespace (set by cuda/CMakeLists.txt)"
#endif

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32 {

// A kRows x kD tile (row r at src + r * row_stride, unit column stride, 16-byte aligned rows:
// the launcher repacks tensors that are not) into shared memory with row stride
// f32_stride(kD). Rows >= valid are zero-filled. All 256 threads take part; the caller
// synchronises.
template <int kRows, int kD>
__device__ __forceinline__ void load_tile(float* dst, const float* src, int64_t row_stride,
                                          int valid, int tid) {
  constexpr int kPieces = kRows * kD / 4;
  constexpr int kS = f32_stride(kD);
#pragma unroll 4
  for (int x = tid; x < kPieces; x += kF32Threads) {
    const int r = f32_piece_row(x, kD), c = f32_piece_col(x, kD);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < valid) v = __ldg(reinterpret_cast<const float4*>(src + r * row_stride + c));
    float* d = dst + r * kS + c;
    d[0] = v.x;
    d[1] = v.y;
    d[2] = v.z;
    d[3] = v.w;
  }
}

// The same with an unpadded destination (row stride kD): 16-byte shared-memory stores.
template <int kRows, int kD>
__device__ __forceinline__ void load_tile_dense(float* dst, const float* src, int64_t row_stride,
                                                int valid, int tid) {
  constexpr int kPieces = kRows * kD / 4;
#pragma unroll 4
  for (int x = tid; x < kPieces; x += kF32Threads) {
    const int r = f32_piece_row(x, kD), c = f32_piece_col(x, kD);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < valid) v = __ldg(reinterpret_cast<const float4*>(src + r * row_stride + c));
    *reinterpret_cast<float4*>(dst + r * kD + c) = v;
  }
}

// Reductions over the `lanes` consecutive lanes of a row group (lanes a power of two <= 32).
template <int kLanes>
__device__ __forceinline__ float group_max(float x) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <int kLanes>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32
