// A strided 4-d copy of 2- or 4-byte elements (float16 / bfloat16, float32): how the launchers
// repack q, k, v (or out) whose strides or base address do not allow the kernels' 16-byte copies. One thread per
// element, grid-stride; compiled for every architecture like the other kernels.
#include <cstdint>

#include "arch_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

struct Strided4 {
  int64_t shape[4];
  int64_t src[4];
  int64_t dst[4];
};

template <class E>
__global__ void copy_strided_kernel(const E* __restrict__ src, E* __restrict__ dst,
                                    const Strided4 s, int64_t total) {
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = x, so = 0, dof = 0;
    for (int d = 3; d >= 0; --d) {
      const int64_t idx = r % s.shape[d];
      r /= s.shape[d];
      so += idx * s.src[d];
      dof += idx * s.dst[d];
    }
    dst[dof] = src[so];
  }
}

}  // namespace

cudaError_t copy_strided_4d(const void* src, const int64_t* src_strides, void* dst,
                            const int64_t* dst_strides, const int64_t* shape, int elem_bytes,
                            cudaStream_t stream) {
  if (elem_bytes != 2 && elem_bytes != 4) return cudaErrorNotSupported;
  Strided4 s;
  int64_t total = 1;
  for (int d = 0; d < 4; ++d) {
    s.shape[d] = shape[d];
    s.src[d] = src_strides[d];
    s.dst[d] = dst_strides[d];
    total *= shape[d];
  }
  if (total <= 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  const unsigned grid = unsigned(blocks < 65536 ? blocks : 65536);
  if (elem_bytes == 2)
    copy_strided_kernel<<<grid, threads, 0, stream>>>(static_cast<const uint16_t*>(src),
                                                      static_cast<uint16_t*>(dst), s, total);
  else
    copy_strided_kernel<<<grid, threads, 0, stream>>>(static_cast<const uint32_t*>(src),
                                                      static_cast<uint32_t*>(dst), s, total);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
