// The TopKBlocks selection kernels' pooling and choosing steps (cuda/src/kernels/topk_select.cu,
// the rule of spattn/cuda/topk_logic.hpp) as scalar loops on the host: the same SPATTN_HD
// functions in the kernels' order. Shared by test_cuda_topk_logic.cpp (attention) and
// test_cuda_decode_topk.cpp (decode).
#pragma once

#include <spattn/cuda/topk_logic.hpp>

#include <cstdint>
#include <vector>

namespace topk_emu {

using namespace spattn::cuda;

// pool_kernel: out[h][c][x] for blocks c < nb.
inline std::vector<float> emulate_pool(const std::vector<float>& x, int64_t n, int64_t heads, int64_t d,
                                int64_t bs, int64_t nb) {
  std::vector<float> out(size_t(heads * nb * d));
  for (int64_t c = 0; c < nb; ++c)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t f = 0; f < d; ++f) {
        int64_t j0, j1;
        topk_pool_rows(n, bs, c, &j0, &j1);
        float acc = 0.f;
        for (int64_t j = j0; j < j1; ++j) acc = topk_add(acc, x[size_t((j * heads + h) * d + f)]);
        if (j1 > j0) acc = topk_mul(acc, topk_pool_scale(j1 - j0));
        out[size_t((h * nb + c) * d + f)] = acc;
      }
  return out;
}

// choose_kernel for every (head, query block): the mask [hq, nqb, nkb].
inline std::vector<uint8_t> emulate_choose(const TopkGeom& g, const std::vector<float>& qm,
                                    const std::vector<float>& km, bool sabotage_ties) {
  std::vector<uint8_t> mask(size_t(g.hq * g.nqb * g.nkb), 0);
  for (int64_t h = 0; h < g.hq; ++h)
    for (int64_t a = 0; a < g.nqb; ++a) {
      uint8_t* row = mask.data() + (h * g.nqb + a) * g.nkb;
      for (int64_t c = 0; c < g.nkb; ++c) row[c] = topk_fixed_bit(g, a, c) ? 1 : 0;
      if (!topk_scored(g, a)) continue;
      const int64_t nc = topk_candidates(g, a);
      const float* qrow = qm.data() + (h * g.nqb + a) * g.d;
      const float* kg = km.data() + (h / (g.hq / g.hkv)) * g.kmax * g.d;
      std::vector<float> score(static_cast<size_t>(nc));
      for (int64_t c = 0; c < nc; ++c) {
        float parts[kTopkLanes];
        for (int t = 0; t < kTopkLanes; ++t) parts[t] = topk_dot_lane(qrow, kg + c * g.d, g.d, t);
        score[size_t(c)] = topk_dot_finish(parts);
      }
      uint32_t prefix = 0;
      int64_t need = g.k;
      for (int pass = 0; pass < kTopkRadixPasses; ++pass) {
        int32_t hist[kTopkRadixBins] = {};
        for (int64_t c = 0; c < nc; ++c) {
          const uint32_t key = topk_rank_key(score[size_t(c)]);
          if (topk_prefix_match(key, prefix, pass)) ++hist[topk_digit(key, pass)];
        }
        uint32_t digit;
        int64_t below;
        topk_find_bucket(hist, need, &digit, &below);
        prefix |= digit << (24 - 8 * pass);
        need -= below;
      }
      int64_t rank = 0;
      for (int64_t x = 0; x < nc; ++x) {
        const int64_t c = sabotage_ties ? nc - 1 - x : x;
        const uint32_t key = topk_rank_key(score[size_t(c)]);
        if (key < prefix) row[c] = 1;
        if (key == prefix && rank++ < need) row[c] = 1;
      }
    }
  return mask;
}

}  // namespace topk_emu
