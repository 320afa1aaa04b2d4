// The per-architecture entry points of the CUDA part, for the host-side dispatch
// (cuda/src/host/). Every file under cuda/src/kernels/ is compiled once per architecture in
// SPATTN_CUDA_ARCHS, each time in its own object library and inside the namespace
// spattn::cuda::<tag> (sm80, sm90a; the macro SPATTN_CUDA_ARCH_NS), so the copies never clash.
// Files under cuda/src/sm80/ and cuda/src/sm90a/ are compiled for that architecture only.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "spattn/tensor.hpp"  // DType

#include "spattn/cuda/backward_logic.hpp"  // BwdParams
#include "spattn/cuda/forward_logic.hpp"   // FwdParams

namespace spattn::cuda {

// The decode kernels' parameters (spattn/cuda/decode_logic.hpp, included where they are built).
struct DecodeParams;
struct PoolParams;

// Element types of the kernels: the library's one dtype enum (spattn/tensor.hpp).
using KernelDType = ::spattn::DType;

// Parameters of the merge and sum kernels (kernels/merge_sum.cu): at most kMergeMaxParts parts
// per launch (the host merges more in rounds). Shapes [B, N, H, D]; lse [B, H, N]; strides in
// elements.
constexpr int kMergeMaxParts = 8;
struct MergeParams {
  int n = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  const void* outs[kMergeMaxParts] = {};
  int64_t out_part_strides[kMergeMaxParts][4] = {};
  const float* lses[kMergeMaxParts] = {};
  int64_t lse_strides[kMergeMaxParts][3] = {};
  void* out = nullptr;
  int64_t out_strides[4] = {0, 0, 0, 0};
  float* lse = nullptr;  // null: not written
  int64_t lse_out_strides[3] = {0, 0, 0};
};
struct SumParams {
  int n = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  const void* srcs[kMergeMaxParts] = {};
  int64_t src_strides[kMergeMaxParts][4] = {};
  void* dst = nullptr;
  int64_t dst_strides[4] = {0, 0, 0, 0};
};

// The sinks' gradient (kernels/sink_grad.cu): dsinks[h] = -sum over (b, i) of
// exp(sinks[h] - lse[b, h, i]) * sum_d dout[b, i, h, d] * out[b, i, h, d]. out / dout [b, n, h,
// dv] of the dtype, lse [b, h, n] float32, sinks and dsinks [h] float32; strides in elements.
struct SinkGradProblem {
  const void* out = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  const float* sinks = nullptr;
  float* dsinks = nullptr;
  int64_t b = 0, n = 0, h = 0, dv = 0;
  int64_t out_strides[4] = {0, 0, 0, 0};
  int64_t dout_strides[4] = {0, 0, 0, 0};
  int64_t lse_strides[3] = {0, 0, 0};
  int64_t sinks_s = 1, dsinks_s = 1;
};

}  // namespace spattn::cuda

#define SPATTN_CUDA_DECLARE_ARCH_API(ns)                                                       \
  namespace spattn::cuda::ns {                                                                 \
  /* out = alpha * in on a rows x cols matrix (row strides in elements), through a shared-  */ \
  /* memory tile: the self-test kernel (kernels/scale_tile.cu). cudaErrorNotSupported for a */ \
  /* dtype left out of a reduced build.                                                     */ \
  cudaError_t scale_tile(KernelDType dtype, const void* in, int64_t ld_in, void* out,          \
                         int64_t ld_out, int rows, int cols, float alpha, cudaStream_t stream); \
  /* The attention forward (kernels/forward.cu): launches on `stream`, returns the launch's */ \
  /* error. cudaErrorNotSupported for a (dtype, head dim) not compiled, or d != dv.         */ \
  cudaError_t forward(const FwdParams& p, KernelDType dtype, cudaStream_t stream);             \
  bool forward_supported(KernelDType dtype, int head_dim);                                     \
  /* The attention backward (kernels/backward.cu): preprocess (delta, lse2), main kernel     */ \
  /* (dk, dv, dq_accum), dq conversion, all on `stream`; p.dq_accum must be zeroed first.    */ \
  /* cudaErrorNotSupported for a (dtype, head dim) not compiled, or d != dv.                 */ \
  cudaError_t backward(const BwdParams& p, KernelDType dtype, cudaStream_t stream);            \
  bool backward_supported(KernelDType dtype, int head_dim);                                    \
  /* dst[i0,i1,i2,i3] = src[...] for 2- or 4-byte elements, strides in elements (copy_strided.cu). */ \
  /* Exact merge of partial results, and the sum of gradients (kernels/merge_sum.cu).       */ \
  cudaError_t merge(const MergeParams& p, KernelDType dtype, cudaStream_t stream);             \
  cudaError_t sum(const SumParams& p, KernelDType dtype, cudaStream_t stream);                 \
  /* The sinks' gradient (kernels/sink_grad.cu): one block per head, deterministic.         */ \
  cudaError_t sink_grad(const SinkGradProblem& p, KernelDType dtype, cudaStream_t stream);     \
  /* Decode over a KV cache: the split kernel, then the merge of the splits (kernels/       */ \
  /* decode.cu); pool_keys' mean keys. cudaErrorNotSupported for an unsupported dtype.      */ \
  cudaError_t decode(const DecodeParams& p, KernelDType dtype, cudaStream_t stream);           \
  cudaError_t pool_keys(const PoolParams& p, KernelDType dtype, cudaStream_t stream);          \
  cudaError_t copy_strided_4d(const void* src, const int64_t* src_strides, void* dst,          \
                              const int64_t* dst_strides, const int64_t* shape, int elem_bytes, \
                              cudaStream_t stream);                                            \
  }

SPATTN_CUDA_DECLARE_ARCH_API(sm80)
SPATTN_CUDA_DECLARE_ARCH_API(sm90a)
