// Sink(n): j < n, StreamingLLM's attention sinks (docs/patterns.md).
#include <algorithm>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

struct Sink : KindDefaults {
  static constexpr const char* kName = "Sink";
  struct Params {
    int64_t n;
  };

  static void describe(const Params& p, std::ostream& s) { s << "Sink(" << p.n << ")"; }
  static PredNode predicate(const Params& p, const void*) { return pred_leaf(rules::sink{p.n}); }
  static void block_row(blocks::RowCtx& x, const Params& p, const void*, int64_t, blocks::Row& out) {
    const int64_t lim = std::min(p.n, x.nk) - 1;
    if (lim < 0) return;
    std::vector<blocks::Iv> K{{0, lim}};
    blocks::intervals_row(x, K, K, out);
  }
  static double kept_pairs(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    return double(hq) * double(nq) * double(std::min(p.n, nk));
  }
};

}  // namespace

Pattern Pattern::sink(int64_t count) {
  if (count < 0) bad_argument("Sink: n must be >= 0, got " + std::to_string(count));
  return make_leaf<Sink>({count});
}

}  // namespace spattn
