// The per-architecture entry point of the device decode plan (kernels/decode_plan.cu), declared
// apart from arch_api.hpp's table so that the plan stays in its own files.
#pragma once

#include <cuda_runtime_api.h>

#include "spattn/cuda/decode_plan_logic.hpp"

#define SPATTN_CUDA_DECLARE_DECODE_PLAN_API(ns)                                                \
  namespace spattn::cuda::ns {                                                                 \
  /* The rows and union launches on `stream` (decode_plan_logic.hpp); the launches' error.  */ \
  cudaError_t decode_plan(const DecodePlanParams& p, cudaStream_t stream);                     \
  }

SPATTN_CUDA_DECLARE_DECODE_PLAN_API(sm80)
SPATTN_CUDA_DECLARE_DECODE_PLAN_API(sm90a)
