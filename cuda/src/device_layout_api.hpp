// The per-architecture entry points of the device layout compiler (kernels/device_layout.cu),
// declared apart from arch_api.hpp's table so that the compiler stays in its own files.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "spattn/cuda/device_layout_logic.hpp"

#define SPATTN_CUDA_DECLARE_LAYOUT_API(ns)                                                     \
  namespace spattn::cuda::ns {                                                                 \
  /* Count, scan, fill and sort on `stream` (device_layout_logic.hpp); the launches' error. */ \
  cudaError_t compile_layout(const DevLayoutLaunch& l, cudaStream_t stream);                   \
  /* Bytes of temporary storage the schedule's sort of n entries needs (no device work).    */ \
  size_t layout_sort_bytes(int64_t n);                                                         \
  }

SPATTN_CUDA_DECLARE_LAYOUT_API(sm80)
SPATTN_CUDA_DECLARE_LAYOUT_API(sm90a)
