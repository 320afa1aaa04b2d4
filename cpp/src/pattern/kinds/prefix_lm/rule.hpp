// PrefixLM: j <= p or j < n (bidirectional over the first n keys, causal after them).
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct prefix_lm {
  int64_t n;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    return j <= p || j < n;
  }

  // The block rule for the device compile (kinds/README.md): the tile's last query keeps
  // [0, max(p1, n-1)], its first [0, max(p0, n-1)] (kept by every row).
  SPATTN_HD int64_t last(int64_t p, int64_t nk) const {
    return brange::imin(nk - 1, brange::imax(p, n - 1));
  }
  template <class Out>
  SPATTN_HD void block_ranges(const void*, int64_t, const brange::Ctx& x, Out& out) const {
    brange::interval_row(x, 0, last(x.p1, x.nk), 0, last(x.p0, x.nk), out);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    return brange::Bound{2, brange::imin(x.nkb, x.tile_blocks() + 1)};
  }
};

}  // namespace spattn::rules
