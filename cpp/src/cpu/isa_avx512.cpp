// The kernels compiled for AVX-512 (x86-64 only; chosen at run time by dispatch.cpp).
#if defined(__x86_64__) || defined(_M_X64)

// Standard and intrinsic headers first, so that nothing outside namespace
// spattn::cpu::avx512 is compiled with the target flags below.
#include <cstdint>
#include <immintrin.h>

#include "cpu/kernel_api.hpp"

// GCC and clang spell "compile what follows for these instructions" differently.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,bmi,bmi2")
#endif

#define SPATTN_ISA avx512
#define SPATTN_VEC_BYTES 64
#define SPATTN_MR 4
#define SPATTN_NGMAX 4
#define SPATTN_EXP2_SCALEF 1
#define SPATTN_F16C 1  // vcvtph2ps / vcvtps2ph on zmm: part of AVX-512F
#define SPATTN_FMA(a, b, c) ((vf)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#include "cpu/attention_tiles.hpp"

SPATTN_DEFINE_KERNEL_TABLE(kernels_avx512, "avx512")

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
