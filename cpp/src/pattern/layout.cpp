// Compiling a pattern into a block layout, and counting the pairs it keeps.
//
// The layout is built row by row (one row = one query tile of one head). Each leaf lists its
// key blocks for the row in closed form, ascending, each marked full or partial, in time
// proportional to the blocks it lists:
//  - windows, dilated and strided patterns depend on rel only; a block's rel values form one
//    interval [p0 - k1, p1 - k0], so "has a kept rel" and "all rels kept" are O(1), and the
//    next block holding a kept rel is found directly;
//  - Fixed: the own-chunk interval plus the summary columns; Global: rows / columns holding
//    positions (binary search); Sink: the first blocks; BlockSparse: a 2-D prefix count;
//    BigBird: its generated rows mapped onto the tile grid.
// Unions and intersections merge their children's sorted lists. A block whose class the merge
// cannot decide (two partial parts of a union may cover it, an intersection of partial parts
// may be empty) is marked ambiguous and settled at the end by evaluating the predicate on it.
#include <algorithm>
#include <map>
#include <sstream>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"

namespace spattn {

namespace {

using detail::floor_div;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

enum : uint8_t { kPartial = 0, kFull = 1, kAmbiguous = 2 };

struct Entry {
  int32_t c;
  uint8_t cls;
};
using Row = std::vector<Entry>;

struct Ctx {
  const CompiledPattern* cp;
  int64_t nq, nk, bq, bk, off, nkb;
  // current row
  int64_t r0, r1, p0, p1;
  // BlockSparse prefix counts per (node, head)
  std::map<std::pair<const PatternNode*, int64_t>, std::vector<int64_t>> prefix;

  int64_t k0(int64_t c) const { return c * bk; }
  int64_t k1(int64_t c) const { return std::min(nk, (c + 1) * bk) - 1; }
};

// ---- rel-interval leaves: kept rels are the multiples of d in [-B, A] ---------------------

void rel_row(const Ctx& x, int64_t A, int64_t B, int64_t d, Row& out) {
  const int64_t lo = std::max<int64_t>(0, x.p0 - A);
  const int64_t hi = std::min<int64_t>(x.nk - 1, x.p1 + B);
  if (lo > hi) return;
  int64_t c = lo / x.bk;
  const int64_t clast = hi / x.bk;
  while (c <= clast) {
    const int64_t rlo = x.p0 - x.k1(c), rhi = x.p1 - x.k0(c);
    const int64_t a = std::max(rlo, -B), b = std::min(rhi, A);
    // largest multiple of d <= b
    const int64_t m = floor_div(b, d) * d;
    if (a <= b && m >= a) {
      const bool full = rlo >= -B && rhi <= A && (d == 1 || rlo == rhi);
      out.push_back({int32_t(c), full ? kFull : kPartial});
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

// ---- Fixed ---------------------------------------------------------------------------------

void fixed_row(const Ctx& x, int64_t Bc, int64_t S, bool causal, Row& out) {
  const int64_t lim = causal ? std::min(x.p1, x.nk - 1) : x.nk - 1;
  if (lim < 0) return;
  const int64_t t0 = floor_div(x.p0, Bc), t1 = floor_div(x.p1, Bc);
  const int64_t own_lo = std::max<int64_t>(0, t0 * Bc);
  const int64_t own_hi = std::min(lim, t1 * Bc + Bc - 1);
  // first summary column >= j
  auto next_summary = [&](int64_t j) {
    const int64_t r = j % Bc;
    return r >= Bc - S ? j : j - r + Bc - S;
  };
  auto full_block = [&](int64_t k0, int64_t k1) {
    if (causal && k1 > x.p0) return false;
    if (S == Bc) return true;
    const int64_t first = (k0 % Bc < Bc - S) ? k0 : (k0 / Bc + 1) * Bc;
    const int64_t last = (k1 % Bc < Bc - S) ? k1 : (k1 / Bc) * Bc + (Bc - S - 1);
    if (first > last) return true;
    const int64_t t = first / Bc;
    return t0 == t1 && t0 == t && last / Bc == t;
  };
  int64_t c = 0;
  const int64_t clast = lim / x.bk;
  while (c <= clast) {
    const int64_t k0 = x.k0(c), k1 = x.k1(c), e = std::min(k1, lim);
    const bool own = own_lo <= own_hi && k0 <= own_hi && e >= own_lo;
    const bool summ = next_summary(k0) <= e;
    if (own || summ) {
      out.push_back({int32_t(c), full_block(k0, k1) ? kFull : kPartial});
      ++c;
      continue;
    }
    int64_t j = next_summary(k1 + 1);
    if (own_lo <= own_hi && own_lo > k1) j = std::min(j, own_lo);
    if (j > lim) return;
    c = std::max(c + 1, j / x.bk);
  }
}

// ---- Global --------------------------------------------------------------------------------

int64_t count_in(const std::vector<int64_t>& v, int64_t lo, int64_t hi) {
  if (hi < lo) return 0;
  return int64_t(std::upper_bound(v.begin(), v.end(), hi) - std::lower_bound(v.begin(), v.end(), lo));
}

void global_row(const Ctx& x, const std::vector<int64_t>& P, Row& out) {
  const int64_t rows_in = count_in(P, x.p0, x.p1);
  const bool all_rows = rows_in == x.p1 - x.p0 + 1;
  if (rows_in > 0) {
    for (int64_t c = 0; c < x.nkb; ++c) {
      const int64_t k0 = x.k0(c), k1 = x.k1(c);
      const bool full = all_rows || count_in(P, k0, k1) == k1 - k0 + 1;
      out.push_back({int32_t(c), full ? kFull : kPartial});
    }
    return;
  }
  size_t t = 0;
  while (t < P.size()) {
    const int64_t c = P[t] / x.bk;
    const int64_t k0 = x.k0(c), k1 = x.k1(c);
    const auto end = std::upper_bound(P.begin() + int64_t(t), P.end(), k1);
    const int64_t n = int64_t(end - P.begin()) - int64_t(t);
    out.push_back({int32_t(c), n == k1 - k0 + 1 ? kFull : kPartial});
    t = size_t(end - P.begin());
  }
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
      out.push_back({int32_t(c), kFull});
    else if (kept > 0)
      out.push_back({int32_t(c), kPartial});
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
    out.push_back({int32_t(c), n == (u1 - u0 + 1) * (w1 - w0 + 1) ? kFull : kPartial});
  }
}

// ---- the tree ------------------------------------------------------------------------------

void node_row(Ctx& x, const PatternNode& n, int64_t h, Row& out);

void merge_rows(const std::vector<Row>& parts, bool is_union, Row& out) {
  // k-way merge by repeated pairwise merging, tracking how many parts saw each block and how
  // many of them were not full.
  struct Acc {
    int32_t c;
    int32_t seen, nonfull;
    bool amb;
  };
  std::vector<Acc> cur, nxt;
  for (size_t p = 0; p < parts.size(); ++p) {
    nxt.clear();
    size_t i = 0, j = 0;
    const Row& r = parts[p];
    while (i < cur.size() || j < r.size()) {
      if (j == r.size() || (i < cur.size() && cur[i].c < r[j].c)) {
        nxt.push_back(cur[i++]);
      } else {
        Acc e{r[j].c, 1, r[j].cls != kFull, r[j].cls == kAmbiguous};
        if (i < cur.size() && cur[i].c == r[j].c) {
          e.seen += cur[i].seen;
          e.nonfull += cur[i].nonfull;
          e.amb = e.amb || cur[i].amb;
          ++i;
        }
        nxt.push_back(e);
        ++j;
      }
    }
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
    out.push_back({e.c, cls});
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
      global_row(x, n.positions, out);
      break;
    case Pattern::Kind::Sink: {
      const int64_t lim = std::min(n.a, x.nk) - 1;
      if (lim < 0) break;
      for (int64_t c = 0; c <= lim / x.bk; ++c)
        out.push_back({int32_t(c), x.k1(c) < n.a ? kFull : kPartial});
      break;
    }
    case Pattern::Kind::BlockSparse:
      block_sparse_row(x, n, h, out);
      break;
    case Pattern::Kind::BigBird:
      bigbird_row(x, *x.cp->bigbird(&n), out);
      break;
    case Pattern::Kind::PerHead:
      node_row(x, n.children[size_t(h)].node(), h, out);
      break;
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
      for (const Entry& e : row) {
        uint8_t cls = e.cls;
        if (cls == kAmbiguous) cls = settle(pred, h, x.r0, x.r1, x.k0(e.c), x.k1(e.c));
        if (cls == kFull)
          L.full_idx.push_back(e.c);
        else if (cls == kPartial)
          L.part_idx.push_back(e.c);
      }
      const int64_t r = h * L.nqb + a;
      L.full_ptr[size_t(r + 1)] = int64_t(L.full_idx.size());
      L.part_ptr[size_t(r + 1)] = int64_t(L.part_idx.size());
    }
  return L;
}

double CompiledPattern::kept_pairs() const {
  const PatternNode& n = pattern_.node();
  if (nq_ == 0 || nk_ == 0) return 0;
  // Leaves in closed form, row by row.
  if (n.kind != Pattern::Kind::BlockSparse && n.kind != Pattern::Kind::BigBird &&
      n.kind != Pattern::Kind::Union && n.kind != Pattern::Kind::Intersection &&
      n.kind != Pattern::Kind::PerHead) {
    double total = 0;
    for (int64_t i = 0; i < nq_; ++i) total += row_count_leaf(*this, n, i);
    return total * double(hq_);
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
        const int64_t c = L.full_idx[size_t(t)];
        total += double(r1 - r0 + 1) * double(std::min(nk_, (c + 1) * 64) - c * 64);
      }
      for (int64_t t = L.part_ptr[size_t(r)]; t < L.part_ptr[size_t(r + 1)]; ++t) {
        const int64_t c = L.part_idx[size_t(t)];
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
