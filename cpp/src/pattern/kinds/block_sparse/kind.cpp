// BlockSparse(layout, block_size=(bq, bk)): layout[h, i // bq, j // bk] (docs/patterns.md).
#include <sstream>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;

// 2-D prefix counts of head h's bits (made once per layout), so that a tile counts the kept
// user blocks under each of its key blocks in O(1).
const std::vector<int64_t>& bs_prefix(RowCtx& x, const BlockMask& m, int64_t h) {
  const int64_t hh = m.heads == 1 ? 0 : h;
  return x.scratch_for<std::vector<int64_t>>(&m, hh, [&] {
  const int64_t pw = m.nbk + 1;
  std::vector<int64_t> prefix(size_t((m.nbq + 1) * pw), 0);
  const uint8_t* bits = m.bits.data() + hh * m.nbq * m.nbk;
  for (int64_t u = 0; u < m.nbq; ++u)
    for (int64_t w = 0; w < m.nbk; ++w)
      prefix[size_t((u + 1) * pw + w + 1)] = bits[u * m.nbk + w] + prefix[size_t(u * pw + w + 1)] +
                                             prefix[size_t((u + 1) * pw + w)] -
                                             prefix[size_t(u * pw + w)];
  return prefix;
  });
}

void block_sparse_row(RowCtx& x, const BlockMask& m, int64_t h, Row& out) {
  const std::vector<int64_t>& prefix = bs_prefix(x, m, h);
  const int64_t pw = m.nbk + 1;
  auto count = [&](int64_t u0, int64_t u1, int64_t w0, int64_t w1) {  // inclusive ranges
    return prefix[size_t((u1 + 1) * pw + w1 + 1)] - prefix[size_t(u0 * pw + w1 + 1)] -
           prefix[size_t((u1 + 1) * pw + w0)] + prefix[size_t(u0 * pw + w0)];
  };
  const int64_t u0 = x.r0 / m.bq, u1 = x.r1 / m.bq;
  for (int64_t c = 0; c < x.nkb; ++c) {
    const int64_t w0 = x.k0(c) / m.bk, w1 = x.k1(c) / m.bk;
    const int64_t kept = count(u0, u1, w0, w1);
    if (kept == (u1 - u0 + 1) * (w1 - w0 + 1))
      put(out, c, c + 1, kFull);
    else if (kept > 0)
      put(out, c, c + 1, kPartial);
  }
}

struct BlockSparse : KindDefaults {
  static constexpr const char* kName = "BlockSparse";
  struct Params {
    BlockMask mask;
  };

  static void describe(const Params& p, std::ostream& s) {
    const BlockMask& m = p.mask;
    s << "BlockSparse(layout=[" << m.heads << ", " << m.nbq << ", " << m.nbk
      << "], block_size=(" << m.bq << ", " << m.bk << "))";
  }
  static void check(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    const BlockMask& m = p.mask;
    const int64_t want_q = ceil_div(nq, m.bq), want_k = ceil_div(nk, m.bk);
    if (m.nbq != want_q || m.nbk != want_k) {
      std::ostringstream s;
      s << "pattern: BlockSparse layout has " << m.nbq << " x " << m.nbk << " blocks of ("
        << m.bq << ", " << m.bk << "); an Nq=" << nq << " x Nk=" << nk << " problem needs "
        << want_q << " x " << want_k;
      throw ValueError(s.str());
    }
    if (m.heads != 1 && m.heads != hq) {
      std::ostringstream s;
      s << "pattern: BlockSparse layout has " << m.heads << " heads; expected 1 or Hq=" << hq;
      throw ValueError(s.str());
    }
  }
  static PredNode predicate(const Params& p, const void*) {
    const BlockMask& m = p.mask;
    PredNode n = pred_leaf(rules::block_sparse{m.bq, m.bk, m.nbq, m.nbk, m.heads});
    n.data = m.bits.data();
    n.data_bytes = int64_t(m.bits.size());
    return n;
  }
  static void block_row(RowCtx& x, const Params& p, const void*, int64_t h, Row& out) {
    block_sparse_row(x, p.mask, h, out);
  }
  static double kept_pairs(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    const BlockMask& m = p.mask;
    double total = 0;
    for (int64_t h = 0; h < m.heads; ++h)
      for (int64_t u = 0; u < m.nbq; ++u)
        for (int64_t w = 0; w < m.nbk; ++w)
          if (m.bits[size_t((h * m.nbq + u) * m.nbk + w)]) {
            const double rows = double(std::min(nq, (u + 1) * m.bq) - u * m.bq);
            const double cols = double(std::min(nk, (w + 1) * m.bk) - w * m.bk);
            total += rows * cols;
          }
    return m.heads == 1 ? total * double(hq) : total;
  }
};

}  // namespace

Pattern Pattern::block_sparse(BlockMask mask) {
  std::ostringstream m;
  if (mask.bq <= 0 || mask.bk <= 0) {
    m << "BlockSparse: block_size must be positive, got (" << mask.bq << ", " << mask.bk << ")";
    throw ValueError(m.str());
  }
  if (mask.heads <= 0 || mask.nbq < 0 || mask.nbk < 0) {
    m << "BlockSparse: layout must be [heads >= 1, query blocks, key blocks], got [" << mask.heads
      << ", " << mask.nbq << ", " << mask.nbk << "]";
    throw ValueError(m.str());
  }
  if (int64_t(mask.bits.size()) != mask.heads * mask.nbq * mask.nbk) {
    m << "BlockSparse: layout holds " << mask.bits.size() << " entries, expected "
      << mask.heads * mask.nbq * mask.nbk;
    throw ValueError(m.str());
  }
  for (auto& b : mask.bits) b = b ? 1 : 0;
  const int64_t heads = mask.heads;
  return make_leaf<BlockSparse>({std::move(mask)}, heads);
}

}  // namespace spattn
