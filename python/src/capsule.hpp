// DLPack between Python and spattn: importing any array with __dlpack__ as a ManagedTensor, and
// exporting a ManagedTensor as a Python object with __dlpack__ (DLPackTensor).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // every translation unit sees the same type casters

#include "spattn/tensor.hpp"

namespace spattn {
namespace detail {
// Defined in cpp/src/tensor.cpp: buffers made by ManagedTensor::allocate_cpu and not yet freed.
int64_t live_cpu_allocations();
}  // namespace detail

namespace python {

namespace py = pybind11;

// Import `obj` (numpy, torch, cupy, jax, ... or anything with __dlpack__) without copying.
// `name` is the argument name used in error messages. The result owns the producer's tensor
// and calls its deleter exactly once. `versioned` (optional) tells which capsule form came.
ManagedTensor import_array(py::handle obj, const char* name, bool* versioned = nullptr);

// A Python-visible owner of one ManagedTensor that hands it out once through __dlpack__.
class DLPackTensor {
 public:
  explicit DLPackTensor(ManagedTensor t);

  // The DLPack protocol (array API 2023.12 signature).
  py::capsule dlpack(py::object stream, py::object max_version, py::object dl_device,
                     py::object copy);
  py::tuple dlpack_device() const;

  bool exported() const { return tensor_.empty(); }
  const ManagedTensor& tensor() const { return tensor_; }
  py::tuple shape() const;
  std::string dtype() const;
  std::string repr() const;
  // Address of the first element (data + byte_offset), remembered from construction.
  uintptr_t data_ptr() const { return data_ptr_; }

 private:
  ManagedTensor tensor_;
  // Remembered so that __dlpack_device__ and __repr__ still answer after export.
  DLDevice device_{kDLCPU, 0};
  std::vector<int64_t> shape_;
  DLDataType dtype_{kDLFloat, 32, 1};
  uintptr_t data_ptr_ = 0;
};

// Wrap a ManagedTensor in a new Python DLPackTensor.
py::object make_holder(ManagedTensor t);

void bind_dlpack(py::module_& m);

}  // namespace python
}  // namespace spattn
