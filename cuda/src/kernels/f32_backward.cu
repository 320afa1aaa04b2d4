// The float32 backward main kernel's instantiations (f32/backward_f32.cuh) and their dispatch
// by head dim.
#include "f32/backward_f32.cuh"
#include "f32/f32_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32 {

bool backward_supported(int head_dim) { return backward_main(head_dim) != nullptr; }

BackwardMainFn backward_main(int head_dim) {
#define SPATTN_X(D) \
  if (head_dim == D) return &run_backward_main<D>;
  SPATTN_F32_HEAD_DIMS(SPATTN_X)
#undef SPATTN_X
  return nullptr;
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32
