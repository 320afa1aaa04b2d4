// The declaration of the per-(dtype, head dim) forward launchers, for the dispatch
// (kernels/forward.cu) without the kernel's definition, so that only the generated
// translation units instantiate it.
#pragma once

#include <cuda_runtime_api.h>

#include "spattn/cuda/forward_logic.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::fwd {

template <class T, int kD>
cudaError_t run(const FwdParams& p, cudaStream_t stream);

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::fwd
