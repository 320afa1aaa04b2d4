// The sm90a backward kernels for bfloat16_t, head dim 128 (one translation unit per instantiation so
// that they compile in parallel; listed in bwd90_dispatch.cu).
#include "sm90a/bwd90_kernel.cuh"

SPATTN_BWD90_INSTANTIATE(cute::bfloat16_t, 128)
