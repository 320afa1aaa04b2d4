// _core.parse_pattern_text / _core.pattern_syntax_names: the C++ parser of the pattern text
// syntax (spattn/pattern_syntax.hpp), for spattn.pattern_syntax, which maps the tree onto
// pattern objects. Positional arguments only (keyword handling costs every call).
//
// The tree as plain Python values (cheap to make, cheap to walk):
//   call          (name, pos, args)        args: a tuple, one value per parameter; a variadic
//                                          name's arguments as one list (or one @i alone)
//   union         ('|', op_positions, operands)      intersection: ('&', ...)
//   @i            ('@', pos, i)
//   a tuple value a list; none, ints, floats, bools as themselves.
#include <pybind11/pybind11.h>

#include <string>

#include "spattn/pattern_syntax.hpp"

namespace spattn {
namespace python {

namespace py = pybind11;

namespace {

py::object tree(const syntax::Node& n);

py::object value(const syntax::Value& v) {
  using V = syntax::Value;
  switch (v.kind) {
    case V::None: return py::none();
    case V::Int: return py::int_(v.i);
    case V::Float: return py::float_(v.f);
    case V::Bool: return py::bool_(v.i != 0);
    case V::Ref: return py::make_tuple("@", v.pos, v.i);
    case V::Pattern: return tree(*v.node);
    case V::Tuple: {
      py::list items(v.items.size());
      for (size_t k = 0; k < v.items.size(); ++k) items[k] = value(v.items[k]);
      return std::move(items);
    }
  }
  return py::none();
}

py::object tree(const syntax::Node& n) {
  if (n.kind == syntax::Node::Call) {
    const bool packed = n.variadic && !(n.args.size() == 1 && n.args[0].kind == syntax::Value::Ref);
    py::tuple args(packed ? 1 : n.args.size());
    if (packed) {
      py::list items(n.args.size());
      for (size_t k = 0; k < n.args.size(); ++k) items[k] = value(n.args[k]);
      args[0] = std::move(items);
    } else {
      for (size_t k = 0; k < n.args.size(); ++k) args[k] = value(n.args[k]);
    }
    return py::make_tuple(py::str(n.name), n.pos, std::move(args));
  }
  py::tuple ops(n.op_pos.size()), operands(n.operands.size());
  for (size_t k = 0; k < n.op_pos.size(); ++k) ops[k] = py::int_(n.op_pos[k]);
  for (size_t k = 0; k < n.operands.size(); ++k) operands[k] = tree(*n.operands[k]);
  return py::make_tuple(n.kind == syntax::Node::Union ? "|" : "&", std::move(ops), std::move(operands));
}

}  // namespace

void bind_syntax(py::module_& m) {
  // text: the pattern text as UTF-8 bytes (str.encode("utf-8", "surrogatepass")). A syntax
  // error is raised as ValueError(reason, position), the position in characters.
  m.def("parse_pattern_text", [](py::bytes text) -> py::object {
    std::shared_ptr<const syntax::Node> root;
    try {
      root = syntax::parse(std::string(text));
    } catch (const syntax::PatternSyntaxError& e) {
      PyErr_SetObject(PyExc_ValueError, py::make_tuple(e.reason(), e.pos()).ptr());
      throw py::error_already_set();
    }
    return tree(*root);
  });
  // [(name, doc)] in rank order: spattn.pattern_syntax.KNOWN_NAMES and SYNTAX_HELP.
  m.def("pattern_syntax_names", []() {
    py::list out;
    for (const syntax::NameSpec& s : syntax::known_names()) out.append(py::make_tuple(s.name, s.doc));
    return out;
  });
}

}  // namespace python
}  // namespace spattn
