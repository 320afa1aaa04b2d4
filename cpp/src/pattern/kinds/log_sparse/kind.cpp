// LogSparse(local): rel >= 0 and (rel <= local or rel a power of two), rel = p - j.
//
// Block rule: a tile row's kept keys are the band [p0 - local, p1] and, per power 2^k > local,
// the diagonal [p0 - 2^k, p1 - 2^k]: O(log N) intervals, so the layout lists O(log N) blocks
// per row (a diagonal crosses one or two key blocks). Only the band is kept by every row (and,
// for a one-row tile, everything it keeps).
#include <algorithm>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;

struct LogSparse : KindDefaults {
  static constexpr const char* kName = "LogSparse";
  struct Params {
    int64_t local;
  };

  static void describe(const Params& p, std::ostream& s) {
    s << "LogSparse(" << (p.local ? "local=" + std::to_string(p.local) : std::string()) << ")";
  }
  static PredNode predicate(const Params& p, const void*) {
    return pred_leaf(rules::log_sparse{p.local});
  }
  static void block_row(RowCtx& x, const Params& prm, const void*, int64_t, Row& out) {
    if (x.p1 < 0) return;
    const int64_t top = x.nk - 1;
    auto clip = [&](std::vector<Iv>& v, int64_t lo, int64_t hi) {
      add_iv(v, std::max<int64_t>(lo, 0), std::min(hi, top));
    };
    std::vector<Iv> K, F;
    // Powers of two beyond the band, largest (leftmost keys) first, so K stays ascending.
    int k = 62;
    while (k >= 0 && (int64_t(1) << k) > x.p1) --k;
    for (; k >= 0 && (int64_t(1) << k) > prm.local; --k) {
      const int64_t d = int64_t(1) << k;
      clip(K, x.p0 - d, x.p1 - d);
    }
    const int64_t band_lo = prm.local >= x.p0 ? 0 : x.p0 - prm.local;
    clip(K, band_lo, x.p1);
    if (x.p0 == x.p1) {
      F = K;
    } else if (x.p0 >= 0) {
      const int64_t f_lo = prm.local >= x.p1 ? 0 : x.p1 - prm.local;
      clip(F, f_lo, x.p0);
    }
    intervals_row(x, K, F, out);
  }
  static double kept_pairs(const Params& prm, int64_t nq, int64_t nk, int64_t hq) {
    return hq * sum_rows(nq, nk, [&](int64_t p) -> int64_t {
             if (p < 0) return 0;
             const int64_t rlo = std::max<int64_t>(0, p - (nk - 1)), rhi = p;
             int64_t n = std::max<int64_t>(0, std::min(rhi, prm.local) - rlo + 1);
             for (int k = 0; k < 62 && (int64_t(1) << k) <= rhi; ++k) {
               const int64_t d = int64_t(1) << k;
               if (d > prm.local && d >= rlo) ++n;
             }
             return n;
           });
  }
};

}  // namespace

Pattern log_sparse(int64_t local) {
  if (local < 0) bad_argument("LogSparse: local must be >= 0, got " + std::to_string(local));
  return make_leaf<LogSparse>({std::min(local, kUnbounded)});
}

}  // namespace spattn
