#include <cstdint>

namespace spattn {
// PrefixLM(n): key j is kept when j <= p or j < n, p = i + Nk - Nq: bidirectional attention
// over the first n tokens (the prefix), causal after them. n >= 0 (ValueError otherwise).
Pattern prefix_lm(int64_t n);
}  // namespace spattn
