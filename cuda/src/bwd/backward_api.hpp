// The declaration of the per-(dtype, head dim) backward launchers, for the dispatch
// (kernels/backward.cu) without the kernel's definition, so that only the generated
// translation units instantiate it.
#pragma once

#include <cuda_runtime_api.h>

#include "spattn/cuda/backward_logic.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::bwd {

template <class T, int kD>
cudaError_t run(const BwdParams& p, cudaStream_t stream);

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::bwd
