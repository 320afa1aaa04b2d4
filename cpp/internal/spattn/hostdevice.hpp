// SPATTN_HD marks functions that must mean the same on the CPU and in CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SPATTN_HD __host__ __device__ __forceinline__
#else
#define SPATTN_HD inline
#endif

// The same, for a long rule that a kernel should call rather than inline: its loops and 64-bit
// divisions would otherwise add to the register pressure of every kernel that calls keeps().
#if defined(__CUDACC__)
#define SPATTN_HD_CALL __host__ __device__ __noinline__
#else
#define SPATTN_HD_CALL inline
#endif
