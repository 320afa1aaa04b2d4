// The tokens of the pattern text syntax (spattn/pattern_syntax.hpp), and how messages quote
// text. Positions are in characters (code points; an invalid UTF-8 byte counts as one), as
// Python counts them in the str the text came from.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace spattn {
namespace syntax {

struct Token {
  enum Kind { Num, Name, Ref, Op, End };
  Kind kind;
  std::string_view text;  // into the parsed text; empty for End
  size_t pos;             // in characters
};

// Every token of `text`, ending with End (whose position is the text's length, in characters);
// throws PatternSyntaxError at the first character that starts no token.
std::vector<Token> tokenize(std::string_view text);

// 'text' as Python's ascii(str) writes it (single quotes, non-ASCII escaped): messages stay
// ASCII whatever bytes the text held.
std::string quoted(std::string_view text);

}  // namespace syntax
}  // namespace spattn
