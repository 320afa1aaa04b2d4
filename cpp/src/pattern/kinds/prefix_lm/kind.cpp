// PrefixLM(n): j <= p or j < n, p = i + Nk - Nq (bidirectional over the first n tokens, causal
// after them; the same pairs as Causal() | Sink(n), as one leaf).
#include <algorithm>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;

struct PrefixLM : KindDefaults {
  static constexpr const char* kName = "PrefixLM";
  struct Params {
    int64_t n;
  };

  // Keys [0, last] with last = max(p, n - 1), clipped to the problem.
  static int64_t last(const Params& prm, int64_t p, int64_t nk) {
    return std::min(nk - 1, std::max(p, prm.n - 1));
  }

  static void describe(const Params& p, std::ostream& s) { s << "PrefixLM(" << p.n << ")"; }
  static PredNode predicate(const Params& p, const void*) { return pred_leaf(rules::prefix_lm{p.n}); }
  // The row's last query keeps keys [0, max(p1, n-1)], its first [0, max(p0, n-1)]: one
  // interval each, the second kept by every row of the tile.
  static void block_row(RowCtx& x, const Params& p, const void*, int64_t, Row& out) {
    std::vector<Iv> K, F;
    add_iv(K, 0, last(p, x.p1, x.nk));
    add_iv(F, 0, last(p, x.p0, x.nk));
    intervals_row(x, K, F, out);
  }
  static double kept_pairs(const Params& prm, int64_t nq, int64_t nk, int64_t hq) {
    return hq * sum_rows(nq, nk, [&](int64_t p) { return std::max<int64_t>(0, last(prm, p, nk) + 1); });
  }
};

}  // namespace

Pattern prefix_lm(int64_t n) {
  if (n < 0) bad_argument("PrefixLM: n (the prefix length) must be >= 0, got " + std::to_string(n));
  return make_leaf<PrefixLM>({std::min(n, kUnbounded)});
}

}  // namespace spattn
