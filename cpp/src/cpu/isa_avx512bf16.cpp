// The kernels for AVX-512 CPUs with AVX512_BF16 (x86-64 only). dispatch.cpp uses this table for
// bfloat16 problems only: its forward and backward multiply bfloat16 natively (vdpbf16ps, see
// attention_bf16.hpp); the other entries are the AVX-512 code, compiled again here.
#if defined(__x86_64__) || defined(_M_X64)

#include <cstdint>
#include <immintrin.h>

#include "cpu/kernel_api.hpp"

// GCC and clang spell "compile what follows for these instructions" differently.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,avx,fma,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,avx,fma,bmi,bmi2")
#endif

#define SPATTN_ISA avx512bf16
#define SPATTN_VEC_BYTES 64
#define SPATTN_MR 4
#define SPATTN_NGMAX 4
#define SPATTN_EXP2_SCALEF 1
#define SPATTN_F16C 1  // vcvtph2ps / vcvtps2ph on zmm: part of AVX-512F
#define SPATTN_FMA(a, b, c) ((vf)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#include "cpu/attention_bf16.hpp"

namespace spattn::cpu {
const KernelTable* kernels_avx512bf16() {
  static const KernelTable t{"avx512bf16",           SPATTN_ISA::fwd_ws_floats_bf,
                             SPATTN_ISA::bwd_ws_floats_bf, SPATTN_ISA::fwd_tile_bf,
                             SPATTN_ISA::bwd_tile_bf,  SPATTN_ISA::bwd_store,
                             SPATTN_ISA::fwd_grid_ws_floats, SPATTN_ISA::fwd_grid_tile,
                             SPATTN_ISA::weighted_sum_row};
  return &t;
}
}  // namespace spattn::cpu

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
