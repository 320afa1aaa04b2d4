// The float32 forward kernel: SIMT, float32 inputs and float32 arithmetic throughout (no TF32).
//
// Same work as the float16 / bfloat16 kernel (fwd/forward_kernel.cuh), on the same layout and
// schedule: one CTA per (batch, query head, query tile of 128 rows) in the schedule's order
// (cta_work), RowWalk over the layout row's key blocks of 64 in ascending order, full blocks
// unmasked unless they stick out past Nk, partial blocks by row_interval() or element_kept(),
// the online softmax of forward_logic.hpp in base 2, softcap / ALiBi (apply_mod) and sinks
// (sink_finish) in the kMods instantiation. Per key block:
//
//   K(c), V(c) -> shared memory ─ mask bits ─ S = Q K^T (4 x 8 scores per thread) ─ softmax
//   (row max / sum over the 8 lanes of a row group) ─ P -> shared memory ─ O += P V
//
// 256 threads; thread t owns rows f32_fwd_row(t, i) and columns f32_fwd_col(t, j) of S and of
// O (f32_logic.hpp). Shared memory: Q, K (padded rows), V, P; 165120 bytes at D = 128.
#pragma once

#include <cuda_runtime_api.h>

#include "f32/simt_tile.cuh"
#include "spattn/cuda/f32_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32 {

template <int kD, bool kMods>
__global__ void __launch_bounds__(kF32Threads, 1) forward_kernel(const __grid_constant__ FwdParams p) {
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN;
  constexpr int R = kF32FwdRows, C = kF32FwdCols, OC = kD / kF32FwdLanes;
  constexpr int kS = f32_stride(kD), kSP = f32_stride(BN);
  static_assert(C * R <= 32, "one mask bit per score in a uint32_t");
  extern __shared__ __align__(16) float smem[];
  float* sQ = smem;
  float* sK = smem + f32_fwd_off_k(kD);
  float* sV = smem + f32_fwd_off_v(kD);
  float* sP = smem + f32_fwd_off_p(kD);

  const int tid = threadIdx.x;
  const CtaWork w = cta_work(p, int64_t(blockIdx.x));
  const int64_t g = kv_head(p, w.h);
  const int64_t i0 = w.a * BM;
  const int q_rows = tile_rows(p, w.a);
  const float* q_base = static_cast<const float*>(p.q) + q_offset(p, w.b, i0, w.h);
  const float* k_base = static_cast<const float*>(p.k) + k_offset(p, w.b, 0, g);
  const float* v_base = static_cast<const float*>(p.v) + v_offset(p, w.b, 0, g);

  int row[R], q_at[R], p_at[R], k_at[C], col[C], o_col[OC];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    row[i] = f32_fwd_row(tid, i);
    q_at[i] = row[i] * kS;
    p_at[i] = row[i] * kSP;
  }
#pragma unroll
  for (int j = 0; j < C; ++j) {
    col[j] = f32_fwd_col(tid, j);
    k_at[j] = col[j] * kS;
  }
#pragma unroll
  for (int j = 0; j < OC; ++j) o_col[j] = f32_fwd_col(tid, j);

  const bool rule_exact = range_is_exact(p.pred, w.h);
  const ScoreMod smod = kMods ? score_mod(p, w.h) : ScoreMod{};
  float acc_o[R][OC], row_m[R], row_l[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    row_m[i] = neg_inf();
    row_l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < OC; ++j) acc_o[i][j] = 0.f;
  }

  load_tile<BM, kD>(sQ, q_base, p.q_sn, q_rows, tid);
  RowWalk walk(p, w.h, w.a);
  int64_t c = 0;
  bool partial = false;
  while (walk.next(p, &c, &partial)) {
    const int64_t j0 = c * BN;
    __syncthreads();  // every thread is done with K, V and P of the last block
    load_tile<BN, kD>(sK, k_base + j0 * p.k_sn, p.k_sn, block_keys(p, c, BN), tid);
    load_tile_dense<BN, kD>(sV, v_base + j0 * p.v_sn, p.v_sn, block_keys(p, c, BN), tid);

    // The block's mask, one bit per score this thread holds (bit i * C + j), as in the
    // float16 / bfloat16 kernel: intervals where the rule is one window, else keeps().
    uint32_t keep = ~uint32_t(0);
    if (block_needs_mask(p, partial, c, BN)) {
      keep = 0;
      if (mask_by_interval(partial, rule_exact)) {
#pragma unroll
        for (int i = 0; i < R; ++i) {
          int64_t lo, hi;
          row_interval(p, partial, w.h, i0 + row[i], &lo, &hi);
#pragma unroll
          for (int j = 0; j < C; ++j)
            if (j0 + col[j] >= lo && j0 + col[j] <= hi) keep |= uint32_t(1) << (i * C + j);
        }
      } else {
#pragma unroll 1
        for (int e = 0; e < R * C; ++e)  // rows / columns recomputed: no indexed local arrays
          if (element_kept(p, true, w.h, i0 + f32_fwd_row(tid, e / C), j0 + f32_fwd_col(tid, e % C)))
            keep |= uint32_t(1) << e;
      }
    }
    __syncthreads();  // K(c), V(c) (and Q) in shared memory

    float s[R][C];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < C; ++j) s[i][j] = 0.f;
    outer_products<R, C, kD>(s, sQ, q_at, 1, sK, 1, k_at);

    // Online softmax (base 2, scaled first), O rescaled by each row's change of max; P to
    // shared memory for the product with V.
    const float rel0 = kMods ? rel_of(p, i0, j0) : 0.f;
    const float rel_step = float(p.m.rel_step);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      float mx = row_m[i];
#pragma unroll
      for (int j = 0; j < C; ++j) {
        s[i][j] = score_scaled(s[i][j], p.scale_log2, (keep >> (i * C + j)) & 1u);
        if (kMods && p.mods)
          s[i][j] = apply_mod(smod, s[i][j], rel0 + rel_step * float(row[i] - col[j]), nullptr);
        mx = fmax_(mx, s[i][j]);
      }
      mx = group_max<kF32FwdLanes>(mx);
      const float alpha = softmax_rescale(row_m[i], mx);
      const float ms = softmax_max_safe(mx);
      row_m[i] = mx;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < C; ++j) {
        const float pr = softmax_p(s[i][j], ms);
        sum += pr;
        sP[p_at[i] + col[j]] = pr;
      }
      row_l[i] = row_l[i] * alpha + sum;  // this thread's part of the row; summed at the end
#pragma unroll
      for (int j = 0; j < OC; ++j) acc_o[i][j] *= alpha;
    }
    __syncthreads();  // P visible to the row group
    outer_products<R, OC, BN>(acc_o, sP, p_at, 1, sV, kD, o_col);
  }

  // Epilogue: normalise (the sink joins the denominator), store rows < Nq, lse.
  float* o_base = static_cast<float*>(p.o) + o_offset(p, w.b, i0, w.h);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    float l = group_sum<kF32FwdLanes>(row_l[i]);
    float m = row_m[i];
    const float keep_o = kMods ? sink_finish(p, w.h, &m, &l) : 1.f;
    const float inv = softmax_inv_l(l) * keep_o;
    if (row[i] < q_rows) {
      float* o_row = o_base + row[i] * p.o_sn;
#pragma unroll
      for (int j = 0; j < OC; ++j) o_row[o_col[j]] = acc_o[i][j] * inv;
      if (p.lse != nullptr && tid % kF32FwdLanes == 0)
        p.lse[lse_offset(p, w.b, w.h, i0 + row[i])] = softmax_lse(m, l);
    }
  }
}

// Launches the kernel for head dim kD on `stream`; p.d == p.dv == kD.
template <int kD>
cudaError_t run_forward(const FwdParams& p, cudaStream_t stream) {
  static_assert(f32_head_dim_ok(kD), "no float32 forward for this head dim");
  const int64_t ctas = fwd_grid_size(p);
  if (ctas == 0) return cudaSuccess;
  if (ctas > int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  auto kernel = p.mods || p.m.sinks ? &forward_kernel<kD, true> : &forward_kernel<kD, false>;
  constexpr int kBytes = int(f32_fwd_smem_bytes(kD));
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (e != cudaSuccess) return e;
  kernel<<<dim3(unsigned(ctas)), dim3(kF32Threads), kBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::f32
