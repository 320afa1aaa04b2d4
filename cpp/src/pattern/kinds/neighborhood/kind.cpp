// Neighborhood(grid, window, dilation, causal, start): NATTEN over a row-major grid (rule.hpp,
// docs/patterns.md). Block rule: per run of query cells in one grid line, the key lines of its
// neighbourhood, each one interval (grid_blocks.cpp); in a 64-wide grid every 64-key block is
// one line, and rows keep one interval of it (the kernels' interval path, rule.hpp).
#include "pattern/kind.hpp"
#include "pattern/kinds/neighborhood/grid_kind.hpp"

namespace spattn {

namespace {

struct Neighborhood : KindDefaults {
  static constexpr const char* kName = "Neighborhood";
  struct Params {
    rules::neighborhood rule;
  };

  static void describe(const Params& p, std::ostream& s) {
    const rules::neighborhood& g = p.rule;
    std::vector<int64_t> grid(g.n, g.n + g.ndim);
    s << "Neighborhood(" << detail::tuple_str(grid) << ", window=";
    detail::per_dim_str(s, g.w, g.ndim);
    bool dil = false;
    for (int t = 0; t < g.ndim; ++t) dil = dil || g.d[t] != 1;
    if (dil) {
      s << ", dilation=";
      detail::per_dim_str(s, g.d, g.ndim);
    }
    if (g.causal) {
      bool same = true;
      for (int t = 1; t < g.ndim; ++t) same = same && g.causal_dim(t) == g.causal_dim(0);
      s << ", causal=";
      if (same) {
        s << (g.causal_dim(0) ? "True" : "False");
      } else {
        s << "(";
        for (int t = 0; t < g.ndim; ++t) s << (t ? ", " : "") << (g.causal_dim(t) ? "True" : "False");
        s << ")";
      }
    }
    if (g.start) s << ", start=" << g.start;
    s << ")";
  }
  static void check(const Params& p, int64_t, int64_t nk, int64_t) {
    detail::grid_check(kName, p.rule, nk);
  }
  static PredNode predicate(const Params& p, const void*) { return pred_leaf(p.rule); }
  static void block_row(blocks::RowCtx& x, const Params& p, const void*, int64_t, blocks::Row& out) {
    detail::grid_block_row(x, p.rule, out);
  }
  static double kept_pairs(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    return detail::grid_kept_pairs(p.rule, nq, nk, hq);
  }
};

}  // namespace

Pattern neighborhood(std::vector<int64_t> grid, std::vector<int64_t> window,
                     std::vector<int64_t> dilation, std::vector<bool> causal, int64_t start) {
  using detail::tuple_str;
  const size_t nd = grid.size();
  if (nd < 1 || nd > 3) bad_argument("Neighborhood: grid must have 1 to 3 dims, got " + tuple_str(grid));
  if (window.size() != nd || dilation.size() != nd || causal.size() != nd)
    bad_argument("Neighborhood: window, dilation and causal need one value per grid dim (" +
                 std::to_string(nd) + "), got " + std::to_string(window.size()) + ", " +
                 std::to_string(dilation.size()) + " and " + std::to_string(causal.size()));
  if (start < 0) bad_argument("Neighborhood: start must be >= 0, got " + std::to_string(start));
  rules::neighborhood g{};
  g.ndim = int32_t(nd);
  g.start = start;
  g.size = 1;
  g.tile = 1;
  for (size_t t = 0; t < nd; ++t) {
    if (grid[t] < 1 || grid[t] > detail::kMaxGridExtent)
      bad_argument("Neighborhood: grid extents must be in 1..2^30, got " + tuple_str(grid));
    if (window[t] < 1)
      bad_argument("Neighborhood: window must be >= 1 in every dim, got " + tuple_str(window));
    if (dilation[t] < 1)
      bad_argument("Neighborhood: dilation must be >= 1 in every dim, got " + tuple_str(dilation));
    if (window[t] > grid[t] / dilation[t])
      bad_argument("Neighborhood: window * dilation must be <= the grid extent in every dim (as "
                   "NATTEN), got grid " + tuple_str(grid) + ", window " + tuple_str(window) +
                   ", dilation " + tuple_str(dilation));
    g.n[t] = int32_t(grid[t]);
    g.w[t] = int32_t(window[t]);
    g.d[t] = int32_t(dilation[t]);
    if (causal[t]) g.causal |= 1 << t;
    g.size *= grid[t];
  }
  for (size_t t = nd; t < 3; ++t) g.n[t] = g.w[t] = g.d[t] = 1;
  if (g.size > (int64_t(1) << 48) || start > (int64_t(1) << 60) - g.size)
    bad_argument("Neighborhood: the grid is too large");
  return make_leaf<Neighborhood>({g});
}

}  // namespace spattn
