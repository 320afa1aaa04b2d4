// Fixed(block, summary, causal): p // block == j // block or j % block >= block - summary
// (and rel >= 0 if causal), the Sparse Transformer's fixed pattern (docs/patterns.md).
#include <algorithm>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;
using detail::floor_div;

// Per chunk one interval (own chunk or its summary columns), exact while the budget lasts.
void fixed_row(const blocks::RowCtx& x, int64_t Bc, int64_t S, bool causal, Row& out) {
  const int64_t lim = causal ? std::min(x.p1, x.nk - 1) : x.nk - 1;
  if (lim < 0) return;
  // keys kept by every row of the tile: j <= p0 when causal
  const int64_t flim = causal ? std::min(x.p0, x.nk - 1) : x.nk - 1;
  const int64_t t0 = floor_div(x.p0, Bc), t1 = floor_div(x.p1, Bc);
  const int64_t own_lo = std::max<int64_t>(0, t0 * Bc);
  const int64_t own_hi = std::min(lim, t1 * Bc + Bc - 1);
  std::vector<Iv> K, F;
  if (S == Bc) {  // every column is a summary column
    add_iv(K, 0, lim);
    add_iv(F, 0, flim);
    intervals_row(x, K, F, out);
    return;
  }
  const int64_t nchunks = lim / Bc + 1;
  if (nchunks > x.cap) {
    // Over budget: one kept span; full only inside the own chunk (blocks made only of summary
    // columns are listed as partial, and with gaps, empty blocks too).
    add_iv(K, 0, lim);
    if (t0 == t1) add_iv(F, own_lo, std::min(own_hi, flim));
    intervals_row(x, K, F, out);
    return;
  }
  for (int64_t t = 0; t < nchunks; ++t) {
    const int64_t s0 = t * Bc, s1 = s0 + Bc - 1;
    const int64_t o0 = std::max(s0, own_lo), o1 = std::min(s1, own_hi);
    if (o0 <= o1)
      add_iv(K, o0, o1);  // the own chunk (holds its summary columns)
    else
      add_iv(K, s0 + Bc - S, std::min(s1, lim));
    if (t0 == t1 && t == t0)
      add_iv(F, std::max<int64_t>(s0, 0), std::min(s1, flim));
    else
      add_iv(F, s0 + Bc - S, std::min(s1, flim));
  }
  intervals_row(x, K, F, out);
}

struct Fixed : KindDefaults {
  static constexpr const char* kName = "Fixed";
  struct Params {
    int64_t block, summary;
    bool causal;
  };

  static void describe(const Params& p, std::ostream& s) {
    s << "Fixed(block=" << p.block << ", summary=" << p.summary
      << (p.causal ? "" : ", causal=False") << ")";
  }
  static PredNode predicate(const Params& p, const void*) {
    return pred_leaf(rules::fixed{p.block, p.summary, p.causal});
  }
  static void block_row(RowCtx& x, const Params& p, const void*, int64_t, Row& out) {
    fixed_row(x, p.block, p.summary, p.causal, out);
  }
  static double kept_pairs(const Params& prm, int64_t nq, int64_t nk, int64_t hq) {
    const int64_t B = prm.block, S = prm.summary;
    return hq * sum_rows(nq, nk, [&](int64_t p) -> int64_t {
             const int64_t lim = prm.causal ? std::min(p, nk - 1) : nk - 1;
             if (lim < 0) return 0;
             auto summ = [&](int64_t hi) -> int64_t {  // summary columns in [0, hi]
               if (hi < 0) return 0;
               const int64_t full = (hi + 1) / B, rem = (hi + 1) % B;
               return full * S + std::max<int64_t>(0, rem - (B - S));
             };
             int64_t total = summ(lim);
             // own chunk's non-summary columns in [0, lim]
             const int64_t t = floor_div(p, B);
             const int64_t lo = std::max<int64_t>(0, t * B), hi = std::min(lim, t * B + B - S - 1);
             if (lo <= hi) total += hi - lo + 1;
             return total;
           });
  }
};

}  // namespace

Pattern Pattern::fixed(int64_t block, int64_t summary, bool causal) {
  if (block < 1) bad_argument("Fixed: block must be >= 1, got " + std::to_string(block));
  if (summary < 1 || summary > block)
    bad_argument("Fixed: summary must be in 1..block=" + std::to_string(block) + ", got " +
                 std::to_string(summary));
  return make_leaf<Fixed>({block, summary, causal});
}

}  // namespace spattn
