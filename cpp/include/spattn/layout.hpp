// A compiled block layout: for each (head, query block), the key blocks to visit, split into
// full blocks (every pair kept, no element mask) and partial blocks (keeps() decides per pair).
// Rows are stored in CSR form; row r = h * nqb + a for head h and query block a.
#pragma once

#include <cstdint>
#include <vector>

namespace spattn {

class Pattern;

struct BlockLayout {
  int64_t heads = 1;  // 1 when the pattern is the same for every head
  int64_t nq = 0, nk = 0;
  int64_t bq = 64, bk = 64;
  int64_t nqb = 0, nkb = 0;  // ceil(nq / bq), ceil(nk / bk)
  std::vector<int64_t> full_ptr, part_ptr;  // heads * nqb + 1 offsets each
  std::vector<int32_t> full_idx, part_idx;  // key block indices, ascending within a row

  int64_t rows() const { return heads * nqb; }
  // The layout row used by query head h (a shared layout serves every head).
  int64_t row(int64_t h, int64_t a) const { return (heads == 1 ? 0 : h) * nqb + a; }
  int64_t blocks_visited() const { return int64_t(full_idx.size() + part_idx.size()); }
};

// Compile `pattern` for an Nq x Nk problem with bq x bk tiles. `heads` is the number of query
// heads; the result has 1 head when the pattern does not depend on the head. Cost is
// proportional to the number of blocks kept (closed form for structured patterns).
BlockLayout compile_layout(const Pattern& pattern, int64_t nq, int64_t nk, int64_t bq, int64_t bk,
                           int64_t heads);

// The number of (query, key) pairs the pattern keeps, summed over `heads` heads (each head
// counted, even for a shared pattern). Never enumerates all Nq * Nk pairs for structured
// patterns.
double kept_pairs(const Pattern& pattern, int64_t nq, int64_t nk, int64_t heads);

}  // namespace spattn
