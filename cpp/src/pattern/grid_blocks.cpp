#include "pattern/grid_blocks.hpp"

#include <algorithm>
#include <numeric>

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

namespace {

// The keys lo, lo + step, ..., hi (lo and hi are kept keys) into v, as one interval when every
// bk-key block meeting it holds one of them (step <= bk), else key by key.
void add_strided(std::vector<KeyIv>& v, int64_t lo, int64_t hi, int64_t step, int64_t bk) {
  if (step <= bk) {
    v.push_back({lo, hi});
    return;
  }
  for (int64_t j = lo; j <= hi; j += step) v.push_back({j, j});
}

// Calls f(line) for every key line (index over the prefix dims 0 .. ndim - 2, row-major)
// whose prefix coordinates are neighbours of x's in every prefix dim.
template <class F>
void for_prefix_neighbours(const GridRule& g, const int64_t* x, F&& f) {
  const int P = g.ndim - 1;  // 0, 1 or 2 prefix dims
  int64_t lo[2] = {0, 0}, hi[2] = {0, 0}, step[2] = {1, 1};
  for (int t = 0; t < P && t < 2; ++t) {
    grid_dim_range(g.n[t], g.w[t], g.d[t], g.causal_dim(t), x[t], &lo[t], &hi[t]);
    step[t] = g.d[t];
  }
  const int64_t n1 = P == 2 ? g.n[1] : 1;
  for (int64_t y0 = lo[0]; y0 <= hi[0]; y0 += step[0])
    for (int64_t y1 = lo[1]; y1 <= hi[1]; y1 += step[1]) f(P == 2 ? y0 * n1 + y1 : y0);
}

}  // namespace

void grid_tile_keys(const GridRule& g, int64_t p0, int64_t p1, int64_t nk, int64_t bk,
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
      grid_dim_range(nl, wl, 1, cl, ya, &lo, &hi);
      grid_dim_range(nl, wl, 1, cl, yb, &lo2, &hi2);
      kp.push_back({lo, hi2, 1});
      if (lo2 <= hi) fp.push_back({lo2, hi, 1});  // windows only move forward with the row
    } else {
      // Rows of one residue see keys of that residue only; their windows' union is one run
      // of that residue (windows move forward by at most one group position per row).
      for (int64_t y = ya; y <= std::min(yb, ya + dl - 1); ++y) {
        const int64_t ylast = y + (yb - y) / dl * dl;
        grid_dim_range(nl, wl, dl, cl, y, &lo, &hi);
        grid_dim_range(nl, wl, dl, cl, ylast, &lo2, &hi2);
        kp.push_back({lo, hi2, dl});
      }
      if (ya == yb) fp.push_back(kp[0]);  // one row: its keys, exactly
    }
    int64_t x[kMaxGridDims];
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

void longnet_tile_keys(const LongNetRule& l, const int64_t* wr, int64_t h, int64_t p0, int64_t p1, int64_t nk,
                       int64_t bk, std::vector<KeyIv>& K, std::vector<KeyIv>& F) {
  K.clear();
  F.clear();
  p0 = std::max<int64_t>(p0, 0);
  if (p0 > p1) return;
  for (int k = 0; k < l.count; ++k) {
    const int64_t w = wr[2 * k], r = wr[2 * k + 1], hr = h % r;
    // the first and last rows of the tile in the head's residue class
    const int64_t f = p0 + ((hr - p0 % r) % r + r) % r;
    if (f > p1) continue;
    const int64_t e = p1 - ((p1 % r - hr) % r + r) % r;
    const int64_t last_key = (nk - 1) - (((nk - 1) % r - hr) % r + r) % r;  // of the class
    for (int64_t s = f / w; s <= e / w; ++s) {
      // keys of the class in the segment (causal: up to its last row in the tile); w % r == 0,
      // so the segment starts at a multiple of r
      const int64_t first = s * w + hr;
      const int64_t last = std::min(l.causal ? std::min(e, s * w + w - r + hr) : s * w + w - r + hr,
                                    last_key);
      if (first <= last) add_strided(K, first, last, r, bk);
    }
    if (p0 == p1) {
      // one row: its keys, exactly
      const int64_t s = p0 / w;
      const int64_t last = std::min(l.causal ? p0 : s * w + w - r + hr, last_key);
      if (p0 % r == hr && s * w + hr <= last) add_strided(F, s * w + hr, last, r, 1);
    } else if (r == 1 && p0 / w == p1 / w) {
      // every row keeps the whole segment (causal: up to the first row)
      F.push_back({p0 / w * w, l.causal ? p0 : p0 / w * w + w - 1});
    }
  }
  normalize_intervals(K, nk);
  normalize_intervals(F, nk);
}

int64_t longnet_row_count(const LongNetRule& l, const int64_t* wr, int64_t h, int64_t p,
                          int64_t nk) {
  if (p < 0 || p >= nk) return 0;
  // Inclusion-exclusion over the segments whose residue the row is in: the keys of a set of
  // them are those in every segment (an interval) with j = h modulo every dilation (one
  // residue modulo their lcm, which the row itself satisfies).
  int64_t idx[64], m = 0;
  for (int k = 0; k < l.count; ++k)
    if (p % wr[2 * k + 1] == h % wr[2 * k + 1]) idx[m++] = k;
  int64_t total = 0;
  for (int64_t set = 1; set < (int64_t(1) << m); ++set) {
    int64_t lo = 0, hi = l.causal ? p : nk - 1, L = 1, bits = 0;
    for (int64_t t = 0; t < m; ++t)
      if (set >> t & 1) {
        const int64_t w = wr[2 * idx[t]], r = wr[2 * idx[t] + 1];
        lo = std::max(lo, p / w * w);
        hi = std::min(hi, p / w * w + w - 1);
        L = std::lcm(L, r);
        ++bits;
      }
    // keys j in [lo, hi] with j = p (mod L)
    int64_t c = 0;
    if (hi >= lo) {
      // first j >= lo with j = p mod L, last j <= hi
      const int64_t first = lo + ((p - lo) % L + L) % L;
      const int64_t last = hi - ((hi - p) % L + L) % L;
      c = first > last ? 0 : (last - first) / L + 1;
    }
    total += (bits % 2 == 1) ? c : -c;
  }
  return total;
}

int64_t grid_row_count(const GridRule& g, int64_t p, int64_t nk) {
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
