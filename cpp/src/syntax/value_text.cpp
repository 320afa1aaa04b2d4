// Numbers and values as text (value_text.hpp).
#include "syntax/value_text.hpp"

#include <charconv>
#include <cmath>
#include <system_error>

namespace spattn {
namespace syntax {

double parse_float(std::string_view s) {
  const bool negative = !s.empty() && s[0] == '-';
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  double out = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out, std::chars_format::general);
  if (r.ec == std::errc::result_out_of_range) {
    // from_chars leaves `out` alone: the decimal exponent of the first nonzero digit says
    // whether it overflowed (inf) or underflowed (0), as strtod would round
    long exponent = 0, lead = 0;
    bool seen_point = false, seen_digit = false;
    size_t k = 0;
    for (; k < s.size() && s[k] != 'e' && s[k] != 'E'; ++k) {
      if (s[k] == '.') {
        seen_point = true;
      } else if (!seen_digit && s[k] == '0') {
        if (seen_point) --lead;
      } else {
        if (!seen_digit && seen_point) --lead;
        seen_digit = true;
        if (!seen_point) ++lead;
      }
    }
    if (k < s.size()) {
      // the exponent's digits; clamp, it only needs its sign and rough size
      const char* e = s.data() + k + 1;
      const char* end = s.data() + s.size();
      const bool eneg = *e == '-';
      if (*e == '-' || *e == '+') ++e;
      for (; e < end && exponent < 100000; ++e) exponent = exponent * 10 + (*e - '0');
      if (eneg) exponent = -exponent;
    }
    out = exponent + lead > 0 ? HUGE_VAL : 0.0;
  }
  return negative ? -out : out;
}

std::string float_text(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f < 0 ? "-inf" : "inf";
  char buf[40];
  // to_chars: the shortest text that reads back exactly, whatever the C locale says
  const auto r = std::to_chars(buf, buf + sizeof buf, f);
  *r.ptr = 0;
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // a float, as Python writes it
  return s;
}

std::string python_repr(const Value& v) {
  switch (v.kind) {
    case Value::None: return "None";
    case Value::Int: return std::to_string(v.i);
    case Value::Float: return float_text(v.f);
    case Value::Bool: return v.i ? "True" : "False";
    case Value::Ref: return "@" + std::to_string(v.i);
    case Value::Pattern: return "<pattern>";
    case Value::Tuple: {
      std::string s = "(";
      for (size_t k = 0; k < v.items.size(); ++k) s += (k ? ", " : "") + python_repr(v.items[k]);
      return s + (v.items.size() == 1 ? ",)" : ")");
    }
  }
  return "?";
}

}  // namespace syntax
}  // namespace spattn
