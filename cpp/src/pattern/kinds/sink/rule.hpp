// Sink: j < n.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct sink {
  int64_t n;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t) const { return j < n; }
};

}  // namespace spattn::rules
