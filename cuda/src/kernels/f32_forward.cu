// The float32 forward's instantiations (f32/forward_f32.cuh) and their dispatch by head dim.
#include "f32/f32_api.hpp"
#include "f32/forward_f32.cuh"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32 {

bool forward_supported(int head_dim) {
#define SPATTN_X(D) \
  if (head_dim == D) return true;
  SPATTN_F32_HEAD_DIMS(SPATTN_X)
#undef SPATTN_X
  return false;
}

cudaError_t forward(const FwdParams& p, cudaStream_t stream) {
  if (p.d != p.dv) return cudaErrorNotSupported;
#define SPATTN_X(D) \
  if (p.d == D) return run_forward<D>(p, stream);
  SPATTN_F32_HEAD_DIMS(SPATTN_X)
#undef SPATTN_X
  return cudaErrorNotSupported;
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32
