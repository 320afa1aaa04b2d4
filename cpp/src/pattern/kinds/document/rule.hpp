// Document: the query at position p and key j lie in the same document of a packed sequence
// (data: int32 document index of every key position, [total]). A table lookup rather than a
// search over the boundaries: no loop in a rule that every kernel inlines into keeps().
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct document {
  int64_t total;  // positions in data

  SPATTN_HD bool keeps(const void* data, int64_t, int64_t, int64_t j, int64_t p) const {
    // A query before the packed sequence (Nq > Nk) is in no document; j < total always.
    if (p < 0) return false;
    const int32_t* doc = static_cast<const int32_t*>(data);
    return doc[p] == doc[j];
  }

  // The block rule for the device compile (kinds/README.md): the documents of the tile's
  // query positions hold one run of keys, kept by every row when the tile is in one document.
  // Document starts and ends by binary search of the (non-decreasing) table.
  template <class Out>
  SPATTN_HD void block_ranges(const void* data, int64_t, const brange::Ctx& x, Out& out) const {
    if (x.p1 < 0 || x.nk == 0) return;
    const int32_t* doc = static_cast<const int32_t*>(data);
    const int64_t q0 = brange::imax(x.p0, 0);
    const int64_t lo = brange::lower_bound(doc, total, doc[q0]);
    const int64_t hi = brange::lower_bound(doc, total, int64_t(doc[x.p1]) + 1) - 1;
    const bool one = x.p0 >= 0 && doc[x.p0] == doc[x.p1];
    brange::interval_row(x, lo, hi, one ? lo : 1, one ? hi : 0, out);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    return brange::Bound{3, x.nkb};
  }
};

}  // namespace spattn::rules
