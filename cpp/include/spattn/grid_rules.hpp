// Element rules of the grid patterns (Neighborhood, SlidingTile) and of LongNet: plain data and
// SPATTN_HD functions, so that keeps() (the CPU kernels, the CUDA kernels, mask(), the tests)
// calls the one definition. Semantics: docs/patterns.md; summary here.
//
// Neighborhood(grid, window, dilation, causal, start): the tokens start .. start + prod(grid) - 1
// are laid out row-major on the grid (last dim fastest). Per dim, NATTEN's rule on the
// coordinate x of the query and y of the key, with extent n, window w, dilation d:
//   - same group: x % d == y % d; the group has n_r = ceil((n - r) / d) positions, and
//     t = x / d, s = y / d are the positions inside it;
//   - not causal: s in [lo, lo + w - 1], lo = clamp(t - w / 2, 0, n_r - w): the window is
//     centred (w / 2 before, w - 1 - w / 2 after: an even window leans back) and shifted at the
//     borders so that it keeps its full size (w * d <= n is checked, so n_r >= w);
//   - causal: t - w < s <= t (the w most recent positions, self included).
// A key is kept when it is a neighbour in every dim; tokens outside the range keep nothing and
// are kept by nothing.
//
// SlidingTile(grid, tile, window_tiles, start): the grid is cut into tiles of shape `tile`;
// tokens are numbered tile-major (tiles row-major over the tile grid, tokens row-major inside a
// tile), so one tile is prod(tile) consecutive tokens. Query tile and key tile are compared with
// the non-causal, undilated Neighborhood rule over the tile grid with window window_tiles (as
// the sliding tile attention of video DiTs: a window of whole tiles, shifted at the borders).
//
// LongNet(segments w_k, dilations r_k, causal), Nq = Nk: query i and key j of head h are kept
// when for some k: i / w_k == j / w_k and i % r_k == j % r_k == h % r_k (and j <= i if causal).
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn {

constexpr int kMaxGridDims = 3;

// Neighborhood and SlidingTile share this data. Neighborhood: n = grid extents, w = windows,
// d = dilations, causal per dim, tile = 1. SlidingTile: n = tiles per dim, w = window in
// tiles, d = 1, not causal, tile = prod(tile shape) tokens.
struct GridRule {
  int32_t ndim = 1;
  int32_t causal = 0;  // bit t: dim t is causal
  int64_t start = 0;   // first token of the grid
  int64_t size = 0;    // tokens of the grid: prod(n) * tile
  int64_t tile = 1;    // consecutive tokens per grid cell
  int32_t n[kMaxGridDims] = {1, 1, 1};
  int32_t w[kMaxGridDims] = {1, 1, 1};
  int32_t d[kMaxGridDims] = {1, 1, 1};
  SPATTN_HD bool causal_dim(int t) const { return (causal >> t) & 1; }
};

// One dim's neighbours of coordinate x: the keys y = lo, lo + d, ..., hi (lo <= hi always,
// since a group holds at least w positions).
SPATTN_HD void grid_dim_range(int64_t n, int64_t w, int64_t d, bool causal, int64_t x,
                              int64_t* lo, int64_t* hi) {
  const int64_t r = x % d, t = x / d;
  int64_t s0, s1;
  if (causal) {
    s0 = t - w + 1 < 0 ? 0 : t - w + 1;
    s1 = t;
  } else {
    const int64_t nr = (n - r + d - 1) / d;
    s0 = t - w / 2;
    if (s0 > nr - w) s0 = nr - w;
    if (s0 < 0) s0 = 0;
    s1 = s0 + w - 1;
  }
  *lo = s0 * d + r;
  *hi = s1 * d + r;
}

SPATTN_HD bool grid_keeps(const GridRule& g, int64_t p, int64_t j) {
  int64_t a = p - g.start, b = j - g.start;
  if (a < 0 || b < 0 || a >= g.size || b >= g.size) return false;
  a /= g.tile;
  b /= g.tile;
  for (int t = g.ndim - 1; t >= 0; --t) {
    const int64_t x = a % g.n[t], y = b % g.n[t];
    a /= g.n[t];
    b /= g.n[t];
    int64_t lo, hi;
    grid_dim_range(g.n[t], g.w[t], g.d[t], g.causal_dim(t), x, &lo, &hi);
    if (y < lo || y > hi || (y - lo) % g.d[t] != 0) return false;
  }
  return true;
}

// The keys of [j0, j1] that the query at position p keeps, when they are one interval:
// true with [*lo, *hi] (empty when *lo > *hi); false when the rule cannot say cheaply (the
// keys of the grid in [j0, j1] span several key lines, or the last dim is dilated), and the
// caller asks grid_keeps() key by key.
SPATTN_HD bool grid_row_interval(const GridRule& g, int64_t p, int64_t j0, int64_t j1,
                                 int64_t* lo, int64_t* hi) {
  *lo = 1;
  *hi = 0;
  const int64_t b0 = (j0 > g.start ? j0 : g.start) - g.start;
  const int64_t b1 = (j1 < g.start + g.size - 1 ? j1 : g.start + g.size - 1) - g.start;
  if (b0 > b1) return true;  // no key of the grid
  const int L = g.ndim - 1;
  const int64_t line_len = g.n[L] * g.tile;  // tokens of one key line
  if (b0 / line_len != b1 / line_len) return false;
  const int64_t a = p - g.start;
  if (a < 0 || a >= g.size) return true;  // a query outside the grid keeps nothing
  const int64_t line = b0 / line_len;
  // the line's prefix coordinates against the query's
  int64_t qa = a / g.tile / g.n[L], kl = line;
  for (int t = L - 1; t >= 0; --t) {
    const int64_t x = qa % g.n[t], y = kl % g.n[t];
    qa /= g.n[t];
    kl /= g.n[t];
    int64_t l, h;
    grid_dim_range(g.n[t], g.w[t], g.d[t], g.causal_dim(t), x, &l, &h);
    if (y < l || y > h || (y - l) % g.d[t] != 0) return true;
  }
  int64_t l, h;
  grid_dim_range(g.n[L], g.w[L], g.d[L], g.causal_dim(L), a / g.tile % g.n[L], &l, &h);
  if (g.d[L] != 1 && l != h) return false;  // every d-th key: not one interval
  const int64_t first = g.start + line * line_len + l * g.tile;
  const int64_t last = g.start + line * line_len + (h + 1) * g.tile - 1;
  *lo = first > j0 ? first : j0;
  *hi = last < j1 ? last : j1;
  return true;
}

// The segment sizes and dilations live in an array (w0, r0, w1, r1, ...) owned by the
// compiled pattern.
struct LongNetRule {
  int32_t count = 0;
  int32_t causal = 1;
};

SPATTN_HD bool longnet_keeps(const LongNetRule& l, const int64_t* wr, int64_t h, int64_t p,
                             int64_t j) {
  if (j < 0 || p < 0 || (l.causal && j > p)) return false;
  for (int k = 0; k < l.count; ++k) {
    const int64_t w = wr[2 * k], r = wr[2 * k + 1], hr = h % r;
    if (p / w == j / w && p % r == hr && j % r == hr) return true;
  }
  return false;
}

}  // namespace spattn
