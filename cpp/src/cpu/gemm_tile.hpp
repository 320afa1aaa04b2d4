// The one matrix product every attention step uses:
//   C[M][N] (+)= A[M][K] * B[K][N]
// A is read element by element (broadcast) at A[m * sam + k * sak], so it can be a row-major
// matrix or a transposed one; B and C are row-major float32 with N a multiple of 16 (scratch
// is padded with zeros, so there are never column remainders). Register-blocked: MR rows x
// NG groups of 16 columns of C live in registers while k runs. ISA-namespaced (see simd.hpp).
#pragma once

#include "cpu/simd.hpp"

namespace spattn::cpu::SPATTN_ISA {

constexpr int MR = SPATTN_MR;        // rows of C per micro tile
constexpr int NGMAX = SPATTN_NGMAX;  // 16-column groups of C per micro tile
constexpr int VG = 16 / W;           // vectors per 16-column group

template <int R, int NV, bool ACC>
SP_INLINE void micro(int K, const float* A, int64_t sam, int64_t sak, const float* B,
                     int64_t ldb, float* C, int64_t ldc) {
  vf c[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[r][v] = ACC ? load(C + r * ldc + v * W) : vf{};
  for (int k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * W);
    const float* a = A + k * sak;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf ar = splat(a[r * sam]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = fma(ar, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, c[r][v]);
}

// All M rows of one column panel of NG groups.
template <int NG, bool ACC>
inline void panel(int M, int K, const float* A, int64_t sam, int64_t sak, const float* B,
                  int64_t ldb, float* C, int64_t ldc) {
  int m = 0;
  for (; m + MR <= M; m += MR) micro<MR, NG * VG, ACC>(K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc);
  const int rest = M - m;
  A += m * sam;
  C += m * ldc;
  if constexpr (MR > 1) if (rest == 1) micro<1, NG * VG, ACC>(K, A, sam, sak, B, ldb, C, ldc);
  if constexpr (MR > 2) if (rest == 2) micro<2, NG * VG, ACC>(K, A, sam, sak, B, ldb, C, ldc);
  if constexpr (MR > 3) if (rest == 3) micro<3, NG * VG, ACC>(K, A, sam, sak, B, ldb, C, ldc);
  if constexpr (MR > 4) if (rest == 4) micro<4, NG * VG, ACC>(K, A, sam, sak, B, ldb, C, ldc);
  if constexpr (MR > 5) if (rest == 5) micro<5, NG * VG, ACC>(K, A, sam, sak, B, ldb, C, ldc);
  static_assert(MR <= 6, "add remainder cases");
}

template <bool ACC>
inline void gemm(int M, int N, int K, const float* A, int64_t sam, int64_t sak, const float* B,
                 int64_t ldb, float* C, int64_t ldc) {
  for (int n0 = 0; n0 < N; n0 += NGMAX * 16) {
    const int ng = min_(NGMAX, (N - n0) / 16);
    const float* b = B + n0;
    float* c = C + n0;
    if (ng == NGMAX) { panel<NGMAX, ACC>(M, K, A, sam, sak, b, ldb, c, ldc); continue; }
    if constexpr (NGMAX > 1) if (ng == 1) panel<1, ACC>(M, K, A, sam, sak, b, ldb, c, ldc);
    if constexpr (NGMAX > 2) if (ng == 2) panel<2, ACC>(M, K, A, sam, sak, b, ldb, c, ldc);
    if constexpr (NGMAX > 3) if (ng == 3) panel<3, ACC>(M, K, A, sam, sak, b, ldb, c, ldc);
    static_assert(NGMAX <= 4, "add remainder cases");
  }
}

// ---- Ranged products, for partial blocks where the caller knows which parts of C matter ----

// r (<= MR) rows of C, ng groups of 16 columns, in chunks of NGMAX groups.
template <bool ACC>
inline void micro_rows(int r, int ng, int K, const float* A, int64_t sam, int64_t sak,
                       const float* B, int64_t ldb, float* C, int64_t ldc) {
  while (ng > 0) {
    const int n = min_(ng, NGMAX);
    if (r == MR && n == NGMAX) {
      micro<MR, NGMAX * VG, ACC>(K, A, sam, sak, B, ldb, C, ldc);
    } else {
      // Rare shapes (a block's last rows, narrow column ranges): the panel code handles them.
      const int m = r;
      if (n == NGMAX) panel<NGMAX, ACC>(m, K, A, sam, sak, B, ldb, C, ldc);
      if constexpr (NGMAX > 1) if (n == 1) panel<1, ACC>(m, K, A, sam, sak, B, ldb, C, ldc);
      if constexpr (NGMAX > 2) if (n == 2) panel<2, ACC>(m, K, A, sam, sak, B, ldb, C, ldc);
      if constexpr (NGMAX > 3) if (n == 3) panel<3, ACC>(m, K, A, sam, sak, B, ldb, C, ldc);
    }
    B += n * 16;
    C += n * 16;
    ng -= n;
  }
}

// C rows m of M, each only over the 16-column groups [glo[m], ghi[m]) (taken together per
// micro tile of MR rows); the other entries of C are left as they were.
template <bool ACC>
inline void gemm_cols(int M, int K, const float* A, int64_t sam, int64_t sak, const float* B,
                      int64_t ldb, float* C, int64_t ldc, const int32_t* glo, const int32_t* ghi) {
  for (int m = 0; m < M; m += MR) {
    const int r = min_(MR, M - m);
    // The union of the rows' group ranges; a key no group needs (ghi == glo) adds none.
    int g0 = 1 << 30, g1 = 0;
    for (int i = 0; i < r; ++i)
      if (ghi[m + i] > glo[m + i]) g0 = min_(g0, glo[m + i]), g1 = max_(g1, ghi[m + i]);
    if (g1 > g0)
      micro_rows<ACC>(r, g1 - g0, K, A + m * sam, sam, sak, B + g0 * 16, ldb,
                      C + m * ldc + g0 * 16, ldc);
  }
}

// C (+)= A B with row m of C summing only over k in [klo[m], khi[m]) (taken together per
// micro tile): the caller knows the other terms are zero.
template <bool ACC>
inline void gemm_krange(int M, int N, const float* A, int64_t sam, int64_t sak, const float* B,
                        int64_t ldb, float* C, int64_t ldc, const int32_t* klo,
                        const int32_t* khi) {
  for (int m = 0; m < M; m += MR) {
    const int r = min_(MR, M - m);
    // The union of the rows' ranges; a row that keeps no key (khi == klo, anywhere) adds none.
    int k0 = 1 << 30, k1 = 0;
    for (int i = 0; i < r; ++i)
      if (khi[m + i] > klo[m + i]) k0 = min_(k0, klo[m + i]), k1 = max_(k1, khi[m + i]);
    if (k1 > k0)
      micro_rows<ACC>(r, N / 16, k1 - k0, A + m * sam + k0 * sak, sam, sak, B + k0 * ldb, ldb,
                      C + m * ldc, ldc);
    else if (!ACC)
      for (int i = 0; i < r; ++i)
        for (int n = 0; n < N; ++n) C[(m + i) * ldc + n] = 0.f;
  }
}

// ---- Gathered rows: one operand's rows given by pointers (unit stride), not copied ----------
// The grid tiles (attention_grid.hpp) read K and V rows that lie a grid line apart in place.

// C[R][NV vectors] (+)= A[R][K] B[K][.], A's row r at Ap[r] (+ k).
template <int R, int NV, bool ACC>
SP_INLINE void micro_ap(int K, const float* const* Ap, const float* B, int64_t ldb, float* C,
                        int64_t ldc) {
  vf c[R][NV];
  const float* a[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    a[r] = Ap[r];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[r][v] = ACC ? load(C + r * ldc + v * W) : vf{};
  }
  for (int k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf ar = splat(a[r][k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = fma(ar, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, c[r][v]);
}

// C[R][NV vectors] (+)= A[R][K] B[K][.], B's row k at Bp[k] + n0; A read as in micro().
template <int R, int NV, bool ACC>
SP_INLINE void micro_bp(int K, const float* A, int64_t sam, int64_t sak, const float* const* Bp,
                        int n0, float* C, int64_t ldc) {
  vf c[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[r][v] = ACC ? load(C + r * ldc + v * W) : vf{};
  for (int k = 0; k < K; ++k) {
    vf b[NV];
    const float* brow = Bp[k] + n0;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = load(brow + v * W);
    const float* a = A + k * sak;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf ar = splat(a[r * sam]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = fma(ar, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, c[r][v]);
}

// The micro kernel of r (<= MR) rows by n (<= NGMAX) groups of 16 columns, chosen at run time:
// CALL(R, NV) is expanded for each shape.
#define SPATTN_BY_SHAPE(r, n, CALL)                                                  \
  do {                                                                               \
    static_assert(MR <= 4 && NGMAX <= 4, "add shapes");                              \
    switch ((r) * 8 + (n)) {                                                         \
      case 8 * MR + 1: CALL(MR, VG); break;                                          \
      case 8 * MR + 2: CALL(MR, 2 * VG); break;                                      \
      case 8 * MR + 3: CALL(MR, 3 * VG); break;                                      \
      case 8 * MR + 4: CALL(MR, 4 * VG); break;                                      \
      default:  /* rare shapes (a block's last rows): one row at a time */           \
        for (int i_ = 0; i_ < (r); ++i_) SPATTN_ONE_ROW(i_, n, CALL);                \
    }                                                                                \
  } while (0)
#define SPATTN_ONE_ROW(i, n, CALL)                                                   \
  switch (n) {                                                                       \
    case 1: CALL##_ROW(i, VG); break;                                                \
    case 2: CALL##_ROW(i, 2 * VG); break;                                            \
    case 3: CALL##_ROW(i, 3 * VG); break;                                            \
    default: CALL##_ROW(i, 4 * VG); break;                                           \
  }

// gemm_cols with A's row m at Ap[m] (K columns): C rows m only over the 16-column groups
// [glo[m], ghi[m]) (taken together per micro tile); C = A B (no accumulation).
inline void gemm_cols_ap(int M, int K, const float* const* Ap, const float* B, int64_t ldb,
                         float* C, int64_t ldc, const int32_t* glo, const int32_t* ghi) {
  for (int m = 0; m < M; m += MR) {
    const int r = min_(MR, M - m);
    int g0 = 1 << 30, g1 = 0;
    for (int i = 0; i < r; ++i)
      if (ghi[m + i] > glo[m + i]) g0 = min_(g0, glo[m + i]), g1 = max_(g1, ghi[m + i]);
    // The next micro tile's rows into L1 while this one multiplies: gathered rows (a grid line
    // apart) defeat the hardware prefetchers, and the products otherwise wait on their first
    // loads (measured 5-6% of the grid tiles' forward, bench/RESULTS.md).
    for (int i = m + MR; i < min_(M, m + 2 * MR); ++i) {
      for (int l = 0; l < K; l += 16) __builtin_prefetch(Ap[i] + l, 0, 3);
      __builtin_prefetch(Ap[i] + K - 1, 0, 3);
    }
    for (int g = g0; g < g1; g += NGMAX) {
      const int n = min_(NGMAX, g1 - g);
#define AP(R, NV) micro_ap<R, NV, false>(K, Ap + m, B + g * 16, ldb, C + m * ldc + g * 16, ldc)
#define AP_ROW(i, NV) micro_ap<1, NV, false>(K, Ap + m + i, B + g * 16, ldb, C + (m + i) * ldc + g * 16, ldc)
      SPATTN_BY_SHAPE(r, n, AP);
#undef AP
#undef AP_ROW
    }
  }
}

// gemm_krange with B's row k at Bp[k] (N columns, a multiple of 16): C += A B, row m of C
// summing only over k in [klo[m], khi[m]) (taken together per micro tile).
inline void gemm_krange_bp(int M, int N, const float* A, int64_t sam, int64_t sak,
                           const float* const* Bp, float* C, int64_t ldc, const int32_t* klo,
                           const int32_t* khi) {
  for (int m = 0; m < M; m += MR) {
    const int r = min_(MR, M - m);
    int k0 = 1 << 30, k1 = 0;
    for (int i = 0; i < r; ++i)
      if (khi[m + i] > klo[m + i]) k0 = min_(k0, klo[m + i]), k1 = max_(k1, khi[m + i]);
    if (k1 <= k0) continue;
    for (int n0 = 0; n0 < N; n0 += NGMAX * 16) {
      const int n = min_(NGMAX, (N - n0) / 16);
      const float* a = A + m * sam + k0 * sak;
#define BP(R, NV) micro_bp<R, NV, true>(k1 - k0, a, sam, sak, Bp + k0, n0, C + m * ldc + n0, ldc)
#define BP_ROW(i, NV) \
  micro_bp<1, NV, true>(k1 - k0, a + (i) * sam, sam, sak, Bp + k0, n0, C + (m + i) * ldc + n0, ldc)
      SPATTN_BY_SHAPE(r, n, BP);
#undef BP
#undef BP_ROW
    }
  }
}

}  // namespace spattn::cpu::SPATTN_ISA
