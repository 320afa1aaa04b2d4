// The checks of the score modifiers (options.hpp, Modifiers), written once for attention, its
// backward, the varlen forms and decode.
#pragma once

#include <cstdint>

#include "backend/backend.hpp"
#include "spattn/options.hpp"
#include "spattn/tensor.hpp"

namespace spattn::plan {

// Checks m against q (device, its dtype `dtype`) and hq query heads: softcap finite and >= 0
// (0: none); alibi_slopes and sinks [hq] of lse's dtype (float32; float64 for float64 inputs) on
// q's device; slopes finite, sinks finite or -inf (the values are read where the arrays are in
// host memory); dsinks, when wanted (backward only), [hq] of the same dtype, writable, and only
// with sinks. Returns the modifiers with their data pointers; *dsinks gets dsinks' view (data
// null: not wanted).
backend::ScoreMods check_modifiers(const Modifiers& m, const TensorView& q, DType dtype, int64_t hq,
                                   bool backward, TensorView* dsinks);

// RuntimeError when mods are used and the backend does not run them for op.
void expect_modifiers_supported(const backend::ScoreMods& mods, const backend::Backend& be,
                                backend::Op op, const backend::Call& call, const TensorView& q);

}  // namespace spattn::plan
