// The canonical text of a syntax tree, and tree equality (spattn/pattern_syntax.hpp). The
// fuzz target checks parse(to_text(t)) == t.
#include <cmath>

#include "spattn/pattern_syntax.hpp"
#include "syntax/value_text.hpp"

namespace spattn {
namespace syntax {

namespace {

void write(const Node& n, std::string& out);

void write(const Value& v, std::string& out) {
  switch (v.kind) {
    case Value::None: out += "none"; break;
    case Value::Int: out += std::to_string(v.i); break;
    case Value::Bool: out += v.i ? "true" : "false"; break;
    case Value::Ref: out += "@" + std::to_string(v.i); break;
    case Value::Float:
      // inf is not a float literal of the syntax; 1e999 reads as it (NaN cannot be written)
      out += std::isinf(v.f) ? (v.f < 0 ? "-1e999" : "1e999") : float_text(v.f);
      break;
    case Value::Tuple:
      out += "(";
      for (size_t k = 0; k < v.items.size(); ++k) {
        if (k) out += ",";
        write(v.items[k], out);
      }
      out += v.items.size() == 1 ? ",)" : ")";
      break;
    case Value::Pattern: write(*v.node, out); break;
  }
}

void write(const Node& n, std::string& out) {
  if (n.kind == Node::Call) {
    out += n.name;
    if (n.args.empty()) return;
    out += "(";
    for (size_t k = 0; k < n.args.size(); ++k) {
      if (k) out += ",";
      write(n.args[k], out);
    }
    out += ")";
    return;
  }
  // '&' binds tighter than '|': an operand needs parentheses when it is a union, or an
  // intersection inside an intersection (a group the text made)
  for (size_t k = 0; k < n.operands.size(); ++k) {
    if (k) out += n.kind == Node::Union ? "|" : "&";
    const Node& o = *n.operands[k];
    const bool group = o.kind == Node::Union || (o.kind == Node::Intersection && n.kind == Node::Intersection);
    if (group) out += "(";
    write(o, out);
    if (group) out += ")";
  }
}

bool same_value(const Value& a, const Value& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::None: return true;
    case Value::Int:
    case Value::Bool:
    case Value::Ref: return a.i == b.i;
    case Value::Float: return a.f == b.f || (std::isnan(a.f) && std::isnan(b.f));
    case Value::Tuple:
      if (a.items.size() != b.items.size()) return false;
      for (size_t k = 0; k < a.items.size(); ++k)
        if (!same_value(a.items[k], b.items[k])) return false;
      return true;
    case Value::Pattern: return same_tree(*a.node, *b.node);
  }
  return false;
}

}  // namespace

std::string to_text(const Node& node) {
  std::string out;
  write(node, out);
  return out;
}

bool same_tree(const Node& a, const Node& b) {
  if (a.kind != b.kind || a.name != b.name || a.args.size() != b.args.size() ||
      a.operands.size() != b.operands.size())
    return false;
  for (size_t k = 0; k < a.args.size(); ++k)
    if (!same_value(a.args[k], b.args[k])) return false;
  for (size_t k = 0; k < a.operands.size(); ++k)
    if (!same_tree(*a.operands[k], *b.operands[k])) return false;
  return true;
}

}  // namespace syntax
}  // namespace spattn
