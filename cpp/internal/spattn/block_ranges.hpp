// A kind's block rule as SPATTN_HD code: the vocabulary of the optional rule method
// `block_ranges` (kinds/README.md), with which a layout is compiled by a CUDA kernel, one
// thread per (head, query tile) row (spattn/cuda/device_layout_logic.hpp), or by the same code
// on the host in tests.
//
// It mirrors the host block rules (pattern/block_rows.hpp, .cpp) without containers: intervals
// come from generators (one ascending interval per call), ranges go to a RangeSink that writes
// into a fixed-capacity array (or only counts). The layouts must be identical to the host
// compiler's (tests/cpp/test_device_layout.cpp checks that): keep the two in step.
#pragma once

#include <cstdint>

#include "spattn/hostdevice.hpp"

namespace spattn::brange {

enum : uint8_t { kPartial = 0, kFull = 1, kAmbiguous = 2 };  // as blocks::kPartial, ...

SPATTN_HD int64_t fdiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
SPATTN_HD int64_t cdiv(int64_t a, int64_t b) { return a > 0 ? 1 + (a - 1) / b : (a + b - 1) / b; }
SPATTN_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
SPATTN_HD int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// The problem, the tile grid and the current row (blocks::RowCtx without the host's scratch).
struct Ctx {
  int64_t nq, nk, bq, bk, off, nkb;
  int64_t cap;             // the range budget of periodic leaves (layout.cpp's x.cap)
  int64_t r0, r1, p0, p1;  // current row: query rows r0..r1, key positions p0..p1 (+ off)
  SPATTN_HD int64_t k0(int64_t c) const { return c * bk; }
  SPATTN_HD int64_t k1(int64_t c) const { return imin(nk, (c + 1) * bk) - 1; }
  // Query blocks of a tile, rounded up (for bounds).
  SPATTN_HD int64_t tile_blocks() const { return cdiv(bq, bk) + 1; }
};

struct Seg {
  int32_t lo, hi;  // key blocks [lo, hi)
  uint8_t cls;
};

// Where a rule puts its ranges: appended ascending, merged with an adjacent range of the same
// class (blocks::put). The last range is held back until the next one (so that counting needs
// no memory); call finish() at the end. With seg == nullptr it only counts. A range past cap is
// not written and sets overflow (the bounds of block_range_bound() make that impossible).
struct RangeSink {
  Seg* seg = nullptr;
  int64_t cap = 0, n = 0;
  bool have = false, overflow = false;
  Seg last{0, 0, 0};

  SPATTN_HD void flush() {
    if (!have) return;
    if (seg) {
      if (n < cap)
        seg[n] = last;
      else
        overflow = true;
    }
    ++n;
    have = false;
  }
  SPATTN_HD void put(int64_t lo, int64_t hi, uint8_t cls) {
    if (lo >= hi) return;
    if (have && last.hi == lo && last.cls == cls) {
      last.hi = int32_t(hi);
      return;
    }
    flush();
    last = Seg{int32_t(lo), int32_t(hi), cls};
    have = true;
  }
  SPATTN_HD void finish() { flush(); }
};

// Bounds a rule gives for any row of a problem (host side, to size the buffers): ranges it
// puts, and partial blocks among them (an ambiguous block of a union lies in some leaf's
// partial block, so these bound the element checks' output too).
struct Bound {
  int64_t ranges, partial_blocks;
};

// ---- interval generators: next(&lo, &hi) gives the next interval of keys (inclusive),
// ascending by lo; false at the end.

struct NoIv {
  SPATTN_HD bool next(int64_t*, int64_t*) { return false; }
};

struct OneIv {
  int64_t lo, hi;
  bool done;
  SPATTN_HD OneIv(int64_t l, int64_t h) : lo(l), hi(h), done(l > h) {}
  SPATTN_HD bool next(int64_t* a, int64_t* b) {
    if (done) return false;
    done = true;
    *a = lo;
    *b = hi;
    return true;
  }
};

// Merges touching and overlapping intervals of G and drops empty ones (blocks::add_iv).
template <class G>
struct Merged {
  G g;
  bool have = false, end = false;
  int64_t lo = 0, hi = 0;
  SPATTN_HD explicit Merged(const G& gen) : g(gen) {}
  SPATTN_HD bool next(int64_t* a, int64_t* b) {
    if (end) return false;
    int64_t x, y;
    while (true) {
      if (!g.next(&x, &y)) {
        end = true;
        if (!have) return false;
        *a = lo;
        *b = hi;
        have = false;
        return true;
      }
      if (x > y) continue;
      if (!have) {
        lo = x, hi = y, have = true;
      } else if (x <= hi + 1) {
        hi = imax(hi, y);
      } else {
        *a = lo;
        *b = hi;
        lo = x, hi = y;
        return true;
      }
    }
  }
};

// blocks::intervals_row: a block is kept when it meets K, full when it lies inside one interval
// of F (F inside K; both merged, ascending).
template <class KG, class FG, class Out>
SPATTN_HD void intervals_row(const Ctx& x, KG K, FG F, Out& out) {
  int64_t fc0 = 0, fc1 = 0;
  bool have = false;
  auto next_full = [&]() {
    int64_t lo, hi;
    while (F.next(&lo, &hi)) {
      const int64_t c0 = cdiv(lo, x.bk);
      const int64_t c1 = hi >= x.nk - 1 ? x.nkb : (hi + 1) / x.bk;
      if (c0 < c1) {
        fc0 = c0;
        fc1 = c1;
        return true;
      }
    }
    return false;
  };
  have = next_full();
  auto flush = [&](int64_t a, int64_t b) {
    int64_t pos = a;
    while (have && fc0 < b) {
      out.put(pos, fc0, kPartial);
      out.put(fc0, fc1, kFull);
      pos = fc1;
      have = next_full();
    }
    out.put(pos, b, kPartial);
  };
  int64_t a = -1, b = -1, lo, hi;
  while (K.next(&lo, &hi)) {
    const int64_t c0 = lo / x.bk, c1 = hi / x.bk + 1;
    if (a < 0) {
      a = c0;
      b = c1;
    } else if (c0 <= b) {
      b = imax(b, c1);
    } else {
      flush(a, b);
      a = c0;
      b = c1;
    }
  }
  if (a >= 0) flush(a, b);
}

// One interval each (the common case: windows, sinks, prefixes).
template <class Out>
SPATTN_HD void interval_row(const Ctx& x, int64_t klo, int64_t khi, int64_t flo, int64_t fhi,
                            Out& out) {
  intervals_row(x, OneIv(klo, khi), OneIv(flo, fhi), out);
}

// blocks::rel_exact: exact, block by block, for blocks [cfrom, cto].
template <class Out>
SPATTN_HD void rel_exact(const Ctx& x, int64_t A, int64_t B, int64_t d, int64_t hi, int64_t cfrom,
                         int64_t cto, Out& out) {
  int64_t c = cfrom;
  while (c <= cto) {
    const int64_t rlo = x.p0 - x.k1(c), rhi = x.p1 - x.k0(c);
    const int64_t a = imax(rlo, -B), b = imin(rhi, A);
    const int64_t m = fdiv(b, d) * d;
    if (a <= b && m >= a) {
      const bool full = rlo >= -B && rhi <= A && (d == 1 || rlo == rhi);
      out.put(c, c + 1, full ? kFull : kPartial);
      ++c;
      continue;
    }
    const int64_t m2 = fdiv(rlo - 1, d) * d;
    if (m2 < -B) return;
    const int64_t j = x.p0 - m2;
    if (j > hi) return;
    c = imax(c + 1, j / x.bk);
  }
}

// blocks::rel_row: kept rels are the multiples of d in [-B, A].
template <class Out>
SPATTN_HD void rel_row(const Ctx& x, int64_t A, int64_t B, int64_t d, Out& out) {
  const int64_t lo = imax(0, x.p0 - A);
  const int64_t hi = imin(x.nk - 1, x.p1 + B);
  if (lo > hi) return;
  if (d == 1) {
    interval_row(x, lo, hi, imax(0, x.p1 - A), imin(x.nk - 1, x.p0 + B), out);
    return;
  }
  const int64_t clo = lo / x.bk, chi = hi / x.bk;
  if (chi - clo + 1 <= x.cap) {
    rel_exact(x, A, B, d, hi, clo, chi, out);
    return;
  }
  const int64_t interior = (x.p1 - x.p0) + x.bk;
  if (d <= interior) {
    int64_t m0 = x.p1 - A <= 0 ? 0 : cdiv(x.p1 - A, x.bk);
    int64_t m1 = fdiv(x.p0 + B + 1, x.bk) - 1;
    m0 = imax(m0, clo);
    m1 = imin(m1, chi);
    if (x.nk % x.bk != 0) m1 = imin(m1, x.nkb - 2);
    if (m0 > m1) {
      rel_exact(x, A, B, d, hi, clo, chi, out);
      return;
    }
    rel_exact(x, A, B, d, hi, clo, m0 - 1, out);
    out.put(m0, m1 + 1, kPartial);
    rel_exact(x, A, B, d, hi, m1 + 1, chi, out);
    return;
  }
  if ((hi - lo) / d + 1 <= x.cap)
    rel_exact(x, A, B, d, hi, clo, chi, out);
  else
    out.put(clo, chi + 1, kPartial);
}

// Bounds of rel_row for any row. d == 1: one interval (partial, full, partial); the partial
// edges span at most the tile's key positions. d > 1: exact runs within the budget (each kept
// rel touches at most tile_blocks() blocks), or a middle range with exact edges.
SPATTN_HD Bound rel_row_bound(const Ctx& x, int64_t d) {
  const int64_t t = x.tile_blocks();
  if (d == 1) return Bound{3, imin(x.nkb, 2 * t + 2)};
  const int64_t n = imin(x.nkb, (x.cap + 1) * (t + 1) + 2 * t + 8);
  return Bound{n, n};
}

// Index of the first of the n sorted values v that is >= x.
template <class T>
SPATTN_HD int64_t lower_bound(const T* v, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (int64_t(v[mid]) < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

}  // namespace spattn::brange
