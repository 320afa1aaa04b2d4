// The sm90a forward kernel for bfloat16_t, head dim 128 (one translation unit per instantiation so
// that they compile in parallel; listed in fwd90_dispatch.cu).
#include "sm90a/fwd90_kernel.cuh"

SPATTN_FWD90_INSTANTIATE(cute::bfloat16_t, 128)
