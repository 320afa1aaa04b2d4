// Entry points of the float32 kernels (kernels/f32_forward.cu, kernels/f32_backward.cu) for the
// per-architecture dispatch (kernels/forward.cu, kernels/backward.cu), and the head dims they
// are compiled for: 128 in a reduced build (CI), 32, 64, 96 and 128 otherwise. Other head dims
// (and Dv != D) run zero-padded to one of these (host/pad.hpp), as for float16 / bfloat16.
#pragma once

#include <cuda_runtime_api.h>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"

#if SPATTN_CUDA_REDUCED
#define SPATTN_F32_HEAD_DIMS(X) X(128)
#else
#define SPATTN_F32_HEAD_DIMS(X) X(32) X(64) X(96) X(128)
#endif

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32 {

bool forward_supported(int head_dim);
// cudaErrorNotSupported for a head dim not compiled, or d != dv.
cudaError_t forward(const FwdParams& p, cudaStream_t stream);

bool backward_supported(int head_dim);
// The backward's main kernel for p.f.d (nullptr: none); kernels/backward.cu runs it between
// its preprocess and dq conversion.
using BackwardMainFn = cudaError_t (*)(const BwdParams&, cudaStream_t);
BackwardMainFn backward_main(int head_dim);

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32
