// The per-architecture entry points of TopKBlocks' selection on the GPU
// (cuda/src/kernels/topk_select.cu, index logic in spattn/cuda/topk_logic.hpp), for the host
// side (cuda/src/host/topk.cpp). Kept apart from arch_api.hpp's table: only topk.cpp calls them.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "spattn/cuda/topk_logic.hpp"

#define SPATTN_CUDA_DECLARE_TOPK_API(ns)                                                      \
  namespace spattn::cuda::ns {                                                                \
  /* Pool q and k, score, choose: p.mask gets every batch element's chosen blocks. Three   */ \
  /* launches on `stream`; cudaErrorNotSupported for a dtype without a kernel.             */ \
  cudaError_t topk_select(const TopkSelectParams& p, cudaStream_t stream);                     \
  /* The dynamic shared memory topk_select's choosing kernel needs (bytes).                */ \
  int64_t topk_select_smem(const TopkGeom& g);                                                 \
  /* One layout (rows or columns) per batch element from p.mask: count, scan, write.       */ \
  cudaError_t topk_layout(const TopkLayoutParams& p, cudaStream_t stream);                     \
  }

SPATTN_CUDA_DECLARE_TOPK_API(sm80)
SPATTN_CUDA_DECLARE_TOPK_API(sm90a)
