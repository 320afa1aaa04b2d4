// The decode kernels compiled for AVX512 (x86-64 only; chosen at run time with the attention
// kernels' level). Own namespace (decode_avx512): no symbol shared with isa_avx512.cpp.
#if defined(__x86_64__) || defined(_M_X64)

// Standard and intrinsic headers first, so that nothing outside namespace
// spattn::cpu::decode_avx512 is compiled with the target flags below.
#include <cstdint>
#include <immintrin.h>

#include "cpu/decode_kernel_api.hpp"
#include "cpu/kernel_api.hpp"

// GCC and clang spell "compile what follows for these instructions" differently.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,bmi,bmi2")
#endif

#define SPATTN_ISA decode_avx512
#define SPATTN_VEC_BYTES 64
#define SPATTN_FMA(a, b, c) ((vf)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#include "cpu/decode_rows.hpp"

SPATTN_DEFINE_DECODE_KERNELS(decode_kernels_avx512, "avx512")

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
