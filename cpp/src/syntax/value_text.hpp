// Numbers and values as text, for the parser's messages and the printer.
#pragma once

#include <string>
#include <string_view>

#include "spattn/pattern_syntax.hpp"

namespace spattn {
namespace syntax {

// A float literal of the syntax (lexer.hpp's NUM) as Python's float() reads it: nearest
// double, inf past the largest, 0 below the smallest.
double parse_float(std::string_view s);

// The shortest text that reads back as exactly f ("inf" and "nan" for those).
std::string float_text(double f);

// `v` as Python's repr() writes the value the old parser made: 3, 1.5, True, None, @2, (1, 2).
std::string python_repr(const Value& v);

}  // namespace syntax
}  // namespace spattn
