#include <cstdint>
#include <vector>

namespace spattn {
// Neighborhood(grid, window, dilation, causal, start): NATTEN's neighbourhood attention over
// the tokens start .. start + prod(grid) - 1 laid out row-major on a grid of 1 to 3 dims; one
// window, dilation and causal flag per dim; window * dilation <= extent; start >= 0.
Pattern neighborhood(std::vector<int64_t> grid, std::vector<int64_t> window,
                     std::vector<int64_t> dilation, std::vector<bool> causal, int64_t start = 0);
}  // namespace spattn
