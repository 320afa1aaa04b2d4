// BlockSparse: bits[h', i / bq, j / bk], h' = 0 when the layout has one head, else h
// (data: uint8 [heads, nbq, nbk]). Indexed by query row i, no offset (docs/patterns.md).
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct block_sparse {
  int64_t bq, bk, nbq, nbk, heads;

  SPATTN_HD bool keeps(const void* data, int64_t h, int64_t i, int64_t j, int64_t) const {
    const int64_t hh = heads == 1 ? 0 : h;
    return static_cast<const uint8_t*>(data)[(hh * nbq + i / bq) * nbk + j / bk] != 0;
  }

  // The block rule for the device compile (kinds/README.md): per key block of the tile grid,
  // the user blocks under it (block_sparse_row in kind.cpp, without its prefix table): full
  // when all are kept, partial when some are.
  template <class Out>
  SPATTN_HD void block_ranges(const void* data, int64_t h, const brange::Ctx& x, Out& out) const {
    const uint8_t* bits = static_cast<const uint8_t*>(data) + (heads == 1 ? 0 : h) * nbq * nbk;
    const int64_t u0 = x.r0 / bq, u1 = x.r1 / bq;
    for (int64_t c = 0; c < x.nkb; ++c) {
      const int64_t w0 = x.k0(c) / bk, w1 = x.k1(c) / bk;
      bool any = false, all = true;
      for (int64_t u = u0; u <= u1 && (all || !any); ++u)
        for (int64_t w = w0; w <= w1 && (all || !any); ++w) {
          if (bits[u * nbk + w])
            any = true;
          else
            all = false;
        }
      if (any) out.put(c, c + 1, all ? brange::kFull : brange::kPartial);
    }
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    return brange::Bound{x.nkb, x.nkb};
  }
};

}  // namespace spattn::rules
