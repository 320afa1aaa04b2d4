// Sink: j < n.
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct sink {
  int64_t n;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t) const { return j < n; }

  // The block rule for the device compile (kinds/README.md): keys [0, n), kept by every row.
  template <class Out>
  SPATTN_HD void block_ranges(const void*, int64_t, const brange::Ctx& x, Out& out) const {
    const int64_t lim = brange::imin(n, x.nk) - 1;
    if (lim >= 0) brange::interval_row(x, 0, lim, 0, lim, out);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx&) const {
    return brange::Bound{2, 1};
  }
};

}  // namespace spattn::rules
