// SlidingTile(grid, tile, window_tiles, start): sliding tile attention (video DiTs). The grid is
// cut into tiles; tokens are numbered tile-major (tiles row-major over the tile grid, tokens
// row-major inside a tile), so a tile is prod(tile) consecutive tokens; a query tile sees the
// key tiles of NATTEN's (undilated, non-causal) window over the tile grid. It is Neighborhood's
// rule over cells of prod(tile) tokens (kinds/neighborhood/rule.hpp), so it has no rule of its
// own. With prod(tile) equal to the layout's block, every block is full or empty.
#include "pattern/kind.hpp"
#include "pattern/kinds/neighborhood/grid_kind.hpp"

namespace spattn {

namespace {

struct SlidingTile : KindDefaults {
  static constexpr const char* kName = "SlidingTile";
  struct Params {
    rules::neighborhood rule;  // cells = tiles
    std::vector<int64_t> tile;
  };

  static void describe(const Params& p, std::ostream& s) {
    const rules::neighborhood& g = p.rule;
    std::vector<int64_t> grid(size_t(g.ndim));
    for (int t = 0; t < g.ndim; ++t) grid[size_t(t)] = g.n[t] * p.tile[size_t(t)];
    s << "SlidingTile(" << detail::tuple_str(grid) << ", tile=" << detail::tuple_str(p.tile)
      << ", window_tiles=";
    detail::per_dim_str(s, g.w, g.ndim);
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

Pattern sliding_tile(std::vector<int64_t> grid, std::vector<int64_t> tile,
                     std::vector<int64_t> window_tiles, int64_t start) {
  using detail::tuple_str;
  const size_t nd = grid.size();
  if (nd < 2 || nd > 3) bad_argument("SlidingTile: grid must have 2 or 3 dims, got " + tuple_str(grid));
  if (tile.size() != nd || window_tiles.size() != nd)
    bad_argument("SlidingTile: tile and window_tiles need one value per grid dim (" +
                 std::to_string(nd) + "), got " + std::to_string(tile.size()) + " and " +
                 std::to_string(window_tiles.size()));
  if (start < 0) bad_argument("SlidingTile: start must be >= 0, got " + std::to_string(start));
  std::vector<int64_t> tiles(nd, 0);
  for (size_t t = 0; t < nd; ++t) {
    if (grid[t] < 1 || grid[t] > detail::kMaxGridExtent)
      bad_argument("SlidingTile: grid extents must be in 1..2^30, got " + tuple_str(grid));
    if (tile[t] < 1 || grid[t] % tile[t] != 0)
      bad_argument("SlidingTile: tile " + tuple_str(tile) + " must divide the grid " +
                   tuple_str(grid) + " in every dim");
    tiles[t] = grid[t] / tile[t];
  }
  rules::neighborhood g{};
  g.ndim = int32_t(nd);
  g.start = start;
  g.tile = 1;
  int64_t cells = 1;
  for (size_t t = 0; t < nd; ++t) {
    if (window_tiles[t] < 1 || window_tiles[t] > tiles[t])
      bad_argument("SlidingTile: window_tiles must be in 1..grid/tile = " + tuple_str(tiles) +
                   " per dim, got " + tuple_str(window_tiles));
    g.n[t] = int32_t(tiles[t]);
    g.w[t] = int32_t(window_tiles[t]);
    g.d[t] = 1;
    g.tile *= tile[t];
    cells *= tiles[t];
  }
  for (size_t t = nd; t < 3; ++t) g.n[t] = g.w[t] = g.d[t] = 1;
  g.size = cells * g.tile;
  if (g.size > (int64_t(1) << 48) || start > (int64_t(1) << 60) - g.size)
    bad_argument("SlidingTile: the grid is too large");
  return make_leaf<SlidingTile>({g, tile});
}

}  // namespace spattn
