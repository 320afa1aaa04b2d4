// Dilated (and Strided): rel % d == 0 and -right <= rel <= left (bounds in keys).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct dilated {
  int64_t left, right, d;  // left, right already multiplied by d (kUnbounded: no bound)

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t rel = p - j;
    return rel >= -right && rel <= left && detail::floor_mod(rel, d) == 0;
  }
};

}  // namespace spattn::rules
