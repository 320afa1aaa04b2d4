// LongNet: query i and key j of head h are kept when for some k, i / w_k == j / w_k and
// i % r_k == j % r_k == h % r_k (and j <= i if causal); Nq = Nk, so p = i. The segment sizes
// and dilations are the node's array: int64 w0, r0, w1, r1, ...
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct longnet {
  int32_t count;   // segment sizes
  int32_t causal;

  SPATTN_HD_CALL bool keeps(const void* data, int64_t h, int64_t, int64_t j, int64_t p) const {
    if (j < 0 || p < 0 || (causal && j > p)) return false;
    const int64_t* wr = static_cast<const int64_t*>(data);
    for (int k = 0; k < count; ++k) {
      const int64_t w = wr[2 * k], r = wr[2 * k + 1], hr = h % r;
      if (p / w == j / w && p % r == hr && j % r == hr) return true;
    }
    return false;
  }
};

}  // namespace spattn::rules
