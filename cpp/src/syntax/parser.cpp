// The parser of the pattern text syntax (spattn/pattern_syntax.hpp): recursive descent over
// the tokens, then each call checked against its table entry (names.cpp). The messages are
// those of the Python parser this replaced; positions are characters (lexer.hpp).
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "spattn/pattern_syntax.hpp"
#include "syntax/lexer.hpp"
#include "syntax/names.hpp"
#include "syntax/value_text.hpp"

namespace spattn {
namespace syntax {

PatternSyntaxError::PatternSyntaxError(const std::string& reason, size_t pos)
    : ValueError(reason + " (at position " + std::to_string(pos) + ")"), reason_(reason), pos_(pos) {}

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// An argument as written, before it is checked against the parameters.
struct RawArg {
  std::string keyword;  // lower case; empty when positional
  std::string keyword_text;
  Value value;
};

class Parser {
 public:
  explicit Parser(std::string_view text) : toks_(tokenize(text)) {}

  std::shared_ptr<const Node> parse() {
    if (tok().kind == Token::End) fail("empty pattern; known names: " + known_list());
    auto p = expr();
    if (tok().kind != Token::End)
      fail("expected '|', '&' or the end, found " + describe(tok()));
    return p;
  }

 private:
  std::vector<Token> toks_;
  size_t i_ = 0;
  int depth_ = 0;

  const Token& tok() const { return toks_[i_]; }
  const Token& next() const { return toks_[i_ + 1 < toks_.size() ? i_ + 1 : i_]; }

  [[noreturn]] void fail(const std::string& reason) const { fail_at(reason, tok().pos); }
  [[noreturn]] static void fail_at(const std::string& reason, size_t pos) {
    throw PatternSyntaxError(reason, pos);
  }

  static std::string describe(const Token& t) {
    return t.kind == Token::End ? "the end of the text" : quoted(t.text);
  }
  bool is_op(char op) const {
    return tok().kind == Token::Op && tok().text[0] == op;
  }
  bool accept(char op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  void expect(char op, const std::string& context) {
    if (!accept(op))
      fail("expected '" + std::string(1, op) + "' " + context + ", found " + describe(tok()));
  }

  // expr := term ('|' term)*; term := factor ('&' factor)*
  std::shared_ptr<const Node> expr() {
    if (++depth_ > kMaxDepth)
      fail("the pattern nests deeper than " + std::to_string(kMaxDepth) + " levels");
    auto p = chain('|', Node::Union);
    --depth_;
    return p;
  }
  std::shared_ptr<const Node> chain(char op, Node::Kind kind) {
    auto first = op == '|' ? chain('&', Node::Intersection) : factor();
    if (!is_op(op)) return first;
    auto node = std::make_shared<Node>();
    node->kind = kind;
    node->pos = tok().pos;
    node->operands.push_back(std::move(first));
    while (is_op(op)) {
      node->op_pos.push_back(tok().pos);
      ++i_;
      node->operands.push_back(op == '|' ? chain('&', Node::Intersection) : factor());
    }
    return node;
  }

  // factor := '(' expr ')' | NAME [ '(' [args] ')' ]
  std::shared_ptr<const Node> factor() {
    const Token t = tok();
    if (accept('(')) {
      auto p = expr();
      expect(')', "to close the '(' at position " + std::to_string(t.pos));
      return p;
    }
    if (t.kind != Token::Name)
      fail("expected a pattern name or '(', found " + describe(t) + "; known names: " + known_list());
    ++i_;
    return call(t);
  }

  std::shared_ptr<const Node> call(const Token& name) {
    const std::string key = lower(name.text);
    const NameSpec* spec = find_name(key);
    if (!spec) {
      const std::string close = closest_name(key);
      fail_at("unknown pattern " + quoted(name.text) +
                  (close.empty() ? "" : " (did you mean " + quoted(close) + "?)") +
                  "; known names: " + known_list(),
              name.pos);
    }
    std::vector<RawArg> args;
    bool keywords = false;  // seen one (positional arguments must come first)
    if (accept('(') && !accept(')')) {
      while (true) {
        argument(*spec, args, keywords);
        if (accept(')')) break;
        if (!(accept(',') || accept(';')))
          fail("expected ',' or ')' in the arguments of " + std::string(spec->name) +
               "(...), found " + describe(tok()));
      }
    }
    return check(*spec, name.pos, std::move(args));
  }

  void argument(const NameSpec& spec, std::vector<RawArg>& args, bool& keywords) {
    const std::string key = spec.name;
    const Token t = tok();
    if (t.kind == Token::Name && next().kind == Token::Op && next().text[0] == '=') {
      const std::string kw = lower(t.text);
      const Param* param = find_param(spec, kw);
      if (!param) {
        std::string known;
        for (const Param& p : spec.params) known += (known.empty() ? "" : ", ") + std::string(p.name);
        fail(key + "() has no argument " + quoted(t.text) + " (its keywords: " +
             (known.empty() ? "none" : known) + ")");
      }
      for (const RawArg& a : args)  // few: every keyword names a parameter, once
        if (a.keyword == kw) fail(key + "(): argument " + quoted(t.text) + " given twice");
      keywords = true;
      i_ += 2;
      args.push_back({kw, std::string(t.text), value(spec, param)});
      return;
    }
    if (keywords) fail(key + "(): a positional argument after a keyword argument");
    const size_t n = args.size();
    args.push_back({"", "", value(spec, n < spec.params.size() ? &spec.params[n] : nullptr)});
  }

  static const Param* find_param(const NameSpec& spec, const std::string& name) {
    for (const Param& p : spec.params)
      if (name == p.name) return &p;
    return nullptr;
  }

  // value := INT | FLOAT | none | inf | true | false | REF | expr | tuple
  Value value(const NameSpec& spec, const Param* param) {
    const Token t = tok();
    Value v;
    v.pos = t.pos;
    const bool pattern_param = param && param->kind == ParamKind::Pattern;
    if (spec.variadic == Variadic::Pattern || pattern_param) {
      if (pattern_param && t.kind == Token::Name && lower(t.text) == "none") {
        ++i_;
        return v;
      }
      v.kind = Value::Pattern;
      v.node = expr();
      return v;
    }
    if (param && (param->kind == ParamKind::Ints || param->kind == ParamKind::Bools) && accept('(')) {
      v.kind = Value::Tuple;  // one value per grid dim (or per segment)
      while (true) {
        v.items.push_back(value(spec, nullptr));
        if (accept(')')) return v;
        expect(',', "between the values of a tuple in " + std::string(spec.name) + "(...)");
        if (accept(')')) return v;  // (13,)
      }
    }
    if (t.kind == Token::Ref) {
      ++i_;
      v.kind = Value::Ref;
      v.i = integer(t.text.substr(1), t.pos);
      return v;
    }
    if (t.kind == Token::Num) {
      ++i_;
      number(t, v);
      return v;
    }
    if (t.kind == Token::Name) {
      const std::string w = lower(t.text);
      if (w == "none" || w == "inf" || w == "true" || w == "false") {
        ++i_;
        if (w == "true" || w == "false") {
          v.kind = Value::Bool;
          v.i = w == "true";
        }
        return v;
      }
    }
    fail("expected a number, none, true, false or @i as an argument of " + std::string(spec.name) +
         "(...), found " + describe(t));
  }

  // An integer literal (optional sign, digits); int64 only.
  static int64_t integer(std::string_view s, size_t pos) {
    const std::string_view digits = !s.empty() && s[0] == '+' ? s.substr(1) : s;
    int64_t out = 0;
    const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), out);
    if (r.ec != std::errc() || r.ptr != digits.data() + digits.size())
      fail_at("integer " + std::string(s) + " is out of range (a 64-bit signed integer)", pos);
    return out;
  }

  static void number(const Token& t, Value& v) {
    const std::string_view s = t.text;
    bool plain = true;  // [-+]?\d+
    for (size_t k = 0; k < s.size(); ++k)
      if (!(s[k] >= '0' && s[k] <= '9') && !(k == 0 && (s[k] == '-' || s[k] == '+'))) plain = false;
    if (plain) {
      v.kind = Value::Int;
      v.i = integer(s, t.pos);
      return;
    }
    v.kind = Value::Float;
    v.f = parse_float(s);
  }

  // Check a call against its parameters: the tree node, or the first problem.
  std::shared_ptr<const Node> check(const NameSpec& spec, size_t pos, std::vector<RawArg> raw) {
    const std::string key = spec.name;
    auto node = std::make_shared<Node>();
    node->kind = Node::Call;
    node->name = key;
    node->pos = pos;
    size_t positional = 0;
    for (const RawArg& a : raw) positional += a.keyword.empty();
    if (spec.variadic != Variadic::None) {
      if (positional < raw.size()) fail_at(key + "() takes no keyword arguments", pos);
      if (raw.empty()) fail_at(key + "() needs at least one argument", pos);
      node->variadic = true;
      const bool one_ref = raw.size() == 1 && raw[0].value.kind == Value::Ref;
      for (RawArg& a : raw) {
        if (spec.variadic == Variadic::Int && !one_ref)
          coerce(a.value, ParamKind::Int, key + "() position");
        node->args.push_back(std::move(a.value));
      }
      return node;
    }
    const auto& params = spec.params;
    if (positional > params.size()) {
      std::string names;
      for (const Param& p : params) names += (names.empty() ? "" : ", ") + std::string(p.name);
      fail_at(key + "() takes at most " + std::to_string(params.size()) + " argument(s) (" +
                  (names.empty() ? "none" : names) + "), got " + std::to_string(positional),
              raw[params.size()].value.pos);
    }
    std::vector<bool> given(params.size(), false);
    node->args.resize(params.size());
    for (size_t k = 0; k < raw.size(); ++k) {
      size_t at = k;  // positional arguments come first
      if (!raw[k].keyword.empty()) {
        at = static_cast<size_t>(find_param(spec, raw[k].keyword) - params.data());
        if (given[at])
          fail_at(key + "(): argument " + quoted(raw[k].keyword) + " given twice", raw[k].value.pos);
      }
      coerce(raw[k].value, params[at].kind, key + "(): " + params[at].name);
      given[at] = true;
      node->args[at] = std::move(raw[k].value);
    }
    std::string missing;
    for (size_t k = 0; k < params.size(); ++k)
      if (!given[k] && !params[k].has_default) missing += (missing.empty() ? "" : ", ") + std::string(params[k].name);
    if (!missing.empty()) {
      std::string sig;
      for (const Param& p : params) {
        sig += (sig.empty() ? "" : ", ") + std::string(p.name);
        if (p.has_default) sig += "=" + python_repr(default_value(p, pos));
      }
      fail_at(key + "(" + sig + "): missing " + missing, pos);
    }
    for (size_t k = 0; k < params.size(); ++k)
      if (!given[k]) node->args[k] = default_value(params[k], pos);
    return node;
  }

  static Value default_value(const Param& p, size_t pos) {
    Value v;
    v.kind = p.default_kind;
    v.i = p.default_int;
    v.f = p.default_float;
    v.pos = pos;
    return v;
  }

  // Is `v` of the parameter's kind? Ints become floats for float parameters.
  static void coerce(Value& v, ParamKind kind, const std::string& what) {
    auto all = [&](Value::Kind k) {
      if (v.kind != Value::Tuple) return v.kind == k;
      for (const Value& x : v.items)
        if (x.kind != k) return false;
      return true;
    };
    bool ok = false;
    const char* want = "";
    switch (kind) {
      case ParamKind::Int: ok = v.kind == Value::Int; want = "an integer"; break;
      case ParamKind::OptInt:
        ok = v.kind == Value::Int || v.kind == Value::None;
        want = "an integer or none";
        break;
      case ParamKind::Bool: ok = v.kind == Value::Bool; want = "true or false"; break;
      case ParamKind::Float:
        ok = v.kind == Value::Int || v.kind == Value::Float;
        want = "a number";
        break;
      case ParamKind::Ref: ok = v.kind == Value::Ref; want = "an array reference @i"; break;
      case ParamKind::Pattern:
        ok = v.kind == Value::Pattern || v.kind == Value::None;
        want = "a pattern or none";
        break;
      case ParamKind::Ints: ok = all(Value::Int); want = "an integer or a tuple of integers"; break;
      case ParamKind::Bools: ok = all(Value::Bool); want = "true, false or a tuple of them"; break;
    }
    if (!ok) fail_at(what + ": expected " + want + ", got " + python_repr(v), v.pos);
    if (kind == ParamKind::Float && v.kind == Value::Int) {
      v.kind = Value::Float;
      v.f = static_cast<double>(v.i);
      v.i = 0;
    }
  }
};

}  // namespace

std::shared_ptr<const Node> parse(const std::string& text) {
  if (text.size() > kMaxTextBytes)
    throw PatternSyntaxError("the text is " + std::to_string(text.size()) + " bytes long; at most " +
                                 std::to_string(kMaxTextBytes) + " are accepted",
                             0);
  return Parser(text).parse();
}

}  // namespace syntax
}  // namespace spattn
