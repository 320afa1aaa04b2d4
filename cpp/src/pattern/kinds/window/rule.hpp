// Window (Dense, Causal, SlidingWindow): -right <= rel <= left, rel = p - j.
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct window {
  int64_t left, right;  // kUnbounded: no bound on that side

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t rel = p - j;
    return rel >= -right && rel <= left;
  }

  // The block rule for the device compile (kinds/README.md): one interval per row.
  template <class Out>
  SPATTN_HD void block_ranges(const void*, int64_t, const brange::Ctx& x, Out& out) const {
    brange::rel_row(x, left, right, 1, out);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    return brange::rel_row_bound(x, 1);
  }
};

}  // namespace spattn::rules
