// A compiled block layout: for each (head, query block), the key blocks to visit, split into
// full blocks (every pair kept, no element mask) and partial blocks (keeps() decides per pair).
// Row r = h * nqb + a for head h and query block a. Each row stores its key blocks as sorted,
// non-overlapping half-open RANGES [lo, hi) of block indices, separately for full and partial
// blocks, in CSR form over the ranges: the full ranges of row r are t in
// [full_ptr[r], full_ptr[r + 1]), each covering key blocks full_lo[t] .. full_hi[t] - 1
// (likewise part_*). A full and a partial range never overlap. Nothing is ever expanded to
// single blocks, so a 1M-token causal layout is 2 ranges per row.
//
// Exactness: full blocks are always exactly full. Partial blocks keep some pair, except that a
// periodic pattern (Strided, Dilated, Fixed) whose exact runs in a row would exceed the row's
// range budget (huge problems only, see layout.cpp) lists one partial range spanning its kept
// blocks, which may then include blocks keeping nothing (or blocks that are in fact full); the
// kernels mask partial blocks per element, so results stay exact, only work is wasted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace spattn {

class Pattern;

struct BlockLayout {
  int64_t heads = 1;  // 1 when the pattern is the same for every head
  int64_t nq = 0, nk = 0;
  int64_t bq = 64, bk = 64;
  int64_t nqb = 0, nkb = 0;  // ceil(nq / bq), ceil(nk / bk)
  std::vector<int64_t> full_ptr, part_ptr;  // heads * nqb + 1 offsets into the range arrays
  std::vector<int32_t> full_lo, full_hi;    // full ranges [lo, hi), ascending within a row
  std::vector<int32_t> part_lo, part_hi;    // partial ranges [lo, hi), ascending within a row

  int64_t rows() const { return heads * nqb; }
  // The layout row used by query head h (a shared layout serves every head).
  int64_t row(int64_t h, int64_t a) const { return (heads == 1 ? 0 : h) * nqb + a; }
  // Key blocks listed (full + partial), summed over the ranges (O(ranges)).
  int64_t full_blocks() const {
    int64_t n = 0;
    for (size_t t = 0; t < full_lo.size(); ++t) n += int64_t(full_hi[t]) - full_lo[t];
    return n;
  }
  int64_t partial_blocks() const {
    int64_t n = 0;
    for (size_t t = 0; t < part_lo.size(); ++t) n += int64_t(part_hi[t]) - part_lo[t];
    return n;
  }
  int64_t blocks_visited() const { return full_blocks() + partial_blocks(); }
};

// Compile `pattern` for an Nq x Nk problem with bq x bk tiles. `heads` is the number of query
// heads; the result has 1 head when the pattern does not depend on the head. Cost is
// proportional to the number of ranges listed (closed form for structured patterns), plus
// element checks on blocks that a union / intersection cannot classify from its parts.
BlockLayout compile_layout(const Pattern& pattern, int64_t nq, int64_t nk, int64_t bq, int64_t bk,
                           int64_t heads);

// The number of (query, key) pairs the pattern keeps, summed over `heads` heads (each head
// counted, even for a shared pattern). Never enumerates all Nq * Nk pairs for structured
// patterns.
double kept_pairs(const Pattern& pattern, int64_t nq, int64_t nk, int64_t heads);

}  // namespace spattn
