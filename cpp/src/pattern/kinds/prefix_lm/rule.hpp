// PrefixLM: j <= p or j < n (bidirectional over the first n keys, causal after them).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct prefix_lm {
  int64_t n;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    return j <= p || j < n;
  }
};

}  // namespace spattn::rules
