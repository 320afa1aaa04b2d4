// Tokens of the pattern text (lexer.hpp). The token rules are those of the Python parser this
// replaced: NUM [-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?, NAME [A-Za-z_][A-Za-z0-9_]*, REF @\d+,
// OP one of ()|&,;=, and whitespace as Python's str.isspace() (Unicode spaces included).
#include "syntax/lexer.hpp"

#include <cstdint>
#include <cstdio>

#include "spattn/pattern_syntax.hpp"

namespace spattn {
namespace syntax {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }
bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// The code point at s[i] and its length in bytes; an invalid byte is itself (-1 - byte), one
// byte long. Surrogates encoded as three bytes are accepted (Python's "surrogatepass", which
// is how a str with lone surrogates reaches here).
int32_t decode(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  *len = 1;
  if (c < 0x80) return c;
  auto cont = [&](size_t k) { return i + k < s.size() && is_continuation(s[i + k]); };
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[i + k]) & 0x3F; };
  if (c >= 0xC2 && c <= 0xDF && cont(1)) {
    *len = 2;
    return ((c & 0x1F) << 6) | at(1);
  }
  if (c >= 0xE0 && c <= 0xEF && cont(1) && cont(2)) {
    const int32_t cp = ((c & 0x0F) << 12) | (at(1) << 6) | at(2);
    if (cp >= 0x800) {
      *len = 3;
      return cp;
    }
  }
  if (c >= 0xF0 && c <= 0xF4 && cont(1) && cont(2) && cont(3)) {
    const int32_t cp = ((c & 0x07) << 18) | (at(1) << 12) | (at(2) << 6) | at(3);
    if (cp >= 0x10000 && cp <= 0x10FFFF) {
      *len = 4;
      return cp;
    }
  }
  return -1 - c;
}

// Python's str.isspace().
bool is_space(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The length of a number starting at s[i], 0 if none does.
size_t number_length(std::string_view s, size_t i) {
  size_t j = i;
  auto digits = [&]() {
    const size_t from = j;
    while (j < s.size() && is_digit(s[j])) ++j;
    return j > from;
  };
  if (j < s.size() && (s[j] == '-' || s[j] == '+')) ++j;
  if (digits()) {
    if (j < s.size() && s[j] == '.') {
      ++j;
      digits();
    }
  } else if (j + 1 < s.size() && s[j] == '.' && is_digit(s[j + 1])) {
    ++j;
    digits();
  } else {
    return 0;
  }
  if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
    size_t k = j + 1;
    if (k < s.size() && (s[k] == '-' || s[k] == '+')) ++k;
    if (k < s.size() && is_digit(s[k])) {
      j = k;
      digits();
    }
  }
  return j - i;
}

void escape(int32_t cp, std::string& out) {
  char buf[16];
  if (cp < 0) {  // an invalid byte
    std::snprintf(buf, sizeof buf, "\\x%02x", -1 - cp);
  } else if (cp == '\\' || cp == '\'') {
    std::snprintf(buf, sizeof buf, "\\%c", static_cast<char>(cp));
  } else if (cp >= 0x20 && cp < 0x7F) {
    buf[0] = static_cast<char>(cp);
    buf[1] = 0;
  } else if (cp == '\t' || cp == '\n' || cp == '\r') {
    std::snprintf(buf, sizeof buf, "\\%c", cp == '\t' ? 't' : cp == '\n' ? 'n' : 'r');
  } else if (cp < 0x100) {
    std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(cp));
  } else if (cp < 0x10000) {
    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
  } else {
    std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(cp));
  }
  out += buf;
}

}  // namespace

std::string quoted(std::string_view text) {
  std::string out = "'";
  for (size_t i = 0, len = 0; i < text.size(); i += len) escape(decode(text, i, &len), out);
  return out + "'";
}

std::vector<Token> tokenize(std::string_view s) {
  std::vector<Token> toks;
  size_t i = 0, pos = 0;  // byte, character
  while (true) {
    size_t len = 1;
    while (i < s.size()) {
      if (static_cast<unsigned char>(s[i]) < 0x80) {  // the common case, without decoding
        const char c = s[i];
        if (!((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20))) break;
        ++i;
      } else {
        if (!is_space(decode(s, i, &len))) break;
        i += len;
      }
      ++pos;
    }
    if (i >= s.size()) {
      toks.push_back({Token::End, std::string_view(), pos});
      return toks;
    }
    const char c = s[i];
    Token::Kind kind;
    size_t n = 0;
    if ((n = number_length(s, i)) > 0) {
      kind = Token::Num;
    } else if (is_name_start(c)) {
      kind = Token::Name;
      n = 1;
      while (i + n < s.size() && is_name_char(s[i + n])) ++n;
    } else if (c == '@' && i + 1 < s.size() && is_digit(s[i + 1])) {
      kind = Token::Ref;
      n = 1;
      while (i + n < s.size() && is_digit(s[i + n])) ++n;
    } else if (c == '(' || c == ')' || c == '|' || c == '&' || c == ',' || c == ';' || c == '=') {
      kind = Token::Op;
      n = 1;
    } else {
      size_t clen = 0;
      decode(s, i, &clen);
      throw PatternSyntaxError("unexpected character " + quoted(s.substr(i, clen)), pos);
    }
    toks.push_back({kind, s.substr(i, n), pos});
    i += n;
    pos += n;  // tokens are ASCII: one byte, one character
  }
}

}  // namespace syntax
}  // namespace spattn
