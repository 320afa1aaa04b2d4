// Elementwise kernels the planner needs on the device (compiled for every architecture):
//   merge:  out, lse = the exact combination of partial attentions over disjoint key sets
//           (union parts, spattn.merge): lse = log sum_k exp(lse_k),
//           out = sum_k exp(lse_k - lse) out_k; rows no part saw give out 0, lse -inf;
//   sum:    dst = sum_k src_k (the gradients of union parts), float32 accumulation.
// Any strides, float32 / float16 / bfloat16. One warp per (b, n, h) row for merge, one thread
// per element for sum; grid-stride, so any size launches.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "arch_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

template <class T>
__device__ float load(const T* p) { return float(*p); }
template <>
__device__ float load<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ float load<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <class T>
__device__ void store(T* p, float x) { *p = T(x); }
template <>
__device__ void store<__half>(__half* p, float x) { *p = __float2half_rn(x); }
template <>
__device__ void store<__nv_bfloat16>(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

template <class T>
__global__ void merge_kernel(const MergeParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t rows = p.shape[0] * p.shape[1] * p.shape[2];
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    const int64_t h = r % p.shape[2], n = (r / p.shape[2]) % p.shape[1], b = r / (p.shape[2] * p.shape[1]);
    float m = -INFINITY;
    for (int k = 0; k < p.n; ++k)
      m = fmaxf(m, p.lses[k][b * p.lse_strides[k][0] + h * p.lse_strides[k][1] + n * p.lse_strides[k][2]]);
    float w[kMergeMaxParts];
    float total = 0.f;
    for (int k = 0; k < kMergeMaxParts; ++k) {
      w[k] = 0.f;
      if (k < p.n && m != -INFINITY) {
        w[k] = expf(p.lses[k][b * p.lse_strides[k][0] + h * p.lse_strides[k][1] + n * p.lse_strides[k][2]] - m);
        total += w[k];
      }
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    T* out = static_cast<T*>(p.out) + b * p.out_strides[0] + n * p.out_strides[1] + h * p.out_strides[2];
    for (int64_t d = lane; d < p.shape[3]; d += 32) {
      float acc = 0.f;
      for (int k = 0; k < kMergeMaxParts; ++k)
        if (k < p.n && w[k] != 0.f) {
          const T* o = static_cast<const T*>(p.outs[k]) + b * p.out_part_strides[k][0] +
                       n * p.out_part_strides[k][1] + h * p.out_part_strides[k][2] +
                       d * p.out_part_strides[k][3];
          acc += w[k] * inv * load(o);
        }
      store(out + d * p.out_strides[3], acc);
    }
    if (lane == 0 && p.lse != nullptr)
      p.lse[b * p.lse_out_strides[0] + h * p.lse_out_strides[1] + n * p.lse_out_strides[2]] =
          total > 0.f ? m + logf(total) : -INFINITY;
  }
}

template <class T>
__global__ void sum_kernel(const SumParams p) {
  const int64_t total = p.shape[0] * p.shape[1] * p.shape[2] * p.shape[3];
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    int64_t idx[4], r = x;
    for (int d = 3; d >= 0; --d) {
      idx[d] = r % p.shape[d];
      r /= p.shape[d];
    }
    float acc = 0.f;
    for (int k = 0; k < p.n; ++k) {
      int64_t o = 0;
      for (int d = 0; d < 4; ++d) o += idx[d] * p.src_strides[k][d];
      acc += load(static_cast<const T*>(p.srcs[k]) + o);
    }
    int64_t o = 0;
    for (int d = 0; d < 4; ++d) o += idx[d] * p.dst_strides[d];
    store(static_cast<T*>(p.dst) + o, acc);
  }
}

unsigned grid_for(int64_t work, int per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return unsigned(blocks < 1 ? 1 : blocks < 65536 ? blocks : 65536);
}

}  // namespace

cudaError_t merge(const MergeParams& p, KernelDType dtype, cudaStream_t stream) {
  if (p.n < 1 || p.n > kMergeMaxParts) return cudaErrorInvalidValue;
  const int64_t rows = p.shape[0] * p.shape[1] * p.shape[2];
  if (rows <= 0) return cudaSuccess;
  const unsigned grid = grid_for(rows, 8);  // 8 warps of 32 threads, a row each
  switch (dtype) {
    case KernelDType::Float32: merge_kernel<float><<<grid, 256, 0, stream>>>(p); break;
    case KernelDType::Float16: merge_kernel<__half><<<grid, 256, 0, stream>>>(p); break;
    case KernelDType::BFloat16: merge_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p); break;
    default: return cudaErrorNotSupported;  // float64: refused by the backend before this
  }
  return cudaGetLastError();
}

cudaError_t sum(const SumParams& p, KernelDType dtype, cudaStream_t stream) {
  if (p.n < 1 || p.n > kMergeMaxParts) return cudaErrorInvalidValue;
  const int64_t total = p.shape[0] * p.shape[1] * p.shape[2] * p.shape[3];
  if (total <= 0) return cudaSuccess;
  const unsigned grid = grid_for(total, 256);
  switch (dtype) {
    case KernelDType::Float32: sum_kernel<float><<<grid, 256, 0, stream>>>(p); break;
    case KernelDType::Float16: sum_kernel<__half><<<grid, 256, 0, stream>>>(p); break;
    case KernelDType::BFloat16: sum_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p); break;
    default: return cudaErrorNotSupported;  // float64: refused by the backend before this
  }
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
