// Window (Dense, Causal, SlidingWindow): -right <= rel <= left, rel = p - j.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct window {
  int64_t left, right;  // kUnbounded: no bound on that side

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t rel = p - j;
    return rel >= -right && rel <= left;
  }
};

}  // namespace spattn::rules
