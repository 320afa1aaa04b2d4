// Moving rows between tensors of any dtype / stride and float32 scratch. ISA-namespaced; see
// simd.hpp for the inclusion rules.
#pragma once

#include "cpu/simd.hpp"

namespace spattn::cpu::SPATTN_ISA {

// dst[0..n) = mul * src[0..n) (element stride `stride`, dtype kF32 / kF16 / kBF16).
inline void load_row(const void* src, int dtype, int64_t stride, int n, float mul, float* dst) {
  int i = 0;
  if (dtype == kF32) {
    const float* s = static_cast<const float*>(src);
    if (stride == 1) {
      for (; i + W <= n; i += W) store(dst + i, load(s + i) * mul);
      for (; i < n; ++i) dst[i] = s[i] * mul;
    } else {
      for (; i < n; ++i) dst[i] = s[i * stride] * mul;
    }
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  const bool half = dtype == kF16;
  if (stride == 1) {
    for (; i + W <= n; i += W) {
      vh h;
      __builtin_memcpy(&h, s + i, sizeof h);
      store(dst + i, (half ? h2f_v(h) : bf2f_v(h)) * mul);
    }
  }
  for (; i < n; ++i) {
    const uint16_t h = s[i * stride];
    dst[i] = (half ? h2f(h) : bf2f(h)) * mul;
  }
}

// dst[0..n) (element stride `stride`, dtype) = mul * src[0..n), rounded to nearest even.
inline void store_row(void* dst, int dtype, int64_t stride, int n, const float* src, float mul) {
  int i = 0;
  if (dtype == kF32) {
    float* d = static_cast<float*>(dst);
    if (stride == 1) {
      for (; i + W <= n; i += W) store(d + i, load(src + i) * mul);
      for (; i < n; ++i) d[i] = src[i] * mul;
    } else {
      for (; i < n; ++i) d[i * stride] = src[i] * mul;
    }
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  const bool half = dtype == kF16;
  if (stride == 1) {
    for (; i + W <= n; i += W) {
      const vf x = load(src + i) * mul;
      const vh h = half ? f2h_v(x) : f2bf_v(x);
      __builtin_memcpy(d + i, &h, sizeof h);
    }
  }
  for (; i < n; ++i) {
    const float x = src[i] * mul;
    d[i * stride] = half ? f2h(x) : f2bf(x);
  }
}

// Byte address of element [i0][i1][i2][0] of t.
SP_INLINE const char* at(const T4& t, int esize, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<const char*>(t.data) + (i0 * t.s[0] + i1 * t.s[1] + i2 * t.s[2]) * esize;
}
SP_INLINE char* at_mut(const T4& t, int esize, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<char*>(t.data) + (i0 * t.s[0] + i1 * t.s[1] + i2 * t.s[2]) * esize;
}

// Prefetches rows [r0, r0 + n) of t at [b, ., h, :] (cols elements each, unit stride only)
// into the caches: the rows of a block are 1 KB or more apart (a row holds every head), too far
// for the hardware prefetchers to run ahead.
inline void prefetch_rows(const T4& t, int esize, int64_t b, int64_t r0, int n, int64_t h,
                          int cols) {
  if (t.s[3] != 1) return;
  const int bytes = cols * esize;
  for (int r = 0; r < n; ++r) {
    const char* row = at(t, esize, b, r0 + r, h);
    for (int o = 0; o < bytes; o += 64) __builtin_prefetch(row + o);
    __builtin_prefetch(row + bytes - 1);
  }
}

// Rows [r0, r0 + n) of t (dimension 1) at [b, ., h, :] as float32 rows of ld floats, the
// columns [cols, ld) zeroed. Returns dst.
inline float* pack_rows(const T4& t, int dtype, int64_t b, int64_t r0, int n, int64_t h,
                        int cols, int ld, float mul, float* dst) {
  const int es = dtype == kF32 ? 4 : 2;
  for (int r = 0; r < n; ++r) {
    float* d = dst + int64_t(r) * ld;
    load_row(at(t, es, b, r0 + r, h), dtype, t.s[3], cols, mul, d);
    for (int c = cols; c < ld; ++c) d[c] = 0.f;
  }
  return dst;
}

#if SPATTN_VEC_BYTES == 64
// dst[c * 64 + i] = mul * rows[i][c] for 16 float32 rows (unit stride) and c < cols, a multiple
// of 16: a 16 x 16 transpose in registers per 16 columns. Transposing with scalar stores (one
// per element, each to another cache line) cost ~10-20% of a grid tile's forward.
inline void transpose16_rows(const float* const* rows, int cols, float mul, float* dst) {
  const __m512 m = _mm512_set1_ps(mul);
  for (int c0 = 0; c0 < cols; c0 += 16) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_mul_ps(_mm512_loadu_ps(rows[i] + c0), m);
    for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // quads
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 2; ++i)  // 128-bit lanes, then 256-bit halves
      for (int j = 0; j < 4; ++j) {
        t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
        t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xDD);
      }
    for (int j = 0; j < 8; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
      r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    }
    for (int d = 0; d < 16; ++d) _mm512_storeu_ps(dst + (c0 + d) * kTile, r[d]);
  }
}
#endif

// Transposed: dst[c * 64 + r] = mul * t[b, r0 + r, h, c] for r < n, zero for n <= r < ncol.
// tmp holds one row (cols floats).
inline void pack_rows_t(const T4& t, int dtype, int64_t b, int64_t r0, int n, int ncol,
                        int64_t h, int cols, float mul, float* tmp, float* dst) {
  const int es = dtype == kF32 ? 4 : 2;
  if (dtype == kF32) {  // straight from the rows: no vector store reread as scalars
    int r = 0;
#if SPATTN_VEC_BYTES == 64
    if (t.s[3] == 1 && cols % 16 == 0)
      for (; r + 16 <= n; r += 16) {
        const float* rows[16];
        for (int i = 0; i < 16; ++i) rows[i] = reinterpret_cast<const float*>(at(t, es, b, r0 + r + i, h));
        transpose16_rows(rows, cols, mul, dst + r);
      }
#endif
    for (; r < n; ++r) {
      const float* s = reinterpret_cast<const float*>(at(t, es, b, r0 + r, h));
      for (int c = 0; c < cols; ++c) dst[c * kTile + r] = s[c * t.s[3]] * mul;
    }
  } else {
    for (int r = 0; r < n; ++r) {
      load_row(at(t, es, b, r0 + r, h), dtype, t.s[3], cols, mul, tmp);
      for (int c = 0; c < cols; ++c) dst[c * kTile + r] = tmp[c];
    }
  }
  for (int c = 0; c < cols; ++c)
    for (int r = n; r < ncol; ++r) dst[c * kTile + r] = 0.f;
}

}  // namespace spattn::cpu::SPATTN_ISA
