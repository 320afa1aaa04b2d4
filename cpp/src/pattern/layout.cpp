// Compiling a pattern into a block layout, and counting the pairs it keeps.
//
// The layout is built row by row (one row = one query tile of one head), as sorted,
// non-overlapping ranges [lo, hi) of key blocks, each full, partial or (inside a merge)
// ambiguous. Each leaf lists its ranges in closed form, in time proportional to the ranges:
//  - windows: kept keys form one interval K (any row) containing the interval F of keys kept
//    by every row, so a row is one partial + one full + one partial range;
//  - Dilated / Strided (rel % d == 0): a block's rel values form one interval
//    [p0 - k1, p1 - k0]; when d is at most that length every unclipped block keeps some rel
//    (and none is full), so the middle is one partial range and only the clipped edge blocks
//    are enumerated; otherwise kept blocks come in runs with gaps, listed exactly (skipping
//    gaps) while the row's range budget lasts, else as one partial range over the span;
//  - Fixed: per chunk one interval (own chunk or its summary columns), exact while the budget
//    lasts; Global: runs of consecutive positions (cached, row independent), or the whole row
//    for global queries; Sink: one range; BlockSparse: runs over a 2-D prefix count; BigBird:
//    its generated rows mapped onto the tile grid, as runs.
// Unions and intersections sweep-merge their children's ranges, counting per piece how many
// children cover it and how many of those are not full. A piece whose class the merge cannot
// decide (two partial parts of a union may cover it, an intersection of partial parts may be
// empty) is marked ambiguous and settled at the end by element checks, block by block, so the
// cost is proportional to such blocks times bq * bk. NOTE: combinations whose children are
// partial over huge areas (e.g. Strided(128) | Fixed(128, 8), or Strided(s) & anything at 1M
// tokens) need element checks over all those blocks, as they did before the range layout.
#include <algorithm>
#include <atomic>
#include <map>
#include <sstream>

#include "pattern/grid_blocks.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"

namespace spattn {

namespace detail {
namespace {
std::atomic<int64_t> g_budget{int64_t(1) << 21}, g_min_per_row{64};
}
void set_layout_budget(int64_t budget, int64_t min_per_row) {
  g_budget = std::max<int64_t>(0, budget);
  g_min_per_row = std::max<int64_t>(1, min_per_row);
}
}  // namespace detail

namespace {

using detail::floor_div;

// (a + b - 1) / b for b >= 1, without forming a + b when a > 0 (b may be as large as int64
// allows).
int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? 1 + (a - 1) / b : (a + b - 1) / b; }

enum : uint8_t { kPartial = 0, kFull = 1, kAmbiguous = 2 };

struct Seg {
  int32_t lo, hi;  // key blocks [lo, hi)
  uint8_t cls;
};
using Row = std::vector<Seg>;

// Appends [lo, hi) (ascending, after every range already in `out`), merging with an adjacent
// range of the same class.
inline void put(Row& out, int64_t lo, int64_t hi, uint8_t cls) {
  if (lo >= hi) return;
  if (!out.empty() && out.back().hi == lo && out.back().cls == cls) {
    out.back().hi = int32_t(hi);
    return;
  }
  out.push_back({int32_t(lo), int32_t(hi), cls});
}

struct Iv {
  int64_t lo, hi;  // keys, inclusive
};

// Appends [lo, hi] to an ascending interval list, merging touching intervals.
inline void add_iv(std::vector<Iv>& v, int64_t lo, int64_t hi) {
  if (lo > hi) return;
  if (!v.empty() && lo <= v.back().hi + 1) {
    v.back().hi = std::max(v.back().hi, hi);
    return;
  }
  v.push_back({lo, hi});
}

struct Ctx {
  const CompiledPattern* cp;
  int64_t nq, nk, bq, bk, off, nkb;
  int64_t cap;  // ranges a periodic leaf may spend on one row
  // current row
  int64_t r0, r1, p0, p1;
  // BlockSparse prefix counts per (node, head)
  std::map<std::pair<const PatternNode*, int64_t>, std::vector<int64_t>> prefix;
  // Global: the column ranges (row independent)
  std::map<const PatternNode*, Row> global_cols;

  int64_t k0(int64_t c) const { return c * bk; }
  int64_t k1(int64_t c) const { return std::min(nk, (c + 1) * bk) - 1; }
};

// Ranges of a row whose kept keys (for some row of the tile) are the sorted, merged intervals
// K, and whose keys kept by every row of the tile are F (F inside K): a block is kept when it
// meets K, full when it lies inside one interval of F.
void intervals_row(const Ctx& x, const std::vector<Iv>& K, const std::vector<Iv>& F, Row& out) {
  size_t f = 0;
  int64_t fc0 = 0, fc1 = 0;
  auto next_full = [&]() {
    while (f < F.size()) {
      const Iv& v = F[f++];
      const int64_t c0 = ceil_div(v.lo, x.bk);
      const int64_t c1 = v.hi >= x.nk - 1 ? x.nkb : (v.hi + 1) / x.bk;
      if (c0 < c1) {
        fc0 = c0;
        fc1 = c1;
        return true;
      }
    }
    return false;
  };
  bool have = next_full();
  auto flush = [&](int64_t a, int64_t b) {
    int64_t pos = a;
    while (have && fc0 < b) {
      put(out, pos, fc0, kPartial);
      put(out, fc0, fc1, kFull);
      pos = fc1;
      have = next_full();
    }
    put(out, pos, b, kPartial);
  };
  int64_t a = -1, b = -1;
  for (const Iv& v : K) {
    const int64_t c0 = v.lo / x.bk, c1 = v.hi / x.bk + 1;
    if (a < 0) {
      a = c0;
      b = c1;
    } else if (c0 <= b) {
      b = std::max(b, c1);
    } else {
      flush(a, b);
      a = c0;
      b = c1;
    }
  }
  if (a >= 0) flush(a, b);
}

// ---- rel-interval leaves: kept rels are the multiples of d in [-B, A] ---------------------

// Exact, block by block (skipping blocks without a kept rel), for blocks [cfrom, cto].
void rel_exact(const Ctx& x, int64_t A, int64_t B, int64_t d, int64_t hi, int64_t cfrom,
               int64_t cto, Row& out) {
  int64_t c = cfrom;
  while (c <= cto) {
    const int64_t rlo = x.p0 - x.k1(c), rhi = x.p1 - x.k0(c);
    const int64_t a = std::max(rlo, -B), b = std::min(rhi, A);
    // largest multiple of d <= b
    const int64_t m = floor_div(b, d) * d;
    if (a <= b && m >= a) {
      const bool full = rlo >= -B && rhi <= A && (d == 1 || rlo == rhi);
      put(out, c, c + 1, full ? kFull : kPartial);
      ++c;
      continue;
    }
    // No kept rel here: the next one below rlo.
    const int64_t m2 = floor_div(rlo - 1, d) * d;
    if (m2 < -B) return;
    const int64_t j = x.p0 - m2;
    if (j > hi) return;
    c = std::max(c + 1, j / x.bk);
  }
}

void rel_row(const Ctx& x, int64_t A, int64_t B, int64_t d, Row& out) {
  const int64_t lo = std::max<int64_t>(0, x.p0 - A);
  const int64_t hi = std::min<int64_t>(x.nk - 1, x.p1 + B);
  if (lo > hi) return;
  if (d == 1) {
    std::vector<Iv> K{{lo, hi}}, F;
    add_iv(F, std::max<int64_t>(0, x.p1 - A), std::min<int64_t>(x.nk - 1, x.p0 + B));
    intervals_row(x, K, F, out);
    return;
  }
  const int64_t clo = lo / x.bk, chi = hi / x.bk;
  if (chi - clo + 1 <= x.cap) {
    rel_exact(x, A, B, d, hi, clo, chi, out);
    return;
  }
  const int64_t interior = (x.p1 - x.p0) + x.bk;  // rels of an unclipped full-size block
  if (d <= interior) {
    // Unclipped full-size blocks: rel interval inside [-B, A], length interior >= d >= 2, so
    // each keeps some rel and is not full.
    int64_t m0 = x.p1 - A <= 0 ? 0 : ceil_div(x.p1 - A, x.bk);
    int64_t m1 = floor_div(x.p0 + B + 1, x.bk) - 1;
    m0 = std::max(m0, clo);
    m1 = std::min(m1, chi);
    if (x.nk % x.bk != 0) m1 = std::min(m1, x.nkb - 2);
    if (m0 > m1) {
      rel_exact(x, A, B, d, hi, clo, chi, out);
      return;
    }
    rel_exact(x, A, B, d, hi, clo, m0 - 1, out);
    put(out, m0, m1 + 1, kPartial);
    rel_exact(x, A, B, d, hi, m1 + 1, chi, out);
    return;
  }
  // Runs with gaps: exact while the budget lasts, else one partial range over the span (may
  // include blocks that keep nothing; the kernels mask them out).
  if ((hi - lo) / d + 1 <= x.cap)
    rel_exact(x, A, B, d, hi, clo, chi, out);
  else
    put(out, clo, chi + 1, kPartial);
}

// ---- Fixed ---------------------------------------------------------------------------------

void fixed_row(const Ctx& x, int64_t Bc, int64_t S, bool causal, Row& out) {
  const int64_t lim = causal ? std::min(x.p1, x.nk - 1) : x.nk - 1;
  if (lim < 0) return;
  // keys kept by every row of the tile: j <= p0 when causal
  const int64_t flim = causal ? std::min(x.p0, x.nk - 1) : x.nk - 1;
  const int64_t t0 = floor_div(x.p0, Bc), t1 = floor_div(x.p1, Bc);
  const int64_t own_lo = std::max<int64_t>(0, t0 * Bc);
  const int64_t own_hi = std::min(lim, t1 * Bc + Bc - 1);
  std::vector<Iv> K, F;
  if (S == Bc) {  // every column is a summary column
    add_iv(K, 0, lim);
    add_iv(F, 0, flim);
    intervals_row(x, K, F, out);
    return;
  }
  const int64_t nchunks = lim / Bc + 1;
  if (nchunks > x.cap) {
    // Over budget: one kept span; full only inside the own chunk (blocks made only of summary
    // columns are listed as partial, and with gaps, empty blocks too).
    add_iv(K, 0, lim);
    if (t0 == t1) add_iv(F, own_lo, std::min(own_hi, flim));
    intervals_row(x, K, F, out);
    return;
  }
  for (int64_t t = 0; t < nchunks; ++t) {
    const int64_t s0 = t * Bc, s1 = s0 + Bc - 1;
    const int64_t o0 = std::max(s0, own_lo), o1 = std::min(s1, own_hi);
    if (o0 <= o1)
      add_iv(K, o0, o1);  // the own chunk (holds its summary columns)
    else
      add_iv(K, s0 + Bc - S, std::min(s1, lim));
    if (t0 == t1 && t == t0)
      add_iv(F, std::max<int64_t>(s0, 0), std::min(s1, flim));
    else
      add_iv(F, s0 + Bc - S, std::min(s1, flim));
  }
  intervals_row(x, K, F, out);
}

// ---- Global --------------------------------------------------------------------------------

int64_t count_in(const std::vector<int64_t>& v, int64_t lo, int64_t hi) {
  if (hi < lo) return 0;
  return int64_t(std::upper_bound(v.begin(), v.end(), hi) - std::lower_bound(v.begin(), v.end(), lo));
}

void global_row(Ctx& x, const PatternNode& n, Row& out) {
  const std::vector<int64_t>& P = n.positions;
  auto it = x.global_cols.find(&n);
  if (it == x.global_cols.end()) {
    std::vector<Iv> runs;
    for (int64_t q : P)
      if (q < x.nk) add_iv(runs, q, q);
    Row cols;
    intervals_row(x, runs, runs, cols);
    it = x.global_cols.emplace(&n, std::move(cols)).first;
  }
  const int64_t rows_in = count_in(P, x.p0, x.p1);
  if (rows_in == 0) {
    for (const Seg& s : it->second) put(out, s.lo, s.hi, s.cls);
    return;
  }
  if (rows_in == x.p1 - x.p0 + 1) {
    put(out, 0, x.nkb, kFull);
    return;
  }
  // Some rows are global: every block is kept, full where the columns are all positions.
  int64_t pos = 0;
  for (const Seg& s : it->second)
    if (s.cls == kFull) {
      put(out, pos, s.lo, kPartial);
      put(out, s.lo, s.hi, kFull);
      pos = s.hi;
    }
  put(out, pos, x.nkb, kPartial);
}

// ---- BlockSparse ---------------------------------------------------------------------------

const std::vector<int64_t>& bs_prefix(Ctx& x, const PatternNode& n, int64_t h) {
  const BlockMask& m = *n.mask;
  const int64_t hh = m.heads == 1 ? 0 : h;
  auto key = std::make_pair(&n, hh);
  auto it = x.prefix.find(key);
  if (it != x.prefix.end()) return it->second;
  const int64_t pw = m.nbk + 1;
  std::vector<int64_t> prefix(size_t((m.nbq + 1) * pw), 0);
  const uint8_t* bits = m.bits.data() + hh * m.nbq * m.nbk;
  for (int64_t u = 0; u < m.nbq; ++u)
    for (int64_t w = 0; w < m.nbk; ++w)
      prefix[size_t((u + 1) * pw + w + 1)] = bits[u * m.nbk + w] + prefix[size_t(u * pw + w + 1)] +
                                             prefix[size_t((u + 1) * pw + w)] -
                                             prefix[size_t(u * pw + w)];
  return x.prefix.emplace(key, std::move(prefix)).first->second;
}

void block_sparse_row(Ctx& x, const PatternNode& n, int64_t h, Row& out) {
  const BlockMask& m = *n.mask;
  const std::vector<int64_t>& prefix = bs_prefix(x, n, h);
  const int64_t pw = m.nbk + 1;
  auto count = [&](int64_t u0, int64_t u1, int64_t w0, int64_t w1) {  // inclusive ranges
    return prefix[size_t((u1 + 1) * pw + w1 + 1)] - prefix[size_t(u0 * pw + w1 + 1)] -
           prefix[size_t((u1 + 1) * pw + w0)] + prefix[size_t(u0 * pw + w0)];
  };
  const int64_t u0 = x.r0 / m.bq, u1 = x.r1 / m.bq;
  for (int64_t c = 0; c < x.nkb; ++c) {
    const int64_t w0 = x.k0(c) / m.bk, w1 = x.k1(c) / m.bk;
    const int64_t kept = count(u0, u1, w0, w1);
    if (kept == (u1 - u0 + 1) * (w1 - w0 + 1))
      put(out, c, c + 1, kFull);
    else if (kept > 0)
      put(out, c, c + 1, kPartial);
  }
}

// ---- BigBird -------------------------------------------------------------------------------

void bigbird_row(const Ctx& x, const CompiledPattern::BigBirdData& g, Row& out) {
  const int64_t B = g.block;
  const int64_t u0 = x.r0 / B, u1 = x.r1 / B;
  std::vector<std::pair<int64_t, int64_t>> iv, merged;
  std::vector<std::pair<int64_t, int64_t>> acc;  // (kernel block, kept BigBird cells)
  for (int64_t u = u0; u <= u1; ++u) {
    iv.clear();
    if (u < g.globals) {
      iv.push_back({0, g.nbk - 1});
    } else {
      if (g.globals > 0) iv.push_back({0, std::min(g.globals, g.nbk) - 1});
      const int64_t dg = u + g.doff;
      const int64_t a = std::max<int64_t>(0, dg - g.wlo), b = std::min(g.nbk - 1, dg + g.whi);
      if (a <= b) iv.push_back({a, b});
      for (int64_t t = 0; t < g.randoms; ++t) {
        const int32_t w = g.rnd[size_t(u * g.randoms + t)];
        if (w >= 0) iv.push_back({w, w});
      }
      std::sort(iv.begin(), iv.end());
    }
    merged.clear();
    for (auto& s : iv) {
      if (s.first > s.second) continue;
      if (!merged.empty() && s.first <= merged.back().second + 1)
        merged.back().second = std::max(merged.back().second, s.second);
      else
        merged.push_back(s);
    }
    for (auto& s : merged) {
      const int64_t key_lo = s.first * B, key_hi = std::min(x.nk, (s.second + 1) * B) - 1;
      for (int64_t c = key_lo / x.bk; c <= key_hi / x.bk; ++c) {
        const int64_t w0 = x.k0(c) / B, w1 = x.k1(c) / B;
        const int64_t n = std::min(w1, s.second) - std::max(w0, s.first) + 1;
        if (n > 0) acc.push_back({c, n});
      }
    }
  }
  std::sort(acc.begin(), acc.end());
  for (size_t t = 0; t < acc.size();) {
    const int64_t c = acc[t].first;
    int64_t n = 0;
    while (t < acc.size() && acc[t].first == c) n += acc[t++].second;
    const int64_t w0 = x.k0(c) / B, w1 = x.k1(c) / B;
    put(out, c, c + 1, n == (u1 - u0 + 1) * (w1 - w0 + 1) ? kFull : kPartial);
  }
}

// ---- the tree ------------------------------------------------------------------------------

void node_row(Ctx& x, const PatternNode& n, int64_t h, Row& out);

// Pieces of a merge: how many parts cover [lo, hi), how many of those are not full, and
// whether one of them is ambiguous.
struct Acc {
  int32_t lo, hi;
  int32_t seen, nonfull;
  bool amb;
};

inline void put_acc(std::vector<Acc>& out, int64_t lo, int64_t hi, int32_t seen, int32_t nonfull,
                    bool amb) {
  if (lo >= hi) return;
  if (!out.empty()) {
    Acc& b = out.back();
    if (b.hi == lo && b.seen == seen && b.nonfull == nonfull && b.amb == amb) {
      b.hi = int32_t(hi);
      return;
    }
  }
  out.push_back({int32_t(lo), int32_t(hi), seen, nonfull, amb});
}

// Sweep-merges the ranges of `r` into `cur` (both ascending, non-overlapping).
void merge_into(const std::vector<Acc>& cur, const Row& r, std::vector<Acc>& nxt) {
  nxt.clear();
  constexpr int64_t kEnd = INT64_MAX;
  size_t i = 0, j = 0;
  int64_t ca = cur.empty() ? kEnd : cur[0].lo;  // start of what is left of cur[i]
  int64_t cb = r.empty() ? kEnd : r[0].lo;      // start of what is left of r[j]
  while (ca != kEnd || cb != kEnd) {
    if (ca < cb) {
      const int64_t e = std::min<int64_t>(cur[i].hi, cb);
      put_acc(nxt, ca, e, cur[i].seen, cur[i].nonfull, cur[i].amb);
      ca = e;
      if (ca == cur[i].hi) ca = ++i < cur.size() ? cur[i].lo : kEnd;
    } else if (cb < ca) {
      const int64_t e = std::min<int64_t>(r[j].hi, ca);
      put_acc(nxt, cb, e, 1, r[j].cls != kFull, r[j].cls == kAmbiguous);
      cb = e;
      if (cb == r[j].hi) cb = ++j < r.size() ? r[j].lo : kEnd;
    } else {
      const int64_t e = std::min<int64_t>(cur[i].hi, r[j].hi);
      put_acc(nxt, ca, e, cur[i].seen + 1, cur[i].nonfull + (r[j].cls != kFull),
              cur[i].amb || r[j].cls == kAmbiguous);
      ca = cb = e;
      if (ca == cur[i].hi) ca = ++i < cur.size() ? cur[i].lo : kEnd;
      if (cb == r[j].hi) cb = ++j < r.size() ? r[j].lo : kEnd;
    }
  }
}

void merge_rows(const std::vector<Row>& parts, bool is_union, Row& out) {
  std::vector<Acc> cur, nxt;
  for (const Row& r : parts) {
    merge_into(cur, r, nxt);
    cur.swap(nxt);
  }
  const int32_t np = int32_t(parts.size());
  for (const Acc& e : cur) {
    uint8_t cls;
    if (is_union) {
      if (e.seen > e.nonfull)
        cls = kFull;
      else if (e.nonfull == 1 && !e.amb)
        cls = kPartial;
      else
        cls = kAmbiguous;
    } else {
      if (e.seen < np) continue;
      if (e.nonfull == 0)
        cls = kFull;
      else if (e.nonfull == 1 && !e.amb)
        cls = kPartial;
      else
        cls = kAmbiguous;
    }
    put(out, e.lo, e.hi, cls);
  }
}

void node_row(Ctx& x, const PatternNode& n, int64_t h, Row& out) {
  switch (n.kind) {
    case Pattern::Kind::Window:
      rel_row(x, n.a, n.b, 1, out);
      break;
    case Pattern::Kind::Dilated: {
      const int64_t A = n.a >= kUnbounded / n.c ? kUnbounded : n.a * n.c;
      const int64_t B = n.b >= kUnbounded / n.c ? kUnbounded : n.b * n.c;
      rel_row(x, A, B, n.c, out);
      break;
    }
    case Pattern::Kind::Strided:
      rel_row(x, kUnbounded, n.b ? 0 : kUnbounded, n.a, out);
      break;
    case Pattern::Kind::Fixed:
      fixed_row(x, n.a, n.b, n.c != 0, out);
      break;
    case Pattern::Kind::Global:
      global_row(x, n, out);
      break;
    case Pattern::Kind::Sink: {
      const int64_t lim = std::min(n.a, x.nk) - 1;
      if (lim < 0) break;
      std::vector<Iv> K{{0, lim}};
      intervals_row(x, K, K, out);
      break;
    }
    case Pattern::Kind::BlockSparse:
      block_sparse_row(x, n, h, out);
      break;
    case Pattern::Kind::BigBird:
      bigbird_row(x, *x.cp->bigbird(&n), out);
      break;
    case Pattern::Kind::Neighborhood:
    case Pattern::Kind::SlidingTile:
    case Pattern::Kind::LongNet: {
      std::vector<detail::KeyIv> K, F;
      if (n.kind == Pattern::Kind::LongNet)
        detail::longnet_tile_keys(n.longnet, n.positions.data(), h, x.p0, x.p1, x.nk, x.bk, K, F);
      else
        detail::grid_tile_keys(n.grid, x.p0, x.p1, x.nk, x.bk, K, F);
      std::vector<Iv> k, f;
      for (const detail::KeyIv& v : K) k.push_back({v.lo, v.hi});
      for (const detail::KeyIv& v : F) f.push_back({v.lo, v.hi});
      intervals_row(x, k, f, out);
      break;
    }
    case Pattern::Kind::PerHead:
      node_row(x, n.children[size_t(h)].node(), h, out);
      break;
    case Pattern::Kind::TopKBlocks:  // compile() refuses it, so no layout is ever asked for
      throw ValueError("pattern: TopKBlocks has no block layout of its own; select(q, k) first");
    case Pattern::Kind::Union:
    case Pattern::Kind::Intersection: {
      if (n.children.size() == 1) {
        node_row(x, n.children[0].node(), h, out);
        break;
      }
      std::vector<Row> parts(n.children.size());
      for (size_t c = 0; c < n.children.size(); ++c) node_row(x, n.children[c].node(), h, parts[c]);
      merge_rows(parts, n.kind == Pattern::Kind::Union, out);
      break;
    }
  }
}

// Settles an ambiguous block by evaluating the predicate (stops once both kinds are seen).
uint8_t settle(const Predicate& pred, int64_t h, int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
  bool any = false, none_missing = true;
  for (int64_t i = r0; i <= r1; ++i)
    for (int64_t j = k0; j <= k1; ++j) {
      if (keeps(pred, h, i, j))
        any = true;
      else
        none_missing = false;
      if (any && !none_missing) return kPartial;
    }
  return any ? kFull : kAmbiguous;  // kAmbiguous here: nothing kept, drop
}

void check_problem(int64_t nq, int64_t nk, int64_t bq, int64_t bk, int64_t heads) {
  if (nq < 0 || nk < 0 || bq <= 0 || bk <= 0 || heads <= 0) {
    std::ostringstream s;
    s << "block_layout: expected Nq >= 0, Nk >= 0, positive block sizes and heads >= 1, got Nq="
      << nq << ", Nk=" << nk << ", block=(" << bq << ", " << bk << "), heads=" << heads;
    throw ValueError(s.str());
  }
  if (ceil_div(nk, bk) > INT32_MAX) throw ValueError("block_layout: too many key blocks");
}

// Kept keys of query row i under a leaf, in closed form; -1 when the leaf has none.
double row_count_leaf(const CompiledPattern& cp, const PatternNode& n, int64_t i) {
  const int64_t nk = cp.nk(), p = i + nk - cp.nq();
  auto rel_count = [&](int64_t A, int64_t B, int64_t d) -> double {
    // j in [0, nk-1], rel = p - j in [-B, A], rel % d == 0
    const int64_t rlo = std::max(-B, p - (nk - 1)), rhi = std::min(A, p);
    if (rlo > rhi) return 0;
    return double(floor_div(rhi, d) - floor_div(rlo - 1, d));
  };
  switch (n.kind) {
    case Pattern::Kind::Window:
      return rel_count(n.a, n.b, 1);
    case Pattern::Kind::Dilated:
      return rel_count(n.a >= kUnbounded / n.c ? kUnbounded : n.a * n.c,
                       n.b >= kUnbounded / n.c ? kUnbounded : n.b * n.c, n.c);
    case Pattern::Kind::Strided:
      return rel_count(kUnbounded, n.b ? 0 : kUnbounded, n.a);
    case Pattern::Kind::Sink:
      return double(std::min(n.a, nk));
    case Pattern::Kind::Global:
      if (count_in(n.positions, p, p)) return double(nk);
      return double(n.positions.size());
    case Pattern::Kind::Fixed: {
      const int64_t B = n.a, S = n.b;
      const int64_t lim = n.c ? std::min(p, nk - 1) : nk - 1;
      if (lim < 0) return 0;
      // summary columns in [0, lim]
      auto summ = [&](int64_t hi) -> int64_t {  // summary columns in [0, hi]
        if (hi < 0) return 0;
        const int64_t full = (hi + 1) / B, rem = (hi + 1) % B;
        return full * S + std::max<int64_t>(0, rem - (B - S));
      };
      int64_t total = summ(lim);
      // own chunk's non-summary columns in [0, lim]
      const int64_t t = floor_div(p, B);
      const int64_t lo = std::max<int64_t>(0, t * B), hi = std::min(lim, t * B + B - S - 1);
      if (lo <= hi) total += hi - lo + 1;
      return double(total);
    }
    case Pattern::Kind::Neighborhood:
    case Pattern::Kind::SlidingTile:
      return double(detail::grid_row_count(n.grid, p, nk));
    default:
      return -1;
  }
}

}  // namespace

BlockLayout CompiledPattern::layout(int64_t bq, int64_t bk) const {
  check_problem(nq_, nk_, bq, bk, hq_);
  BlockLayout L;
  L.heads = heads_;
  L.nq = nq_;
  L.nk = nk_;
  L.bq = bq;
  L.bk = bk;
  L.nqb = ceil_div(nq_, bq);
  L.nkb = ceil_div(nk_, bk);
  L.full_ptr.assign(size_t(L.rows() + 1), 0);
  L.part_ptr.assign(size_t(L.rows() + 1), 0);
  Ctx x;
  x.cp = this;
  x.nq = nq_;
  x.nk = nk_;
  x.bq = bq;
  x.bk = bk;
  x.off = nk_ - nq_;
  x.nkb = L.nkb;
  x.cap = std::max<int64_t>(detail::g_min_per_row, detail::g_budget / std::max<int64_t>(1, L.rows()));
  const Predicate pred = predicate();
  Row row;
  for (int64_t h = 0; h < heads_; ++h)
    for (int64_t a = 0; a < L.nqb; ++a) {
      x.r0 = a * bq;
      x.r1 = std::min(nq_, x.r0 + bq) - 1;
      x.p0 = x.r0 + x.off;
      x.p1 = x.r1 + x.off;
      row.clear();
      if (nk_ > 0) node_row(x, pattern_.node(), h, row);
      // Distribute, settling ambiguous blocks one by one; adjacent ranges of a class merge.
      auto emit = [&](int64_t lo, int64_t hi, uint8_t cls) {
        std::vector<int32_t>& vlo = cls == kFull ? L.full_lo : L.part_lo;
        std::vector<int32_t>& vhi = cls == kFull ? L.full_hi : L.part_hi;
        const std::vector<int64_t>& ptr = cls == kFull ? L.full_ptr : L.part_ptr;
        const int64_t rs = ptr[size_t(h * L.nqb + a)];  // this row's first range
        if (int64_t(vlo.size()) > rs && vhi.back() == lo) {
          vhi.back() = int32_t(hi);
        } else {
          vlo.push_back(int32_t(lo));
          vhi.push_back(int32_t(hi));
        }
      };
      for (const Seg& e : row) {
        if (e.cls != kAmbiguous) {
          emit(e.lo, e.hi, e.cls);
          continue;
        }
        for (int64_t c = e.lo; c < e.hi; ++c) {
          const uint8_t cls = settle(pred, h, x.r0, x.r1, x.k0(c), x.k1(c));
          if (cls != kAmbiguous) emit(c, c + 1, cls);
        }
      }
      const int64_t r = h * L.nqb + a;
      L.full_ptr[size_t(r + 1)] = int64_t(L.full_lo.size());
      L.part_ptr[size_t(r + 1)] = int64_t(L.part_lo.size());
    }
  return L;
}

double CompiledPattern::kept_pairs() const {
  const PatternNode& n = pattern_.node();
  if (nq_ == 0 || nk_ == 0) return 0;
  // Leaves in closed form, row by row.
  if (n.kind != Pattern::Kind::BlockSparse && n.kind != Pattern::Kind::BigBird &&
      n.kind != Pattern::Kind::Union && n.kind != Pattern::Kind::Intersection &&
      n.kind != Pattern::Kind::PerHead && n.kind != Pattern::Kind::LongNet) {
    double total = 0;
    for (int64_t i = 0; i < nq_; ++i) total += row_count_leaf(*this, n, i);
    return total * double(hq_);
  }
  if (n.kind == Pattern::Kind::LongNet) {  // per head, closed form per row
    double total = 0;
    for (int64_t h = 0; h < hq_; ++h)
      for (int64_t i = 0; i < nq_; ++i)
        total += double(detail::longnet_row_count(n.longnet, n.positions.data(), h, i + nk_ - nq_, nk_));
    return total;
  }
  if (n.kind == Pattern::Kind::BlockSparse) {
    const BlockMask& m = *n.mask;
    double total = 0;
    for (int64_t h = 0; h < m.heads; ++h)
      for (int64_t u = 0; u < m.nbq; ++u)
        for (int64_t w = 0; w < m.nbk; ++w)
          if (m.bits[size_t((h * m.nbq + u) * m.nbk + w)]) {
            const double rows = double(std::min(nq_, (u + 1) * m.bq) - u * m.bq);
            const double cols = double(std::min(nk_, (w + 1) * m.bk) - w * m.bk);
            total += rows * cols;
          }
    return m.heads == 1 ? total * double(hq_) : total;
  }
  // Anything else: through a 64 x 64 layout; full blocks by size, partial ones pair by pair.
  const BlockLayout L = layout(64, 64);
  const Predicate pred = predicate();
  double total = 0;
  for (int64_t h = 0; h < L.heads; ++h)
    for (int64_t a = 0; a < L.nqb; ++a) {
      const int64_t r = h * L.nqb + a;
      const int64_t r0 = a * 64, r1 = std::min(nq_, r0 + 64) - 1;
      for (int64_t t = L.full_ptr[size_t(r)]; t < L.full_ptr[size_t(r + 1)]; ++t) {
        const int64_t k0 = int64_t(L.full_lo[size_t(t)]) * 64;
        const int64_t k1 = std::min(nk_, int64_t(L.full_hi[size_t(t)]) * 64);
        total += double(r1 - r0 + 1) * double(k1 - k0);
      }
      for (int64_t t = L.part_ptr[size_t(r)]; t < L.part_ptr[size_t(r + 1)]; ++t)
        for (int64_t c = L.part_lo[size_t(t)]; c < L.part_hi[size_t(t)]; ++c) {
        const int64_t k0 = c * 64, k1 = std::min(nk_, k0 + 64) - 1;
        int64_t n_kept = 0;
        for (int64_t i = r0; i <= r1; ++i)
          for (int64_t j = k0; j <= k1; ++j) n_kept += keeps(pred, h, i, j);
        total += double(n_kept);
      }
    }
  return L.heads == 1 ? total * double(hq_) : total;
}

BlockLayout compile_layout(const Pattern& p, int64_t nq, int64_t nk, int64_t bq, int64_t bk,
                           int64_t heads) {
  check_problem(nq, nk, bq, bk, heads);
  return p.compile(nq, nk, heads).layout(bq, bk);
}

double kept_pairs(const Pattern& p, int64_t nq, int64_t nk, int64_t heads) {
  check_problem(nq, nk, 1, 1, heads);
  return p.compile(nq, nk, heads).kept_pairs();
}

}  // namespace spattn
