// BigBird: query block u = i / block, key block w = j / block; kept when u or w is global
// (< globals), w in the window [u + doff - wlo, u + doff + whi], or w is one of row u's random
// blocks (data: int32 [rows, randoms], -1 = none).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct bigbird {
  int64_t block, globals, wlo, whi, doff, randoms;

  SPATTN_HD bool keeps(const void* data, int64_t, int64_t i, int64_t j, int64_t) const {
    const int64_t u = i / block, w = j / block;
    if (u < globals || w < globals) return true;
    const int64_t dg = u + doff;
    if (w >= dg - wlo && w <= dg + whi) return true;
    const int32_t* r = static_cast<const int32_t*>(data) + u * randoms;
    for (int64_t t = 0; t < randoms; ++t)
      if (r[t] == w) return true;
    return false;
  }
};

}  // namespace spattn::rules
