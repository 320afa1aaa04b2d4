#include <cstdint>
#include <vector>

namespace spattn {
// SlidingTile(grid, tile, window_tiles, start): whole-tile windows over a 2D or 3D grid whose
// tokens are numbered tile-major; tile divides grid, window_tiles <= grid / tile per dim.
Pattern sliding_tile(std::vector<int64_t> grid, std::vector<int64_t> tile,
                     std::vector<int64_t> window_tiles, int64_t start = 0);
}  // namespace spattn
