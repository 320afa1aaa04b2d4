// Global: j in positions or p in positions (data: int64 positions, sorted, distinct).
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

// The positions below nk, one interval each (merged into runs by brange::Merged).
struct GlobalColumns {
  const int64_t* pos;
  int64_t n, nk, t;
  SPATTN_HD bool next(int64_t* lo, int64_t* hi) {
    while (t < n) {
      const int64_t q = pos[t++];
      if (q < nk) {
        *lo = *hi = q;
        return true;
      }
    }
    return false;
  }
};

// A tile with some global rows: the columns' full ranges stay full, everything else partial.
template <class Out>
struct GlobalMixed {
  Out* out;
  int64_t pos;
  SPATTN_HD void put(int64_t lo, int64_t hi, uint8_t cls) {
    if (cls != brange::kFull || lo >= hi) return;
    out->put(pos, lo, brange::kPartial);
    out->put(lo, hi, brange::kFull);
    pos = hi;
  }
};

struct global {
  int64_t count;  // positions in data

  SPATTN_HD bool keeps(const void* data, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t* pos = static_cast<const int64_t*>(data);
    return detail::sorted_contains(pos, count, j) || detail::sorted_contains(pos, count, p);
  }

  // The block rule for the device compile (kinds/README.md): the columns of the positions
  // (runs of consecutive ones), or every block for tiles holding global queries.
  template <class Out>
  SPATTN_HD void block_ranges(const void* data, int64_t, const brange::Ctx& x, Out& out) const {
    const int64_t* pos = static_cast<const int64_t*>(data);
    const int64_t rows_in = brange::lower_bound(pos, count, x.p1 + 1) - brange::lower_bound(pos, count, x.p0);
    brange::Merged<GlobalColumns> runs(GlobalColumns{pos, count, x.nk, 0});
    if (rows_in == 0) {
      brange::intervals_row(x, runs, runs, out);
      return;
    }
    if (rows_in == x.p1 - x.p0 + 1) {
      out.put(0, x.nkb, brange::kFull);
      return;
    }
    // Some rows are global: every block is kept, full where the columns are all positions.
    GlobalMixed<Out> mixed{&out, 0};
    brange::intervals_row(x, runs, runs, mixed);
    out.put(mixed.pos, x.nkb, brange::kPartial);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    return brange::Bound{brange::imin(x.nkb, 3 * count + 2), x.nkb};
  }
};

}  // namespace spattn::rules
