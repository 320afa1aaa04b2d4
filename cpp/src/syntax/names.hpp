// Looking names up in the table of the text syntax (names.cpp).
#pragma once

#include <string>
#include <string_view>

#include "spattn/pattern_syntax.hpp"

namespace spattn {
namespace syntax {

// The entry for a lower-case name or alias; nullptr if none.
const NameSpec* find_name(std::string_view lower);

// "dense, causal, window, ...": every name, in rank order.
const std::string& known_list();

// The name or alias closest to `lower` as Python's difflib.get_close_matches(lower, names +
// aliases, n=1) finds it (similarity ratio >= 0.6), or "" when none is that close.
std::string closest_name(std::string_view lower);

}  // namespace syntax
}  // namespace spattn
