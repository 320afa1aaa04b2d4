// LogSparse: rel >= 0 and (rel <= local or rel a power of two), rel = p - j.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct log_sparse {
  int64_t local;

  SPATTN_HD bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    const int64_t rel = p - j;
    return rel >= 0 && (rel <= local || (rel & (rel - 1)) == 0);
  }

  // Its rows keep few keys (sparse rows, see detail::has_row_keys in predicate.hpp): at most
  // the band's local + 1 and one per power of two beyond it.
  SPATTN_HD int64_t max_row_keys(int64_t nk) const {
    int64_t n = local + 1 < nk ? local + 1 : nk;
    for (int k = 0; k < 63 && (int64_t(1) << k) < nk; ++k)
      if ((int64_t(1) << k) > local) ++n;
    return n;
  }

  // The keys row p keeps among [0, nk), ascending: the powers of two beyond the band (largest
  // first), then the band [p - local, p].
  SPATTN_HD int64_t row_keys(const void*, int64_t, int64_t p, int64_t nk, int64_t* out) const {
    int64_t n = 0;
    if (p < 0) return 0;
    int k = 62;
    while (k >= 0 && (int64_t(1) << k) > p) --k;
    for (; k >= 0 && (int64_t(1) << k) > local; --k) {
      const int64_t j = p - (int64_t(1) << k);
      if (j < nk) out[n++] = j;
    }
    const int64_t lo = p - local > 0 ? p - local : 0, hi = p < nk - 1 ? p : nk - 1;
    for (int64_t j = lo; j <= hi; ++j) out[n++] = j;
    return n;
  }
};

}  // namespace spattn::rules
