// Vector type, exp2 and float16/bfloat16 conversion for one instruction set.
//
// Included only by an isa_*.cpp file, after its `#pragma GCC target`, with SPATTN_ISA (the
// namespace), SPATTN_VEC_BYTES (16, 32 or 64) and SPATTN_FMA (fused multiply-add of vf)
// defined; SPATTN_F16C (32 or 64 bytes only, target with f16c / avx512f) converts float16
// vectors in hardware. Everything lives in namespace spattn::cpu::SPATTN_ISA so that code compiled for
// different targets never shares a symbol. Standard headers must be included before the pragma.
#pragma once

#ifndef SPATTN_ISA
#error "simd.hpp is included by an isa_*.cpp file only"
#endif
#if defined(__FAST_MATH__)
#error "the CPU kernels need IEEE semantics (infinities, exact rounding tricks): no -ffast-math"
#endif

namespace spattn::cpu::SPATTN_ISA {

#define SP_INLINE inline __attribute__((always_inline))

constexpr int W = SPATTN_VEC_BYTES / 4;  // floats per vector
typedef float vf __attribute__((vector_size(SPATTN_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(SPATTN_VEC_BYTES)));
typedef uint32_t vu __attribute__((vector_size(SPATTN_VEC_BYTES)));
typedef uint16_t vh __attribute__((vector_size(SPATTN_VEC_BYTES / 2)));

template <class T>
SP_INLINE T min_(T a, T b) { return b < a ? b : a; }
template <class T>
SP_INLINE T max_(T a, T b) { return a < b ? b : a; }

SP_INLINE vf load(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
SP_INLINE void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
SP_INLINE vi loadi(const int32_t* p) { vi v; __builtin_memcpy(&v, p, sizeof v); return v; }
SP_INLINE vf splat(float x) { return x - vf{}; }  // (0 + x would not fold: -0)
SP_INLINE vi splati(int32_t x) { return vi{} + x; }
SP_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
SP_INLINE vf fma(vf a, vf b, vf c) { return SPATTN_FMA(a, b, c); }  // a * b + c

SP_INLINE float as_float(uint32_t u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
SP_INLINE uint32_t as_uint(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }

// 2^x for x < 128; exactly 0 below -125 (also for -inf), exactly 1 at 0, NaN for NaN (so that a
// NaN score reaches the softmax sums and the row's result, never vanishes as a 0 weight). Round to nearest
// integer n with the 1.5 * 2^23 trick (whose bits then hold n), 2^(x-n) by a degree-6
// near-minimax polynomial on [-1/2, 1/2] (relative error 2e-9 before rounding; about 1.6 ulp
// evaluated in float32), scaled through the exponent bits.
#if defined(SPATTN_EXP2_SCALEF)
// AVX-512: the same polynomial, with vrndscaleps for n and vscalefps for the scaling; lanes
// below -125 (and -inf) are zeroed by the mask of vscalefps. 10 instructions instead of 14.
SP_INLINE vf exp2v(vf x) {
  const __m512 xv = (__m512)x;
  // not-less-than, unordered: NaN lanes are kept and come out NaN.
  const __mmask16 keep = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(-125.f), _CMP_NLT_UQ);
  const __m512 n = _mm512_mask_roundscale_ps(xv, __mmask16(0xffff), xv,
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = x - (vf)n;
  vf p = splat(1.5353364870e-04f);
  p = fma(p, f, splat(1.3398875017e-03f));
  p = fma(p, f, splat(9.6184369177e-03f));
  p = fma(p, f, splat(5.5503323674e-02f));
  p = fma(p, f, splat(2.4022647738e-01f));
  p = fma(p, f, splat(6.9314718246e-01f));
  p = fma(p, f, splat(1.f));
  return (vf)_mm512_maskz_scalef_ps(keep, (__m512)p, n);
}
#else
SP_INLINE vf exp2v(vf x) {
  const vf xc = x < splat(-126.f) ? splat(-126.f) : x;  // NaN passes (and is kept below)
  const vf magic = splat(12582912.f);
  const vf t = xc + magic;
  const vf f = xc - (t - magic);
  vf p = splat(1.5353364870e-04f);
  p = fma(p, f, splat(1.3398875017e-03f));
  p = fma(p, f, splat(9.6184369177e-03f));
  p = fma(p, f, splat(5.5503323674e-02f));
  p = fma(p, f, splat(2.4022647738e-01f));
  p = fma(p, f, splat(6.9314718246e-01f));
  p = fma(p, f, splat(1.f));
  const vf r = (vf)((vi)p + (((vi)t - (vi)magic) << 23));
  return x < splat(-125.f) ? vf{} : (x != x ? x : r);
}
#endif

// ---- float16 (IEEE binary16) and bfloat16, exact and round-to-nearest-even ----

SP_INLINE float h2f(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  uint32_t bits;
  if (em < 0x400u) {  // zero or subnormal: em * 2^-24 is exact in float
    bits = as_uint(float(em) * 5.9604644775390625e-08f);
  } else {
    bits = (em << 13) + (112u << 23);
    if (em >= 0x7c00u) bits += 112u << 23;  // inf / nan
  }
  return as_float(bits | sign);
}

SP_INLINE uint16_t f2h(float f) {
  uint32_t u = as_uint(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= (143u << 23)) {  // >= 65536: inf, or nan (kept quiet)
    o = u > (255u << 23) ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // result subnormal or zero: let the FPU round (RNE)
    const float magic = as_float(126u << 23);  // 0.5: its ulp is the float16 subnormal step
    o = as_uint(as_float(u) + magic) - (126u << 23);
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
    o = u >> 13;
  }
  return uint16_t(o | (sign >> 16));
}

SP_INLINE float bf2f(uint16_t h) { return as_float(uint32_t(h) << 16); }

SP_INLINE uint16_t f2bf(float f) {
  const uint32_t u = as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // quiet nan
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(SPATTN_F16C) && SPATTN_VEC_BYTES == 64
// Hardware conversion (F16C / AVX-512F vcvtph2ps, vcvtps2ph): exact, round to nearest even,
// the same results as the bit-exact code below for every finite value and infinity (NaNs stay
// NaNs, quiet, sign kept).
SP_INLINE vf h2f_v(vh h16) {
  __m256i h;
  __builtin_memcpy(&h, &h16, sizeof h);
  return (vf)_mm512_cvtph_ps(h);
}
SP_INLINE vh f2h_v(vf f) {
  const __m256i r = _mm512_cvtps_ph((__m512)f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vh h;
  __builtin_memcpy(&h, &r, sizeof h);
  return h;
}
#elif defined(SPATTN_F16C) && SPATTN_VEC_BYTES == 32
SP_INLINE vf h2f_v(vh h16) {
  __m128i h;
  __builtin_memcpy(&h, &h16, sizeof h);
  return (vf)_mm256_cvtph_ps(h);
}
SP_INLINE vh f2h_v(vf f) {
  const __m128i r = _mm256_cvtps_ph((__m256)f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vh h;
  __builtin_memcpy(&h, &r, sizeof h);
  return h;
}
#else
// Portable: exact bit manipulation.
SP_INLINE vf h2f_v(vh h16) {
  const vi h = __builtin_convertvector(h16, vi);
  const vi sign = (h & 0x8000) << 16;
  const vi em = h & 0x7fff;
  vi norm = (em << 13) + (112 << 23);
  norm = em >= 0x7c00 ? norm + (112 << 23) : norm;
  const vi sub = (vi)(__builtin_convertvector(em, vf) * splat(5.9604644775390625e-08f));
  return (vf)((em < 0x400 ? sub : norm) | sign);
}

SP_INLINE vh f2h_v(vf f) {
  vi u = (vi)f;
  const vi sign = u & (int32_t)0x80000000u;
  u ^= sign;  // all values below are < 2^31: signed compares are safe
  const vi special = u > (255 << 23) ? splati(0x7e00) : splati(0x7c00);
  const vi sub = (vi)((vf)u + splat(0.5f)) - (126 << 23);
  const vi normal = (u + ((15 - 127) * (1 << 23) + 0xfff) + ((u >> 13) & 1)) >> 13;
  vi o = u >= (143 << 23) ? special : (u < (113 << 23) ? sub : normal);
  o |= (vi)((vu)sign >> 16);
  return __builtin_convertvector(o, vh);
}
#endif

SP_INLINE vf bf2f_v(vh h16) { return (vf)(__builtin_convertvector(h16, vi) << 16); }

SP_INLINE vh f2bf_v(vf f) {
  const vu u = (vu)f;
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu nan = (u >> 16) | 0x40u;
  const vu r = (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
  return __builtin_convertvector(r, vh);
}

}  // namespace spattn::cpu::SPATTN_ISA
