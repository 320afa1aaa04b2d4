// The backward pass's per-architecture entry points (declared in arch_api.hpp): the preprocess
// (delta = rowsum(dout * out), lse2 = lse * log2 e with +inf for empty and padding rows), the
// main kernel of the (dtype, head dim) instantiation listed in the generated
// spattn_bwd_instances.hpp (bwd/backward_kernel.cuh, compiled in its own translation units; for
// float32 the SIMT kernel of f32/backward_f32.cuh), and
// the conversion of the fp32 dq workspace to dq (scaled, the output dtype, any strides), in
// that order on one stream.
#include <cute/numeric/numeric_types.hpp>

#include "arch_api.hpp"
#include "bwd/backward_api.hpp"
#include "f32/f32_api.hpp"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn_bwd_instances.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kRowThreads = 256;  // 8 warps, one row each

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// One warp per row (b, h, i) of the [B, Hq, nq_pad] workspaces. out may have any strides;
// dout has a unit last stride (the launcher repacks it otherwise).
template <class T>
__global__ void __launch_bounds__(kRowThreads) bwd_preprocess(const __grid_constant__ BwdParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t(blockIdx.x) * kRowThreads + threadIdx.x) >> 5;
  if (row >= p.f.b * p.f.hq * p.nq_pad) return;
  const int64_t i = row % p.nq_pad, bh = row / p.nq_pad;
  const int64_t h = bh % p.f.hq, b = bh / p.f.hq;
  const bool real = i < p.f.nq;
  float acc = 0.f;
  if (real) {
    const T* o = static_cast<const T*>(p.f.o) + o_offset(p.f, b, i, h);
    const T* d = static_cast<const T*>(p.dout) + do_offset(p, b, i, h);
    for (int64_t x = lane; x < p.f.dv; x += 32)
      acc += static_cast<float>(o[x * p.o_sd]) * static_cast<float>(d[x]);
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    p.delta[row] = real ? acc : 0.f;
    p.lse2[row] = real ? bwd_lse2(p.f.lse[lse_offset(p.f, b, h, i)]) : INFINITY;
  }
}

// dq[b, i, h, :] = scale * dq_accum[b, h, i, :] in the output dtype; one warp per row.
template <class T>
__global__ void __launch_bounds__(kRowThreads) bwd_convert_dq(const __grid_constant__ BwdParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t(blockIdx.x) * kRowThreads + threadIdx.x) >> 5;
  if (row >= p.f.b * p.f.hq * p.f.nq) return;
  const int64_t i = row % p.f.nq, bh = row / p.f.nq;
  const int64_t h = bh % p.f.hq, b = bh / p.f.hq;
  const float* src = p.dq_accum + dqacc_offset(p, b, h, i);
  T* dst = static_cast<T*>(p.dq) + dq_offset(p, b, i, h);
  for (int64_t x = lane; x < p.f.d; x += 32) dst[x * p.dq_sd] = static_cast<T>(src[x] * p.f.scale);
}

unsigned row_blocks(int64_t rows) { return unsigned((rows + kRowThreads / 32 - 1) / (kRowThreads / 32)); }

template <class T>
cudaError_t run_backward(const BwdParams& p, cudaStream_t stream,
                         cudaError_t (*main_kernel)(const BwdParams&, cudaStream_t)) {
  const int64_t stat_rows = p.f.b * p.f.hq * p.nq_pad;
  const int64_t dq_rows = p.f.b * p.f.hq * p.f.nq;
  if (stat_rows / (kRowThreads / 32) >= int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  if (stat_rows > 0) {
    bwd_preprocess<T><<<row_blocks(stat_rows), kRowThreads, 0, stream>>>(p);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  const cudaError_t e = main_kernel(p, stream);
  if (e != cudaSuccess) return e;
  if (dq_rows > 0) {
    bwd_convert_dq<T><<<row_blocks(dq_rows), kRowThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace

bool backward_supported(KernelDType dtype, int head_dim) {
  if (dtype == KernelDType::Float32) return f32::backward_supported(head_dim);  // SIMT kernel
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && head_dim == D) return true;
  SPATTN_BWD_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return false;
}

// The preprocess alone (the sm90a backward, sm90a/bwd90_api.hpp, runs its own main kernels):
// lse2 and delta for the nq_pad rows of p's workspaces.
cudaError_t backward_preprocess(const BwdParams& p, KernelDType dtype, cudaStream_t stream) {
  const int64_t stat_rows = p.f.b * p.f.hq * p.nq_pad;
  if (stat_rows / (kRowThreads / 32) >= int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  if (stat_rows == 0) return cudaSuccess;
  if (dtype == KernelDType::Float16)
    bwd_preprocess<cute::half_t><<<row_blocks(stat_rows), kRowThreads, 0, stream>>>(p);
  else if (dtype == KernelDType::BFloat16)
    bwd_preprocess<cute::bfloat16_t><<<row_blocks(stat_rows), kRowThreads, 0, stream>>>(p);
  else
    return cudaErrorNotSupported;
  return cudaGetLastError();
}

// The dq conversion alone (the sm90a backward's reduce-add dQ, HopperDq::Tma).
cudaError_t backward_convert_dq(const BwdParams& p, KernelDType dtype, cudaStream_t stream) {
  const int64_t dq_rows = p.f.b * p.f.hq * p.f.nq;
  if (dq_rows / (kRowThreads / 32) >= int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  if (dq_rows == 0) return cudaSuccess;
  if (dtype == KernelDType::Float16)
    bwd_convert_dq<cute::half_t><<<row_blocks(dq_rows), kRowThreads, 0, stream>>>(p);
  else if (dtype == KernelDType::BFloat16)
    bwd_convert_dq<cute::bfloat16_t><<<row_blocks(dq_rows), kRowThreads, 0, stream>>>(p);
  else
    return cudaErrorNotSupported;
  return cudaGetLastError();
}

cudaError_t backward(const BwdParams& p, KernelDType dtype, cudaStream_t stream) {
  if (p.f.d != p.f.dv) return cudaErrorNotSupported;
  if (dtype == KernelDType::Float32) {  // the same preprocess and conversion around the SIMT kernel
    const f32::BackwardMainFn main_kernel = f32::backward_main(int(p.f.d));
    return main_kernel ? run_backward<float>(p, stream, main_kernel) : cudaErrorNotSupported;
  }
#define SPATTN_X(T, K, D)                                 \
  if (dtype == KernelDType::K && p.f.d == D)              \
    return run_backward<cute::T>(p, stream, &bwd::run<cute::T, D>);
  SPATTN_BWD_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return cudaErrorNotSupported;
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
