// Compiling a pattern into a block layout, and counting the pairs it keeps.
//
// The layout is built row by row (one row = one query tile of one head), as sorted,
// non-overlapping ranges [lo, hi) of key blocks, each full, partial or (inside a merge)
// ambiguous. Each leaf lists its ranges in closed form, in time proportional to the ranges: its
// kind's block rule (kinds/<kind>/kind.cpp, with the shared pieces in block_rows.hpp), e.g.
//  - windows: kept keys form one interval K (any row) containing the interval F of keys kept
//    by every row, so a row is one partial + one full + one partial range;
//  - Dilated / Strided (rel % d == 0): the middle one partial range, or exact runs while the
//    row's range budget lasts, else one partial range over the span.
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

#include "pattern/block_rows.hpp"
#include "pattern/kind.hpp"
#include "pattern/node.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"
#include "spattn/test_hooks.hpp"

namespace spattn {

namespace detail {
namespace {
std::atomic<int64_t> g_budget{int64_t(1) << 21}, g_min_per_row{64};
}
void set_layout_budget(int64_t budget, int64_t min_per_row) {
  g_budget = std::max<int64_t>(0, budget);
  g_min_per_row = std::max<int64_t>(1, min_per_row);
}
int64_t layout_row_budget(int64_t rows) {
  return std::max<int64_t>(g_min_per_row, g_budget / std::max<int64_t>(1, rows));
}
}  // namespace detail

namespace {

using namespace blocks;
using Ctx = RowCtx;

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
  using Op = PatternNode::Op;
  switch (n.op) {
    case Op::Leaf:
      n.kind->block_row(x, n, x.cp->internals().prepared_for(&n), h, out);
      break;
    case Op::PerHead:
      node_row(x, n.children[size_t(h)].node(), h, out);
      break;
    case Op::TopKBlocks:  // compile() refuses it, so no layout is ever asked for
      throw ValueError("pattern: TopKBlocks has no block layout of its own; select(q, k) first");
    case Op::Union:
    case Op::Intersection: {
      if (n.children.size() == 1) {
        node_row(x, n.children[0].node(), h, out);
        break;
      }
      std::vector<Row> parts(n.children.size());
      for (size_t c = 0; c < n.children.size(); ++c) node_row(x, n.children[c].node(), h, parts[c]);
      merge_rows(parts, n.op == Op::Union, out);
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
  x.cap = detail::layout_row_budget(L.rows());
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
  // A leaf whose kind counts in closed form.
  if (n.is_leaf()) {
    const double total = n.kind->kept_pairs(n, nq_, nk_, hq_);
    if (total >= 0) return total;
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
