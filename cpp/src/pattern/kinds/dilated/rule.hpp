// Dilated (and Strided): rel % d == 0 and -right <= rel <= left (bounds in keys).
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct dilated {
  int64_t left, right, d;  // left, right already multiplied by d (kUnbounded: no bound)

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t rel = p - j;
    return rel >= -right && rel <= left && detail::floor_mod(rel, d) == 0;
  }

  // The block rule for the device compile (kinds/README.md): Dilated's and Strided's.
  template <class Out>
  SPATTN_HD void block_ranges(const void*, int64_t, const brange::Ctx& x, Out& out) const {
    brange::rel_row(x, left, right, d, out);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    return brange::rel_row_bound(x, d);
  }
};

}  // namespace spattn::rules
