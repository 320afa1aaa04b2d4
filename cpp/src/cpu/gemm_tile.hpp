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

}  // namespace spattn::cpu::SPATTN_ISA
