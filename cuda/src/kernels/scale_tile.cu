// A small real CuTe kernel, compiled for every architecture: out = alpha * in on a row-strided
// matrix, one 32 x 64 tile per thread block, staged through shared memory with predicated
// cute::copy_if (the same load/compute/store shape as an attention tile). It is what
// spattn::cuda::selftest() runs and what proves the toolchain (nvcc + CuTe headers + per-arch
// object libraries) works.
#include <cute/tensor.hpp>

#include "arch_api.hpp"

#ifndef SPATTN_CUDA_ARCH_NS
#error "SPATTN_CUDA_ARCH_NS must name the architecture namespace (set by cuda/CMakeLists.txt)"
#endif
#ifndef SPATTN_CUDA_REDUCED
#define SPATTN_CUDA_REDUCED 0
#endif

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kTileM = 32;
constexpr int kTileN = 64;
constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads)
    scale_tile_kernel(const T* __restrict__ in, int64_t ld_in, T* __restrict__ out, int64_t ld_out,
                      int rows, int cols, float alpha) {
  using namespace cute;
  auto extent = make_shape(rows, cols);
  Tensor mIn = make_tensor(make_gmem_ptr(in), make_layout(extent, make_stride(ld_in, Int<1>{})));
  Tensor mOut = make_tensor(make_gmem_ptr(out), make_layout(extent, make_stride(ld_out, Int<1>{})));
  Tensor mCoord = make_identity_tensor(extent);  // (row, col) of every element, for predicates

  auto tiler = make_shape(Int<kTileM>{}, Int<kTileN>{});
  auto tile = make_coord(static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y));
  Tensor gIn = local_tile(mIn, tiler, tile);       // (32, 64)
  Tensor gOut = local_tile(mOut, tiler, tile);     // (32, 64)
  Tensor cTile = local_tile(mCoord, tiler, tile);  // (32, 64)

  __shared__ T smem[kTileM * kTileN];
  Tensor sTile = make_tensor(make_smem_ptr(smem), make_layout(tiler, LayoutRight{}));

  // 4 x 64 threads, row-major: consecutive threads read consecutive columns (coalesced).
  auto threads = make_layout(make_shape(Int<kThreads / kTileN>{}, Int<kTileN>{}), LayoutRight{});
  Tensor tGin = local_partition(gIn, threads, threadIdx.x);    // (8, 1)
  Tensor tGout = local_partition(gOut, threads, threadIdx.x);  // (8, 1)
  Tensor tS = local_partition(sTile, threads, threadIdx.x);    // (8, 1)
  Tensor tC = local_partition(cTile, threads, threadIdx.x);    // (8, 1)

  Tensor pred = make_tensor<bool>(shape(tC));
  CUTE_UNROLL
  for (int i = 0; i < size(pred); ++i) pred(i) = elem_less(tC(i), extent);

  copy_if(pred, tGin, tS);
  __syncthreads();
  CUTE_UNROLL
  for (int i = 0; i < size(tS); ++i) tS(i) = static_cast<T>(alpha * static_cast<float>(tS(i)));
  __syncthreads();
  copy_if(pred, tS, tGout);
}

template <class T>
cudaError_t launch(const void* in, int64_t ld_in, void* out, int64_t ld_out, int rows, int cols,
                   float alpha, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  dim3 grid((rows + kTileM - 1) / kTileM, (cols + kTileN - 1) / kTileN);
  scale_tile_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(in), ld_in,
                                                      static_cast<T*>(out), ld_out, rows, cols,
                                                      alpha);
  return cudaGetLastError();
}

}  // namespace

cudaError_t scale_tile(KernelDType dtype, const void* in, int64_t ld_in, void* out, int64_t ld_out,
                       int rows, int cols, float alpha, cudaStream_t stream) {
  switch (dtype) {
    case KernelDType::Float32:
      return launch<float>(in, ld_in, out, ld_out, rows, cols, alpha, stream);
#if !SPATTN_CUDA_REDUCED
    case KernelDType::Float16:
      return launch<cute::half_t>(in, ld_in, out, ld_out, rows, cols, alpha, stream);
    case KernelDType::BFloat16:
      return launch<cute::bfloat16_t>(in, ld_in, out, ld_out, rows, cols, alpha, stream);
#endif
    default:
      return cudaErrorNotSupported;
  }
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
