// The sm90a backward kernels' entry points (defined in sm90a/bwd90_dispatch.cu, compiled for
// sm_90a only), for the host launcher (host/backward90.cpp, under SPATTN_CUDA_HAS_SM90A), and
// the declaration of the per-(dtype, head dim) launchers that the instance files
// (sm90a/bwd90_<dtype>_d<D>.cu) instantiate.
#pragma once

#include <cuda_runtime_api.h>

#include "arch_api.hpp"  // KernelDType
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/hopper_dq_tma_logic.hpp"  // HopperDq

namespace spattn::cuda::sm90a {

// Runs the sm90a backward on `stream`: the preprocess (lse2, delta for nq_pad rows; the
// sm80-style backward's kernel, kernels/backward.cu), then
//   HopperDq::Pass: the dK/dV and the dQ kernels. No workspace besides lse2 and delta; every
//     gradient written exactly once, deterministic.
//   HopperDq::Tma: zeroes p.dq_accum ([B, Hq, nq_pad, D] fp32), runs the dK/dV kernel that
//     also reduce-adds dQ into it, then the conversion dq = scale * dq_accum. Not bitwise
//     reproducible (dQ's summation order). Nq, Nk > 0 (the caller picks Pass otherwise).
// The layout in p must be staged for 128 x 128 tiles with its rows (stage_backward90).
// cudaErrorNotSupported for a (dtype, D) without an sm90a backward, or d != dv.
cudaError_t backward90(const BwdParams& p, KernelDType dtype, HopperDq dq, cudaStream_t stream);
bool backward90_supported(KernelDType dtype, int head_dim);

// The preprocess and the dq conversion of kernels/backward.cu (compiled for every
// architecture).
cudaError_t backward_preprocess(const BwdParams& p, KernelDType dtype, cudaStream_t stream);
cudaError_t backward_convert_dq(const BwdParams& p, KernelDType dtype, cudaStream_t stream);

namespace bwd90 {
template <class T, int kD>
cudaError_t run90(const BwdParams& p, HopperDq dq, cudaStream_t stream);
}  // namespace bwd90

}  // namespace spattn::cuda::sm90a
