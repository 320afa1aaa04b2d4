// _core.forward / _core.backward / _core.info: import the arrays, allocate the results, call the
// C++ entry points with the GIL released, hand the results back as DLPackTensor holders.
// Every check of shapes, dtypes and devices is the core's (cpp/src/api.cpp); this file checks
// only what it needs to allocate the outputs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "capsule.hpp"
#include "spattn/spattn.hpp"

namespace spattn {
namespace python {

namespace {

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
  if (!std::isfinite(s) || s == 0.0)
    throw ValueError("scale: expected a finite, nonzero float (None for 1/sqrt(D)), got " +
                     py::repr(py::float_(s)).cast<std::string>());
  return s;
}

// Results are allocated on the device of q, and only the CPU allocator exists so far.
// HOOK (CUDA issue): allocate on q's CUDA device instead (and remove this refusal).
void require_cpu(const TensorView& q) {
  if (q.device.device_type != kDLCPU)
    throw RuntimeError("q: the array is on " + describe(q.device) +
                       ", but spattn's attention kernels run on the CPU only in this version "
                       "(spattn.info() tells what was compiled); pass CPU arrays");
}

void require_4d(const TensorView& t, const char* name, const char* dims) {
  if (t.ndim != 4)
    throw ValueError(std::string(name) + ": expected 4 dimensions " + dims + ", got shape " +
                     t.shape_str());
}

ManagedTensor allocate_like(DType dtype, const TensorView& t) {
  return ManagedTensor::allocate_cpu(dtype, std::vector<int64_t>(t.shape, t.shape + t.ndim));
}

py::tuple forward(py::handle q, py::handle k, py::handle v, const Pattern& pattern,
                  py::handle scale, py::handle out, bool want_lse) {
  Options opt;
  opt.scale = parse_scale(scale);
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  ManagedTensor mv = import_array(v, "v");
  const TensorView vq = mq.view("q");

  ManagedTensor mout, mlse;
  if (!out.is_none()) {
    mout = import_array(out, "out");
    if (mout.read_only()) throw ValueError("out: the array is read-only");
  }
  if (out.is_none() || want_lse) {
    const DType dt = float_dtype(vq, "q");
    require_cpu(vq);
    require_4d(vq, "q", "[B, Nq, Hq, D]");
    const int64_t B = vq.shape[0], Nq = vq.shape[1], Hq = vq.shape[2];
    if (out.is_none()) {
      const TensorView vv = mv.view("v");
      require_4d(vv, "v", "[B, Nk, Hkv, Dv]");
      mout = ManagedTensor::allocate_cpu(dt, {B, Nq, Hq, vv.shape[3]});
    }
    if (want_lse) mlse = ManagedTensor::allocate_cpu(DType::Float32, {B, Hq, Nq});
  }
  {
    py::gil_scoped_release nogil;
    attention_forward(mq.dl(), mk.dl(), mv.dl(), pattern, mout.dl(),
                      want_lse ? &mlse.dl() : nullptr, opt);
  }
  py::object out_obj =
      out.is_none() ? make_holder(std::move(mout)) : py::reinterpret_borrow<py::object>(out);
  py::object lse_obj = want_lse ? make_holder(std::move(mlse)) : py::none();
  return py::make_tuple(out_obj, lse_obj);
}

py::tuple backward(py::handle dout, py::handle q, py::handle k, py::handle v, py::handle out,
                   py::handle lse, const Pattern& pattern, py::handle scale) {
  Options opt;
  opt.scale = parse_scale(scale);
  ManagedTensor mdout = import_array(dout, "dout");
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  ManagedTensor mv = import_array(v, "v");
  ManagedTensor mout = import_array(out, "out");
  ManagedTensor mlse = import_array(lse, "lse");
  const TensorView vq = mq.view("q");
  const DType dt = float_dtype(vq, "q");
  require_cpu(vq);
  ManagedTensor dq = allocate_like(dt, vq);
  ManagedTensor dk = allocate_like(dt, mk.view("k"));
  ManagedTensor dv = allocate_like(dt, mv.view("v"));
  {
    py::gil_scoped_release nogil;
    attention_backward(mdout.dl(), mq.dl(), mk.dl(), mv.dl(), mout.dl(), mlse.dl(), pattern,
                       dq.dl(), dk.dl(), dv.dl(), opt);
  }
  return py::make_tuple(make_holder(std::move(dq)), make_holder(std::move(dk)),
                        make_holder(std::move(dv)));
}

// Variable-length batches: q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv]; cu_seqlens_q and
// cu_seqlens_k [B+1] int32 (or int64) arrays, checked by the core. out [Tq, Hq, Dv],
// lse [Hq, Tq].
py::tuple forward_varlen(py::handle q, py::handle k, py::handle v, py::handle cu_seqlens_q,
                         py::handle cu_seqlens_k, const Pattern& pattern, py::handle scale,
                         py::handle out, bool want_lse) {
  Options opt;
  opt.scale = parse_scale(scale);
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  ManagedTensor mv = import_array(v, "v");
  ManagedTensor mcq = import_array(cu_seqlens_q, "cu_seqlens_q");
  ManagedTensor mck = import_array(cu_seqlens_k, "cu_seqlens_k");
  const TensorView vq = mq.view("q");

  ManagedTensor mout, mlse;
  if (!out.is_none()) {
    mout = import_array(out, "out");
    if (mout.read_only()) throw ValueError("out: the array is read-only");
  }
  if (out.is_none() || want_lse) {
    const DType dt = float_dtype(vq, "q");
    require_cpu(vq);
    if (vq.ndim != 3)
      throw ValueError("q: expected 3 dimensions [Tq, Hq, D] (variable-length batch), got "
                       "shape " + vq.shape_str());
    const int64_t Tq = vq.shape[0], Hq = vq.shape[1];
    if (out.is_none()) {
      const TensorView vv = mv.view("v");
      if (vv.ndim != 3)
        throw ValueError("v: expected 3 dimensions [Tk, Hkv, Dv] (variable-length batch), "
                         "got shape " + vv.shape_str());
      mout = ManagedTensor::allocate_cpu(dt, {Tq, Hq, vv.shape[2]});
    }
    if (want_lse) mlse = ManagedTensor::allocate_cpu(DType::Float32, {Hq, Tq});
  }
  {
    py::gil_scoped_release nogil;
    attention_forward_varlen(mq.dl(), mk.dl(), mv.dl(), mcq.dl(), mck.dl(), pattern, mout.dl(),
                             want_lse ? &mlse.dl() : nullptr, opt);
  }
  py::object out_obj =
      out.is_none() ? make_holder(std::move(mout)) : py::reinterpret_borrow<py::object>(out);
  py::object lse_obj = want_lse ? make_holder(std::move(mlse)) : py::none();
  return py::make_tuple(out_obj, lse_obj);
}

py::tuple backward_varlen(py::handle dout, py::handle q, py::handle k, py::handle v,
                          py::handle out, py::handle lse, py::handle cu_seqlens_q,
                          py::handle cu_seqlens_k, const Pattern& pattern, py::handle scale) {
  Options opt;
  opt.scale = parse_scale(scale);
  ManagedTensor mdout = import_array(dout, "dout");
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  ManagedTensor mv = import_array(v, "v");
  ManagedTensor mout = import_array(out, "out");
  ManagedTensor mlse = import_array(lse, "lse");
  ManagedTensor mcq = import_array(cu_seqlens_q, "cu_seqlens_q");
  ManagedTensor mck = import_array(cu_seqlens_k, "cu_seqlens_k");
  const TensorView vq = mq.view("q");
  const DType dt = float_dtype(vq, "q");
  require_cpu(vq);
  ManagedTensor dq = allocate_like(dt, vq);
  ManagedTensor dk = allocate_like(dt, mk.view("k"));
  ManagedTensor dv = allocate_like(dt, mv.view("v"));
  {
    py::gil_scoped_release nogil;
    attention_backward_varlen(mdout.dl(), mq.dl(), mk.dl(), mv.dl(), mout.dl(), mlse.dl(),
                              mcq.dl(), mck.dl(), pattern, dq.dl(), dk.dl(), dv.dl(), opt);
  }
  return py::make_tuple(make_holder(std::move(dq)), make_holder(std::move(dk)),
                        make_holder(std::move(dv)));
}

}  // namespace

void bind_ops(py::module_& m) {
  m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pattern"),
        py::arg("scale") = py::none(), py::arg("out") = py::none(), py::arg("want_lse") = true,
        "Attention forward: returns (out, lse or None); out is `out` itself when given, else a "
        "DLPackTensor [B, Nq, Hq, Dv] of q's dtype; lse a float32 DLPackTensor [B, Hq, Nq].");
  m.def("backward", &backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("pattern"), py::arg("scale") = py::none(),
        "Attention backward: returns (dq, dk, dv) as DLPackTensor holders shaped like q, k, v.");
  m.def("forward_varlen", &forward_varlen, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("pattern"),
        py::arg("scale") = py::none(), py::arg("out") = py::none(), py::arg("want_lse") = true,
        "Variable-length attention forward: q [Tq, Hq, D], k/v [Tk, Hkv, D/Dv], int32 offsets "
        "[B+1]; returns (out [Tq, Hq, Dv], lse [Hq, Tq] float32 or None).");
  m.def("backward_varlen", &backward_varlen, py::arg("dout"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("cu_seqlens_q"),
        py::arg("cu_seqlens_k"), py::arg("pattern"), py::arg("scale") = py::none(),
        "Variable-length attention backward: returns (dq, dk, dv) shaped like q, k, v.");
  m.def("info", &spattn::info, "Build and runtime facts, as a dict of strings.");
  m.def("version", []() { return std::string(spattn::version()); });
}

}  // namespace python
}  // namespace spattn
