#include <cstdint>
#include <vector>

namespace spattn {
// LongNet(segments, dilations, causal): LongNet's dilated attention, Nq = Nk (checked with the
// problem); as many dilations as segment sizes, each segment size a multiple of its dilation.
Pattern longnet(std::vector<int64_t> segments, std::vector<int64_t> dilations, bool causal = true);
}  // namespace spattn
