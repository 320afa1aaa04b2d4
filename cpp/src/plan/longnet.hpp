// LongNet by residue classes: the plan that runs LongNet(segments w_k, dilations r_k) at the
// speed of dense blocks.
//
// When the segments nest (r_0 = 1; for k >= 1: w_{k-1} divides w_k, r_{k-1} divides r_k, r_k
// divides w_{k-1}), the kept pairs of head h split into disjoint parts:
//   - part 0: same w_0-segment (and j <= i if causal): LongNet((w_0,), (1,)) itself, all heads
//     at once, whose segments are full blocks;
//   - part k >= 1: same w_k-segment but not the same w_{k-1}-segment, i = j = h (mod r_k). On
//     the residue class c = h % r_k (rows c, c + r_k, ... of q, k, v: a strided view of head h,
//     no copy) that is a block pattern with blocks of s = w_{k-1} / r_k class rows: block (a, b)
//     is kept when a // m == b // m (m = w_k / w_{k-1}) and b < a (causal; b != a otherwise),
//     and then every pair in it is kept: a BlockSparse of full blocks only.
// (A pair kept through k is kept through no k' < k exactly when it is not in the same
// w_{k-1}-segment: its residues agree mod every r_{k'}, which divide r_k, and the w_{k'}-segments
// nest in the w_{k-1}-segment.) Results merge exactly through their logsumexps; gradients add.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "spattn/pattern.hpp"

namespace spattn::plan {

struct LongNetLevel {
  int64_t r = 1;  // the dilation: classes of rows c, c + r, ...
  // The class pattern for a class of n rows: parts[0] for n = n_small, parts[1] for n_small + 1.
  int64_t n_small = 0;
  Pattern parts[2];
};

struct LongNetPlan {
  Pattern first;                     // part 0, on the whole problem
  std::vector<LongNetLevel> levels;  // parts k >= 1
};

// The plan of a LongNet pattern for an n-token problem, or null when the segments do not nest
// (or a class would be too small to fill tiles): the pattern is then walked as it is. Kept with
// the compiled pattern (made once per problem size).
std::shared_ptr<const LongNetPlan> longnet_plan(const Pattern& p, int64_t n, int64_t hq);

}  // namespace spattn::plan
