// Compiling a pattern into a block layout, and counting the pairs it keeps.
//
// Windows are compiled in closed form per query block: the keys any of its rows sees form one
// interval U, the keys all of its rows see form an interval I, so a key block is full when it
// lies inside I and partial when it meets U only. Cost: the number of blocks kept.
// User block layouts are reduced to the kernel's tile grid with a 2D prefix count per head, so
// a tile is classified in O(1) whatever the two block sizes are.
#include <algorithm>
#include <sstream>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"

namespace spattn {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

BlockLayout empty_layout(int64_t heads, int64_t nq, int64_t nk, int64_t bq, int64_t bk) {
  BlockLayout L;
  L.heads = heads;
  L.nq = nq;
  L.nk = nk;
  L.bq = bq;
  L.bk = bk;
  L.nqb = ceil_div(nq, bq);
  L.nkb = ceil_div(nk, bk);
  L.full_ptr.assign(size_t(L.rows() + 1), 0);
  L.part_ptr.assign(size_t(L.rows() + 1), 0);
  return L;
}

void compile_window(const Pattern& p, BlockLayout& L) {
  const int64_t off = L.nk - L.nq;
  for (int64_t a = 0; a < L.nqb; ++a) {
    const int64_t r0 = a * L.bq, r1 = std::min(L.nq, r0 + L.bq) - 1;
    // Keys some row sees (U) and keys every row sees (I), clipped to the sequence.
    const int64_t u_lo = std::max<int64_t>(0, r0 + off - p.left());
    const int64_t u_hi = std::min<int64_t>(L.nk - 1, r1 + off + p.right());
    const int64_t i_lo = r1 + off - p.left(), i_hi = r0 + off + p.right();
    if (u_lo <= u_hi) {
      for (int64_t c = u_lo / L.bk; c <= u_hi / L.bk; ++c) {
        const int64_t k0 = c * L.bk, k1 = std::min(L.nk, k0 + L.bk) - 1;
        if (k0 >= i_lo && k1 <= i_hi)
          L.full_idx.push_back(int32_t(c));
        else
          L.part_idx.push_back(int32_t(c));
      }
    }
    L.full_ptr[size_t(a + 1)] = int64_t(L.full_idx.size());
    L.part_ptr[size_t(a + 1)] = int64_t(L.part_idx.size());
  }
}

void compile_block_sparse(const BlockMask& m, BlockLayout& L) {
  // prefix[(u + 1) * (nbk + 1) + (w + 1)] = kept user blocks in rows < u+1, cols < w+1.
  const int64_t pw = m.nbk + 1;
  std::vector<int64_t> prefix(size_t((m.nbq + 1) * pw), 0);
  auto count = [&](int64_t u0, int64_t u1, int64_t w0, int64_t w1) {  // inclusive ranges
    return prefix[size_t((u1 + 1) * pw + w1 + 1)] - prefix[size_t(u0 * pw + w1 + 1)] -
           prefix[size_t((u1 + 1) * pw + w0)] + prefix[size_t(u0 * pw + w0)];
  };
  for (int64_t h = 0; h < L.heads; ++h) {
    const uint8_t* bits = m.bits.data() + h * m.nbq * m.nbk;
    for (int64_t u = 0; u < m.nbq; ++u)
      for (int64_t w = 0; w < m.nbk; ++w)
        prefix[size_t((u + 1) * pw + w + 1)] = bits[u * m.nbk + w] +
                                               prefix[size_t(u * pw + w + 1)] +
                                               prefix[size_t((u + 1) * pw + w)] -
                                               prefix[size_t(u * pw + w)];
    for (int64_t a = 0; a < L.nqb; ++a) {
      const int64_t r0 = a * L.bq, r1 = std::min(L.nq, r0 + L.bq) - 1;
      const int64_t u0 = r0 / m.bq, u1 = r1 / m.bq;
      for (int64_t c = 0; c < L.nkb; ++c) {
        const int64_t k0 = c * L.bk, k1 = std::min(L.nk, k0 + L.bk) - 1;
        const int64_t w0 = k0 / m.bk, w1 = k1 / m.bk;
        const int64_t kept = count(u0, u1, w0, w1);
        if (kept == (u1 - u0 + 1) * (w1 - w0 + 1))
          L.full_idx.push_back(int32_t(c));
        else if (kept > 0)
          L.part_idx.push_back(int32_t(c));
      }
      const int64_t r = h * L.nqb + a;
      L.full_ptr[size_t(r + 1)] = int64_t(L.full_idx.size());
      L.part_ptr[size_t(r + 1)] = int64_t(L.part_idx.size());
    }
  }
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

BlockLayout compile_layout(const Pattern& p, int64_t nq, int64_t nk, int64_t bq, int64_t bk,
                           int64_t heads) {
  check_problem(nq, nk, bq, bk, heads);
  p.check(nq, nk, heads);
  BlockLayout L = empty_layout(p.heads(), nq, nk, bq, bk);
  if (p.kind() == Pattern::Kind::Window)
    compile_window(p, L);
  else
    compile_block_sparse(*p.block_mask(), L);
  return L;
}

double kept_pairs(const Pattern& p, int64_t nq, int64_t nk, int64_t heads) {
  check_problem(nq, nk, 1, 1, heads);
  p.check(nq, nk, heads);
  double total = 0;
  if (p.kind() == Pattern::Kind::Window) {
    const int64_t off = nk - nq;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t lo = std::max<int64_t>(0, i + off - p.left());
      const int64_t hi = std::min<int64_t>(nk - 1, i + off + p.right());
      if (hi >= lo) total += double(hi - lo + 1);
    }
    return total * double(heads);
  }
  const BlockMask& m = *p.block_mask();
  for (int64_t h = 0; h < m.heads; ++h)
    for (int64_t u = 0; u < m.nbq; ++u)
      for (int64_t w = 0; w < m.nbk; ++w)
        if (m.bits[size_t((h * m.nbq + u) * m.nbk + w)]) {
          const double rows = double(std::min(nq, (u + 1) * m.bq) - u * m.bq);
          const double cols = double(std::min(nk, (w + 1) * m.bk) - w * m.bk);
          total += rows * cols;
        }
  return m.heads == 1 ? total * double(heads) : total;
}

}  // namespace spattn
