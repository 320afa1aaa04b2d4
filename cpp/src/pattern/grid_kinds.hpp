// Neighborhood, SlidingTile and LongNet: what pattern.cpp needs of them (grid_kinds.cpp).
#pragma once

#include <ostream>

#include "spattn/pattern.hpp"

namespace spattn::detail {

void describe_grid_kind(const PatternNode& n, std::ostream& s);
void describe_longnet(const PatternNode& n, std::ostream& s);
void check_grid_kind(const PatternNode& n, int64_t nq, int64_t nk);
void check_longnet(const PatternNode& n, int64_t nq, int64_t nk);

}  // namespace spattn::detail
