// The decode kernels compiled for AVX2 (x86-64 only; chosen at run time with the attention
// kernels' level). Own namespace (decode_avx2): no symbol shared with isa_avx2.cpp.
#if defined(__x86_64__) || defined(_M_X64)

// Standard and intrinsic headers first, so that nothing outside namespace
// spattn::cpu::decode_avx2 is compiled with the target flags below.
#include <cstdint>
#include <immintrin.h>

#include "cpu/decode_kernel_api.hpp"
#include "cpu/kernel_api.hpp"

// GCC and clang spell "compile what follows for these instructions" differently.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,avx,fma,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,avx,fma,bmi,bmi2")
#endif

#define SPATTN_ISA decode_avx2
#define SPATTN_VEC_BYTES 32
#define SPATTN_FMA(a, b, c) ((vf)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#include "cpu/decode_rows.hpp"

SPATTN_DEFINE_DECODE_KERNELS(decode_kernels_avx2, "avx2")

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
