// The element rule of a pattern: does query row i of head h see key j?
//
// This is the single definition of what a pattern means. The CPU kernels, the CUDA kernels,
// Pattern::mask() and the tests all call keeps(); kernels call it only on partial blocks.
//
// A pattern compiles (CompiledPattern, pattern.hpp) into a tiny postfix program of PredNodes
// per head: leaves push one bool, Or/And pop two and push one. Plain data only (no virtuals,
// no containers), so a Predicate can be copied by value into a CUDA kernel's parameters; the
// arrays it points to are owned by the CompiledPattern.
#pragma once

#include <cstdint>

#include "spattn/grid_rules.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn {

// "No bound on this side" for window limits. Far from INT64_MAX so sums cannot overflow.
constexpr int64_t kUnbounded = int64_t(1) << 60;

// Deepest bool stack a program may need (checked when a pattern is compiled).
constexpr int kMaxPredDepth = 16;

enum class PredKind : int32_t {
  Window = 0,     // -b <= rel <= a, rel = (i + off) - j
  Dilated = 1,    // rel % c == 0 and -b <= rel <= a (a, b already multiplied by c)
  Fixed = 2,      // p // a == j // a or j % a >= a - b; and rel >= 0 if c
  Global = 3,     // j in data or p in data (int64, sorted, distinct, len entries)
  Sink = 4,       // j < a
  BlockMask = 5,  // bits[h', i / a, j / b], h' = 0 if e == 1 else h; data: uint8 [e, c, d]
  BigBird = 6,    // see pattern.hpp: block a, globals b, window [d(u) - c, d(u) + d], doff e,
                  // randoms f per row in data (int32 [rows, f], -1 = none), len = rows
  Or = 7,         // pop two, push either
  And = 8,        // pop two, push both
  Grid = 9,       // grid_keeps(*data as GridRule): Neighborhood, SlidingTile
  LongNet = 10,   // longnet_keeps({a count, b causal}, data: int64 w0, r0, w1, r1, ...)
};

struct PredNode {
  PredKind kind = PredKind::Window;
  int64_t a = 0, b = 0, c = 0, d = 0, e = 0, f = 0;
  const void* data = nullptr;
  int64_t len = 0;
};

struct Predicate {
  int64_t off = 0;  // Nk - Nq: query i sits at key position i + off (bottom-right alignment)
  const PredNode* nodes = nullptr;
  // Head h runs nodes[head_begin[h'] .. head_end[h']), h' = 0 when heads == 1.
  const int32_t* head_begin = nullptr;
  const int32_t* head_end = nullptr;
  int64_t heads = 1;
};

namespace detail {

SPATTN_HD int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

SPATTN_HD int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

SPATTN_HD bool sorted_contains(const int64_t* v, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (v[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && v[lo] == x;
}

SPATTN_HD bool leaf_keeps(const PredNode& n, int64_t off, int64_t h, int64_t i,
                                 int64_t j) {
  const int64_t p = i + off, rel = p - j;
  switch (n.kind) {
    case PredKind::Window:
      return rel >= -n.b && rel <= n.a;
    case PredKind::Dilated:
      return rel >= -n.b && rel <= n.a && floor_mod(rel, n.c) == 0;
    case PredKind::Fixed:
      if (n.c && rel < 0) return false;
      return floor_div(p, n.a) == j / n.a || j % n.a >= n.a - n.b;
    case PredKind::Global: {
      const int64_t* pos = static_cast<const int64_t*>(n.data);
      return sorted_contains(pos, n.len, j) || sorted_contains(pos, n.len, p);
    }
    case PredKind::Sink:
      return j < n.a;
    case PredKind::BlockMask: {
      const int64_t hh = n.e == 1 ? 0 : h;
      return static_cast<const uint8_t*>(n.data)[(hh * n.c + i / n.a) * n.d + j / n.b] != 0;
    }
    case PredKind::BigBird: {
      const int64_t u = i / n.a, w = j / n.a;
      if (u < n.b || w < n.b) return true;
      const int64_t dg = u + n.e;
      if (w >= dg - n.c && w <= dg + n.d) return true;
      const int32_t* r = static_cast<const int32_t*>(n.data) + u * n.f;
      for (int64_t t = 0; t < n.f; ++t)
        if (r[t] == w) return true;
      return false;
    }
    case PredKind::Grid:
      return grid_keeps(*static_cast<const GridRule*>(n.data), p, j);
    case PredKind::LongNet: {
      LongNetRule l;
      l.count = int32_t(n.a);
      l.causal = int32_t(n.b);
      return longnet_keeps(l, static_cast<const int64_t*>(n.data), h, p, j);
    }
    default:
      return false;
  }
}

}  // namespace detail

SPATTN_HD bool keeps(const Predicate& p, int64_t h, int64_t i, int64_t j) {
  const int64_t hh = p.heads == 1 ? 0 : h;
  const int32_t b = p.head_begin[hh], e = p.head_end[hh];
  if (e - b == 1) return detail::leaf_keeps(p.nodes[b], p.off, h, i, j);
  bool st[kMaxPredDepth];
  int sp = 0;
  for (int32_t x = b; x < e; ++x) {
    const PredNode& n = p.nodes[x];
    if (n.kind == PredKind::Or) {
      --sp;
      st[sp - 1] = st[sp - 1] || st[sp];
    } else if (n.kind == PredKind::And) {
      --sp;
      st[sp - 1] = st[sp - 1] && st[sp];
    } else {
      st[sp++] = detail::leaf_keeps(n, p.off, h, i, j);
    }
  }
  return st[0];
}

// True when head h's rule is one window: every key in key_range() is kept.
SPATTN_HD bool range_is_exact(const Predicate& p, int64_t h) {
  const int64_t hh = p.heads == 1 ? 0 : h;
  return p.head_end[hh] - p.head_begin[hh] == 1 &&
         p.nodes[p.head_begin[hh]].kind == PredKind::Window;
}

// The keys [*lo, *hi] (inclusive, not clipped to [0, Nk)) outside which row i of head h sees
// nothing. Exact when range_is_exact(p, h); otherwise a conservative bound, so a kernel must
// still call keeps() inside it.
SPATTN_HD void key_range(const Predicate& p, int64_t h, int64_t i, int64_t* lo,
                                int64_t* hi) {
  if (range_is_exact(p, h)) {
    const PredNode& n = p.nodes[p.head_begin[p.heads == 1 ? 0 : h]];
    *lo = i + p.off - n.a;
    *hi = i + p.off + n.b;
  } else {
    *lo = -kUnbounded;
    *hi = kUnbounded;
  }
}

// The keys of [j0, j1] that row i of head h keeps, when the rule can give them as one
// interval: true with [*lo, *hi] (empty when *lo > *hi). False: ask keeps() per key. Windows
// always can; grid rules when the block lies in one key line of the grid (grid_rules.hpp).
SPATTN_HD bool row_block_range(const Predicate& p, int64_t h, int64_t i, int64_t j0, int64_t j1,
                               int64_t* lo, int64_t* hi) {
  const int64_t hh = p.heads == 1 ? 0 : h;
  if (p.head_end[hh] - p.head_begin[hh] != 1) return false;
  const PredNode& n = p.nodes[p.head_begin[hh]];
  const int64_t q = i + p.off;
  if (n.kind == PredKind::Window) {
    *lo = q - n.a > j0 ? q - n.a : j0;
    *hi = q + n.b < j1 ? q + n.b : j1;
    return true;
  }
  if (n.kind == PredKind::Grid)
    return grid_row_interval(*static_cast<const GridRule*>(n.data), q, j0, j1, lo, hi);
  return false;
}

}  // namespace spattn
