// The kernels compiled for AVX2 + FMA + F16C (x86-64 only; chosen at run time by dispatch.cpp).
#if defined(__x86_64__) || defined(_M_X64)

// Standard and intrinsic headers first, so that nothing outside namespace
// spattn::cpu::avx2 is compiled with the target flags below.
#include <cstdint>
#include <immintrin.h>

#include "cpu/kernel_api.hpp"

// GCC and clang spell "compile what follows for these instructions" differently.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,avx,fma,f16c,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,avx,fma,f16c,bmi,bmi2")
#endif

#define SPATTN_ISA avx2
#define SPATTN_VEC_BYTES 32
#define SPATTN_MR 4
#define SPATTN_NGMAX 1
#define SPATTN_F16C 1
#define SPATTN_FMA(a, b, c) ((vf)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#include "cpu/attention_tiles.hpp"

SPATTN_DEFINE_KERNEL_TABLE(kernels_avx2, "avx2")

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
