// LogSparse: rel >= 0 and (rel <= local or rel a power of two), rel = p - j.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct log_sparse {
  int64_t local;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t rel = p - j;
    return rel >= 0 && (rel <= local || (rel & (rel - 1)) == 0);
  }
};

}  // namespace spattn::rules
