#include "pattern/kinds/longnet/blocks.hpp"

#include <algorithm>
#include <numeric>

namespace spattn::detail {

void longnet_tile_keys(const rules::longnet& l, const int64_t* wr, int64_t h, int64_t p0, int64_t p1, int64_t nk,
                       int64_t bk, std::vector<KeyIv>& K, std::vector<KeyIv>& F) {
  K.clear();
  F.clear();
  p0 = std::max<int64_t>(p0, 0);
  if (p0 > p1) return;
  for (int k = 0; k < l.count; ++k) {
    const int64_t w = wr[2 * k], r = wr[2 * k + 1], hr = h % r;
    // the first and last rows of the tile in the head's residue class
    const int64_t f = p0 + ((hr - p0 % r) % r + r) % r;
    if (f > p1) continue;
    const int64_t e = p1 - ((p1 % r - hr) % r + r) % r;
    const int64_t last_key = (nk - 1) - (((nk - 1) % r - hr) % r + r) % r;  // of the class
    for (int64_t s = f / w; s <= e / w; ++s) {
      // keys of the class in the segment (causal: up to its last row in the tile); w % r == 0,
      // so the segment starts at a multiple of r
      const int64_t first = s * w + hr;
      const int64_t last = std::min(l.causal ? std::min(e, s * w + w - r + hr) : s * w + w - r + hr,
                                    last_key);
      if (first <= last) add_strided(K, first, last, r, bk);
    }
    if (p0 == p1) {
      // one row: its keys, exactly
      const int64_t s = p0 / w;
      const int64_t last = std::min(l.causal ? p0 : s * w + w - r + hr, last_key);
      if (p0 % r == hr && s * w + hr <= last) add_strided(F, s * w + hr, last, r, 1);
    } else if (r == 1 && p0 / w == p1 / w) {
      // every row keeps the whole segment (causal: up to the first row)
      F.push_back({p0 / w * w, l.causal ? p0 : p0 / w * w + w - 1});
    }
  }
  normalize_intervals(K, nk);
  normalize_intervals(F, nk);
}

int64_t longnet_row_count(const rules::longnet& l, const int64_t* wr, int64_t h, int64_t p,
                          int64_t nk) {
  if (p < 0 || p >= nk) return 0;
  // Inclusion-exclusion over the segments whose residue the row is in: the keys of a set of
  // them are those in every segment (an interval) with j = h modulo every dilation (one
  // residue modulo their lcm, which the row itself satisfies).
  int64_t idx[64], m = 0;
  for (int k = 0; k < l.count; ++k)
    if (p % wr[2 * k + 1] == h % wr[2 * k + 1]) idx[m++] = k;
  int64_t total = 0;
  for (int64_t set = 1; set < (int64_t(1) << m); ++set) {
    int64_t lo = 0, hi = l.causal ? p : nk - 1, L = 1, bits = 0;
    for (int64_t t = 0; t < m; ++t)
      if (set >> t & 1) {
        const int64_t w = wr[2 * idx[t]], r = wr[2 * idx[t] + 1];
        lo = std::max(lo, p / w * w);
        hi = std::min(hi, p / w * w + w - 1);
        L = std::lcm(L, r);
        ++bits;
      }
    // keys j in [lo, hi] with j = p (mod L)
    int64_t c = 0;
    if (hi >= lo) {
      // first j >= lo with j = p mod L, last j <= hi
      const int64_t first = lo + ((p - lo) % L + L) % L;
      const int64_t last = hi - ((hi - p) % L + L) % L;
      c = first > last ? 0 : (last - first) / L + 1;
    }
    total += (bits % 2 == 1) ? c : -c;
  }
  return total;
}

}  // namespace spattn::detail
