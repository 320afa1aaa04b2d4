// Document(cu_seqlens): attention only within a document of one packed sequence (see api.hpp).
//
// Block rule: the documents that a tile's query positions [p0, p1] touch hold one contiguous
// run of keys, [start of p0's document, end of p1's document): every key there is kept by some
// row. When p0 and p1 lie in one document, its keys are kept by every row: blocks inside that
// document's square are full, blocks crossing a boundary partial, all others empty.
#include <algorithm>
#include <climits>
#include <sstream>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;

struct Document : KindDefaults {
  static constexpr const char* kName = "Document";
  struct Params {
    std::vector<int64_t> cu_seqlens;  // as given
    std::vector<int64_t> bounds;      // distinct starts of documents after the first, in (0, total)
    std::vector<int32_t> doc;         // the element rule's table: document index per position
    int64_t total() const { return cu_seqlens.back(); }
    // [start, end) of the document holding position x (0 <= x < total).
    int64_t start(int64_t x) const {
      auto it = std::upper_bound(bounds.begin(), bounds.end(), x);
      return it == bounds.begin() ? 0 : *(it - 1);
    }
    int64_t end(int64_t x) const {
      auto it = std::upper_bound(bounds.begin(), bounds.end(), x);
      return it == bounds.end() ? total() : *it;
    }
  };

  static void describe(const Params& p, std::ostream& s) {
    s << "Document(cu_seqlens=[";
    const size_t show = std::min<size_t>(p.cu_seqlens.size(), 8);
    for (size_t x = 0; x < show; ++x) s << (x ? ", " : "") << p.cu_seqlens[x];
    if (p.cu_seqlens.size() > show) s << ", ... (" << p.cu_seqlens.size() << " offsets)";
    s << "])";
  }
  static void check(const Params& p, int64_t, int64_t nk, int64_t) {
    if (p.total() != nk) {
      std::ostringstream s;
      s << "pattern: Document's cu_seqlens end at " << p.total() << ", but the problem has Nk="
        << nk << " keys; expected cu_seqlens[-1] == Nk (the packed sequence's length)";
      throw ValueError(s.str());
    }
  }
  static PredNode predicate(const Params& p, const void*) {
    PredNode n = pred_leaf(rules::document{p.total()});
    if (!p.doc.empty()) {
      n.data = p.doc.data();
      n.data_bytes = int64_t(p.doc.size() * sizeof(int32_t));
    }
    return n;
  }
  static void block_row(RowCtx& x, const Params& p, const void*, int64_t, Row& out) {
    if (x.p1 < 0 || x.nk == 0) return;
    const int64_t q0 = std::max<int64_t>(x.p0, 0);
    std::vector<Iv> K, F;
    add_iv(K, p.start(q0), p.end(x.p1) - 1);
    if (x.p0 >= 0 && p.start(x.p0) == p.start(x.p1)) F = K;
    intervals_row(x, K, F, out);
  }
  static double kept_pairs(const Params& prm, int64_t nq, int64_t nk, int64_t hq) {
    return hq * sum_rows(nq, nk, [&](int64_t p) -> int64_t {
             return p < 0 ? 0 : prm.end(p) - prm.start(p);
           });
  }
};

}  // namespace

Pattern document(std::vector<int64_t> cu_seqlens) {
  if (cu_seqlens.empty() || cu_seqlens.front() != 0)
    bad_argument(std::string("Document: cu_seqlens must start with 0 (the offsets [0, n_0, n_0 + "
                             "n_1, ..., total]), got ") +
                 (cu_seqlens.empty() ? "an empty list" : "first " + std::to_string(cu_seqlens[0])));
  for (size_t t = 1; t < cu_seqlens.size(); ++t)
    if (cu_seqlens[t] < cu_seqlens[t - 1]) {
      std::ostringstream s;
      s << "Document: cu_seqlens must be non-decreasing, got " << cu_seqlens[t - 1] << " then "
        << cu_seqlens[t] << " at index " << t;
      bad_argument(s.str());
    }
  if (cu_seqlens.back() > INT32_MAX)
    bad_argument("Document: the packed sequence is too long (" + std::to_string(cu_seqlens.back()) +
                 " positions; at most 2^31 - 1)");
  std::vector<int64_t> bounds;
  for (int64_t c : cu_seqlens)
    if (c > 0 && c < cu_seqlens.back() && (bounds.empty() || bounds.back() != c)) bounds.push_back(c);
  std::vector<int32_t> doc(size_t(cu_seqlens.back()));
  for (size_t t = 0, d = 0; t < doc.size(); ++t) {
    while (d < bounds.size() && bounds[d] <= int64_t(t)) ++d;
    doc[t] = int32_t(d);
  }
  return make_leaf<Document>({std::move(cu_seqlens), std::move(bounds), std::move(doc)});
}

}  // namespace spattn
