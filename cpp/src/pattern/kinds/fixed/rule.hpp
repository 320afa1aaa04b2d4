// Fixed: p // block == j // block or j % block >= block - summary; and rel >= 0 if causal.
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

// Per chunk t the interval of keys some row of the tile keeps (own chunk or summary columns;
// `every` false) or every row keeps (`every` true), as fixed_row in kind.cpp builds them.
struct FixedChunks {
  int64_t Bc, S, lim, flim, own_lo, own_hi, t0, t1, nchunks;
  bool every;
  int64_t t;
  SPATTN_HD bool next(int64_t* lo, int64_t* hi) {
    if (t >= nchunks) return false;
    const int64_t s0 = t * Bc, s1 = s0 + Bc - 1;
    if (!every) {
      const int64_t o0 = brange::imax(s0, own_lo), o1 = brange::imin(s1, own_hi);
      if (o0 <= o1) {
        *lo = o0, *hi = o1;
      } else {
        *lo = s0 + Bc - S, *hi = brange::imin(s1, lim);
      }
    } else if (t0 == t1 && t == t0) {
      *lo = brange::imax(s0, 0), *hi = brange::imin(s1, flim);
    } else {
      *lo = s0 + Bc - S, *hi = brange::imin(s1, flim);
    }
    ++t;
    return true;
  }
};

struct fixed {
  int64_t block, summary;
  bool causal;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    if (causal && p < j) return false;
    return detail::floor_div(p, block) == j / block || j % block >= block - summary;
  }

  // The block rule for the device compile (kinds/README.md): per chunk one interval (its own
  // chunk or its summary columns), exact while the range budget lasts (fixed_row in kind.cpp).
  template <class Out>
  SPATTN_HD void block_ranges(const void*, int64_t, const brange::Ctx& x, Out& out) const {
    const int64_t Bc = block, S = summary;
    const int64_t lim = causal ? brange::imin(x.p1, x.nk - 1) : x.nk - 1;
    if (lim < 0) return;
    const int64_t flim = causal ? brange::imin(x.p0, x.nk - 1) : x.nk - 1;
    const int64_t t0 = brange::fdiv(x.p0, Bc), t1 = brange::fdiv(x.p1, Bc);
    const int64_t own_lo = brange::imax(0, t0 * Bc);
    const int64_t own_hi = brange::imin(lim, t1 * Bc + Bc - 1);
    if (S == Bc) {
      brange::intervals_row(x, brange::Merged<brange::OneIv>(brange::OneIv(0, lim)),
                            brange::Merged<brange::OneIv>(brange::OneIv(0, flim)), out);
      return;
    }
    const int64_t nchunks = lim / Bc + 1;
    if (nchunks > x.cap) {
      const bool one = t0 == t1;
      brange::intervals_row(x, brange::Merged<brange::OneIv>(brange::OneIv(0, lim)),
                            brange::Merged<brange::OneIv>(one ? brange::OneIv(own_lo, brange::imin(own_hi, flim))
                                                              : brange::OneIv(1, 0)),
                            out);
      return;
    }
    FixedChunks k{Bc, S, lim, flim, own_lo, own_hi, t0, t1, nchunks, false, 0};
    FixedChunks f{Bc, S, lim, flim, own_lo, own_hi, t0, t1, nchunks, true, 0};
    brange::intervals_row(x, brange::Merged<FixedChunks>(k), brange::Merged<FixedChunks>(f), out);
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    const int64_t chunks = x.nk > 0 ? (x.nk - 1) / block + 1 : 1;
    return brange::Bound{brange::imin(x.nkb, 3 * brange::imin(x.cap, chunks) + 3), x.nkb};
  }
};

}  // namespace spattn::rules
