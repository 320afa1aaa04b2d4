// The per-architecture entry points of the backward layout's transposition
// (kernels/device_transpose.cu), declared apart from arch_api.hpp's table so that the device
// layout compilers stay in their own files.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "spattn/cuda/device_transpose_logic.hpp"

#define SPATTN_CUDA_DECLARE_TRANSPOSE_API(ns)                                                   \
  namespace spattn::cuda::ns {                                                                  \
  /* Count, scan, fill, per-column sort and the schedule's sort on `stream`                  */ \
  /* (device_transpose_logic.hpp), after the row layout's compile; the launches' error.      */ \
  cudaError_t compile_backward_columns(const DevTransposeLaunch& l, cudaStream_t stream);               \
  /* Bytes of temporary storage the scan of n int64 counts needs (no device work).           */ \
  size_t transpose_scan_bytes(int64_t n);                                                       \
  }

SPATTN_CUDA_DECLARE_TRANSPOSE_API(sm80)
SPATTN_CUDA_DECLARE_TRANSPOSE_API(sm90a)
