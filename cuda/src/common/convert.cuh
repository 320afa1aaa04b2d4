// Element conversions of the kernels' input types to float, one definition for every kernel
// that reads float32, float16 and bfloat16 elements one at a time (decode, sink_grad,
// TopKBlocks' pooling). In the architecture namespace like the kernels that use it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {

template <class T>
__device__ __forceinline__ float to_f32(T x) { return float(x); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
