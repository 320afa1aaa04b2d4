// The forward pass's per-architecture entry points (declared in arch_api.hpp): a dispatch from
// (dtype, head dim) to the instantiations listed in the generated spattn_fwd_instances.hpp
// (float16 / bfloat16), or to the float32 SIMT kernel (f32/f32_api.hpp).
// The kernel itself is in fwd/forward_kernel.cuh; its instantiations are compiled in their own
// generated translation units, so this file does not include it.
#include <cute/numeric/numeric_types.hpp>

#include "arch_api.hpp"
#include "f32/f32_api.hpp"
#include "fwd/forward_api.hpp"
#include "spattn_fwd_instances.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {

bool forward_supported(KernelDType dtype, int head_dim) {
  if (dtype == KernelDType::Float32) return f32::forward_supported(head_dim);  // SIMT kernel
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && head_dim == D) return true;
  SPATTN_FWD_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return false;
}

cudaError_t forward(const FwdParams& p, KernelDType dtype, cudaStream_t stream) {
  if (p.d != p.dv) return cudaErrorNotSupported;
  if (dtype == KernelDType::Float32) return f32::forward(p, stream);
#define SPATTN_X(T, K, D) \
  if (dtype == KernelDType::K && p.d == D) return fwd::run<cute::T, D>(p, stream);
  SPATTN_FWD_INSTANCES(SPATTN_X)
#undef SPATTN_X
  return cudaErrorNotSupported;
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
