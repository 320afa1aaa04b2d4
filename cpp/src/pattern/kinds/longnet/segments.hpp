// LongNet's parameters for the planner (plan/longnet.cpp), which runs it by levels.
#pragma once

#include <cstdint>
#include <vector>

#include "pattern/node.hpp"

namespace spattn::detail {

// True when n is a LongNet leaf: its w0, r0, w1, r1, ... and causal flag.
bool longnet_segments(const PatternNode& n, std::vector<int64_t>* wr, bool* causal);

}  // namespace spattn::detail
