// The extension module spattn._core: thin pybind11 bindings over the C++ library.
// No attention logic here; the pieces live in capsule.cpp (DLPack), patterns.cpp, ops.cpp.
#include <pybind11/pybind11.h>

#include "capsule.hpp"
#include "spattn/error.hpp"

namespace spattn {
namespace python {
void bind_patterns(py::module_& m);
void bind_ops(py::module_& m);
void bind_merge(py::module_& m);
void bind_decode(py::module_& m);
void bind_select(py::module_& m);
void bind_syntax(py::module_& m);  // syntax.cpp: the pattern text parser
void bind_jax_ffi(py::module_& m);  // jax_ffi.cpp: XLA FFI targets for spattn.jax
}  // namespace python
}  // namespace spattn

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  m.doc() = "spattn's C++ core (internal; use the spattn package).";

  // spattn's errors map one to one onto Python's, message unchanged. Registered translators are
  // tried before pybind11's own, which would turn both ValueError and TypeError (subclasses of
  // std::invalid_argument) into ValueError.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const spattn::TypeError& e) {
      py::set_error(PyExc_TypeError, e.what());
    } catch (const spattn::ValueError& e) {
      py::set_error(PyExc_ValueError, e.what());
    } catch (const spattn::RuntimeError& e) {
      py::set_error(PyExc_RuntimeError, e.what());
    }
  });

  spattn::python::bind_dlpack(m);
  spattn::python::bind_patterns(m);
  spattn::python::bind_ops(m);
  spattn::python::bind_merge(m);
  spattn::python::bind_decode(m);
  spattn::python::bind_select(m);
  spattn::python::bind_syntax(m);
  spattn::python::bind_jax_ffi(m);
}
