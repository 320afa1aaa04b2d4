// The bfloat16 forward tile on CPUs with AVX512_BF16: both products run on vdpbf16ps (pairs of
// bfloat16 multiplied exactly and summed into float32 lanes), with no widening of the inputs.
//
//   S^T[key][query] = K Q^T: pairs along the head dim. K rows are read in place (a pair is one
//     32-bit broadcast); Q^T is packed once per tile as words qp[d/2][query] (16 queries a
//     vector). Q is not pre-scaled (that would round it a second time): the softmax scale is
//     applied to the float32 scores.
//   O += P V: pairs along keys. P is rounded to bfloat16 (as FlashAttention does) into words
//     pp[key/2][query] (the broadcast operand) and V is packed as words vp[key/2][dv].
//
// Only included by isa_avx512bf16.cpp (after its target pragma, immintrin.h already included).
#pragma once

#include "cpu/attention_tiles.hpp"

namespace spattn::cpu::SPATTN_ISA {

SP_INLINE __m512i load_w(const uint32_t* p) { return _mm512_loadu_si512(p); }
SP_INLINE vf dpbf(vf acc, __m512i a, __m512i b) {
  return (vf)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
}

// C[M][N] (+)= A[M][K2 pairs] * B[K2][N] with bfloat16 pairs: the pair (m, k) is the 32-bit
// word at A + m * sam + k * sak (uint16 units; any alignment), B holds words [k][n] (row
// stride ldb words, N a multiple of 16), C is float32.
template <int R, int NV, bool ACC>
SP_INLINE void micro_bf(int K2, const uint16_t* A, int64_t sam, int64_t sak, const uint32_t* B,
                        int64_t ldb, float* C, int64_t ldc) {
  vf c[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[r][v] = ACC ? load(C + r * ldc + v * W) : vf{};
  for (int k = 0; k < K2; ++k) {
    __m512i b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = load_w(B + k * ldb + v * W);
    const uint16_t* a = A + k * sak;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      uint32_t word;
      __builtin_memcpy(&word, a + r * sam, 4);
      const __m512i ar = _mm512_set1_epi32(int(word));
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = dpbf(c[r][v], ar, b[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, c[r][v]);
}

constexpr int MRB = 6;  // rows per micro tile: 6 x 4 accumulators + 4 operands of 32 registers

template <int NG, bool ACC>
inline void panel_bf(int M, int K2, const uint16_t* A, int64_t sam, int64_t sak,
                     const uint32_t* B, int64_t ldb, float* C, int64_t ldc) {
  int m = 0;
  for (; m + MRB <= M; m += MRB)
    micro_bf<MRB, NG, ACC>(K2, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc);
  const int rest = M - m;
  A += m * sam;
  C += m * ldc;
  switch (rest) {
    case 1: micro_bf<1, NG, ACC>(K2, A, sam, sak, B, ldb, C, ldc); break;
    case 2: micro_bf<2, NG, ACC>(K2, A, sam, sak, B, ldb, C, ldc); break;
    case 3: micro_bf<3, NG, ACC>(K2, A, sam, sak, B, ldb, C, ldc); break;
    case 4: micro_bf<4, NG, ACC>(K2, A, sam, sak, B, ldb, C, ldc); break;
    case 5: micro_bf<5, NG, ACC>(K2, A, sam, sak, B, ldb, C, ldc); break;
    default: break;
  }
  static_assert(MRB <= 6, "add remainder cases");
}

template <bool ACC>
inline void gemm_bf(int M, int N, int K2, const uint16_t* A, int64_t sam, int64_t sak,
                    const uint32_t* B, int64_t ldb, float* C, int64_t ldc) {
  for (int n0 = 0; n0 < N; n0 += 64) {
    const uint32_t* b = B + n0;
    float* c = C + n0;
    switch (min_(4, (N - n0) / 16)) {
      case 4: panel_bf<4, ACC>(M, K2, A, sam, sak, b, ldb, c, ldc); break;
      case 3: panel_bf<3, ACC>(M, K2, A, sam, sak, b, ldb, c, ldc); break;
      case 2: panel_bf<2, ACC>(M, K2, A, sam, sak, b, ldb, c, ldc); break;
      case 1: panel_bf<1, ACC>(M, K2, A, sam, sak, b, ldb, c, ldc); break;
      default: break;
    }
  }
}

// 2^x as exp2v, with a degree-4 polynomial (relative error 3e-6): for the probabilities that
// are rounded to bfloat16 (relative step 4e-3) right after, where exp2v's degree 6 buys
// nothing. Two FMAs fewer per score.
SP_INLINE vf exp2v_bf(vf x) {
  // not-less-than, unordered: NaN lanes are kept and come out NaN (as exp2v).
  const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-125.f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = x - (vf)n;
  vf p = splat(9.6003953e-03f);
  p = fma(p, f, splat(5.5916894e-02f));
  p = fma(p, f, splat(2.4023719e-01f));
  p = fma(p, f, splat(6.9312197e-01f));
  p = fma(p, f, splat(1.f));
  return (vf)_mm512_maskz_scalef_ps(keep, (__m512)p, n);
}

// r (<= MRB) rows, ng (<= 4) groups of 16 columns.
template <bool ACC>
inline void micro_bf_rows(int r, int ng, int K2, const uint16_t* A, int64_t sam, int64_t sak,
                          const uint32_t* B, int64_t ldb, float* C, int64_t ldc) {
  if (r == MRB && ng == 4) return micro_bf<MRB, 4, ACC>(K2, A, sam, sak, B, ldb, C, ldc);
  switch (ng) {
    case 4: panel_bf<4, ACC>(r, K2, A, sam, sak, B, ldb, C, ldc); break;
    case 3: panel_bf<3, ACC>(r, K2, A, sam, sak, B, ldb, C, ldc); break;
    case 2: panel_bf<2, ACC>(r, K2, A, sam, sak, B, ldb, C, ldc); break;
    case 1: panel_bf<1, ACC>(r, K2, A, sam, sak, B, ldb, C, ldc); break;
    default: break;
  }
}

// As gemm_cols (gemm_tile.hpp), N <= 64: row m of C only over groups [glo[m], ghi[m]).
inline void gemm_bf_cols(int M, int K2, const uint16_t* A, int64_t sam, int64_t sak,
                         const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                         const int32_t* glo, const int32_t* ghi) {
  for (int m = 0; m < M; m += MRB) {
    const int r = min_(MRB, M - m);
    // The union of the rows' group ranges; a key no group needs (ghi == glo) adds none.
    int g0 = 1 << 30, g1 = 0;
    for (int i = 0; i < r; ++i)
      if (ghi[m + i] > glo[m + i]) g0 = min_(g0, glo[m + i]), g1 = max_(g1, ghi[m + i]);
    if (g1 > g0)
      micro_bf_rows<false>(r, g1 - g0, K2, A + m * sam, sam, sak, B + g0 * 16, ldb,
                           C + m * ldc + g0 * 16, ldc);
  }
}

// As gemm_krange<true> (gemm_tile.hpp), N <= 64, with keys in pairs: row m sums the pairs
// covering keys [klo[m], khi[m]).
inline void gemm_bf_krange(int M, int N, const uint16_t* A, int64_t sam, int64_t sak,
                           const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                           const int32_t* klo, const int32_t* khi) {
  for (int m = 0; m < M; m += MRB) {
    const int r = min_(MRB, M - m);
    // The union of the rows' ranges; a row that keeps no key (khi == klo, anywhere) adds none.
    int k0 = 1 << 30, k1 = 0;
    for (int i = 0; i < r; ++i)
      if (khi[m + i] > klo[m + i]) k0 = min_(k0, klo[m + i]), k1 = max_(k1, khi[m + i]);
    const int j0 = k0 / 2, j1 = (k1 + 1) / 2;
    if (j1 > j0)
      for (int n0 = 0; n0 < N; n0 += 64)
        micro_bf_rows<true>(r, min_(4, (N - n0) / 16), j1 - j0, A + m * sam + j0 * sak, sam, sak,
                            B + j0 * ldb + n0, ldb, C + m * ldc + n0, ldc);
  }
}

// Interleaves 16-bit elements: words i of the result = a[i] | b[i] << 16 for i < 16 (lo) and
// 16 <= i < 32 (hi).
SP_INLINE void zip16(__m512i a, __m512i b, __m512i* lo, __m512i* hi) {
  const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                       39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
  *lo = _mm512_permutex2var_epi16(a, ilo, b);
  *hi = _mm512_permutex2var_epi16(a, ihi, b);
}

// Word matrix dst[j][c] = t[r0 + 2j][c] | t[r0 + 2j + 1][c] << 16 (bfloat16 rows of tensor t at
// [b, ., h, :]) for j < (n + 1) / 2, c < ldw (a multiple of 16); zero past n rows / cols.
//
// Returns whether any element is subnormal: vdpbf16ps reads those as zero, so the caller then
// multiplies in float32 instead (exact results for every bfloat16 value).
SP_INLINE __mmask32 subnormal16(__m512i x) {
  return _mm512_mask_test_epi16_mask(_mm512_testn_epi16_mask(x, _mm512_set1_epi16(0x7f80)), x,
                                     _mm512_set1_epi16(0x007f));
}

inline bool pack_pairs(const T4& t, int64_t b, int64_t r0, int n, int64_t h, int cols, int ldw,
                       uint32_t* dst) {
  const int n2 = (n + 1) / 2;
  __mmask32 sub = 0;
  static const uint16_t zero_row[1] = {0};
  for (int j = 0; j < n2; ++j) {
    const uint16_t* ra = reinterpret_cast<const uint16_t*>(at(t, 2, b, r0 + 2 * j, h));
    const bool has_b = 2 * j + 1 < n;
    const uint16_t* rb = has_b ? reinterpret_cast<const uint16_t*>(at(t, 2, b, r0 + 2 * j + 1, h))
                               : zero_row;
    uint32_t* d = dst + int64_t(j) * ldw;
    if (t.s[3] == 1) {
      for (int c = 0; c < ldw; c += 32) {
        const int left = cols - c;
        __m512i va, vb;
        if (left >= 32 && has_b) {
          va = _mm512_loadu_si512(ra + c);
          vb = _mm512_loadu_si512(rb + c);
        } else {
          const __mmask32 mk = left >= 32 ? ~__mmask32(0) : left > 0 ? (__mmask32(1) << left) - 1 : 0;
          va = _mm512_maskz_loadu_epi16(mk, ra + c);
          vb = has_b ? _mm512_maskz_loadu_epi16(mk, rb + c) : _mm512_setzero_si512();
        }
        sub |= subnormal16(va) | subnormal16(vb);
        __m512i lo, hi;
        zip16(va, vb, &lo, &hi);
        _mm512_storeu_si512(d + c, lo);
        if (c + 16 < ldw) _mm512_storeu_si512(d + c + 16, hi);
      }
    } else {
      const int64_t s = t.s[3];
      for (int c = 0; c < ldw; ++c) {
        const uint32_t lo = c < cols ? ra[c * s] : 0u;
        const uint32_t hi = c < cols && has_b ? rb[c * s] : 0u;
        d[c] = lo | hi << 16;
        sub |= ((lo & 0x7f80u) == 0 && (lo & 0x7fu) != 0) || ((hi & 0x7f80u) == 0 && (hi & 0x7fu) != 0);
      }
    }
  }
  return sub != 0;
}

// Transposed pairs: dst[d][q] = t[r0 + q][2d] | t[r0 + q][2d + 1] << 16 for q < n, d < (cols+1)/2;
// zero for n <= q < ncol.
inline void pack_pairs_t(const T4& t, int64_t b, int64_t r0, int n, int ncol, int64_t h, int cols,
                         uint32_t* dst) {
  const int c2 = (cols + 1) / 2;
  const int64_t s = t.s[3];
  for (int q = 0; q < n; ++q) {
    const uint16_t* r = reinterpret_cast<const uint16_t*>(at(t, 2, b, r0 + q, h));
    if (s == 1 && (cols & 1) == 0) {
      for (int d = 0; d < c2; ++d) {
        uint32_t w;
        __builtin_memcpy(&w, r + 2 * d, 4);
        dst[d * kTile + q] = w;
      }
    } else {
      for (int d = 0; d < c2; ++d) {
        const uint32_t lo = r[2 * d * s];
        const uint32_t hi = 2 * d + 1 < cols ? r[(2 * d + 1) * s] : 0u;
        dst[d * kTile + q] = lo | hi << 16;
      }
    }
  }
  for (int d = 0; d < c2; ++d)
    for (int q = n; q < ncol; ++q) dst[d * kTile + q] = 0u;
}

struct FwdBufsBf {
  float *o, *st, *m, *l, *alpha, *vf32;
  uint32_t *qp, *pp, *vp;
  uint16_t* kp;
  int32_t *rlo, *rhi, *glo, *ghi, *klo, *khi, *gk0, *gk1;
  uint8_t* mask;
  int64_t total;
};

inline FwdBufsBf fwd_bufs_bf(const Problem& p, float* base) {
  Carve c{base};
  FwdBufsBf b;
  const int64_t D2 = (p.D + 1) / 2;
  b.o = c.take(kTile * p.Dvp);
  b.st = c.take(kTile * kTile);
  b.m = c.take(kTile);
  b.l = c.take(kTile);
  b.alpha = c.take(kTile);
  b.qp = reinterpret_cast<uint32_t*>(c.take(D2 * kTile));
  b.pp = reinterpret_cast<uint32_t*>(c.take(kTile / 2 * kTile));
  b.vp = reinterpret_cast<uint32_t*>(c.take(kTile / 2 * p.Dvp));
  b.vf32 = c.take(kTile * p.Dvp);
  b.kp = reinterpret_cast<uint16_t*>(c.take(kTile * D2));
  b.rlo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.rhi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.glo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.ghi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.klo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.khi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.gk0 = reinterpret_cast<int32_t*>(c.take(kTile / 16));
  b.gk1 = reinterpret_cast<int32_t*>(c.take(kTile / 16));
  b.mask = reinterpret_cast<uint8_t*>(c.take(kTile * kTile / 4));
  b.total = c.n;
  return b;
}

inline int64_t fwd_ws_floats_bf(const Problem& p) {
  return p.dtype == kBF16 ? fwd_bufs_bf(p, nullptr).total : fwd_ws_floats(p);
}

inline void fwd_tile_bf(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                        const int64_t* hi, float* ws) {
  if (p.dtype != kBF16) return fwd_tile(p, b, h, a, lo, hi, ws);
  const FwdBufsBf w = fwd_bufs_bf(p, ws);
  const int64_t i0 = a * kTile;
  const int mq = int(min_<int64_t>(kTile, p.Nq - i0));
  const int ncol = (mq + 15) & ~15;
  const int D = int(p.D), Dv = int(p.Dv), Dvp = int(p.Dvp), D2 = (D + 1) / 2;
  const int64_t g = h / p.group;
  const bool k_direct = p.k.s[3] == 1 && (D & 1) == 0;
  const float sc = p.scale2;
  // With score modifiers, modify_scores applies the scale (and the modifiers) to each block
  // before masking; the softmax below then reads finished scores.
  const vf vsc = splat(p.mods ? 1.f : sc);
  // Masked scores must come out as -inf after scaling (the scale may be negative).
  const float masked = p.mods || sc > 0.f ? -kInf : kInf;

  BlockWalk walk(p, h, a);
  prefetch_next(p, walk, b, g);
  prefetch_rows(p.q, 2, b, i0, mq, h, D);
  pack_pairs_t(p.q, b, i0, mq, ncol, h, D, w.qp);
  for (int i = 0; i < mq * Dvp; ++i) w.o[i] = 0.f;
  for (int q = 0; q < kTile; ++q) {
    w.m[q] = -kInf;
    w.l[q] = 0.f;
  }
  const __m512i perm = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);

  int64_t c;
  bool partial, first = true;
  while (walk.next(&c, &partial)) {
    prefetch_next(p, walk, b, g);
    const int64_t j0 = c * kTile;
    const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
    const int nk2 = (nk + 1) / 2;
    // S^T = K Q^T (unscaled)
    const uint16_t* ka;
    int64_t ldk;
    if (k_direct) {
      ka = reinterpret_cast<const uint16_t*>(at(p.k, 2, b, j0, g));
      ldk = p.k.s[1];
    } else {
      for (int k = 0; k < nk; ++k) {
        const uint16_t* r = reinterpret_cast<const uint16_t*>(at(p.k, 2, b, j0 + k, g));
        uint16_t* d = w.kp + k * 2 * D2;
        for (int e = 0; e < D; ++e) d[e] = r[e * p.k.s[3]];
        for (int e = D; e < 2 * D2; ++e) d[e] = 0;
      }
      ka = w.kp;
      ldk = 2 * D2;
    }
    const bool ranged = partial && block_ranges(p, h, i0, mq, ncol, j0, nk, lo, hi, w.rlo, w.rhi);  // see fwd_tile
    if (ranged) {
      block_work(mq, ncol, nk, w.rlo, w.rhi, w.glo, w.ghi, w.klo, w.khi, w.gk0, w.gk1);
      // P is written in pairs of keys: widen each group's keys to whole pairs (the extra key
      // is masked below, as every key of the range outside a row's interval is).
      for (int gi = 0; gi < ncol / 16; ++gi)
        if (w.gk0[gi] < w.gk1[gi]) w.gk0[gi] &= ~1, w.gk1[gi] = min_(nk, (w.gk1[gi] + 1) & ~1);
      gemm_bf_cols(nk, D2, ka, ldk, 2, w.qp, kTile, w.st, kTile, w.glo, w.ghi);
    } else {
      gemm_bf<false>(nk, ncol, D2, ka, ldk, 2, w.qp, kTile, w.st, kTile);
    }
    if (p.mods) modify_scores<true>(p, h, i0, ncol, j0, nk, w.st, sc, nullptr);
    if (partial)
      apply_mask(p, ranged, h, i0, mq, ncol, j0, nk, w.rlo, w.rhi, w.mask, w.st, masked,
                 ranged ? w.gk0 : nullptr, ranged ? w.gk1 : nullptr);

    // Online softmax down the columns (as in fwd_tile, ranged blocks by group as there); P
    // rounded to bfloat16 pairs of keys.
    bool rescale = false;
    for (int q = 0; q < ncol; q += W) {
      const int kb = ranged ? w.gk0[q / 16] : 0, ke = ranged ? w.gk1[q / 16] : nk;
      const vf m_old = load(w.m + q);
      vf mx = splat(-kInf);
      for (int k = kb; k < ke; ++k) mx = vmax(mx, load(w.st + k * kTile + q) * vsc);
      const vf m_new = mx > m_old + splat(kLazy) ? mx : m_old;
      const vf mu = m_new == splat(-kInf) ? vf{} : m_new;
      const vf nmu = -mu;
      const vf alpha = exp2v(m_old - mu);
      vf sum{};
      const int jb = kb / 2, je = kb < ke ? (ke + 1) / 2 : jb;
      for (int j = 0; j < jb; ++j) _mm512_storeu_si512(w.pp + j * kTile + q, _mm512_setzero_si512());
      for (int j = je; j < nk2; ++j) _mm512_storeu_si512(w.pp + j * kTile + q, _mm512_setzero_si512());
      for (int j = jb; j < je; ++j) {
        const int k = 2 * j;
        const vf e0 = exp2v_bf(fma(load(w.st + k * kTile + q), vsc, nmu));
        const vf e1 = k + 1 < nk ? exp2v_bf(fma(load(w.st + (k + 1) * kTile + q), vsc, nmu)) : vf{};
        const __m512i pr = (__m512i)_mm512_cvtne2ps_pbh((__m512)e1, (__m512)e0);
        const __m512i wd = _mm512_permutexvar_epi16(perm, pr);
        _mm512_storeu_si512(w.pp + j * kTile + q, wd);
        sum += e0 + e1;  // l sums the unrounded values (as FlashAttention does)
      }
      store(w.l + q, load(w.l + q) * alpha + sum);
      store(w.m + q, m_new);
      store(w.alpha + q, alpha);
      rescale |= _mm512_cmp_ps_mask((__m512)alpha, _mm512_set1_ps(1.f), _CMP_NEQ_UQ) != 0;
    }
    if (rescale && !first) {
      for (int q = 0; q < mq; ++q) {
        const float al = w.alpha[q];
        if (al == 1.f) continue;
        float* o = w.o + q * Dvp;
        for (int d = 0; d < Dvp; d += W) store(o + d, load(o + d) * al);
      }
    }
    first = false;
    // O += P V
    if (!pack_pairs(p.v, b, j0, nk, g, Dv, Dvp, w.vp)) {
      const uint16_t* pa = reinterpret_cast<const uint16_t*>(w.pp);
      if (ranged)
        gemm_bf_krange(mq, Dvp, pa, 2, 2 * kTile, w.vp, Dvp, w.o, Dvp, w.klo, w.khi);
      else
        gemm_bf<true>(mq, Dvp, nk2, pa, 2, 2 * kTile, w.vp, Dvp, w.o, Dvp);
    } else {  // subnormal values in V: the same products in float32 (rare)
      for (int k = 0; k < nk; ++k)
        for (int q = 0; q < ncol; q += W) {
          const vu wd = (vu)load_w(w.pp + (k / 2) * kTile + q);
          store(w.st + k * kTile + q, (vf)((k & 1) ? wd & 0xffff0000u : wd << 16));
        }
      pack_rows(p.v, p.dtype, b, j0, nk, g, Dv, Dvp, 1.f, w.vf32);
      gemm<true>(mq, Dvp, nk, w.st, 1, kTile, w.vf32, Dvp, w.o, Dvp);
    }
  }

  for (int q = 0; q < mq; ++q) {
    float mul, lse;
    finish_row(p, h, w.m[q], w.l[q], &mul, &lse);
    store_row(at_mut(p.o, 2, b, i0 + q, h), p.dtype, p.o.s[3], Dv, w.o + q * Dvp, mul);
    if (p.lse) p.lse[b * p.lse_s[0] + h * p.lse_s[1] + (i0 + q) * p.lse_s[2]] = lse;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward (bfloat16): the five products of bwd_tile on vdpbf16ps. S^T and dP^T multiply the
// inputs exactly (pairs along the head dims); P and dS are rounded to bfloat16 for dV, dK and
// dQ (as FlashAttention does), with float32 accumulation everywhere.

struct BwdBufsBf {
  float *st, *dpt, *dcap, *dq, *delta, *lse2, *tmp;
  uint32_t *qp, *dop, *qpp, *dopp, *dsp, *kpp;
  uint16_t *pb, *dsb, *kp, *vp;
  int32_t *rlo, *rhi;
  uint8_t* mask;
  int64_t total;
};

inline BwdBufsBf bwd_bufs_bf(const Problem& p, float* base) {
  Carve c{base};
  BwdBufsBf b;
  const int64_t D2 = (p.D + 1) / 2, Dv2 = (p.Dv + 1) / 2;
  b.st = c.take(kTile * kTile);
  b.dpt = c.take(kTile * kTile);
  b.dcap = c.take(p.softcap2 != 0.f ? kTile * kTile : 0);  // softcap's derivative
  b.dq = c.take(kTile * p.Dp);
  b.delta = c.take(kTile);
  b.lse2 = c.take(kTile);
  b.tmp = c.take(2 * max_(p.Dp, p.Dvp));
  b.qp = reinterpret_cast<uint32_t*>(c.take(D2 * kTile));
  b.dop = reinterpret_cast<uint32_t*>(c.take(Dv2 * kTile));
  b.qpp = reinterpret_cast<uint32_t*>(c.take(kTile / 2 * p.Dp));
  b.dopp = reinterpret_cast<uint32_t*>(c.take(kTile / 2 * p.Dvp));
  b.dsp = reinterpret_cast<uint32_t*>(c.take(kTile / 2 * kTile));
  b.kpp = reinterpret_cast<uint32_t*>(c.take(kTile / 2 * p.Dp));
  b.pb = reinterpret_cast<uint16_t*>(c.take(kTile * kTile / 2));
  b.dsb = reinterpret_cast<uint16_t*>(c.take(kTile * kTile / 2));
  b.kp = reinterpret_cast<uint16_t*>(c.take(kTile * D2));
  b.vp = reinterpret_cast<uint16_t*>(c.take(kTile * Dv2));
  b.rlo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.rhi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.mask = reinterpret_cast<uint8_t*>(c.take(kTile * kTile / 4));
  b.total = c.n;
  return b;
}

inline int64_t bwd_ws_floats_bf(const Problem& p) {
  return p.dtype == kBF16 ? bwd_bufs_bf(p, nullptr).total : bwd_ws_floats(p);
}

// Rows [r0, r0 + n) of bfloat16 tensor t at [b, ., h, :] as rows of 2 * ((cols + 1) / 2)
// elements (zero padded) in place (unit stride, even cols) or copied to buf. Sets *ld.
SP_INLINE const uint16_t* rows_bf(const T4& t, int64_t b, int64_t r0, int n, int64_t h,
                                  int cols, uint16_t* buf, int64_t* ld) {
  if (t.s[3] == 1 && (cols & 1) == 0) {
    *ld = t.s[1];
    return reinterpret_cast<const uint16_t*>(at(t, 2, b, r0, h));
  }
  const int c2 = 2 * ((cols + 1) / 2);
  for (int k = 0; k < n; ++k) {
    const uint16_t* r = reinterpret_cast<const uint16_t*>(at(t, 2, b, r0 + k, h));
    uint16_t* d = buf + k * c2;
    for (int e = 0; e < cols; ++e) d[e] = r[e * t.s[3]];
    for (int e = cols; e < c2; ++e) d[e] = 0;
  }
  *ld = c2;
  return buf;
}

// delta recomputed as sum_j P_ij dP_ij in float32 (see exact_delta in attention_tiles.hpp: the
// rounded `out` cannot give it when a row's values nearly cancel). S^T and dP^T are exact
// products of the bf16 inputs here.
inline void exact_delta_bf(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                           const int64_t* hi, const BwdBufsBf& w, int mq, int ncol) {
  const int64_t i0 = a * kTile, g = h / p.group;
  const int D2 = int((p.D + 1) / 2), Dv2 = int((p.Dv + 1) / 2);
  const vf vsc = splat(p.mods ? 1.f : p.scale2);  // modifiers: modify_scores scales
  const float masked = p.mods || p.scale2 > 0.f ? -kInf : kInf;
  for (int q = 0; q < ncol; ++q) w.delta[q] = 0.f;
  BlockWalk walk(p, h, a);
  int64_t c;
  bool partial;
  while (walk.next(&c, &partial)) {
    const int64_t j0 = c * kTile;
    const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
    int64_t ldk, ldv;
    const uint16_t* kb = rows_bf(p.k, b, j0, nk, g, int(p.D), w.kp, &ldk);
    const uint16_t* vb = rows_bf(p.v, b, j0, nk, g, int(p.Dv), w.vp, &ldv);
    gemm_bf<false>(nk, ncol, D2, kb, ldk, 2, w.qp, kTile, w.st, kTile);     // S^T (unscaled)
    if (p.mods) modify_scores(p, h, i0, ncol, j0, nk, w.st, p.scale2, w.dcap);
    if (partial) {
      const bool ranged = block_ranges(p, h, i0, mq, ncol, j0, nk, lo, hi, w.rlo, w.rhi);
      apply_mask(p, ranged, h, i0, mq, ncol, j0, nk, w.rlo, w.rhi, w.mask, w.st, masked);
    }
    gemm_bf<false>(nk, ncol, Dv2, vb, ldv, 2, w.dop, kTile, w.dpt, kTile);  // dP^T
    for (int k = 0; k < nk; ++k)
      for (int q = 0; q < ncol; q += W) {
        const vf pr = exp2v(fma(load(w.st + k * kTile + q), vsc, -load(w.lse2 + q)));
        store(w.delta + q, fma(pr, load(w.dpt + k * kTile + q), load(w.delta + q)));
      }
  }
}

inline void bwd_tile_bf(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                        const int64_t* hi, float* dk_acc, float* dv_acc, int64_t kb_lo,
                        float* ws) {
  if (p.dtype != kBF16) return bwd_tile(p, b, h, a, lo, hi, dk_acc, dv_acc, kb_lo, ws);
  const BwdBufsBf w = bwd_bufs_bf(p, ws);
  const int64_t i0 = a * kTile;
  const int mq = int(min_<int64_t>(kTile, p.Nq - i0));
  const int ncol = (mq + 15) & ~15;
  const int mq2 = (mq + 1) / 2;
  const int D = int(p.D), Dv = int(p.Dv), Dp = int(p.Dp), Dvp = int(p.Dvp);
  const int D2 = (D + 1) / 2, Dv2 = (Dv + 1) / 2;
  const int64_t g = h / p.group;
  const float sc = p.scale2;
  const vf vsc = splat(p.mods ? 1.f : sc);  // modifiers: modify_scores scales
  const float masked = p.mods || sc > 0.f ? -kInf : kInf;
  const __m512i perm = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);

  BlockWalk walk(p, h, a);
  prefetch_next(p, walk, b, g);
  pack_pairs_t(p.q, b, i0, mq, ncol, h, D, w.qp);
  pack_pairs_t(p.dout, b, i0, mq, ncol, h, Dv, w.dop);
  pack_pairs(p.q, b, i0, mq, h, D, Dp, w.qpp);
  pack_pairs(p.dout, b, i0, mq, h, Dv, Dvp, w.dopp);
  float* orow = w.tmp;
  float* drow = w.tmp + max_(Dp, Dvp);
  for (int q = 0; q < ncol; ++q) {
    w.delta[q] = 0.f;
    w.lse2[q] = kInf;  // P = 0 for padding columns and rows that see no key
    if (q >= mq) continue;
    load_row(at(p.o, 2, b, i0 + q, h), p.dtype, p.o.s[3], Dv, 1.f, orow);
    load_row(at(p.dout, 2, b, i0 + q, h), p.dtype, p.dout.s[3], Dv, 1.f, drow);
    float s = 0.f;
    for (int d = 0; d < Dv; ++d) s += drow[d] * orow[d];
    w.delta[q] = s;
    const float l = p.lse[b * p.lse_s[0] + h * p.lse_s[1] + (i0 + q) * p.lse_s[2]];
    if (l != -kInf) w.lse2[q] = l * kLog2e;
  }
  if (p.exact_delta) exact_delta_bf(p, b, h, a, lo, hi, w, mq, ncol);
  for (int i = 0; i < mq * Dp; ++i) w.dq[i] = 0.f;

  int64_t c;
  bool partial;
  while (walk.next(&c, &partial)) {
    prefetch_next(p, walk, b, g);
    const int64_t j0 = c * kTile;
    const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
    const int nk2 = (nk + 1) / 2;
    int64_t ldk, ldv;
    const uint16_t* kb = rows_bf(p.k, b, j0, nk, g, D, w.kp, &ldk);
    const uint16_t* vb = rows_bf(p.v, b, j0, nk, g, Dv, w.vp, &ldv);
    pack_pairs(p.k, b, j0, nk, g, D, Dp, w.kpp);

    gemm_bf<false>(nk, ncol, D2, kb, ldk, 2, w.qp, kTile, w.st, kTile);     // S^T (unscaled)
    if (p.mods) modify_scores(p, h, i0, ncol, j0, nk, w.st, p.scale2, w.dcap);
    if (partial) {
      const bool ranged = block_ranges(p, h, i0, mq, ncol, j0, nk, lo, hi, w.rlo, w.rhi);
      apply_mask(p, ranged, h, i0, mq, ncol, j0, nk, w.rlo, w.rhi, w.mask, w.st, masked);
    }
    gemm_bf<false>(nk, ncol, Dv2, vb, ldv, 2, w.dop, kTile, w.dpt, kTile);  // dP^T
    if (p.softcap2 != 0.f) fold_softcap(nk, ncol, w.dcap, w.delta, w.dpt);
    for (int j = 0; j < nk2; ++j) {
      const int k = 2 * j;
      const bool two = k + 1 < nk;
      for (int q = 0; q < ncol; q += W) {
        const vf nl = -load(w.lse2 + q), dl = load(w.delta + q);
        const vf p0 = exp2v(fma(load(w.st + k * kTile + q), vsc, nl));
        const vf d0 = p0 * (load(w.dpt + k * kTile + q) - dl);
        vf d1{};
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w.pb + k * kTile + q),
                            (__m256i)_mm512_cvtneps_pbh((__m512)p0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w.dsb + k * kTile + q),
                            (__m256i)_mm512_cvtneps_pbh((__m512)d0));
        if (two) {
          const vf p1 = exp2v(fma(load(w.st + (k + 1) * kTile + q), vsc, nl));
          d1 = p1 * (load(w.dpt + (k + 1) * kTile + q) - dl);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(w.pb + (k + 1) * kTile + q),
                              (__m256i)_mm512_cvtneps_pbh((__m512)p1));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(w.dsb + (k + 1) * kTile + q),
                              (__m256i)_mm512_cvtneps_pbh((__m512)d1));
        }
        const __m512i pr = (__m512i)_mm512_cvtne2ps_pbh((__m512)d1, (__m512)d0);
        _mm512_storeu_si512(w.dsp + j * kTile + q, _mm512_permutexvar_epi16(perm, pr));
      }
    }
    float* dvb = dv_acc + (c - kb_lo) * kTile * Dvp;
    float* dkb = dk_acc + (c - kb_lo) * kTile * Dp;
    gemm_bf<true>(nk, Dvp, mq2, w.pb, kTile, 2, w.dopp, Dvp, dvb, Dvp);   // dV += P^T dO
    gemm_bf<true>(nk, Dp, mq2, w.dsb, kTile, 2, w.qpp, Dp, dkb, Dp);      // dK += dS^T Q
    gemm_bf<true>(mq, Dp, nk2, reinterpret_cast<const uint16_t*>(w.dsp), 2, 2 * kTile, w.kpp,
                  Dp, w.dq, Dp);                                           // dQ += dS K
  }
  for (int q = 0; q < mq; ++q)
    store_row(at_mut(p.dq, 2, b, i0 + q, h), p.dtype, p.dq.s[3], D, w.dq + q * Dp, p.scale);
}

}  // namespace spattn::cpu::SPATTN_ISA
