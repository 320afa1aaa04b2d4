// SPATTN_HD marks functions that must mean the same on the CPU and in CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SPATTN_HD __host__ __device__ __forceinline__
#else
#define SPATTN_HD inline
#endif
