// BlockSparse: bits[h', i / bq, j / bk], h' = 0 when the layout has one head, else h
// (data: uint8 [heads, nbq, nbk]). Indexed by query row i, no offset (docs/patterns.md).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

struct block_sparse {
  int64_t bq, bk, nbq, nbk, heads;

  SPATTN_HD bool keeps(const void* data, int64_t h, int64_t i, int64_t j, int64_t) const {
    const int64_t hh = heads == 1 ? 0 : h;
    return static_cast<const uint8_t*>(data)[(hh * nbq + i / bq) * nbk + j / bk] != 0;
  }
};

}  // namespace spattn::rules
