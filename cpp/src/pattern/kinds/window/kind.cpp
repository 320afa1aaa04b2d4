// Dense(), Causal(), SlidingWindow(left, right): -right <= rel <= left (docs/patterns.md).
#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

struct Window : KindDefaults {
  static constexpr const char* kName = "SlidingWindow";
  struct Params {
    int64_t left, right;  // kUnbounded: None
  };

  static void describe(const Params& w, std::ostream& s) {
    if (w.left >= kUnbounded && w.right >= kUnbounded)
      s << "Dense()";
    else if (w.left >= kUnbounded && w.right == 0)
      s << "Causal()";
    else
      s << "SlidingWindow(" << bound_str(w.left) << ", " << bound_str(w.right) << ")";
  }
  static PredNode predicate(const Params& w, const void*) {
    return pred_leaf(rules::window{w.left, w.right});
  }
  static void block_row(blocks::RowCtx& x, const Params& w, const void*, int64_t, blocks::Row& out) {
    blocks::rel_row(x, w.left, w.right, 1, out);
  }
  static double kept_pairs(const Params& w, int64_t nq, int64_t nk, int64_t hq) {
    return hq * blocks::sum_rows(nq, nk, [&](int64_t p) {
             return blocks::rel_count(p, nk, w.left, w.right, 1);
           });
  }
  static bool rel_lattice(const Params& w, ResidueWindow* r) {
    *r = ResidueWindow{1, w.right >= kUnbounded ? -kUnbounded : -w.right, w.left};
    return true;
  }
};

int64_t clamp_bound(int64_t x) { return std::min(x, kUnbounded); }

}  // namespace

Pattern Pattern::dense() { return sliding_window(kUnbounded, kUnbounded); }

Pattern Pattern::causal() { return sliding_window(kUnbounded, 0); }

Pattern Pattern::sliding_window(int64_t left, int64_t right) {
  left = clamp_bound(left);
  right = clamp_bound(right);
  if (left < -kUnbounded || right < -kUnbounded || left < -right) {
    std::ostringstream m;
    m << "SlidingWindow: the window -right <= rel <= left is empty for left=" << bound_str(left)
      << ", right=" << bound_str(right) << "; expected left >= -right";
    throw ValueError(m.str());
  }
  // Windows are interned: every SlidingWindow(left, right) alive in the process is one node, so
  // they share one compile cache (pattern/cache.cpp). That is what lets the planner's own
  // windows (residue classes, made anew on every call) and a `Causal()` written inline in a
  // model's forward find their layouts already compiled and uploaded.
  static std::mutex intern_mutex;
  static std::map<std::pair<int64_t, int64_t>, std::weak_ptr<const PatternNode>> interned;
  std::lock_guard<std::mutex> lock(intern_mutex);
  if (interned.size() > 4096)  // drop the windows nobody holds any more
    for (auto it = interned.begin(); it != interned.end();)
      it = it->second.expired() ? interned.erase(it) : std::next(it);
  std::weak_ptr<const PatternNode>& slot = interned[{left, right}];
  std::shared_ptr<const PatternNode> found = slot.lock();
  if (!found) {
    found = make_leaf_node<Window>({left, right});
    slot = found;
  }
  return from_node(std::move(found));
}

}  // namespace spattn
