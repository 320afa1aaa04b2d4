// Grid patterns' forward in gathered tiles: a query tile is a patch of the grid (4 cells of the
// second-fastest dim by 16 of the fastest, within one residue class of the dilations), and its
// keys are the box of cells the patch's neighbourhoods lie in, gathered per key block
// (attention_grid.hpp runs one tile). In row-major order the same pattern walks one partial
// block per key line of the window for each query tile (bench/RESULTS.md, issue 15).
//
// Taken by Neighborhood on grids of 2 or 3 dims whose residue classes hold a whole tile
// (Nq != Nk and a grid start allowed); the backward stays on the block layout (backward.cpp),
// which computes the same function.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/common.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

namespace {

constexpr int kLines = 4;                  // tile cells along dim 1
constexpr int kCols = kTile / kLines;      // tile cells along dim 2 (the fastest)
constexpr int kGroupCols = 16 / kLines;    // a 16-query group: kLines x kGroupCols cells
constexpr int32_t kNone = 1 << 30;         // lo of an empty range (hi -1)

// The rule on 3 dims (leading dims of extent 1).
struct Grid3 {
  int64_t n[3], w[3], d[3];
  bool causal[3];
  int64_t start, size;
};

Grid3 pad3(const rules::neighborhood& g) {
  Grid3 G;
  const int lead = 3 - g.ndim;
  for (int t = 0; t < 3; ++t) {
    const int s = t - lead;
    G.n[t] = s < 0 ? 1 : g.n[s];
    G.w[t] = s < 0 ? 1 : g.w[s];
    G.d[t] = s < 0 ? 1 : g.d[s];
    G.causal[t] = s >= 0 && g.causal_dim(s);
  }
  G.start = g.start;
  G.size = g.size;
  return G;
}

bool same_rule(const rules::neighborhood& a, const rules::neighborhood& b) {
  bool same = a.ndim == b.ndim && a.causal == b.causal && a.start == b.start && a.tile == b.tile;
  for (int t = 0; t < 3; ++t) same = same && a.n[t] == b.n[t] && a.w[t] == b.w[t] && a.d[t] == b.d[t];
  return same;
}

// The grid when every head runs one and the same Neighborhood leaf that the tiles suit: 2 or 3
// dims, every residue class at least one tile wide and tall. SPATTN_GRID_TILES=0 turns the
// path off (benchmarks and tests compare it with the block walk).
bool tile_grid(const Predicate& pred, Grid3* out) {
  const char* env = std::getenv("SPATTN_GRID_TILES");
  if (env && std::strcmp(env, "0") == 0) return false;
  const rules::neighborhood* first = nullptr;
  for (int64_t hh = 0; hh < pred.heads; ++hh) {
    if (pred.head_end[hh] - pred.head_begin[hh] != 1) return false;
    const PredNode& n = pred.nodes[pred.head_begin[hh]];
    if (n.kind != PredKind::neighborhood) return false;
    if (first && !same_rule(*first, n.u.neighborhood)) return false;
    first = &n.u.neighborhood;
  }
  if (!first || first->tile != 1 || first->ndim < 2) return false;
  const Grid3 G = pad3(*first);
  if (G.n[1] / G.d[1] < kLines || G.n[2] / G.d[2] < kCols) return false;
  *out = G;
  return true;
}

// Where a tile sits: its residue class r and its first cell (residue-class coordinates).
struct TileAt {
  int64_t r[3], s[3];
};

std::vector<TileAt> list_tiles(const Grid3& G) {
  std::vector<TileAt> v;
  int64_t r[3];
  for (r[0] = 0; r[0] < G.d[0]; ++r[0])
    for (r[1] = 0; r[1] < G.d[1]; ++r[1])
      for (r[2] = 0; r[2] < G.d[2]; ++r[2]) {
        int64_t m[3];
        for (int t = 0; t < 3; ++t) m[t] = (G.n[t] - r[t] + G.d[t] - 1) / G.d[t];
        for (int64_t a = 0; a < m[0]; ++a)
          for (int64_t x = 0; x < m[2]; x += kCols)
            for (int64_t y = 0; y < m[1]; y += kLines) v.push_back({{r[0], r[1], r[2]}, {a, y, x}});
      }
  return v;
}

// Column c of a tile: group c / 16 covers kGroupCols cells of dim 2, and inside a group the
// columns run down dim 1 first, so that 4 consecutive columns (a micro tile of O += P V) share
// their dim-2 cell and need one contiguous span of the box's packed keys.
// Returns false when the tile has no query row.
bool build_tile(const Grid3& G, int64_t off, int64_t nq, const TileAt& at, GridTile& t) {
  int64_t m[3];
  for (int k = 0; k < 3; ++k) m[k] = (G.n[k] - at.r[k] + G.d[k] - 1) / G.d[k];
  int64_t lo[3][kTile], hi[3][kTile], blo[3], bhi[3];
  for (int k = 0; k < 3; ++k) blo[k] = INT64_MAX, bhi[k] = INT64_MIN;
  bool any = false;
  for (int c = 0; c < kTile; ++c) {
    const int64_t s[3] = {at.s[0], at.s[1] + c % kLines,
                          at.s[2] + (c / 16) * kGroupCols + (c % 16) / kLines};
    t.row[c] = -1;
    if (s[1] >= m[1] || s[2] >= m[2]) continue;
    int64_t f[3];
    for (int k = 0; k < 3; ++k) f[k] = at.r[k] + G.d[k] * s[k];
    const int64_t i = G.start + (f[0] * G.n[1] + f[1]) * G.n[2] + f[2] - off;
    if (i < 0 || i >= nq) continue;  // a cell with no query row (Nq < Nk)
    t.row[c] = i;
    any = true;
    for (int k = 0; k < 3; ++k) {
      int64_t a, b;
      rules::grid_dim_range(G.n[k], G.w[k], G.d[k], G.causal[k], f[k], &a, &b);
      lo[k][c] = (a - at.r[k]) / G.d[k];  // residue-class coordinates (a, b are in the class)
      hi[k][c] = (b - at.r[k]) / G.d[k];
      blo[k] = std::min(blo[k], lo[k][c]);
      bhi[k] = std::max(bhi[k], hi[k][c]);
    }
  }
  if (!any) return false;
  for (int k = 0; k < 3; ++k) t.e[k] = int32_t(bhi[k] - blo[k] + 1);
  int64_t f0[3];
  for (int k = 0; k < 3; ++k) f0[k] = at.r[k] + G.d[k] * blo[k];
  t.base = G.start + (f0[0] * G.n[1] + f0[1]) * G.n[2] + f0[2];
  t.step[0] = G.d[0] * G.n[1] * G.n[2];
  t.step[1] = G.d[1] * G.n[2];
  t.step[2] = G.d[2];
  for (int k = 0; k < 3; ++k) {
    for (int q = 0; q < kTileGroups; ++q) t.glo[k][q] = kNone, t.ghi[k][q] = -1;
    for (int c = 0; c < kTile; ++c) {
      if (t.row[c] < 0) {
        t.lo[k][c] = kNone;
        t.hi[k][c] = -1;
        continue;
      }
      t.lo[k][c] = int32_t(lo[k][c] - blo[k]);
      t.hi[k][c] = int32_t(hi[k][c] - blo[k]);
      t.glo[k][c / 16] = std::min(t.glo[k][c / 16], t.lo[k][c]);
      t.ghi[k][c / 16] = std::max(t.ghi[k][c / 16], t.hi[k][c]);
    }
  }
  return true;
}

// Rows whose position lies outside the grid keep no key: output 0, lse as the tiles give an
// empty row (-inf, or the head's sink).
void empty_rows(const ForwardArgs& a, const Grid3& G, int64_t off) {
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], Dv = a.v.shape[3];
  const int64_t inside0 = std::max<int64_t>(0, G.start - off);
  const int64_t inside1 = std::min<int64_t>(nq, G.start + G.size - off);
  const int es = a.dtype == DType::Float32 ? 4 : 2;
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < nq; ++i) {
      if (i >= inside0 && i < inside1) continue;
      for (int64_t h = 0; h < hq; ++h) {
        char* row = static_cast<char*>(a.out.data) +
                    (b * a.out.strides[0] + i * a.out.strides[1] + h * a.out.strides[2]) * es;
        for (int64_t d = 0; d < Dv; ++d) std::memset(row + d * a.out.strides[3] * es, 0, size_t(es));
        if (!a.lse.data) continue;
        float lse = -__builtin_inff();
        if (a.mods.sinks) {
          const float s = a.mods.sinks[h * a.mods.sinks_stride];
          if (s != -__builtin_inff()) lse = (s * kLog2e + 0.f) * kLn2;  // finish_row's log2(1) = 0
        }
        static_cast<float*>(a.lse.data)[b * a.lse.strides[0] + h * a.lse.strides[1] +
                                         i * a.lse.strides[2]] = lse;
      }
    }
}

}  // namespace

bool forward_grid_tiles(const ForwardArgs& a) {
  using namespace detail;
  if (a.dtype == DType::Float64) return false;  // attention_f64.cpp has its own path
  // bfloat16 on CPUs with AVX512_BF16: the block walk's native products (vdpbf16ps) beat the
  // tiles' float32 products on converted rows (measured, bench/RESULTS.md); on other CPUs both
  // convert, and the tiles are faster.
  if (a.dtype == DType::BFloat16 && kernels_for(kBF16) != kernels()) return false;
  Grid3 G;
  if (!tile_grid(a.pred, &G)) return false;
  Problem p = make_problem(a.q, a.k, a.v, a.dtype, a.scale, *a.layout, a.pred);
  std::vector<float> mods;
  set_modifiers(p, a.mods, true, &mods);
  p.o = t4(a.out);
  if (a.lse.data) {
    p.lse = static_cast<float*>(a.lse.data);
    for (int i = 0; i < 3; ++i) p.lse_s[i] = a.lse.strides[i];
  }
  if (p.B == 0 || p.Hq == 0 || p.Nq == 0) return true;
  const int64_t off = a.pred.off;
  empty_rows(a, G, off);
  if (p.Dv == 0) return true;

  // The tiles, built once for every batch and head.
  const std::vector<TileAt> where = list_tiles(G);
  std::vector<GridTile> tiles(where.size());
  std::vector<uint8_t> used(where.size());
  parallel_for(int64_t(where.size()), [&](int64_t i, int) {
    used[size_t(i)] = build_tile(G, off, p.Nq, where[size_t(i)], tiles[size_t(i)]);
  });
  std::vector<int64_t> live;
  for (size_t i = 0; i < tiles.size(); ++i)
    if (used[i]) live.push_back(int64_t(i));
  const int64_t ntiles = int64_t(live.size());

  const KernelTable* kt = kernels_for(p.dtype);
  const int64_t ws_floats = kt->fwd_grid_ws_floats(p);
  Scratch ws = alloc_floats(ws_floats * num_threads());
  // Heads fastest, as the block walk: a tile's rows hold every head, so neighbouring tasks share
  // pages (head-major measured 35 against 30 ms, 64 x 64 grid, 8 heads, one thread). Tiles run
  // down dim 1 first: the next tile's box shares 3/4 of its cells.
  const int64_t tasks = p.B * ntiles * p.Hq;
  parallel_for(tasks, [&](int64_t task, int thread) {
    const int64_t h = task % p.Hq, tile = (task / p.Hq) % ntiles, b = task / (p.Hq * ntiles);
    kt->fwd_grid_tile(p, b, h, tiles[size_t(live[size_t(tile)])], ws.get() + thread * ws_floats);
  });
  return true;
}

}  // namespace spattn::cpu
