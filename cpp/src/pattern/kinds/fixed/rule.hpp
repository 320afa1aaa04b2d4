// Fixed: p // block == j // block or j % block >= block - summary; and rel >= 0 if causal.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct fixed {
  int64_t block, summary;
  bool causal;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    if (causal && p < j) return false;
    return detail::floor_div(p, block) == j / block || j % block >= block - summary;
  }
};

}  // namespace spattn::rules
