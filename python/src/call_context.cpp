// CallContext and ImportStream (call_context.hpp).
#include "call_context.hpp"

#include <cmath>
#include <string>

#include "spattn/error.hpp"

namespace spattn {
namespace python {

namespace {
thread_local PyObject* g_import_stream = nullptr;

double parse_scale(py::handle scale) {
  if (scale.is_none()) return 0.0;  // Options: 0 means 1/sqrt(D)
  PyObject* f = PyNumber_Float(scale.ptr());
  if (f == nullptr) {
    PyErr_Clear();
    throw TypeError("scale: expected a float or None, got " +
                    std::string(Py_TYPE(scale.ptr())->tp_name));
  }
  const double s = PyFloat_AsDouble(f);
  Py_DECREF(f);
  if (s == 0.0)  // the core reads 0 as "the default"; a caller's 0 is an error
    throw ValueError("scale: expected a finite, nonzero float (None for 1/sqrt(D)), got 0.0");
  return s;  // finiteness: checked by the core, with every other argument
}
}  // namespace

ImportStream::ImportStream(py::handle stream) : prev_(g_import_stream) {
  g_import_stream = stream ? stream.ptr() : nullptr;
}
ImportStream::~ImportStream() { g_import_stream = prev_.ptr(); }
py::handle ImportStream::current() { return py::handle(g_import_stream); }

CallContext::CallContext(py::handle scale, int num_threads, py::handle stream, py::handle workspace)
    : stream_obj_(stream.is_none() ? py::object()
                                   : py::int_(stream.cast<long long>() == 0 ? 1 : stream.cast<long long>())),
      import_(stream_obj_) {
  opt_.scale = parse_scale(scale);
  opt_.num_threads = num_threads;
  if (!stream.is_none())
    opt_.stream = reinterpret_cast<void*>(uintptr_t(stream.cast<unsigned long long>()));
  if (!workspace.is_none()) {
    workspace_ = py::reinterpret_borrow<py::object>(workspace);
    alloc_.allocate = &CallContext::allocate;
    alloc_.deallocate = &CallContext::deallocate;
    alloc_.ctx = this;
    opt_.allocator = &alloc_;
  }
}

void* CallContext::allocate(void* ctx, size_t bytes, DLDevice, void*) {
  auto* self = static_cast<CallContext*>(ctx);
  py::gil_scoped_acquire gil;
  try {
    py::tuple r = self->workspace_(bytes);
    const uintptr_t ptr = py::int_(r[0]).cast<uintptr_t>();
    std::lock_guard<std::mutex> lock(self->m_);
    self->live_[ptr] = py::reinterpret_borrow<py::object>(r[1]);
    return reinterpret_cast<void*>(ptr);
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable("spattn: the framework's allocator");
    return nullptr;  // the core raises RuntimeError
  }
}

void CallContext::deallocate(void* ctx, void* ptr, size_t, DLDevice, void*) {
  auto* self = static_cast<CallContext*>(ctx);
  py::gil_scoped_acquire gil;
  py::object owner;
  {
    std::lock_guard<std::mutex> lock(self->m_);
    auto it = self->live_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == self->live_.end()) return;
    owner = std::move(it->second);
    self->live_.erase(it);
  }
  // owner's last reference drops here, with the GIL held: the framework's allocator takes the
  // memory back in stream order (torch: for reuse by later work on the same stream).
}

}  // namespace python
}  // namespace spattn
