// Neighborhood, SlidingTile and LongNet: construction with argument checks, description and
// the checks against a problem (the rules: grid_rules.hpp; the block rules: grid_blocks.hpp).
#include <numeric>
#include <sstream>

#include "pattern/grid_kinds.hpp"
#include "spattn/error.hpp"
#include "spattn/pattern.hpp"

namespace spattn {

namespace {

[[noreturn]] void bad(const std::string& what) { throw ValueError(what); }

std::string list_str(const int64_t* v, int n) {
  std::ostringstream s;
  s << "(";
  for (int t = 0; t < n; ++t) s << (t ? ", " : "") << v[t];
  s << (n == 1 ? ",)" : ")");
  return s.str();
}

template <class T>
std::string vec_str(const std::vector<T>& v) {
  std::vector<int64_t> x(v.begin(), v.end());
  return list_str(x.data(), int(x.size()));
}

// A per-dim value: one number when every dim has it, else the tuple.
void per_dim(std::ostream& s, const int32_t* v, int n) {
  bool same = true;
  for (int t = 1; t < n; ++t) same = same && v[t] == v[0];
  if (same) {
    s << v[0];
    return;
  }
  std::vector<int64_t> x(v, v + n);
  s << list_str(x.data(), n);
}

constexpr int64_t kMaxExtent = int64_t(1) << 30;

}  // namespace

Pattern Pattern::neighborhood(std::vector<int64_t> grid, std::vector<int64_t> window,
                              std::vector<int64_t> dilation, std::vector<bool> causal,
                              int64_t start) {
  const size_t nd = grid.size();
  if (nd < 1 || nd > size_t(kMaxGridDims))
    bad("Neighborhood: grid must have 1 to 3 dims, got " + vec_str(grid));
  if (window.size() != nd || dilation.size() != nd || causal.size() != nd)
    bad("Neighborhood: window, dilation and causal need one value per grid dim (" +
        std::to_string(nd) + "), got " + std::to_string(window.size()) + ", " +
        std::to_string(dilation.size()) + " and " + std::to_string(causal.size()));
  if (start < 0) bad("Neighborhood: start must be >= 0, got " + std::to_string(start));
  GridRule g;
  g.ndim = int32_t(nd);
  g.start = start;
  g.size = 1;
  for (size_t t = 0; t < nd; ++t) {
    if (grid[t] < 1 || grid[t] > kMaxExtent)
      bad("Neighborhood: grid extents must be in 1..2^30, got " + vec_str(grid));
    if (window[t] < 1) bad("Neighborhood: window must be >= 1 in every dim, got " + vec_str(window));
    if (dilation[t] < 1)
      bad("Neighborhood: dilation must be >= 1 in every dim, got " + vec_str(dilation));
    if (window[t] > grid[t] / dilation[t])
      bad("Neighborhood: window * dilation must be <= the grid extent in every dim (as NATTEN), "
          "got grid " + vec_str(grid) + ", window " + vec_str(window) + ", dilation " +
          vec_str(dilation));
    g.n[t] = int32_t(grid[t]);
    g.w[t] = int32_t(window[t]);
    g.d[t] = int32_t(dilation[t]);
    if (causal[t]) g.causal |= 1 << t;
    g.size *= grid[t];
  }
  if (g.size > (int64_t(1) << 48) || start > (int64_t(1) << 60) - g.size)
    bad("Neighborhood: the grid is too large");
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::Neighborhood;
  n->grid = g;
  return from_node(std::move(n));
}

Pattern Pattern::sliding_tile(std::vector<int64_t> grid, std::vector<int64_t> tile,
                              std::vector<int64_t> window_tiles, int64_t start) {
  const size_t nd = grid.size();
  if (nd < 2 || nd > size_t(kMaxGridDims))
    bad("SlidingTile: grid must have 2 or 3 dims, got " + vec_str(grid));
  if (tile.size() != nd || window_tiles.size() != nd)
    bad("SlidingTile: tile and window_tiles need one value per grid dim (" + std::to_string(nd) +
        "), got " + std::to_string(tile.size()) + " and " + std::to_string(window_tiles.size()));
  if (start < 0) bad("SlidingTile: start must be >= 0, got " + std::to_string(start));
  GridRule g;
  g.ndim = int32_t(nd);
  g.start = start;
  g.tile = 1;
  int64_t cells = 1;
  std::vector<int64_t> tiles(nd, 0);
  for (size_t t = 0; t < nd; ++t)
    if (tile[t] >= 1) tiles[t] = grid[t] / tile[t];
  for (size_t t = 0; t < nd; ++t) {
    if (grid[t] < 1 || grid[t] > kMaxExtent)
      bad("SlidingTile: grid extents must be in 1..2^30, got " + vec_str(grid));
    if (tile[t] < 1 || grid[t] % tile[t] != 0)
      bad("SlidingTile: tile " + vec_str(tile) + " must divide the grid " + vec_str(grid) +
          " in every dim");
    if (window_tiles[t] < 1 || window_tiles[t] > tiles[t])
      bad("SlidingTile: window_tiles must be in 1..grid/tile = " + vec_str(tiles) +
          " per dim, got " + vec_str(window_tiles));
    g.n[t] = int32_t(tiles[t]);
    g.w[t] = int32_t(window_tiles[t]);
    g.tile *= tile[t];
    cells *= tiles[t];
  }
  g.size = cells * g.tile;
  if (g.size > (int64_t(1) << 48) || start > (int64_t(1) << 60) - g.size)
    bad("SlidingTile: the grid is too large");
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::SlidingTile;
  n->grid = g;
  n->positions = tile;  // the tile shape, for describe()
  return from_node(std::move(n));
}

Pattern Pattern::longnet(std::vector<int64_t> segments, std::vector<int64_t> dilations,
                         bool causal) {
  if (segments.empty()) bad("LongNet: segments: expected at least one segment size");
  if (segments.size() != dilations.size())
    bad("LongNet: segments and dilations must have the same length, got " + vec_str(segments) +
        " and " + vec_str(dilations));
  if (segments.size() > 64) bad("LongNet: at most 64 segment sizes");
  auto n = std::make_shared<PatternNode>();
  for (size_t k = 0; k < segments.size(); ++k) {
    const int64_t w = segments[k], r = dilations[k];
    if (w < 1 || w > (int64_t(1) << 48)) bad("LongNet: segment sizes must be in 1..2^48, got " + vec_str(segments));
    if (r < 1) bad("LongNet: dilations must be >= 1, got " + vec_str(dilations));
    if (w % r != 0)
      bad("LongNet: segment " + std::to_string(w) + " is not a multiple of its dilation " +
          std::to_string(r));
    n->positions.push_back(w);
    n->positions.push_back(r);
  }
  n->kind = Kind::LongNet;
  n->longnet.count = int32_t(segments.size());
  n->longnet.causal = causal ? 1 : 0;
  int64_t all_one = 1;
  for (int64_t r : dilations) all_one &= r == 1;
  n->head_dependent = !all_one;  // the rule of head h depends on h % r
  n->head_count = all_one ? 1 : 0;   // any number of heads
  return from_node(std::move(n));
}

namespace detail {

void describe_grid_kind(const PatternNode& n, std::ostream& s) {
  const GridRule& g = n.grid;
  if (n.kind == Pattern::Kind::Neighborhood) {
    std::vector<int64_t> grid(g.n, g.n + g.ndim);
    s << "Neighborhood(" << list_str(grid.data(), g.ndim) << ", window=";
    per_dim(s, g.w, g.ndim);
    bool dil = false;
    for (int t = 0; t < g.ndim; ++t) dil = dil || g.d[t] != 1;
    if (dil) {
      s << ", dilation=";
      per_dim(s, g.d, g.ndim);
    }
    if (g.causal) {
      s << ", causal=";
      bool same = true;
      for (int t = 1; t < g.ndim; ++t) same = same && g.causal_dim(t) == g.causal_dim(0);
      if (same) {
        s << (g.causal_dim(0) ? "True" : "False");
      } else {
        s << "(";
        for (int t = 0; t < g.ndim; ++t) s << (t ? ", " : "") << (g.causal_dim(t) ? "True" : "False");
        s << ")";
      }
    }
  } else {
    std::vector<int64_t> grid(size_t(g.ndim)), tile = n.positions;
    for (int t = 0; t < g.ndim; ++t) grid[size_t(t)] = g.n[t] * tile[size_t(t)];
    s << "SlidingTile(" << list_str(grid.data(), g.ndim) << ", tile="
      << list_str(tile.data(), g.ndim) << ", window_tiles=";
    per_dim(s, g.w, g.ndim);
  }
  if (g.start) s << ", start=" << g.start;
  s << ")";
}

void describe_longnet(const PatternNode& n, std::ostream& s) {
  std::vector<int64_t> w, r;
  for (size_t k = 0; k + 1 < n.positions.size(); k += 2) {
    w.push_back(n.positions[k]);
    r.push_back(n.positions[k + 1]);
  }
  s << "LongNet(segments=" << list_str(w.data(), int(w.size()))
    << ", dilations=" << list_str(r.data(), int(r.size()))
    << (n.longnet.causal ? "" : ", causal=False") << ")";
}

void check_grid_kind(const PatternNode& n, int64_t nq, int64_t nk) {
  (void)nq;
  const GridRule& g = n.grid;
  if (g.start + g.size > nk) {
    std::ostringstream s;
    s << "pattern: " << (n.kind == Pattern::Kind::Neighborhood ? "Neighborhood" : "SlidingTile")
      << " covers tokens " << g.start << ".." << g.start + g.size - 1
      << ", beyond the keys of an Nk=" << nk << " problem";
    throw ValueError(s.str());
  }
}

void check_longnet(const PatternNode&, int64_t nq, int64_t nk) {
  if (nq != nk)
    throw ValueError("pattern: LongNet needs Nq == Nk, got Nq=" + std::to_string(nq) +
                     ", Nk=" + std::to_string(nk));
}

}  // namespace detail

}  // namespace spattn
