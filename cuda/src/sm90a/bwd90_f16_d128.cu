// The sm90a backward kernels for half_t, head dim 128 (one translation unit per instantiation so
// that they compile in parallel; listed in bwd90_dispatch.cu).
#if !SPATTN_CUDA_REDUCED
#include "sm90a/bwd90_kernel.cuh"

SPATTN_BWD90_INSTANTIATE(cute::half_t, 128)
#endif
