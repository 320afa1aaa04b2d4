// LongNet(segments, dilations, causal): the dilated attention of LongNet (rule.hpp,
// docs/patterns.md). The rule of head h depends on h % r, so the layout is per head; the
// planner runs it by levels on per-head residue classes (plan/longnet.hpp), where it is made of
// full blocks.
#include "pattern/kind.hpp"
#include "pattern/kinds/longnet/blocks.hpp"
#include "pattern/kinds/longnet/segments.hpp"
#include "pattern/kinds/neighborhood/grid_kind.hpp"  // tuple_str

namespace spattn {

namespace {

struct LongNet : KindDefaults {
  static constexpr const char* kName = "LongNet";
  struct Params {
    std::vector<int64_t> wr;  // w0, r0, w1, r1, ...
    bool causal;
  };

  static rules::longnet rule(const Params& p) {
    return rules::longnet{int32_t(p.wr.size() / 2), p.causal ? 1 : 0};
  }
  static void describe(const Params& p, std::ostream& s) {
    std::vector<int64_t> w, r;
    for (size_t k = 0; k + 1 < p.wr.size(); k += 2) {
      w.push_back(p.wr[k]);
      r.push_back(p.wr[k + 1]);
    }
    s << "LongNet(segments=" << detail::tuple_str(w) << ", dilations=" << detail::tuple_str(r)
      << (p.causal ? "" : ", causal=False") << ")";
  }
  static void check(const Params&, int64_t nq, int64_t nk, int64_t) {
    if (nq != nk)
      throw ValueError("pattern: LongNet needs Nq == Nk, got Nq=" + std::to_string(nq) +
                       ", Nk=" + std::to_string(nk));
  }
  static PredNode predicate(const Params& p, const void*) {
    PredNode n = pred_leaf(rule(p));
    n.data = p.wr.data();
    n.data_bytes = int64_t(p.wr.size() * sizeof(int64_t));
    return n;
  }
  static void block_row(blocks::RowCtx& x, const Params& p, const void*, int64_t h, blocks::Row& out) {
    std::vector<detail::KeyIv> K, F;
    detail::longnet_tile_keys(rule(p), p.wr.data(), h, x.p0, x.p1, x.nk, x.bk, K, F);
    blocks::intervals_row(x, K, F, out);
  }
  static double kept_pairs(const Params& p, int64_t nq, int64_t nk, int64_t hq) {
    double total = 0;
    for (int64_t h = 0; h < hq; ++h)
      total += blocks::sum_rows(nq, nk, [&](int64_t q) {
        return detail::longnet_row_count(rule(p), p.wr.data(), h, q, nk);
      });
    return total;
  }
};

}  // namespace

Pattern longnet(std::vector<int64_t> segments, std::vector<int64_t> dilations, bool causal) {
  using detail::tuple_str;
  if (segments.empty()) bad_argument("LongNet: segments: expected at least one segment size");
  if (segments.size() != dilations.size())
    bad_argument("LongNet: segments and dilations must have the same length, got " +
                 tuple_str(segments) + " and " + tuple_str(dilations));
  if (segments.size() > 16) bad_argument("LongNet: at most 16 segment sizes");
  LongNet::Params p{{}, causal};
  bool all_one = true;
  for (size_t k = 0; k < segments.size(); ++k) {
    const int64_t w = segments[k], r = dilations[k];
    if (w < 1 || w > (int64_t(1) << 48))
      bad_argument("LongNet: segment sizes must be in 1..2^48, got " + tuple_str(segments));
    if (r < 1) bad_argument("LongNet: dilations must be >= 1, got " + tuple_str(dilations));
    if (w % r != 0)
      bad_argument("LongNet: segment " + std::to_string(w) + " is not a multiple of its dilation " +
                   std::to_string(r));
    p.wr.push_back(w);
    p.wr.push_back(r);
    all_one = all_one && r == 1;
  }
  // The rule of head h depends on h % r: per head, for any number of heads (head_count 0).
  return make_leaf<LongNet>(std::move(p), all_one ? 1 : 0);
}

namespace detail {

bool longnet_segments(const PatternNode& n, std::vector<int64_t>* wr, bool* causal) {
  const LongNet::Params* p = params_if<LongNet>(n);
  if (!p) return false;
  *wr = p->wr;
  *causal = p->causal;
  return true;
}

}  // namespace detail

}  // namespace spattn
