// Shared by the device layout tests (test_device_layout.cpp, test_device_transpose.cpp): random
// patterns of every kind with a device block rule, and the row compile's kernels
// (device_layout_logic.hpp) emulated on the host, one thread after another.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "spattn/cuda/device_layout_logic.hpp"
#include "spattn/pattern.hpp"
#include "spattn/pattern_kinds.hpp"

namespace spattn_test {

using namespace spattn;

inline std::mt19937_64 rng(20261129);
inline int64_t rnd(int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

inline Pattern random_leaf(int64_t nq, int64_t nk) {
  switch (rnd(0, 11)) {
    case 0: {
      const int64_t l = rnd(0, 3) == 0 ? kUnbounded : rnd(0, nk);
      const int64_t r = rnd(0, 3) == 0 ? kUnbounded : rnd(0, 2) == 0 ? 0 : rnd(0, nk);
      return Pattern::sliding_window(l, r);
    }
    case 1:
      return rnd(0, 1) ? Pattern::causal() : Pattern::dense();
    case 2: {
      const int64_t l = rnd(0, 2) == 0 ? kUnbounded : rnd(0, 40);
      const int64_t r = rnd(0, 2) == 0 ? kUnbounded : rnd(0, 40);
      return Pattern::dilated(l, r, rnd(1, 9));
    }
    case 3:
      return Pattern::strided(rnd(1, 300), rnd(0, 1) == 1);
    case 4: {
      const int64_t b = rnd(1, 200);
      return Pattern::fixed(b, rnd(1, b), rnd(0, 1) == 1);
    }
    case 5: {
      std::vector<int64_t> pos;
      const int64_t n = rnd(0, 12);
      for (int64_t t = 0; t < n; ++t) pos.push_back(rnd(0, nk - 1));
      if (rnd(0, 3) == 0)  // a run of consecutive positions
        for (int64_t s = rnd(0, nk - 1), t = 0; t < rnd(1, 150) && s + t < nk; ++t)
          pos.push_back(s + t);
      return Pattern::global(pos);
    }
    case 6:
      return Pattern::sink(rnd(0, nk + 10));
    case 7:
      return prefix_lm(rnd(0, nk + 10));
    case 8: {
      std::vector<int64_t> cu{0};
      while (cu.back() < nk) cu.push_back(std::min(nk, cu.back() + rnd(0, 250)));
      return document(cu);
    }
    case 9: {
      BlockMask m;
      m.bq = rnd(1, 150);
      m.bk = rnd(1, 150);
      m.nbq = (nq + m.bq - 1) / m.bq;
      m.nbk = (nk + m.bk - 1) / m.bk;
      const double density = std::uniform_real_distribution<double>(0, 1)(rng);
      for (int64_t t = 0; t < m.nbq * m.nbk; ++t)
        m.bits.push_back(std::uniform_real_distribution<double>(0, 1)(rng) < density);
      return Pattern::block_sparse(m);
    }
    default:
      return Pattern::bigbird(rnd(1, 150), rnd(0, 5), rnd(0, 2), rnd(0, 4), uint64_t(rnd(0, 1000)));
  }
}

inline Pattern random_pattern(int64_t nq, int64_t nk, int64_t hq, int depth) {
  const int64_t pick = depth >= 2 ? 0 : rnd(0, 9);
  if (pick <= 4) return random_leaf(nq, nk);
  if (pick <= 7) {
    std::vector<Pattern> parts;
    for (int64_t t = rnd(2, 3); t > 0; --t) parts.push_back(random_pattern(nq, nk, hq, depth + 1));
    return pick <= 6 ? Pattern::union_of(parts) : Pattern::intersection_of(parts);
  }
  if (hq == 1) return random_leaf(nq, nk);
  std::vector<Pattern> parts;
  for (int64_t h = 0; h < hq; ++h) parts.push_back(random_pattern(nq, nk, hq, depth + 1));
  return Pattern::per_head(parts);
}

// The row compile's three kernels on the host: count per row, scan, fill per row.
inline void run_layout_rows(const spattn::cuda::DevLayoutParams& p) {
  const int64_t rows = p.rows();
  for (int64_t r = 0; r < rows; ++r) spattn::cuda::compile_layout_row(p, r, false);
  if (rows == 0) p.full_ptr[0] = p.part_ptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    p.full_ptr[r + 1] += p.full_ptr[r];
    p.part_ptr[r + 1] += p.part_ptr[r];
  }
  for (int64_t r = 0; r < rows; ++r) spattn::cuda::compile_layout_row(p, r, true);
}

}  // namespace spattn_test
