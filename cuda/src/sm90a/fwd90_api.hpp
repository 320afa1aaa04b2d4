// The sm90a forward kernel's entry points (defined in sm90a/fwd90_dispatch.cu, compiled for
// sm_90a only), for the host launcher (host/forward.cpp, under SPATTN_CUDA_HAS_SM90A), and the
// declaration of the per-(dtype, head dim) launchers that the generated-by-hand instance
// files (sm90a/fwd90_<dtype>_d<D>.cu) instantiate.
#pragma once

#include <cuda_runtime_api.h>

#include "arch_api.hpp"  // KernelDType
#include "spattn/cuda/forward_logic.hpp"

namespace spattn::cuda::sm90a {

// Launches the wgmma/TMA forward on `stream`. The layout in p must be compiled for
// (kHopperBlockM, hopper_block_n(D)) tiles. cudaErrorNotSupported for a (dtype, D) this build
// has no sm90a kernel for, or d != dv.
cudaError_t forward90(const FwdParams& p, KernelDType dtype, cudaStream_t stream);
bool forward90_supported(KernelDType dtype, int head_dim);

namespace fwd90 {
template <class T, int kD>
cudaError_t run90(const FwdParams& p, cudaStream_t stream);
}  // namespace fwd90

}  // namespace spattn::cuda::sm90a
