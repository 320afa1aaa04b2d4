// The shared pieces of the kinds' block rules (block_rows.hpp).
#include "pattern/block_rows.hpp"

#include <algorithm>

namespace spattn::blocks {

using detail::floor_div;

namespace {
// Exact, block by block (skipping blocks without a kept rel), for blocks [cfrom, cto].
void rel_exact(const RowCtx& x, int64_t A, int64_t B, int64_t d, int64_t hi, int64_t cfrom,
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

}  // namespace

void intervals_row(const RowCtx& x, const std::vector<Iv>& K, const std::vector<Iv>& F, Row& out) {
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

void rel_row(const RowCtx& x, int64_t A, int64_t B, int64_t d, Row& out) {
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

int64_t count_in(const std::vector<int64_t>& v, int64_t lo, int64_t hi) {
  if (hi < lo) return 0;
  return int64_t(std::upper_bound(v.begin(), v.end(), hi) - std::lower_bound(v.begin(), v.end(), lo));
}

int64_t rel_count(int64_t p, int64_t nk, int64_t A, int64_t B, int64_t d) {
  // j in [0, nk-1], rel = p - j in [-B, A], rel % d == 0
  const int64_t rlo = std::max(-B, p - (nk - 1)), rhi = std::min(A, p);
  if (rlo > rhi) return 0;
  return floor_div(rhi, d) - floor_div(rlo - 1, d);
}

}  // namespace spattn::blocks
