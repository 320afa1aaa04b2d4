// Dispatch (dtype, head dim) -> the sm90a forward instantiations (sm90a/fwd90_*.cu). A reduced
// build (SPATTN_CUDA_REDUCED=1, CI) has bfloat16 D = 128 only, as the sm80-style kernels.
#include <cute/numeric/numeric_types.hpp>

#include "sm90a/fwd90_api.hpp"

#if SPATTN_CUDA_REDUCED
#define SPATTN_FWD90_INSTANCES(X) X(bfloat16_t, BFloat16, 128)
#else
#define SPATTN_FWD90_INSTANCES(X)                                                           \
  X(half_t, Float16, 64) X(half_t, Float16, 128) X(half_t, Float16, 256)                    \
  X(bfloat16_t, BFloat16, 64) X(bfloat16_t, BFloat16, 128) X(bfloat16_t, BFloat16, 256)
#endif

namespace spattn::cuda::sm90a {

bool forward90_supported(KernelDType dtype, int head_dim) {
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && head_dim == D) return true;
  SPATTN_FWD90_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return false;
}

cudaError_t forward90(const FwdParams& p, KernelDType dtype, cudaStream_t stream) {
  if (p.d != p.dv) return cudaErrorNotSupported;
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && p.d == D) return fwd90::run90<cute::T, D>(p, stream);
  SPATTN_FWD90_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return cudaErrorNotSupported;
}

}  // namespace spattn::cuda::sm90a
