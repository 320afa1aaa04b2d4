// The kernels compiled for the baseline of the target (SSE2 on x86-64, NEON on AArch64, plain
// scalar code elsewhere): always available.
#include <cstdint>
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "cpu/kernel_api.hpp"

#define SPATTN_ISA portable
#define SPATTN_VEC_BYTES 16
#if defined(__aarch64__)
#define SPATTN_MR 4
#else
#define SPATTN_MR 2
#endif
#define SPATTN_NGMAX 1
#if defined(__aarch64__)
#define SPATTN_FMA(a, b, c) ((vf)vfmaq_f32((float32x4_t)(c), (float32x4_t)(a), (float32x4_t)(b)))
#else
#define SPATTN_FMA(a, b, c) ((a) * (b) + (c))
#endif
#include "cpu/attention_tiles.hpp"

SPATTN_DEFINE_KERNEL_TABLE(kernels_portable, "portable")
