// The sm90a forward kernel for bfloat16_t, head dim 256 (one translation unit per instantiation so
// that they compile in parallel; listed in fwd90_dispatch.cu).
#if !SPATTN_CUDA_REDUCED
#include "sm90a/fwd90_kernel.cuh"

SPATTN_FWD90_INSTANTIATE(cute::bfloat16_t, 256)
#endif
