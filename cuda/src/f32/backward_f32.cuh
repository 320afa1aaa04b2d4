// The float32 backward main kernel: SIMT, float32 arithmetic throughout (no TF32).
//
// Same work as the float16 / bfloat16 main kernel (bwd/backward_kernel.cuh), on the same
// transposed layout and schedule, between the same preprocess (lse2, delta) and dq conversion
// kernels (kernels/backward.cu, instantiated for float): one CTA per (batch, kv head g, key tile
// c of 64 keys) keeps K(c), V(c) in shared memory and dK, dV in registers, and walks
// ColumnWalk's visits (h, a) over the query heads of g's group. Per visit:
//
//   Q(a), dO(a) -> shared memory ─ mask bits ─ S = Q K^T ─ P = exp2(S * scale_log2 - lse2)
//   (masked: 0; softcap / ALiBi as in the forward) -> shared memory ─ dP = dO V^T ─
//   dS = P (dP - delta) -> shared memory ─ dV += P^T dO ─ dK += dS^T Q ─
//   dQ(a) = dS K, added to the float32 dq workspace with atomics
//
// 256 threads; thread t owns rows f32_bwd_row(t, i) and columns f32_bwd_col(t, j) of every
// tile (f32_logic.hpp). Shared memory: K, V, Q, dO (padded rows), P, dS: 165376 bytes at D = 128.
#pragma once

#include <cuda_runtime_api.h>

#include "f32/simt_tile.cuh"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/f32_logic.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32 {

template <int kD>
__global__ void __launch_bounds__(kF32Threads, 1) backward_kernel(const __grid_constant__ BwdParams p) {
  constexpr int BM = kBwdBlockM, BN = kBwdBlockN;
  constexpr int R = kF32BwdRows, C = kF32BwdCols, DC = kD / kF32BwdLanes;
  constexpr int kS = f32_stride(kD), kSP = f32_stride(BN);
  static_assert(R * C <= 32, "one mask bit per score in a uint32_t");
  extern __shared__ __align__(16) float smem[];
  float* sK = smem;
  float* sV = smem + f32_bwd_tile(kD);
  float* sQ = smem + 2 * f32_bwd_tile(kD);
  float* sdO = smem + 3 * f32_bwd_tile(kD);
  float* sP = smem + f32_bwd_off_p(kD);
  float* sdS = smem + f32_bwd_off_ds(kD);

  const FwdParams& f = p.f;
  const int tid = threadIdx.x;
  const BwdWork w = bwd_cta_work(p, int64_t(blockIdx.x));
  const int64_t j0 = w.c * BN;
  const int n_keys = bwd_block_keys(p, w.c);

  // Element offsets of this thread's rows and columns in the tiles (f32_logic.hpp).
  int row[R], col[C], dcol[DC];
  int t_row[R], t_col[C], sp_row[R];  // row * kS, col * kS, row * kSP
#pragma unroll
  for (int i = 0; i < R; ++i) {
    row[i] = f32_bwd_row(tid, i);
    t_row[i] = row[i] * kS;
    sp_row[i] = row[i] * kSP;
  }
#pragma unroll
  for (int j = 0; j < C; ++j) {
    col[j] = f32_bwd_col(tid, j);
    t_col[j] = col[j] * kS;
  }
#pragma unroll
  for (int j = 0; j < DC; ++j) dcol[j] = f32_bwd_col(tid, j);

  float acc_dk[R][DC], acc_dv[R][DC];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < DC; ++j) acc_dk[i][j] = acc_dv[i][j] = 0.f;

  load_tile<BN, kD>(sK, static_cast<const float*>(f.k) + k_offset(f, w.b, j0, w.g), f.k_sn,
                    n_keys, tid);
  load_tile<BN, kD>(sV, static_cast<const float*>(f.v) + v_offset(f, w.b, j0, w.g), f.v_sn,
                    n_keys, tid);

  ColumnWalk walk(p, w.g, w.c);
  BwdVisit v{0, 0, false};
  while (walk.next(p, &v)) {
    const int64_t i0 = v.a * BM;
    const int q_rows = bwd_tile_rows(p, v.a);
    __syncthreads();  // every thread is done with Q, dO, P and dS of the last visit
    load_tile<BM, kD>(sQ, static_cast<const float*>(f.q) + q_offset(f, w.b, i0, v.h), f.q_sn,
                      q_rows, tid);
    load_tile<BM, kD>(sdO, static_cast<const float*>(p.dout) + do_offset(p, w.b, i0, v.h),
                      p.do_sn, q_rows, tid);

    // The block's mask, one bit per score this thread holds (as in the forward).
    uint32_t keep = ~uint32_t(0);
    if (block_needs_mask_n(f.nk, BN, v.partial, w.c)) {
      keep = 0;
      if (mask_by_interval(v.partial, range_is_exact(f.pred, v.h))) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          int64_t lo, hi;
          row_interval(f, v.partial, v.h, i0 + row[i], &lo, &hi);
#pragma unroll
          for (int j = 0; j < C; ++j)
            if (j0 + col[j] >= lo && j0 + col[j] <= hi) keep |= uint32_t(1) << (i * C + j);
        }
      } else {
#pragma unroll 1
        for (int e = 0; e < R * C; ++e)  // rows / columns recomputed: no indexed local arrays
          if (element_kept(f, true, v.h, i0 + f32_bwd_row(tid, e / C), j0 + f32_bwd_col(tid, e % C)))
            keep |= uint32_t(1) << e;
      }
    }
    // This thread's rows of lse2 and delta (padded workspaces: no bounds checks).
    float row_lse2[R], row_delta[R];
    {
      const int64_t st = stat_offset(p, w.b, v.h, i0);
#pragma unroll
      for (int i = 0; i < R; ++i) {
        row_lse2[i] = p.lse2[st + row[i]];
        row_delta[i] = p.delta[st + row[i]];
      }
    }
    __syncthreads();  // Q(a), dO(a) in shared memory

    // S = Q K^T -> P (shared memory); pr keeps P times the softcap's derivative, so that dS
    // below is P (dP - delta) (1 - tanh^2).
    float pr[R][C];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < C; ++j) pr[i][j] = 0.f;
    outer_products<R, C, kD>(pr, sQ, t_row, 1, sK, 1, t_col);
    if (!f.mods) {
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) {
          pr[i][j] = bwd_prob(pr[i][j], f.scale_log2, row_lse2[i], (keep >> (i * C + j)) & 1u);
          sP[sp_row[i] + col[j]] = pr[i][j];
        }
    } else {
      const ScoreMod smod = score_mod(f, v.h);
      const float rel0 = rel_of(f, i0, j0), rel_step = float(f.m.rel_step);
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) {
          float dcap;
          const float s2 =
              apply_mod(smod, score_scaled(pr[i][j], f.scale_log2, (keep >> (i * C + j)) & 1u),
                        rel0 + rel_step * float(row[i] - col[j]), &dcap);
          const float pv = fast_exp2(s2 - row_lse2[i]);
          sP[sp_row[i] + col[j]] = pv;
          pr[i][j] = pv * dcap;
        }
    }

    // dP = dO V^T -> dS = P (dP - delta) (shared memory)
    float dp[R][C];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < C; ++j) dp[i][j] = 0.f;
    outer_products<R, C, kD>(dp, sdO, t_row, 1, sV, 1, t_col);
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < C; ++j) sdS[sp_row[i] + col[j]] = bwd_ds(pr[i][j], dp[i][j], row_delta[i]);
    __syncthreads();  // P and dS visible to every thread

    // dV += P^T dO, dK += dS^T Q: rows are keys (row[i]), the sum runs over the tile's queries.
    outer_products<R, DC, BM>(acc_dv, sP, row, kSP, sdO, kS, dcol);
    outer_products<R, DC, BM>(acc_dk, sdS, row, kSP, sQ, kS, dcol);
    // dQ(a) += dS K: rows are queries, the sum runs over the keys; into the float32 workspace.
    float acc_dq[R][DC];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < DC; ++j) acc_dq[i][j] = 0.f;
    outer_products<R, DC, BN>(acc_dq, sdS, sp_row, 1, sK, kS, dcol);
    float* dq = p.dq_accum + dqacc_offset(p, w.b, v.h, i0);
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < DC; ++j) atomicAdd(dq + row[i] * kD + dcol[j], acc_dq[i][j]);
  }

  // Epilogue: dK *= scale; store keys < Nk (dK and dV of a key tile no query sees are 0).
  float* dk = static_cast<float*>(p.dk) + dk_offset(p, w.b, j0, w.g);
  float* dv = static_cast<float*>(p.dv) + dv_offset(p, w.b, j0, w.g);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (row[i] >= n_keys) continue;
#pragma unroll
    for (int j = 0; j < DC; ++j) {
      dk[row[i] * p.dk_sn + dcol[j]] = acc_dk[i][j] * f.scale;
      dv[row[i] * p.dv_sn + dcol[j]] = acc_dv[i][j];
    }
  }
}

// Launches the main kernel for head dim kD on `stream`; p.f.d == p.f.dv == kD. The preprocess
// must have filled p.lse2 and p.delta, and p.dq_accum must be zero.
template <int kD>
cudaError_t run_backward_main(const BwdParams& p, cudaStream_t stream) {
  static_assert(f32_head_dim_ok(kD), "no float32 backward for this head dim");
  const int64_t ctas = bwd_grid_size(p);
  if (ctas == 0) return cudaSuccess;
  if (ctas > int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  auto kernel = &backward_kernel<kD>;
  constexpr int kBytes = int(f32_bwd_smem_bytes(kD));
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (e != cudaSuccess) return e;
  kernel<<<dim3(unsigned(ctas)), dim3(kF32Threads), kBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32
