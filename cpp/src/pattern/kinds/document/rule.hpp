// Document: the query at position p and key j lie in the same document of a packed sequence
// (data: int64 boundaries, the starts of documents 2, 3, ..., sorted, distinct, in (0, total)).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct document {
  int64_t count;  // boundaries in data

  SPATTN_HD bool keeps(const void* data, int64_t, int64_t, int64_t j, int64_t p) const {
    if (p < 0) return false;  // a query before the packed sequence (Nq > Nk) is in no document
    const int64_t* b = static_cast<const int64_t*>(data);
    const int64_t lo = p < j ? p : j, hi = p < j ? j : p;
    // Same document when no boundary b satisfies lo < b <= hi: the first boundary above lo.
    int64_t a = 0, e = count;
    while (a < e) {
      const int64_t mid = (a + e) / 2;
      if (b[mid] <= lo)
        a = mid + 1;
      else
        e = mid;
    }
    return a == count || b[a] > hi;
  }
};

}  // namespace spattn::rules
