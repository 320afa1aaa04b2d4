// Strided(stride, causal): rel % stride == 0 (and rel >= 0 if causal), the Sparse
// Transformer's strided heads (docs/patterns.md). Its element rule is Dilated's (kinds/dilated/rule.hpp);
// run by residue class (plan/residue) when stride > 1.
#include "pattern/kind.hpp"

namespace spattn {

namespace {

struct Strided : KindDefaults {
  static constexpr const char* kName = "Strided";
  struct Params {
    int64_t stride;
    bool causal;
  };

  static int64_t right(const Params& p) { return p.causal ? 0 : kUnbounded; }
  static void describe(const Params& p, std::ostream& s) {
    s << "Strided(" << p.stride << (p.causal ? "" : ", causal=False") << ")";
  }
  static PredNode predicate(const Params& p, const void*) {
    return pred_leaf(rules::dilated{kUnbounded, right(p), p.stride});
  }
  static void block_row(blocks::RowCtx& x, const Params& p, const void*, int64_t, blocks::Row& out) {
    blocks::rel_row(x, kUnbounded, right(p), p.stride, out);
  }
  static double kept_pairs(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    return hq * blocks::sum_rows(nq, nk, [&](int64_t q) {
             return blocks::rel_count(q, nk, kUnbounded, right(p), p.stride);
           });
  }
  static bool rel_lattice(const Params& p, ResidueWindow* r) {
    *r = ResidueWindow{p.stride, p.causal ? 0 : -kUnbounded, kUnbounded};
    return true;
  }
};

}  // namespace

Pattern Pattern::strided(int64_t stride, bool causal) {
  if (stride < 1) bad_argument("Strided: stride must be >= 1, got " + std::to_string(stride));
  return make_leaf<Strided>({stride, causal});
}

}  // namespace spattn
