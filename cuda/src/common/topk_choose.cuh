// The choosing step of TopKBlocks' selection for one mask row (one query block of one head),
// shared by attention's choose kernel (kernels/topk_select.cu) and decode's
// (kernels/decode_topk.cu): the fixed bits (topk_fixed_bit); when the block compares scores,
// its scores to shared memory (a half-warp per candidate, lane t holding the CPU's partial sum
// t), a radix select of the k best keys (4 passes over 8-bit digits, histograms in shared
// memory) and an ordered pass that gives the ties at the threshold to the lowest indices.
// Every thread of the CTA calls these with the same arguments (topk_score_row synchronises the
// CTA, and ends with a barrier: the next call may reuse the shared memory at once).
#pragma once

#include <cstdint>

#include "spattn/cuda/topk_logic.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {

constexpr int kChooseThreads = 256;

// The bits of mask row `row` (query block a) that do not depend on scores; the row is complete
// unless topk_scored(g, a).
__device__ __forceinline__ void topk_fixed_row(const TopkGeom& g, int64_t a, uint8_t* row) {
  for (int64_t c = threadIdx.x; c < g.nkb; c += kChooseThreads)
    row[c] = topk_fixed_bit(g, a, c) ? 1 : 0;
}

// The scored bits of that row (topk_scored(g, a)): qm the block's pooled query [g.d], kg the kv
// head's pooled keys (block c at kg + c * g.d), smem the dynamic shared memory: d rounded up to
// 4 floats for the query, then one float per candidate.
__device__ __forceinline__ void topk_score_row(const TopkGeom& g, int64_t a, const float* qm,
                                               const float* kg, uint8_t* row, float* smem) {
  // The radix state (static shared memory).
  __shared__ int32_t hist[kTopkRadixBins];
  __shared__ int32_t warp_eq[kChooseThreads / 32];
  __shared__ uint32_t s_prefix;
  __shared__ int64_t s_need;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t dpad = (g.d + 3) & ~int64_t(3);
  float* qrow = smem;
  float* score = smem + dpad;
  const int64_t nc = topk_candidates(g, a);

  // Scores: half-warp w takes candidates w, w + 16, ...; lane t its partial sum t.
  for (int64_t x = tid; x < g.d; x += kChooseThreads) qrow[x] = qm[x];
  __syncthreads();
  const int half = tid / kTopkLanes, t = tid % kTopkLanes;
  constexpr int kHalves = kChooseThreads / kTopkLanes;
  for (int64_t c0 = 0; c0 < nc; c0 += kHalves) {
    const int64_t c = c0 + half;
    const float s = c < nc ? topk_dot_lane(qrow, kg + c * g.d, g.d, t) : 0.f;
    float parts[kTopkLanes];
#pragma unroll
    for (int u = 0; u < kTopkLanes; ++u) parts[u] = __shfl_sync(0xffffffffu, s, u, kTopkLanes);
    if (t == 0 && c < nc) score[c] = topk_dot_finish(parts);
  }
  __syncthreads();

  // The k-th smallest key: digit by digit.
  uint32_t prefix = 0;
  int64_t need = g.k;
  for (int pass = 0; pass < kTopkRadixPasses; ++pass) {
    for (int x = tid; x < kTopkRadixBins; x += kChooseThreads) hist[x] = 0;
    __syncthreads();
    for (int64_t c = tid; c < nc; c += kChooseThreads) {
      const uint32_t key = topk_rank_key(score[c]);
      if (topk_prefix_match(key, prefix, pass)) atomicAdd(&hist[topk_digit(key, pass)], 1);
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t digit;
      int64_t below;
      topk_find_bucket(hist, need, &digit, &below);
      s_prefix = prefix | (digit << (24 - 8 * pass));
      s_need = need - below;
    }
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    __syncthreads();  // s_prefix / s_need are rewritten by the next pass
  }

  // Keys below the threshold are in; of the keys equal to it, the `need` lowest indices.
  int64_t before = 0;
  for (int64_t c0 = 0; c0 < nc; c0 += kChooseThreads) {
    const int64_t c = c0 + tid;
    const uint32_t key = c < nc ? topk_rank_key(score[c]) : 0xFFFFFFFFu;
    const bool eq = c < nc && key == prefix;
    if (c < nc && key < prefix) row[c] = 1;
    const unsigned ballot = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_eq[warp] = __popc(ballot);
    __syncthreads();
    int64_t rank = before + __popc(ballot & ((1u << lane) - 1u));
    int64_t total = 0;
    for (int w = 0; w < kChooseThreads / 32; ++w) {
      if (w < warp) rank += warp_eq[w];
      total += warp_eq[w];
    }
    if (eq && rank < need) row[c] = 1;
    before += total;
    __syncthreads();
  }
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
