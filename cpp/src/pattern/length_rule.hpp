// Whether a pattern's rule is the same for every key length Nk, so that a decode whose lengths
// live on a device (cuda decode, cuda/src/host/decode_device_plan.cpp) can be planned there
// without the host ever reading them.
//
// It is when every leaf's kind is length_free (pattern/kind.hpp: no data prepared per size, and
// a fit to the problem that depends on Nk at most as Nk >= min_keys). Then the program compiled
// for one Nk >= min_keys serves every Nk (its `off` aside, which the device sets per sequence),
// and a sequence with 0 < Nk < min_keys is the one error left to find on the device.
#pragma once

#include <cstdint>
#include <string>

#include "spattn/pattern.hpp"

namespace spattn {

struct LengthRule {
  bool free = false;     // the rule does not depend on Nk
  std::string why;       // when not: which node depends on it
  int64_t min_keys = 0;  // the largest min_keys of its leaves
};

LengthRule length_rule(const Pattern& p);

}  // namespace spattn
