// The key blocks a decode step visits for one kv head: the union of the key-block ranges of its
// query heads' row (decode layouts have one query block). Shared by the CPU decode planner
// (cpu/decode.cpp) and the CUDA one (cuda/decode_logic.hpp). Host only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "spattn/layout.hpp"

namespace spattn {

// The ranges [lo, hi) of key blocks that query heads [h0, h0 + G) of L's first query block
// list, full or partial, clipped to [0, nkb), merged where they touch or overlap, ascending.
inline std::vector<std::pair<int32_t, int32_t>> visited_block_union(const BlockLayout& L,
                                                                    int64_t h0, int64_t G,
                                                                    int64_t nkb) {
  std::vector<std::pair<int32_t, int32_t>> rs, u;
  const int64_t hb = L.heads == 1 ? 0 : h0, he = L.heads == 1 ? 1 : h0 + G;
  for (int64_t h = hb; h < he; ++h) {
    const int64_t r = L.row(h, 0);
    for (int64_t t = L.full_ptr[size_t(r)]; t < L.full_ptr[size_t(r + 1)]; ++t)
      rs.emplace_back(L.full_lo[size_t(t)], L.full_hi[size_t(t)]);
    for (int64_t t = L.part_ptr[size_t(r)]; t < L.part_ptr[size_t(r + 1)]; ++t)
      rs.emplace_back(L.part_lo[size_t(t)], L.part_hi[size_t(t)]);
  }
  std::sort(rs.begin(), rs.end());
  for (auto [lo, hi] : rs) {
    lo = std::max<int32_t>(lo, 0);
    hi = int32_t(std::min<int64_t>(hi, nkb));
    if (lo >= hi) continue;
    if (!u.empty() && lo <= u.back().second)
      u.back().second = std::max(u.back().second, hi);
    else
      u.emplace_back(lo, hi);
  }
  return u;
}

}  // namespace spattn
