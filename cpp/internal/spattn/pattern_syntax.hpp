// The pattern text syntax (docs/patterns.md, "Pattern text"): text -> a checked syntax tree.
// Private to the build: the Python binding (spattn.pattern_syntax maps the tree onto pattern
// objects), the C++ tests and the fuzz target use it. Nothing is evaluated: the tree holds
// names and literal values, checked against the table of known names (syntax/names.cpp, made
// from every kind folder's syntax.inc), with defaults filled in.
//
//   expr    := term ('|' term)*              union, binds loosest
//   term    := factor ('&' factor)*          intersection
//   factor  := '(' expr ')' | NAME [ '(' [args] ')' ]
//   args    := arg ((',' | ';') arg)*
//   arg     := [NAME '='] value
//   value   := INT | FLOAT | none | inf | true | false | @INT | expr | '(' value (',' value)* [','] ')'
//              (expr only for pattern parameters: perhead's arguments, topk's `always`;
//               a tuple only for the per-dim parameters, kinds ints and bools)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "spattn/error.hpp"

namespace spattn {
namespace syntax {

// Limits that keep any text cheap to refuse: its length (bytes) and how deeply expressions
// nest (parentheses, perhead's and topk's pattern arguments); the parser recurses per level.
constexpr size_t kMaxTextBytes = size_t(1) << 20;
constexpr int kMaxDepth = 100;

// A malformed text: the reason and where, in characters (Unicode code points; an invalid
// UTF-8 byte counts as one) from the start of the text. what() is
// "<reason> (at position <pos>)".
class PatternSyntaxError : public ValueError {
 public:
  PatternSyntaxError(const std::string& reason, size_t pos);
  const std::string& reason() const { return reason_; }
  size_t pos() const { return pos_; }

 private:
  std::string reason_;
  size_t pos_;
};

// What a parameter accepts. Ints and Bools (per-dim values) take one value or a tuple.
enum class ParamKind { Int, OptInt, Bool, Float, Ref, Pattern, Ints, Bools };

// A name whose arguments are all positional and of one kind, passed as one list: Int (each
// argument an integer, or a single @i), Pattern (each an expression).
enum class Variadic { None, Int, Pattern };

struct Node;

// A literal (or a pattern argument) in the tree; `pos` is where it starts in the text.
struct Value {
  enum Kind { None, Int, Float, Bool, Ref, Tuple, Pattern };
  Kind kind = None;
  int64_t i = 0;                       // Int; Bool (0 or 1); Ref (the index of @i)
  double f = 0;                        // Float
  std::vector<Value> items;            // Tuple
  std::shared_ptr<const Node> node;    // Pattern
  size_t pos = 0;
};

// A call `name(args)`, or a union / intersection of two or more operands, left to right
// (`a | b | c` is one Union node; parentheses make nested nodes).
struct Node {
  enum Kind { Call, Union, Intersection };
  Kind kind = Call;
  std::string name;          // Call: the canonical name (lower case, aliases resolved)
  size_t pos = 0;            // Call: where the name starts
  // Call: one value per declared parameter, in order, defaults filled in; a variadic name:
  // its arguments, in order.
  std::vector<Value> args;
  bool variadic = false;     // Call: args are a variadic name's (NameSpec::variadic)
  std::vector<std::shared_ptr<const Node>> operands;  // Union, Intersection
  std::vector<size_t> op_pos;  // Union, Intersection: where operator k (before operand k+1) is
};

// One parameter of a name: its name, kind and default (required when has_default is false).
struct Param {
  const char* name;
  ParamKind kind;
  bool has_default = false;
  Value::Kind default_kind = Value::None;
  int64_t default_int = 0;
  double default_float = 0;
};

// One entry of the table. `rank` orders the names in messages and help (lowest first).
struct NameSpec {
  int rank;
  const char* name;
  std::vector<Param> params;
  std::vector<const char*> aliases;
  const char* doc;  // one line of `spattn show --help`
  Variadic variadic = Variadic::None;
};

// The table, ordered by rank.
const std::vector<NameSpec>& known_names();

// The tree `text` describes; throws PatternSyntaxError.
std::shared_ptr<const Node> parse(const std::string& text);

// Canonical text of a tree (every argument positional, defaults written out, parentheses
// only where needed): parse(to_text(t)) gives t again, positions aside.
std::string to_text(const Node& node);

// Trees equal in everything but positions.
bool same_tree(const Node& a, const Node& b);

}  // namespace syntax
}  // namespace spattn
