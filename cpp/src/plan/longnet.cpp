#include "plan/longnet.hpp"

#include <algorithm>

#include "pattern/kinds/longnet/segments.hpp"

namespace spattn::plan {

namespace {

// Blocks of s class rows; block (a, b) kept when a / m == b / m and b < a (causal) or b != a.
Pattern level_pattern(int64_t n, int64_t s, int64_t m, bool causal) {
  BlockMask mask;
  mask.bq = mask.bk = s;
  mask.nbq = mask.nbk = (n + s - 1) / s;
  mask.bits.assign(size_t(mask.nbq * mask.nbk), 0);
  for (int64_t a = 0; a < mask.nbq; ++a)
    for (int64_t b = a / m * m; b < std::min(mask.nbk, (a / m + 1) * m); ++b)
      if (causal ? b < a : b != a) mask.bits[size_t(a * mask.nbk + b)] = 1;
  return Pattern::block_sparse(std::move(mask));
}

std::shared_ptr<const LongNetPlan> make_plan(const std::vector<int64_t>& wr, bool causal,
                                             int64_t n) {
  const size_t K = wr.size() / 2;  // wr: w0, r0, w1, r1, ...
  if (K < 2 || wr[1] != 1) return nullptr;
  for (size_t k = 1; k < K; ++k) {
    const int64_t w0 = wr[2 * k - 2], r0 = wr[2 * k - 1], w = wr[2 * k], r = wr[2 * k + 1];
    if (w % w0 != 0 || r % r0 != 0 || w0 % r != 0) return nullptr;
    if (n / r < 64) return nullptr;  // classes too small to fill a tile: walk instead
  }
  auto plan = std::make_shared<LongNetPlan>();
  plan->first = longnet({wr[0]}, {1}, causal);
  for (size_t k = 1; k < K; ++k) {
    LongNetLevel l;
    l.r = wr[2 * k + 1];
    const int64_t s = wr[2 * k - 2] / l.r, m = wr[2 * k] / wr[2 * k - 2];
    l.n_small = n / l.r;
    l.parts[0] = level_pattern(l.n_small, s, m, causal);
    l.parts[1] = level_pattern(l.n_small + 1, s, m, causal);
    plan->levels.push_back(std::move(l));
  }
  return plan;
}

}  // namespace

std::shared_ptr<const LongNetPlan> longnet_plan(const Pattern& p, int64_t n, int64_t hq) {
  std::vector<int64_t> wr;
  bool causal = true;
  if (!detail::longnet_segments(p.node(), &wr, &causal)) return nullptr;
  const std::shared_ptr<const CompiledPattern> cp = p.compiled(n, n, hq);
  std::shared_ptr<void> made = cp->attachment("plan.longnet", [&]() -> std::shared_ptr<void> {
    std::shared_ptr<const LongNetPlan> plan = make_plan(wr, causal, n);
    // An empty plan is remembered too (a null would be made again on every call).
    return plan ? std::const_pointer_cast<LongNetPlan>(plan) : std::make_shared<LongNetPlan>();
  });
  auto plan = std::static_pointer_cast<const LongNetPlan>(made);
  return plan->first.valid() ? plan : nullptr;
}

}  // namespace spattn::plan
