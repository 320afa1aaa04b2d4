// Dispatch (dtype, head dim) -> the sm90a backward instantiations (sm90a/bwd90_*.cu). A reduced
// build (SPATTN_CUDA_REDUCED=1, CI) has bfloat16 D = 128 only, as the other kernels.
#include <cute/numeric/numeric_types.hpp>

#include "sm90a/bwd90_api.hpp"

#if SPATTN_CUDA_REDUCED
#define SPATTN_BWD90_INSTANCES(X) X(bfloat16_t, BFloat16, 128)
#else
#define SPATTN_BWD90_INSTANCES(X)                                                           \
  X(half_t, Float16, 64) X(half_t, Float16, 128) X(bfloat16_t, BFloat16, 64)                \
  X(bfloat16_t, BFloat16, 128)
#endif

namespace spattn::cuda::sm90a {

bool backward90_supported(KernelDType dtype, int head_dim) {
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && head_dim == D) return true;
  SPATTN_BWD90_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return false;
}

cudaError_t backward90(const BwdParams& p, KernelDType dtype, HopperDq dq, cudaStream_t stream) {
  if (p.f.d != p.f.dv || !backward90_supported(dtype, int(p.f.d))) return cudaErrorNotSupported;
  const bool tma = dq == HopperDq::Tma;
  if (tma && (p.f.nq <= 0 || p.f.nk <= 0 || p.dq_accum == nullptr)) return cudaErrorInvalidValue;
  cudaError_t e = backward_preprocess(p, dtype, stream);
  if (e != cudaSuccess) return e;
  if (tma) {
    e = cudaMemsetAsync(p.dq_accum, 0,
                        size_t(p.f.b * p.f.hq * p.nq_pad * p.f.d) * sizeof(float), stream);
    if (e != cudaSuccess) return e;
  }
  e = cudaErrorNotSupported;
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && p.f.d == D) e = bwd90::run90<cute::T, D>(p, dq, stream);
  SPATTN_BWD90_INSTANCES(SPATTN_X)
#undef SPATTN_X
  if (e != cudaSuccess || !tma) return e;
  return backward_convert_dq(p, dtype, stream);
}

}  // namespace spattn::cuda::sm90a
