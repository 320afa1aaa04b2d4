// Numbers and values as text (value_text.hpp).
#include "syntax/value_text.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
  // the shortest digits that read back exactly (to_chars, whatever the C locale says), laid
  // out as Python's repr(): positional for exponents -4 .. 15, else d.ddde+XX
  char buf[40];
  const auto r = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  const std::string sci(buf, r.ptr);  // [-]d[.ddd]e[+-]XX
  const size_t e = sci.find('e');
  const bool negative = sci[0] == '-';
  std::string digits;
  for (size_t k = negative ? 1 : 0; k < e; ++k)
    if (sci[k] != '.') digits += sci[k];
  const int exponent = std::atoi(sci.c_str() + e + 1);
  std::string out = negative ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ex[16];
    std::snprintf(ex, sizeof ex, "e%c%02d", exponent < 0 ? '-' : '+', exponent < 0 ? -exponent : exponent);
    return out + ex;
  }
  if (exponent < 0) return out + "0." + std::string(size_t(-exponent - 1), '0') + digits;
  const size_t point = size_t(exponent) + 1;
  if (digits.size() <= point) return out + digits + std::string(point - digits.size(), '0') + ".0";
  return out + digits.substr(0, point) + "." + digits.substr(point);
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
