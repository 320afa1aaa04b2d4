// The per-architecture entry points of TopKBlocks in the CUDA decode (kernels/decode_topk.cu,
// logic in spattn/cuda/decode_topk_logic.hpp), for host/decode_topk.cpp only.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "spattn/cuda/decode_topk_dev_logic.hpp"
#include "spattn/cuda/decode_topk_logic.hpp"

#define SPATTN_CUDA_DECLARE_DECODE_TOPK_API(ns)                                               \
  namespace spattn::cuda::ns {                                                                \
  /* Pool, check pages, choose, layout rows, unions: six launches on `stream` that leave   */ \
  /* the decode kernels' device plan (p.dp). cudaErrorNotSupported for a dtype without one. */ \
  cudaError_t decode_topk_plan(const DecTopkParams& p, DType dtype, cudaStream_t stream);      \
  /* With cache_len on the device (decode_topk_dev_logic.hpp): the always and seq launches, */ \
  /* then decode_topk_plan's six.                                                           */ \
  cudaError_t decode_topk_dev_plan(const DecTopkParams& p, const DecTopkDev& v, DType dtype,   \
                                   cudaStream_t stream);                                       \
  /* The dynamic shared memory the choosing kernel needs for g.kmax candidates (bytes).     */ \
  int64_t decode_topk_smem(int64_t d, int64_t kmax);                                           \
  }

SPATTN_CUDA_DECLARE_DECODE_TOPK_API(sm80)
SPATTN_CUDA_DECLARE_DECODE_TOPK_API(sm90a)
