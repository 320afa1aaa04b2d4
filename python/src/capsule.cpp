// DLPack import (any __dlpack__ producer -> ManagedTensor) and export (DLPackTensor.__dlpack__).
//
// Ownership rule, both ways: a capsule named "dltensor[_versioned]" owns its tensor and its
// destructor calls the deleter; whoever consumes it renames it "used_dltensor[_versioned]" first,
// and from then on the consumer's owner (ManagedTensor here) calls the deleter, exactly once.
#include "capsule.hpp"

#include "call_context.hpp"

#include <cstring>
#include <string>

#include "spattn/cuda/allocate.hpp"
#include "spattn/error.hpp"

namespace spattn {
namespace python {

namespace {

constexpr const char* kVersionedName = "dltensor_versioned";
constexpr const char* kUsedVersionedName = "used_dltensor_versioned";
constexpr const char* kLegacyName = "dltensor";
constexpr const char* kUsedLegacyName = "used_dltensor";

// "list", "numpy.ndarray", "torch.Tensor": the type of obj, for messages.
std::string type_name(py::handle obj) {
  py::handle t = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  std::string qual = Py_TYPE(obj.ptr())->tp_name;
  py::object q = py::getattr(t, "__qualname__", py::none());
  py::object m = py::getattr(t, "__module__", py::none());
  if (py::isinstance<py::str>(q)) qual = q.cast<std::string>();
  if (py::isinstance<py::str>(m)) {
    std::string mod = m.cast<std::string>();
    if (mod != "builtins") return mod + "." + qual;
  }
  return qual;
}

// The device a producer says its data is on (__dlpack_device__); CPU when it does not say.
DLDevice producer_device(py::handle obj) {
  if (!py::hasattr(obj, "__dlpack_device__")) return DLDevice{kDLCPU, 0};
  py::tuple d = obj.attr("__dlpack_device__")();
  if (d.size() != 2) throw py::value_error("__dlpack_device__ must return (device_type, device_id)");
  // An enum may only hold values of its range (0..31 for DLDeviceType); any other number
  // is a device spattn does not know (view_of refuses it by its number later).
  const long long type = py::int_(d[0]).cast<long long>();
  return DLDevice{type >= 0 && type < 32 ? static_cast<DLDeviceType>(type) : kDLExtDev,
                  py::int_(d[1]).cast<int32_t>()};
}

// Keyword arguments for __dlpack__ besides max_version, decided by the producer's device.
//
// CPU: none. The array API requires stream to be None (or absent) for CPU data, and some
// producers reject the keyword altogether, so it is not passed.
//
// CUDA: the stream spattn will run on (ImportStream, set by the call: an int, 1 = legacy
// default stream, else a cudaStream_t), so that the producer makes its pending work visible to
// that stream before handing the data over. No stream set: none is passed, which the protocol
// reads as "synchronise with the legacy default stream" for CUDA producers.
py::dict dlpack_kwargs(const DLDevice& device) {
  py::dict kw;
  const py::handle stream = ImportStream::current();
  if ((device.device_type == kDLCUDA || device.device_type == kDLCUDAManaged) && stream)
    kw["stream"] = stream;
  return kw;
}

// A producer's error (torch: "Can't export tensors that require gradient", "Unknown device type
// meta", ...) raised again with the argument's name in front, as the same builtin exception
// class (cause: the original). Exceptions of other classes pass unchanged.
//
// A producer's BufferError becomes spattn._core.DLPackExportError, a subclass of both
// BufferError (what the producer said) and TypeError (docs/errors.md: an argument of the wrong kind),
// so that every bad argument reaches the caller as ValueError, TypeError or RuntimeError.
PyObject* export_error_type() {
  static PyObject* t = [] {
    PyObject* bases = PyTuple_Pack(2, PyExc_BufferError, PyExc_TypeError);
    PyObject* r = PyErr_NewExceptionWithDoc(
        "spattn._core.DLPackExportError",
        "An argument's producer could not export it through DLPack (a BufferError that is "
        "also a TypeError).",
        bases, nullptr);
    Py_XDECREF(bases);
    return r;  // kept for the life of the process
  }();
  return t;
}

[[noreturn]] void rethrow_named(py::error_already_set& e, const std::string& arg, py::handle obj) {
  for (PyObject* base : {PyExc_BufferError, PyExc_TypeError, PyExc_ValueError, PyExc_RuntimeError}) {
    if (e.matches(base)) {
      const std::string msg = arg + ": " + type_name(obj) + " could not be exported through " +
                              "DLPack: " + py::str(e.value()).cast<std::string>();
      PyObject* as = base == PyExc_BufferError && export_error_type() ? export_error_type() : base;
      py::raise_from(e, as, msg.c_str());
      throw py::error_already_set();
    }
  }
  throw e;
}

// Capsule destructors: run when a capsule is garbage collected. A consumed capsule was
// renamed, so IsValid fails and nothing is done; otherwise the tensor was never taken and
// its deleter runs here.
extern "C" void versioned_capsule_destructor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, kVersionedName)) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* t = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule, kVersionedName));
  if (t == nullptr)
    PyErr_WriteUnraisable(capsule);
  else if (t->deleter)
    t->deleter(t);
  PyErr_Restore(type, value, tb);
}

extern "C" void legacy_capsule_destructor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, kLegacyName)) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kLegacyName));
  if (t == nullptr)
    PyErr_WriteUnraisable(capsule);
  else if (t->deleter)
    t->deleter(t);
  PyErr_Restore(type, value, tb);
}

// Copy a strided CPU view into a new compact tensor (for __dlpack__(copy=True)).
void copy_strided(const TensorView& src, char* dst, int64_t esize) {
  if (src.numel() == 0) return;
  int64_t idx[kMaxDims] = {};
  const char* base = static_cast<const char*>(src.data);
  const int64_t n = src.numel();
  for (int64_t e = 0; e < n; ++e) {
    int64_t off = 0;
    for (int d = 0; d < src.ndim; ++d) off += idx[d] * src.strides[d];
    std::memcpy(dst + e * esize, base + off * esize, size_t(esize));
    for (int d = src.ndim - 1; d >= 0; --d) {
      if (++idx[d] < src.shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

ManagedTensor import_array(py::handle obj, const char* name, bool* versioned) {
  const std::string arg = name ? name : "array";
  // A capsule made by the Python layer itself (spattn._interop.plain: torch's C exporter, which
  // costs a tenth of torch's Python __dlpack__): consumed as a producer's capsule would be.
  // Only unused capsules of the two DLPack names are taken; anything else is refused below.
  const bool capsule_given = PyCapsule_CheckExact(obj.ptr()) != 0;
  if (!capsule_given && !py::hasattr(obj, "__dlpack__"))
    throw TypeError(arg + ": expected an array with __dlpack__ (numpy, torch, cupy, jax, ...), got " +
                    type_name(obj));
  py::object cap;
  if (capsule_given) {
    cap = py::reinterpret_borrow<py::object>(obj);
  } else try {
    const DLDevice device = producer_device(obj);
    py::object fn = obj.attr("__dlpack__");
    py::dict kw = dlpack_kwargs(device);
    py::dict kw_versioned(**kw);  // a copy
    kw_versioned["max_version"] = py::make_tuple(DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION);
    try {
      cap = fn(**kw_versioned);
    } catch (py::error_already_set& e) {
      // Producers older than DLPack 1.0 do not know max_version; ask them for a legacy capsule.
      if (!e.matches(PyExc_TypeError)) throw;
      cap = fn(**kw);
    }
  } catch (py::error_already_set& e) {
    rethrow_named(e, arg, obj);
  }
  PyObject* c = cap.ptr();
  if (!PyCapsule_CheckExact(c))
    throw TypeError(arg + ": " + type_name(obj) + ".__dlpack__() returned " + type_name(cap) +
                    ", not a DLPack capsule");
  const char* cname = PyCapsule_GetName(c);
  if (cname == nullptr) PyErr_Clear();  // an unnamed capsule: refused below
  if (cname != nullptr && std::strcmp(cname, kVersionedName) == 0) {
    auto* t = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(c, kVersionedName));
    if (t == nullptr) throw py::error_already_set();
    if (t->version.major > DLPACK_MAJOR_VERSION)
      // Not consumed: the capsule still owns the tensor and frees it when collected.
      throw TypeError(arg + ": " + type_name(obj) + " exported DLPack " +
                      std::to_string(t->version.major) + "." + std::to_string(t->version.minor) +
                      ", newer than the DLPack " + std::to_string(DLPACK_MAJOR_VERSION) + "." +
                      std::to_string(DLPACK_MINOR_VERSION) + " spattn understands");
    if (PyCapsule_SetName(c, kUsedVersionedName) != 0) throw py::error_already_set();
    if (versioned) *versioned = true;
    return ManagedTensor::adopt(t);
  }
  if (cname != nullptr && std::strcmp(cname, kLegacyName) == 0) {
    auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, kLegacyName));
    if (t == nullptr) throw py::error_already_set();
    if (PyCapsule_SetName(c, kUsedLegacyName) != 0) throw py::error_already_set();
    if (versioned) *versioned = false;
    return ManagedTensor::adopt(t);
  }
  throw TypeError(arg + ": " + type_name(obj) + ".__dlpack__() returned a capsule named '" +
                  std::string(cname ? cname : "(null)") +
                  "', expected 'dltensor_versioned' or 'dltensor' (already consumed?)");
}

// ------------------------------------------------------------------------------------------
// DLPackTensor

DLPackTensor::DLPackTensor(ManagedTensor t) : tensor_(std::move(t)) {
  if (!tensor_.empty()) {
    const DLTensor& d = tensor_.dl();
    device_ = d.device;
    dtype_ = d.dtype;
    if (d.ndim > 0 && d.shape) shape_.assign(d.shape, d.shape + d.ndim);
    if (d.data) data_ptr_ = reinterpret_cast<uintptr_t>(d.data) + uintptr_t(d.byte_offset);
  }
}

py::capsule DLPackTensor::dlpack(py::object stream, py::object max_version, py::object dl_device,
                                 py::object copy) {
  if (tensor_.empty())
    throw py::buffer_error(
        "DLPackTensor: already exported; its data belongs to the array made from it (a holder "
        "can be consumed by one from_dlpack call)");
  if (!dl_device.is_none()) {
    py::tuple d = py::reinterpret_borrow<py::object>(dl_device).cast<py::tuple>();
    const int type = py::int_(d[0]).cast<int>();
    const int id = py::int_(d[1]).cast<int>();
    if (type != int(device_.device_type) || id != int(device_.device_id))
      throw py::buffer_error("DLPackTensor: the data is on " + describe(device_) +
                             "; export to another device (" +
                             (type >= 0 && type < 32  // enum range; else the number
                                  ? describe(DLDevice{static_cast<DLDeviceType>(type), id})
                                  : "device type " + std::to_string(type)) +
                             ") is not supported");
  }
  // stream: CPU data is complete when the holder is returned (the CPU computes synchronously).
  // CUDA data was computed on the legacy default stream: a consumer on another stream waits
  // for that work (an event, cuda/allocate.hpp); None means the legacy default stream itself.
  if (device_.device_type == kDLCUDA && !stream.is_none())
    cuda::order_after_spattn(intptr_t(py::int_(stream).cast<long long>()), device_.device_id);

  bool want_versioned = false;
  uint32_t minor = DLPACK_MINOR_VERSION;
  if (!max_version.is_none()) {
    py::tuple mv = py::reinterpret_borrow<py::object>(max_version).cast<py::tuple>();
    if (mv.size() < 1) throw py::value_error("max_version must be a (major, minor) tuple");
    const long major = py::int_(mv[0]).cast<long>();
    want_versioned = major >= 1;
    if (major == 1 && mv.size() >= 2) {
      const long m = py::int_(mv[1]).cast<long>();
      if (m >= 0 && m < long(minor)) minor = uint32_t(m);
    }
  }

  if (!copy.is_none() && PyObject_IsTrue(copy.ptr()) == 1) {
    if (device_.device_type != kDLCPU)
      throw py::buffer_error("DLPackTensor: copy=True is only supported for CPU data");
    const TensorView src = tensor_.view("DLPackTensor");
    DType dt;
    try {
      dt = float_dtype(src, "DLPackTensor");
    } catch (const TypeError&) {
      throw py::buffer_error("DLPackTensor: copy=True is not supported for " + describe(dtype_));
    }
    ManagedTensor fresh = ManagedTensor::allocate_cpu(dt, shape_);
    copy_strided(src, static_cast<char*>(fresh.dl().data), dtype_size(dt));
    DLManagedTensorVersioned* v = fresh.release_versioned();
    v->flags |= DLPACK_FLAG_BITMASK_IS_COPIED;
    fresh = ManagedTensor::adopt(v);
    tensor_ = std::move(fresh);  // the original is freed; the copy is exported below
  }

  if (want_versioned) {
    DLManagedTensorVersioned* t = tensor_.release_versioned();
    t->version = DLPackVersion{1, minor};
    PyObject* c = PyCapsule_New(t, kVersionedName, &versioned_capsule_destructor);
    if (c == nullptr) {
      if (t->deleter) t->deleter(t);
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::capsule>(c);
  }
  if (tensor_.read_only())
    // A legacy capsule cannot say "read-only", and its consumer would assume it may write.
    throw py::buffer_error(
        "DLPackTensor: the data is read-only; ask for a versioned capsule (max_version=(1, 0))");
  DLManagedTensor* t = tensor_.release_legacy();
  PyObject* c = PyCapsule_New(t, kLegacyName, &legacy_capsule_destructor);
  if (c == nullptr) {
    if (t->deleter) t->deleter(t);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(c);
}

py::tuple DLPackTensor::dlpack_device() const {
  return py::make_tuple(int(device_.device_type), int(device_.device_id));
}

py::tuple DLPackTensor::shape() const {
  py::tuple t(shape_.size());
  for (size_t i = 0; i < shape_.size(); ++i) t[i] = py::int_(shape_[i]);
  return t;
}

std::string DLPackTensor::dtype() const { return describe(dtype_); }

std::string DLPackTensor::repr() const {
  std::string s = "DLPackTensor(shape=[";
  for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
  s += "], dtype=" + dtype() + ", device=" + describe(device_);
  if (exported()) s += ", exported";
  return s + ")";
}

py::object make_holder(ManagedTensor t) { return py::cast(DLPackTensor(std::move(t))); }

// ------------------------------------------------------------------------------------------

void bind_dlpack(py::module_& m) {
  if (PyObject* t = export_error_type()) m.attr("DLPackExportError") = py::handle(t);
  py::class_<DLPackTensor>(m, "DLPackTensor",
                           "A result of spattn, handed to an array library through DLPack once "
                           "(np.from_dlpack, torch.from_dlpack, ...), without a copy.")
      .def("__dlpack__", &DLPackTensor::dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none())
      .def("__dlpack_device__", &DLPackTensor::dlpack_device)
      .def_property_readonly("shape", &DLPackTensor::shape)
      .def_property_readonly("dtype", &DLPackTensor::dtype)
      .def_property_readonly("exported", &DLPackTensor::exported)
      .def_property_readonly("data_ptr", &DLPackTensor::data_ptr)
      .def("__repr__", &DLPackTensor::repr);

  // Test hooks (not part of the API).
  m.def("_live_allocations", &detail::live_cpu_allocations,
        "Buffers made by ManagedTensor::allocate_cpu and not yet freed (test hook).");
  m.def(
      "_allocate",
      [](const std::vector<int64_t>& shape, const std::string& dtype) {
        DType dt = dtype == "float32"    ? DType::Float32
                   : dtype == "float16"  ? DType::Float16
                   : dtype == "bfloat16" ? DType::BFloat16
                   : dtype == "float64"  ? DType::Float64
                                         : throw TypeError("dtype: expected float32, float16, "
                                                           "bfloat16 or float64, got " + dtype);
        ManagedTensor t = ManagedTensor::allocate_cpu(dt, shape);
        const TensorView v = t.view("out");
        if (v.numel() > 0) std::memset(v.data, 0, size_t(v.numel() * dtype_size(dt)));
        return make_holder(std::move(t));
      },
      py::arg("shape"), py::arg("dtype") = "float32",
      "A zero-filled CPU tensor made by ManagedTensor::allocate_cpu (test hook).");
  m.def(
      "_import",
      [](py::handle obj, const char* name) { return make_holder(import_array(obj, name)); },
      py::arg("obj"), py::arg("name") = "x",
      "Import obj through DLPack and hold it in a DLPackTensor (test hook).");
  m.def(
      "_inspect",
      [](py::handle obj, const char* name) {
        bool versioned = false;
        ManagedTensor t = import_array(obj, name, &versioned);
        const DLTensor& d = t.dl();
        const TensorView v = t.view(name);
        py::dict r;
        r["data"] = py::int_(reinterpret_cast<uintptr_t>(v.data));
        r["raw_data"] = py::int_(reinterpret_cast<uintptr_t>(d.data));
        r["byte_offset"] = py::int_(d.byte_offset);
        r["shape"] = py::tuple(py::cast(std::vector<int64_t>(v.shape, v.shape + v.ndim)));
        r["strides"] = py::tuple(py::cast(std::vector<int64_t>(v.strides, v.strides + v.ndim)));
        r["null_strides"] = d.strides == nullptr;
        r["dtype"] = describe(v.dtype);
        r["device"] = describe(v.device);
        r["read_only"] = v.read_only;
        r["versioned"] = versioned;
        return r;
      },
      py::arg("obj"), py::arg("name") = "x",
      "Import obj through DLPack, describe the view spattn gets, and let it go (test hook).");
}

}  // namespace python
}  // namespace spattn
