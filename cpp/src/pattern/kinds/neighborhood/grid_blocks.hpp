// Closed-form block rules of the grid patterns, Neighborhood and SlidingTile (rule.hpp): for the query
// rows of one tile (key positions p0 .. p1), the keys some row keeps (K) and the keys every
// row keeps (F), as sorted, merged, inclusive intervals with F inside K. The layout builder
// turns them into ranges of blocks: a block is listed when it meets K, full when it lies in F.
// K is exact at block granularity (a block meeting K keeps some pair); F is exact (see below). Cost: proportional to the intervals produced.
#pragma once

#include <cstdint>
#include <vector>

#include "pattern/block_rows.hpp"
#include "pattern/kinds/neighborhood/rule.hpp"

namespace spattn::detail {

using KeyIv = blocks::Iv;  // keys, inclusive: what blocks::intervals_row takes

// Sorts and merges touching intervals, clipped to [0, nk).
void normalize_intervals(std::vector<KeyIv>& v, int64_t nk);
// The intersection of two normalized lists.
std::vector<KeyIv> intersect_intervals(const std::vector<KeyIv>& a, const std::vector<KeyIv>& b);
// Appends the keys lo, lo + step, ..., hi (lo and hi are kept keys): one interval when every
// bk-key block meeting it holds one of them (step <= bk), else key by key.
void add_strided(std::vector<KeyIv>& v, int64_t lo, int64_t hi, int64_t step, int64_t bk);

// bk: the key block size; dilated keys (dilation above bk) are listed key by key so that
// every block meeting K keeps some pair. F is exact.
void grid_tile_keys(const rules::neighborhood& g, int64_t p0, int64_t p1, int64_t nk, int64_t bk,
                    std::vector<KeyIv>& K, std::vector<KeyIv>& F);

// Keys kept by row p, counted in closed form.
int64_t grid_row_count(const rules::neighborhood& g, int64_t p, int64_t nk);

}  // namespace spattn::detail
