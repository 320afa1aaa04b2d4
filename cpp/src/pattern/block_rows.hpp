// Building a block layout row by row: the vocabulary a kind's block rule speaks.
//
// One row is one query tile (rows r0..r1 of one head, key positions p0..p1) and lists key
// blocks as sorted, non-overlapping ranges [lo, hi), each full (every pair kept), partial (some
// pair kept; keeps() decides per element) or, inside a merge of union/intersection parts,
// ambiguous (settled later by element checks). A kind's block rule appends its ranges for the
// row in closed form, in time proportional to the ranges (layout.cpp walks the tree).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "spattn/pattern.hpp"
#include "spattn/predicate.hpp"

namespace spattn::blocks {

// (a + b - 1) / b for b >= 1, without forming a + b when a > 0 (b may be as large as int64
// allows).
inline int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? 1 + (a - 1) / b : (a + b - 1) / b; }

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

// The problem, the tile grid and the current row.
struct RowCtx {
  const CompiledPattern* cp = nullptr;
  int64_t nq = 0, nk = 0, bq = 1, bk = 1, off = 0, nkb = 0;
  int64_t cap = 64;  // ranges a periodic leaf may spend on one row (the range budget)
  int64_t r0 = 0, r1 = 0, p0 = 0, p1 = 0;  // current row: query rows, and key positions + off
  // What a kind computes once per layout and reuses on every row (a prefix count, say), keyed
  // by its node and a head.
  std::map<std::pair<const void*, int64_t>, std::shared_ptr<void>> scratch;

  int64_t k0(int64_t c) const { return c * bk; }
  int64_t k1(int64_t c) const { return std::min(nk, (c + 1) * bk) - 1; }

  // scratch for (key, h), made by make() on first use.
  template <class T, class Make>
  T& scratch_for(const void* key, int64_t h, Make make) {
    auto it = scratch.find({key, h});
    if (it == scratch.end()) it = scratch.emplace(std::make_pair(key, h), std::shared_ptr<void>(std::make_shared<T>(make()))).first;
    return *static_cast<T*>(it->second.get());
  }
};

// Ranges of a row whose kept keys (for some row of the tile) are the sorted, merged intervals
// K, and whose keys kept by every row of the tile are F (F inside K): a block is kept when it
// meets K, full when it lies inside one interval of F.
void intervals_row(const RowCtx& x, const std::vector<Iv>& K, const std::vector<Iv>& F, Row& out);

// Ranges of a row whose kept rels are the multiples of d in [-B, A] (windows: d = 1): exact
// while the row's range budget lasts (see layout.hpp on exactness past it).
void rel_row(const RowCtx& x, int64_t A, int64_t B, int64_t d, Row& out);

// How many of the sorted values v lie in [lo, hi].
int64_t count_in(const std::vector<int64_t>& v, int64_t lo, int64_t hi);

// Kept keys of the rows of an Nq x Nk problem summed, where row_count(p) gives those of the
// query at key position p (closed form per row).
template <class F>
double sum_rows(int64_t nq, int64_t nk, F row_count) {
  double total = 0;
  for (int64_t i = 0; i < nq; ++i) total += double(row_count(i + nk - nq));
  return total;
}

// Kept keys j in [0, nk) of a query at position p whose kept rels are the multiples of d in
// [-B, A].
int64_t rel_count(int64_t p, int64_t nk, int64_t A, int64_t B, int64_t d);

}  // namespace spattn::blocks
