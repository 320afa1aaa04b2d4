// Dilated(left, right, dilation): rel % dilation == 0 and -right*dilation <= rel <=
// left*dilation (docs/patterns.md). Run by residue class (plan/residue) when dilation > 1.
#include "pattern/kind.hpp"

namespace spattn {

namespace {

// bound * d in keys, saturating at kUnbounded (checked before multiplying: a huge dilation
// times a bound would overflow int64).
int64_t keys(int64_t bound, int64_t d) { return bound >= kUnbounded / d ? kUnbounded : bound * d; }

struct Dilated : KindDefaults {
  static constexpr const char* kName = "Dilated";
  struct Params {
    int64_t left, right;  // in keys of the dilated grid; kUnbounded: None
    int64_t dilation;
  };

  static void describe(const Params& p, std::ostream& s) {
    s << "Dilated(" << bound_str(p.left) << ", " << bound_str(p.right)
      << ", dilation=" << p.dilation << ")";
  }
  static PredNode predicate(const Params& p, const void*) {
    return pred_leaf(rules::dilated{keys(p.left, p.dilation), keys(p.right, p.dilation), p.dilation});
  }
  static void block_row(blocks::RowCtx& x, const Params& p, const void*, int64_t, blocks::Row& out) {
    blocks::rel_row(x, keys(p.left, p.dilation), keys(p.right, p.dilation), p.dilation, out);
  }
  static double kept_pairs(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    const int64_t A = keys(p.left, p.dilation), B = keys(p.right, p.dilation);
    return hq * blocks::sum_rows(nq, nk, [&](int64_t q) {
             return blocks::rel_count(q, nk, A, B, p.dilation);
           });
  }
  static bool rel_lattice(const Params& p, ResidueWindow* r) {
    *r = ResidueWindow{p.dilation, p.right >= kUnbounded ? -kUnbounded : -p.right, p.left};
    return true;
  }
};

}  // namespace

Pattern Pattern::dilated(int64_t left, int64_t right, int64_t dilation) {
  left = std::min(left, kUnbounded);
  right = std::min(right, kUnbounded);
  if (left < 0) bad_argument("Dilated: left must be >= 0 or None, got " + std::to_string(left));
  if (right < 0) bad_argument("Dilated: right must be >= 0 or None, got " + std::to_string(right));
  if (dilation < 1)
    bad_argument("Dilated: dilation must be >= 1, got " + std::to_string(dilation));
  return make_leaf<Dilated>({left, right, dilation});
}

}  // namespace spattn
