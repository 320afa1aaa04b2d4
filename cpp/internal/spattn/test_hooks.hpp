// Settings that only tests change. Private to the build (not installed).
#pragma once

#include <cstdint>

namespace spattn::detail {

// The range budget of periodic leaves (Strided, Dilated, Fixed): each row may spend
// max(min_per_row, budget / rows) ranges on exact runs of kept blocks; past that it lists one
// partial range over its kept span (see BlockLayout). Defaults 1 << 21 and 64.
void set_layout_budget(int64_t budget, int64_t min_per_row);
// The budget a layout of `rows` rows gives each row (what the host compiler uses; the device
// compiler, cuda/include/spattn/cuda/device_layout_logic.hpp, is given the same).
int64_t layout_row_budget(int64_t rows);

}  // namespace spattn::detail
