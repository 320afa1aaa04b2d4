// What Neighborhood and SlidingTile share on the host: the block rule, the kept pairs and the
// check against a problem, over their common rule (rule.hpp).
#pragma once

#include <sstream>
#include <string>

#include "pattern/block_rows.hpp"
#include "pattern/kinds/neighborhood/grid_blocks.hpp"
#include "spattn/error.hpp"

namespace spattn::detail {

inline void grid_block_row(blocks::RowCtx& x, const rules::neighborhood& g, blocks::Row& out) {
  std::vector<KeyIv> K, F;
  grid_tile_keys(g, x.p0, x.p1, x.nk, x.bk, K, F);
  blocks::intervals_row(x, K, F, out);
}

inline double grid_kept_pairs(const rules::neighborhood& g, int64_t nq, int64_t nk, int64_t hq) {
  return double(hq) * blocks::sum_rows(nq, nk, [&](int64_t p) { return grid_row_count(g, p, nk); });
}

inline void grid_check(const char* name, const rules::neighborhood& g, int64_t nk) {
  if (g.start + g.size > nk) {
    std::ostringstream s;
    s << "pattern: " << name << " covers tokens " << g.start << ".." << g.start + g.size - 1
      << ", beyond the keys of an Nk=" << nk << " problem";
    throw ValueError(s.str());
  }
}

// "(a, b)", "(a,)" for one value.
inline std::string tuple_str(const int64_t* v, int n) {
  std::ostringstream s;
  s << "(";
  for (int t = 0; t < n; ++t) s << (t ? ", " : "") << v[t];
  s << (n == 1 ? ",)" : ")");
  return s.str();
}

template <class T>
std::string tuple_str(const std::vector<T>& v) {
  std::vector<int64_t> x(v.begin(), v.end());
  return tuple_str(x.data(), int(x.size()));
}

// A per-dim value: one number when every dim has it, else the tuple.
inline void per_dim_str(std::ostream& s, const int32_t* v, int n) {
  bool same = true;
  for (int t = 1; t < n; ++t) same = same && v[t] == v[0];
  if (same) {
    s << v[0];
    return;
  }
  std::vector<int64_t> x(v, v + n);
  s << tuple_str(x.data(), n);
}

constexpr int64_t kMaxGridExtent = int64_t(1) << 30;

}  // namespace spattn::detail
