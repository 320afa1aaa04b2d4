// Global: j in positions or p in positions (data: int64 positions, sorted, distinct).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct global {
  int64_t count;  // positions in data

  SPATTN_HD bool keeps(const void* data, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t* pos = static_cast<const int64_t*>(data);
    return detail::sorted_contains(pos, count, j) || detail::sorted_contains(pos, count, p);
  }
};

}  // namespace spattn::rules
