// Global(positions): j in positions or p in positions (Longformer's global tokens; positions
// are key positions; docs/patterns.md).
#include <algorithm>
#include <sstream>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;

struct Global : KindDefaults {
  static constexpr const char* kName = "Global";
  struct Params {
    std::vector<int64_t> positions;  // sorted, distinct
  };

  static void describe(const Params& p, std::ostream& s) {
    s << "Global([";
    const size_t show = std::min<size_t>(p.positions.size(), 8);
    for (size_t x = 0; x < show; ++x) s << (x ? ", " : "") << p.positions[x];
    if (p.positions.size() > show) s << ", ... (" << p.positions.size() << " positions)";
    s << "])";
  }
  static void check(const Params& p, int64_t, int64_t nk, int64_t) {
    if (!p.positions.empty() && p.positions.back() >= nk) {
      std::ostringstream s;
      s << "pattern: Global position " << p.positions.back()
        << " is not a key position of an Nk=" << nk << " problem (expected 0 <= position < "
        << nk << ")";
      throw ValueError(s.str());
    }
  }
  // check() above is exactly "Nk >= min_keys" (pattern/kind.hpp).
  static int64_t min_keys(const Params& p) {
    return p.positions.empty() ? 0 : p.positions.back() + 1;
  }
  static PredNode predicate(const Params& p, const void*) {
    PredNode n = pred_leaf(rules::global{int64_t(p.positions.size())});
    n.data = p.positions.data();
    n.data_bytes = int64_t(p.positions.size() * sizeof(int64_t));
    return n;
  }
  // Runs of consecutive positions (row independent, made once per layout), or the whole row
  // for global queries.
  static void block_row(RowCtx& x, const Params& prm, const void*, int64_t, Row& out) {
    const std::vector<int64_t>& P = prm.positions;
    const Row& cols = x.scratch_for<Row>(&prm, 0, [&] {
      std::vector<Iv> runs;
      for (int64_t q : P)
        if (q < x.nk) add_iv(runs, q, q);
      Row c;
      intervals_row(x, runs, runs, c);
      return c;
    });
    const int64_t rows_in = count_in(P, x.p0, x.p1);
    if (rows_in == 0) {
      for (const Seg& s : cols) put(out, s.lo, s.hi, s.cls);
      return;
    }
    if (rows_in == x.p1 - x.p0 + 1) {
      put(out, 0, x.nkb, kFull);
      return;
    }
    // Some rows are global: every block is kept, full where the columns are all positions.
    int64_t pos = 0;
    for (const Seg& s : cols)
      if (s.cls == kFull) {
        put(out, pos, s.lo, kPartial);
        put(out, s.lo, s.hi, kFull);
        pos = s.hi;
      }
    put(out, pos, x.nkb, kPartial);
  }
  static double kept_pairs(const Params& prm, int64_t nq, int64_t nk, int64_t hq) {
    return hq * sum_rows(nq, nk, [&](int64_t p) {
             return count_in(prm.positions, p, p) ? nk : int64_t(prm.positions.size());
           });
  }
};

}  // namespace

Pattern Pattern::global(std::vector<int64_t> positions) {
  for (int64_t x : positions)
    if (x < 0) bad_argument("Global: positions must be >= 0, got " + std::to_string(x));
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  return make_leaf<Global>({std::move(positions)});
}

}  // namespace spattn
