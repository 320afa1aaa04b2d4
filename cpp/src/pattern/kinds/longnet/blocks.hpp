// LongNet's closed-form block rule and its kept keys per row (rule.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "pattern/kinds/longnet/rule.hpp"
#include "pattern/kinds/neighborhood/grid_blocks.hpp"  // KeyIv and the interval helpers

namespace spattn::detail {

// For the query rows p0 .. p1 of head h: the keys some row keeps (K, exact at the granularity
// of bk-key blocks: keys of a dilation above bk are listed one by one) and keys every row keeps
// (F: exact for one row; for several rows, keys kept by every row through different segments,
// possible only with several dilations and one-key blocks, are left out). wr: w0, r0, w1, ...
void longnet_tile_keys(const rules::longnet& l, const int64_t* wr, int64_t h, int64_t p0,
                       int64_t p1, int64_t nk, int64_t bk, std::vector<KeyIv>& K,
                       std::vector<KeyIv>& F);

// Keys kept by row p of head h: inclusion-exclusion over the segment sizes whose residue the
// row is in (O(2^segments)).
int64_t longnet_row_count(const rules::longnet& l, const int64_t* wr, int64_t h, int64_t p,
                          int64_t nk);

}  // namespace spattn::detail
