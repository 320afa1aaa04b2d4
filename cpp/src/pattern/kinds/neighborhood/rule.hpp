// Neighborhood (and SlidingTile, which shares this rule): NATTEN's neighbourhood per dim over
// the cells of a row-major grid (docs/patterns.md).
//
// The tokens start .. start + size - 1 form a grid of n[0] x ... cells (last dim fastest) of
// `tile` consecutive tokens each (Neighborhood: tile = 1; SlidingTile: a tile of the video
// grid, tokens tile-major). Per dim, with extent n, window w, dilation d, query cell
// coordinate x and key cell coordinate y:
//   - same group: x % d == y % d; the group has n_r = ceil((n - r) / d) positions, and
//     t = x / d, s = y / d are the positions inside it;
//   - not causal: s in [lo, lo + w - 1], lo = clamp(t - w / 2, 0, n_r - w): centred (w / 2
//     before, w - 1 - w / 2 after: an even window leans back), shifted at the borders to keep
//     its size (w * d <= n is checked, so n_r >= w);
//   - causal: t - w < s <= t (the w most recent positions, self included).
// A key is kept when it is a neighbour in every dim; tokens outside the grid keep nothing and
// are kept by nothing.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::rules {

// One dim's neighbours of coordinate x: y = lo, lo + d, ..., hi.
SPATTN_HD void grid_dim_range(int64_t n, int64_t w, int64_t d, bool causal, int64_t x, int64_t* lo,
                              int64_t* hi) {
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

struct neighborhood {
  int32_t ndim;
  int32_t causal;  // bit t: dim t is causal
  int64_t start;   // first token of the grid
  int64_t size;    // its tokens: prod(n) * tile
  int64_t tile;    // consecutive tokens per cell
  int32_t n[3], w[3], d[3];

  SPATTN_HD bool causal_dim(int t) const { return (causal >> t) & 1; }

  SPATTN_HD_CALL bool keeps(const void*, int64_t, int64_t, int64_t j, int64_t p) const {
    int64_t a = p - start, b = j - start;
    if (a < 0 || b < 0 || a >= size || b >= size) return false;
    a /= tile;
    b /= tile;
    for (int t = ndim - 1; t >= 0; --t) {
      const int64_t x = a % n[t], y = b % n[t];
      a /= n[t];
      b /= n[t];
      int64_t lo, hi;
      grid_dim_range(n[t], w[t], d[t], causal_dim(t), x, &lo, &hi);
      if (y < lo || y > hi || (y - lo) % d[t] != 0) return false;
    }
    return true;
  }

  // Whether key line kl (index over the prefix dims 0 .. ndim - 2, row-major) is a neighbour,
  // in every prefix dim, of the query line qline.
  SPATTN_HD bool line_is_neighbour(int64_t qline, int64_t kl) const {
    for (int t = ndim - 2; t >= 0; --t) {
      const int64_t x = qline % n[t], y = kl % n[t];
      qline /= n[t];
      kl /= n[t];
      int64_t l, h;
      grid_dim_range(n[t], w[t], d[t], causal_dim(t), x, &l, &h);
      if (y < l || y > h || (y - l) % d[t] != 0) return false;
    }
    return true;
  }

  // The keys of [j0, j1] the query at position p keeps, when they are one interval: true with
  // [*lo, *hi] (empty when *lo > *hi); false when the grid's keys in [j0, j1] span several key
  // lines or the last dim is dilated (then ask keeps() key by key).
  SPATTN_HD bool row_interval(const void*, int64_t, int64_t p, int64_t j0, int64_t j1,
                              int64_t* lo, int64_t* hi) const {
    *lo = 1;
    *hi = 0;
    const int64_t b0 = (j0 > start ? j0 : start) - start;
    const int64_t b1 = (j1 < start + size - 1 ? j1 : start + size - 1) - start;
    if (b0 > b1) return true;  // no key of the grid
    const int L = ndim - 1;
    const int64_t line_len = n[L] * tile;  // tokens of one key line
    if (b0 / line_len != b1 / line_len) return false;
    const int64_t a = p - start;
    if (a < 0 || a >= size) return true;  // a query outside the grid keeps nothing
    const int64_t line = b0 / line_len;
    if (!line_is_neighbour(a / tile / n[L], line)) return true;
    int64_t l, h;
    grid_dim_range(n[L], w[L], d[L], causal_dim(L), a / tile % n[L], &l, &h);
    if (d[L] != 1 && l != h) return false;  // every d-th key: not one interval
    const int64_t first = start + line * line_len + l * tile;
    const int64_t last = start + line * line_len + (h + 1) * tile - 1;
    *lo = first > j0 ? first : j0;
    *hi = last < j1 ? last : j1;
    return true;
  }

  // row_interval for the `rows` consecutive query positions from p0 at once (the CPU
  // kernels ask for a tile's rows per partial block): the same answers, walking the query's
  // coordinates forward instead of dividing per row. False when some row's keys are not one
  // interval.
  SPATTN_HD bool rows_interval(const void* data, int64_t h, int64_t p0, int rows, int64_t j0,
                               int64_t j1, int64_t* lo, int64_t* hi) const {
    const int L = ndim - 1;
    if (d[L] != 1) {  // dilated last dim: row by row (the general answer)
      for (int r = 0; r < rows; ++r)
        if (!row_interval(data, h, p0 + r, j0, j1, &lo[r], &hi[r])) return false;
      return true;
    }
    for (int r = 0; r < rows; ++r) lo[r] = 1, hi[r] = 0;
    const int64_t b0 = (j0 > start ? j0 : start) - start;
    const int64_t b1 = (j1 < start + size - 1 ? j1 : start + size - 1) - start;
    if (b0 > b1) return true;
    const int64_t line_len = n[L] * tile;
    if (b0 / line_len != b1 / line_len) return false;
    const int64_t line = b0 / line_len, line_first = start + line * line_len;
    int r = 0;
    if (p0 < start) r = int(start - p0 < rows ? start - p0 : rows);  // rows before the grid: none
    if (r >= rows) return true;
    const int64_t a0 = p0 + r - start;
    if (a0 >= size) return true;
    int64_t cell = a0 / tile, sub = a0 % tile;
    int64_t x = cell % n[L], prefix = cell / n[L];
    bool near = line_is_neighbour(prefix, line);
    const bool cl = causal_dim(L);
    const int64_t nl = n[L], wl = w[L];
    for (; r < rows && p0 + r - start < size; ++r) {
      if (near) {
        int64_t s0, s1;  // grid_dim_range with d = 1
        if (cl) {
          s0 = x - wl + 1 < 0 ? 0 : x - wl + 1;
          s1 = x;
        } else {
          s0 = x - wl / 2;
          if (s0 > nl - wl) s0 = nl - wl;
          if (s0 < 0) s0 = 0;
          s1 = s0 + wl - 1;
        }
        const int64_t first = line_first + s0 * tile, last = line_first + (s1 + 1) * tile - 1;
        lo[r] = first > j0 ? first : j0;
        hi[r] = last < j1 ? last : j1;
      }
      if (++sub == tile) {
        sub = 0;
        if (++x == nl) {
          x = 0;
          near = line_is_neighbour(++prefix, line);
        }
      }
    }
    return true;
  }
};

}  // namespace spattn::rules
