// Closed-form block rules of the grid patterns and of LongNet (grid_rules.hpp): for the query
// rows of one tile (key positions p0 .. p1), the keys some row keeps (K) and the keys every
// row keeps (F), as sorted, merged, inclusive intervals with F inside K. The layout builder
// turns them into ranges of blocks: a block is listed when it meets K, full when it lies in F.
// K is exact at block granularity (a block meeting K keeps some pair); F is exact (see below). Cost: proportional to the intervals produced.
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/grid_rules.hpp"

namespace spattn::detail {

struct KeyIv {
  int64_t lo, hi;  // keys, inclusive
};

// Sorts and merges touching intervals, clipped to [0, nk).
void normalize_intervals(std::vector<KeyIv>& v, int64_t nk);
// The intersection of two normalized lists.
std::vector<KeyIv> intersect_intervals(const std::vector<KeyIv>& a, const std::vector<KeyIv>& b);

// bk: the key block size; strided keys (dilation or LongNet's r above bk) are listed key by
// key so that every block meeting K keeps some pair. F is exact except for LongNet tiles of
// several rows, where keys kept by every row through different segments (only possible with
// several dilations and one-key blocks) are left out.
void grid_tile_keys(const GridRule& g, int64_t p0, int64_t p1, int64_t nk, int64_t bk,
                    std::vector<KeyIv>& K, std::vector<KeyIv>& F);

void longnet_tile_keys(const LongNetRule& l, const int64_t* wr, int64_t h, int64_t p0, int64_t p1, int64_t nk,
                       int64_t bk, std::vector<KeyIv>& K, std::vector<KeyIv>& F);

// Keys kept by row p (head h), counted in closed form (LongNet: inclusion-exclusion over its
// segment sizes, O(2^segments)).
int64_t longnet_row_count(const LongNetRule& l, const int64_t* wr, int64_t h, int64_t p,
                          int64_t nk);
int64_t grid_row_count(const GridRule& g, int64_t p, int64_t nk);

}  // namespace spattn::detail
