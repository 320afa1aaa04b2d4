// The element rule of a pattern: does query row i of head h see key j?
//
// This is the single definition of what a pattern means. The CPU kernels, the CUDA kernels,
// Pattern::mask() and the tests all call keeps(); kernels call it only on partial blocks.
// Plain data only, so it can be copied by value into a CUDA kernel's parameters.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn {

// "No bound on this side" for window limits. Far from INT64_MAX so sums cannot overflow.
constexpr int64_t kUnbounded = int64_t(1) << 60;

enum class PredicateKind : int32_t {
  Window = 0,     // -right <= rel <= left, rel = (i + off) - j
  BlockMask = 1,  // bits[h', i / bq, j / bk], h' = 0 for a shared layout
};

struct Predicate {
  PredicateKind kind = PredicateKind::Window;
  int64_t off = 0;  // Nk - Nq: query i sits at key position i + off (bottom-right alignment)
  int64_t left = kUnbounded, right = kUnbounded;
  // BlockMask only: a [mask_heads, nbq, nbk] array of 0/1 bytes, row-major.
  const uint8_t* bits = nullptr;
  int64_t mask_heads = 1, nbq = 0, nbk = 0, bq = 1, bk = 1;
};

SPATTN_HD bool keeps(const Predicate& p, int64_t h, int64_t i, int64_t j) {
  if (p.kind == PredicateKind::Window) {
    const int64_t rel = i + p.off - j;
    return rel >= -p.right && rel <= p.left;
  }
  const int64_t hh = p.mask_heads == 1 ? 0 : h;
  return p.bits[(hh * p.nbq + i / p.bq) * p.nbk + j / p.bk] != 0;
}

// The keys [*lo, *hi] (inclusive, not clipped to [0, Nk)) outside which row i sees nothing.
// Exact for Window (every key inside is kept); for other kinds a conservative bound, so a
// kernel must still call keeps() inside it unless range_is_exact().
SPATTN_HD void key_range(const Predicate& p, int64_t i, int64_t* lo, int64_t* hi) {
  if (p.kind == PredicateKind::Window) {
    *lo = i + p.off - p.left;
    *hi = i + p.off + p.right;
  } else {
    *lo = -kUnbounded;
    *hi = kUnbounded;
  }
}

SPATTN_HD bool range_is_exact(const Predicate& p) { return p.kind == PredicateKind::Window; }

}  // namespace spattn
