#include "pattern/kinds/neighborhood/grid_blocks.hpp"

#include <algorithm>

namespace spattn::detail {

void normalize_intervals(std::vector<KeyIv>& v, int64_t nk) {
  for (KeyIv& x : v) {
    x.lo = std::max<int64_t>(x.lo, 0);
    x.hi = std::min<int64_t>(x.hi, nk - 1);
  }
  v.erase(std::remove_if(v.begin(), v.end(), [](const KeyIv& x) { return x.lo > x.hi; }), v.end());
  std::sort(v.begin(), v.end(), [](const KeyIv& a, const KeyIv& b) { return a.lo < b.lo; });
  size_t o = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (o > 0 && v[i].lo <= v[o - 1].hi + 1)
      v[o - 1].hi = std::max(v[o - 1].hi, v[i].hi);
    else
      v[o++] = v[i];
  }
  v.resize(o);
}

std::vector<KeyIv> intersect_intervals(const std::vector<KeyIv>& a, const std::vector<KeyIv>& b) {
  std::vector<KeyIv> r;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const int64_t lo = std::max(a[i].lo, b[j].lo), hi = std::min(a[i].hi, b[j].hi);
    if (lo <= hi) r.push_back({lo, hi});
    if (a[i].hi < b[j].hi)
      ++i;
    else
      ++j;
  }
  return r;
}

void add_strided(std::vector<KeyIv>& v, int64_t lo, int64_t hi, int64_t step, int64_t bk) {
  if (step <= bk) {
    v.push_back({lo, hi});
    return;
  }
  for (int64_t j = lo; j <= hi; j += step) v.push_back({j, j});
}

namespace {

// Calls f(line) for every key line (index over the prefix dims 0 .. ndim - 2, row-major)
// whose prefix coordinates are neighbours of x's in every prefix dim.
template <class F>
void for_prefix_neighbours(const rules::neighborhood& g, const int64_t* x, F&& f) {
  const int P = g.ndim - 1;  // 0, 1 or 2 prefix dims
  int64_t lo[2] = {0, 0}, hi[2] = {0, 0}, step[2] = {1, 1};
  for (int t = 0; t < P && t < 2; ++t) {
    rules::grid_dim_range(g.n[t], g.w[t], g.d[t], g.causal_dim(t), x[t], &lo[t], &hi[t]);
    step[t] = g.d[t];
  }
  const int64_t n1 = P == 2 ? g.n[1] : 1;
  for (int64_t y0 = lo[0]; y0 <= hi[0]; y0 += step[0])
    for (int64_t y1 = lo[1]; y1 <= hi[1]; y1 += step[1]) f(P == 2 ? y0 * n1 + y1 : y0);
}

}  // namespace

void grid_tile_keys(const rules::neighborhood& g, int64_t p0, int64_t p1, int64_t nk, int64_t bk,
                    std::vector<KeyIv>& K, std::vector<KeyIv>& F) {
  K.clear();
  F.clear();
  const int64_t a0 = std::max<int64_t>(p0 - g.start, 0), a1 = std::min(p1 - g.start, g.size - 1);
  if (a0 > a1) return;
  const bool all_rows_in = p0 - g.start >= 0 && p1 - g.start <= g.size - 1;
  const int L = g.ndim - 1;
  const int64_t nl = g.n[L], wl = g.w[L], dl = g.d[L], T = g.tile;
  const bool cl = g.causal_dim(L);
  const int64_t c0 = a0 / T, c1 = a1 / T;  // cells of the tile's rows
  bool first_run = true;
  std::vector<KeyIv> runF;
  // Last-dim neighbours of the run's cells, as cell intervals relative to the run's key line:
  // (lo, hi, step) for the union (one per residue when dilated) and for the common part.
  struct Piece {
    int64_t lo, hi, step;
  };
  std::vector<Piece> kp, fp;
  for (int64_t c = c0; c <= c1;) {
    const int64_t prefix = c / nl, ya = c % nl;
    const int64_t yb = std::min(c1 - prefix * nl, nl - 1);
    c = prefix * nl + yb + 1;
    kp.clear();
    fp.clear();
    int64_t lo, hi, lo2, hi2;
    if (dl == 1) {
      rules::grid_dim_range(nl, wl, 1, cl, ya, &lo, &hi);
      rules::grid_dim_range(nl, wl, 1, cl, yb, &lo2, &hi2);
      kp.push_back({lo, hi2, 1});
      if (lo2 <= hi) fp.push_back({lo2, hi, 1});  // windows only move forward with the row
    } else {
      // Rows of one residue see keys of that residue only; their windows' union is one run
      // of that residue (windows move forward by at most one group position per row).
      for (int64_t y = ya; y <= std::min(yb, ya + dl - 1); ++y) {
        const int64_t ylast = y + (yb - y) / dl * dl;
        rules::grid_dim_range(nl, wl, dl, cl, y, &lo, &hi);
        rules::grid_dim_range(nl, wl, dl, cl, ylast, &lo2, &hi2);
        kp.push_back({lo, hi2, dl});
      }
      if (ya == yb) fp.push_back(kp[0]);  // one row: its keys, exactly
    }
    int64_t x[3];
    int64_t rest = prefix;
    for (int t = L - 1; t >= 0; --t) {
      x[t] = rest % g.n[t];
      rest /= g.n[t];
    }
    runF.clear();
    for_prefix_neighbours(g, x, [&](int64_t base) {
      const int64_t line = g.start + base * nl * T;  // first token of the key line
      for (const Piece& k : kp) {
        if (T == 1)
          add_strided(K, line + k.lo, line + k.hi, k.step, bk);
        else  // SlidingTile: undilated, whole cells
          K.push_back({line + k.lo * T, line + (k.hi + 1) * T - 1});
      }
      if (!all_rows_in) return;
      for (const Piece& f : fp) {
        if (T == 1)
          add_strided(runF, line + f.lo, line + f.hi, f.step, 1);
        else
          runF.push_back({line + f.lo * T, line + (f.hi + 1) * T - 1});
      }
    });
    normalize_intervals(runF, nk);
    if (first_run)
      F = runF;
    else
      F = intersect_intervals(F, runF);
    first_run = false;
  }
  normalize_intervals(K, nk);
}

int64_t grid_row_count(const rules::neighborhood& g, int64_t p, int64_t nk) {
  const int64_t a = p - g.start;
  if (a < 0 || a >= g.size || g.start + g.size > nk) return 0;
  int64_t c = a / g.tile, count = g.tile;
  for (int t = g.ndim - 1; t >= 0; --t) {
    const int64_t x = c % g.n[t];
    c /= g.n[t];
    count *= g.causal_dim(t) ? std::min<int64_t>(x / g.d[t] + 1, g.w[t]) : g.w[t];
  }
  return count;
}

}  // namespace spattn::detail
