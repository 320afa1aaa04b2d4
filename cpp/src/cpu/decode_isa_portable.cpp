// The decode kernels for the baseline of the target (SSE2 on x86-64, NEON on AArch64, plain
// scalar code elsewhere): always available. Own namespace (decode_portable) so that no symbol
// is shared with the attention kernels of isa_portable.cpp.
#include <cstdint>
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "cpu/decode_kernel_api.hpp"
#include "cpu/kernel_api.hpp"

#define SPATTN_ISA decode_portable
#define SPATTN_VEC_BYTES 16
#if defined(__aarch64__)
#define SPATTN_FMA(a, b, c) ((vf)vfmaq_f32((float32x4_t)(c), (float32x4_t)(a), (float32x4_t)(b)))
#else
#define SPATTN_FMA(a, b, c) ((a) * (b) + (c))
#endif
#include "cpu/decode_rows.hpp"

SPATTN_DEFINE_DECODE_KERNELS(decode_kernels_portable, "portable")
