// BigBird: query block u = i / block, key block w = j / block; kept when u or w is global
// (< globals), w in the window [u + doff - wlo, u + doff + whi], or w is one of row u's random
// blocks (data: int32 [rows, randoms], -1 = none).
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct bigbird {
  int64_t block, globals, wlo, whi, doff, randoms;

  SPATTN_HD bool keeps(const void* data, int64_t, int64_t i, int64_t j, int64_t) const {
    const int64_t u = i / block, w = j / block;
    if (u < globals || w < globals) return true;
    const int64_t dg = u + doff;
    if (w >= dg - wlo && w <= dg + whi) return true;
    const int32_t* r = static_cast<const int32_t*>(data) + u * randoms;
    for (int64_t t = 0; t < randoms; ++t)
      if (r[t] == w) return true;
    return false;
  }

  // The block rule for the device compile (kinds/README.md): the kernel blocks that meet a
  // kept cell of a BigBird row of the tile, walked in ascending order (the next one from each
  // row's first kept cell), full when every cell of every row of the tile is kept.
  SPATTN_HD int64_t cells_kept(const int32_t* rnd, int64_t nbk, int64_t u, int64_t w0,
                               int64_t w1) const {
    if (u < globals) return w1 - w0 + 1;
    auto overlap = [](int64_t a, int64_t b, int64_t c, int64_t d) {
      const int64_t lo = a > c ? a : c, hi = b < d ? b : d;
      return hi >= lo ? hi - lo + 1 : int64_t(0);
    };
    const int64_t g1 = brange::imin(globals, nbk) - 1, dg = u + doff;
    const int64_t a = brange::imax(0, dg - wlo), b = brange::imin(nbk - 1, dg + whi);
    int64_t n = overlap(0, g1, w0, w1) + overlap(a, b, w0, w1) -
                overlap(brange::imax(0, a), brange::imin(g1, b), w0, w1);
    for (int64_t t = 0; t < randoms; ++t) {
      const int32_t r = rnd[u * randoms + t];
      n += r >= w0 && r <= w1;  // never a global or window cell (make_bigbird)
    }
    return n;
  }
  SPATTN_HD int64_t first_kept(const int32_t* rnd, int64_t nbk, int64_t u, int64_t w0) const {
    if (u < globals || w0 < globals) return w0;
    const int64_t dg = u + doff;
    const int64_t a = brange::imax(0, dg - wlo), b = brange::imin(nbk - 1, dg + whi);
    int64_t best = nbk;
    if (a <= b && b >= w0) best = brange::imax(a, w0);
    for (int64_t t = 0; t < randoms; ++t) {
      const int32_t r = rnd[u * randoms + t];
      if (r >= w0 && r < best) best = r;
    }
    return best;
  }
  template <class Out>
  SPATTN_HD void block_ranges(const void* data, int64_t, const brange::Ctx& x, Out& out) const {
    const int32_t* rnd = static_cast<const int32_t*>(data);
    const int64_t nbk = brange::cdiv(x.nk, block);
    const int64_t u0 = x.r0 / block, u1 = x.r1 / block;
    for (int64_t c = 0; c < x.nkb;) {
      int64_t wn = nbk;
      for (int64_t u = u0; u <= u1; ++u) wn = brange::imin(wn, first_kept(rnd, nbk, u, x.k0(c) / block));
      if (wn >= nbk) break;
      c = brange::imax(c, wn * block / x.bk);
      const int64_t w0 = x.k0(c) / block, w1 = x.k1(c) / block;
      int64_t n = 0;
      for (int64_t u = u0; u <= u1; ++u) n += cells_kept(rnd, nbk, u, w0, w1);
      out.put(c, c + 1, n == (u1 - u0 + 1) * (w1 - w0 + 1) ? brange::kFull : brange::kPartial);
      ++c;
    }
  }
  SPATTN_HD brange::Bound block_range_bound(const void*, const brange::Ctx& x) const {
    if (globals > 0) return brange::Bound{x.nkb, x.nkb};
    const int64_t rows = brange::cdiv(x.bq, block) + 1, per = block / x.bk + 2;
    const int64_t n = rows * ((wlo + whi + 1 > 0 ? wlo + whi + 1 : 0) * per + 2 + randoms * per);
    return brange::Bound{brange::imin(x.nkb, n), brange::imin(x.nkb, n)};
  }
};

}  // namespace spattn::rules
