// Document: the query at position p and key j lie in the same document of a packed sequence
// (data: int32 document index of every key position, [total]). A table lookup rather than a
// search over the boundaries: no loop in a rule that every kernel inlines into keeps().
#pragma once

#include <cstdint>

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
};

}  // namespace spattn::rules
