// Settings that only tests change. Private to the build (not installed).
#pragma once

#include <cstdint>

namespace spattn::detail {

// The range budget of periodic leaves (Strided, Dilated, Fixed): each row may spend
// max(min_per_row, budget / rows) ranges on exact runs of kept blocks; past that it lists one
// partial range over its kept span (see BlockLayout). Defaults 1 << 21 and 64.
void set_layout_budget(int64_t budget, int64_t min_per_row);

}  // namespace spattn::detail
