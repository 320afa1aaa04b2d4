// _core.forward / _core.backward / _core.info: import the arrays, allocate the results, call the
// C++ entry points with the GIL released, hand the results back as DLPackTensor holders.
// Every check of shapes, dtypes and devices is the core's (cpp/src/api.cpp); this file checks
// only what it needs to allocate the outputs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "call_context.hpp"
#include "capsule.hpp"
#include "cpu/thread_pool.hpp"
#include "spattn/cuda/allocate.hpp"
#include "spattn/cuda/backend_info.hpp"
#include "spattn/spattn.hpp"

namespace spattn {
namespace python {

namespace {

// Results spattn allocates itself (when the Python layer passes none): host memory, or CUDA
// device memory (cudaMalloc) for arrays on a CUDA device. The Python layer allocates them through
// the framework instead for torch and cupy (its caching allocator, its stream).
ManagedTensor allocate_on(const TensorView& like, DType dtype, const std::vector<int64_t>& shape) {
  if (like.device.device_type == kDLCUDA) {
    const int n = cuda::device_count();
    if (like.device.device_id < 0 || like.device.device_id >= n)
      throw RuntimeError("q: the array is on " + describe(like.device) + ", but this process sees " +
                         (n == 0 ? std::string("no CUDA device (or no driver)")
                                 : std::to_string(n) + " CUDA device(s)"));
    return cuda::allocate(dtype, shape, like.device.device_id);
  }
  return ManagedTensor::allocate_cpu(dtype, shape);
}

// The rank a call needs: 4 for a batch, 3 for a variable-length batch (dimension names of
// both forms given for the message).
void require_rank(const TensorView& t, const char* name, bool varlen, const char* batched,
                  const char* packed) {
  const int want = varlen ? 3 : 4;
  if (t.ndim != want)
    throw ValueError(std::string(name) + ": expected " + std::to_string(want) + " dimensions " +
                     (varlen ? std::string(packed) + " (variable-length batch)" : batched) +
                     ", got shape " + t.shape_str());
}

// Offsets of a variable-length batch: both given or neither (the Python layer checks that).
struct Offsets {
  ManagedTensor q, k;
  bool varlen() const { return !q.empty(); }
};

Offsets import_offsets(py::handle cu_q, py::handle cu_k) {
  Offsets o;
  if (cu_q.is_none() && cu_k.is_none()) return o;
  if (cu_q.is_none() || cu_k.is_none())
    throw ValueError("cu_seqlens_q, cu_seqlens_k: give both offsets arrays or neither");
  o.q = import_array(cu_q, "cu_seqlens_q");
  o.k = import_array(cu_k, "cu_seqlens_k");
  return o;
}

// An output the caller passed, imported for writing.
ManagedTensor given_output(py::handle given, const char* name) {
  ManagedTensor t = import_array(given, name);
  if (t.read_only()) throw ValueError(std::string(name) + ": the array is read-only");
  return t;
}

// An output the caller may pass (None: allocate one shaped `shape` on q's device).
ManagedTensor output(py::handle given, const char* name, const TensorView& like, DType dtype,
                     const std::vector<int64_t>& shape) {
  return given.is_none() ? allocate_on(like, dtype, shape) : given_output(given, name);
}

// The score modifiers of a call (Options::modifiers): softcap a float or None, alibi_slopes
// and sinks arrays or None (imported and kept alive here; the core checks them).
struct Modifiers {
  ManagedTensor alibi, sinks;
  spattn::Modifiers m;
  Modifiers(py::handle softcap, py::handle alibi_slopes, py::handle sinks_) {
    if (!softcap.is_none()) {
      m.softcap = softcap.cast<double>();
      if (m.softcap == 0.0)  // the core reads 0 as "none"; a caller's 0 is an error
        throw ValueError("softcap: expected a finite number > 0 (None: no softcap), got 0.0");
    }
    if (!alibi_slopes.is_none()) {
      alibi = import_array(alibi_slopes, "alibi_slopes");
      m.alibi_slopes = &alibi.dl();
    }
    if (!sinks_.is_none()) {
      sinks = import_array(sinks_, "sinks");
      m.sinks = &sinks.dl();
    }
  }
};

py::tuple forward(py::handle q, py::handle k, py::handle v, const Pattern& pattern,
                  py::handle scale, py::handle out, bool want_lse, py::handle cu_q,
                  py::handle cu_k, int num_threads, py::handle lse_out, py::handle stream,
                  py::handle workspace, py::handle softcap, py::handle alibi_slopes,
                  py::handle sinks) {
  CallContext call(scale, num_threads, stream, workspace);
  Modifiers mods(softcap, alibi_slopes, sinks);
  Options opt = call.options();
  opt.modifiers = mods.m;
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  ManagedTensor mv = import_array(v, "v");
  Offsets cu = import_offsets(cu_q, cu_k);
  const TensorView vq = mq.view("q");
  const bool varlen = cu.varlen();
  ManagedTensor mout, mlse;
  if (out.is_none() || (want_lse && lse_out.is_none())) {
    require_rank(vq, "q", varlen, "[B, Nq, Hq, D]", "[Tq, Hq, D]");
    const TensorView vv = mv.view("v");
    require_rank(vv, "v", varlen, "[B, Nk, Hkv, Dv]", "[Tk, Hkv, Dv]");
  }
  if (out.is_none()) {  // out: q's shape with v's last dimension
    const TensorView vv = mv.view("v");
    std::vector<int64_t> shape(vq.shape, vq.shape + vq.ndim);
    shape.back() = vv.shape[vv.ndim - 1];
    mout = allocate_on(vq, float_dtype(vq, "q"), shape);
  } else {
    mout = given_output(out, "out");
  }
  if (want_lse)  // [B, Hq, Nq], or [Hq, Tq] for a variable-length batch
    mlse = output(lse_out, "lse", vq, lse_dtype(float_dtype(vq, "q")),
                  varlen ? std::vector<int64_t>{vq.shape[1], vq.shape[0]}
                         : std::vector<int64_t>{vq.shape[0], vq.shape[2], vq.shape[1]});
  {
    py::gil_scoped_release nogil;
    const DLTensor* lse = want_lse ? &mlse.dl() : nullptr;
    if (varlen)
      attention_forward_varlen(mq.dl(), mk.dl(), mv.dl(), cu.q.dl(), cu.k.dl(), pattern,
                               mout.dl(), lse, opt);
    else
      attention_forward(mq.dl(), mk.dl(), mv.dl(), pattern, mout.dl(), lse, opt);
  }
  py::object out_obj =
      out.is_none() ? make_holder(std::move(mout)) : py::reinterpret_borrow<py::object>(out);
  py::object lse_obj = !want_lse ? py::none()
                       : lse_out.is_none() ? make_holder(std::move(mlse))
                                           : py::reinterpret_borrow<py::object>(lse_out);
  return py::make_tuple(out_obj, lse_obj);
}

py::tuple backward(py::handle dout, py::handle q, py::handle k, py::handle v, py::handle out,
                   py::handle lse, const Pattern& pattern, py::handle scale, py::handle cu_q,
                   py::handle cu_k, int num_threads, py::handle dq_out, py::handle dk_out,
                   py::handle dv_out, py::handle stream, py::handle workspace,
                   bool deterministic, py::handle softcap, py::handle alibi_slopes,
                   py::handle sinks, py::handle dsinks_out) {
  CallContext call(scale, num_threads, stream, workspace);
  Modifiers mods(softcap, alibi_slopes, sinks);
  Options opt = call.options();
  opt.deterministic = deterministic;
  opt.modifiers = mods.m;
  ManagedTensor mdout = import_array(dout, "dout");
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  ManagedTensor mv = import_array(v, "v");
  ManagedTensor mout = import_array(out, "out");
  ManagedTensor mlse = import_array(lse, "lse");
  Offsets cu = import_offsets(cu_q, cu_k);
  const TensorView vq = mq.view("q");
  const DType dt = float_dtype(vq, "q");
  const TensorView vk = mk.view("k"), vv = mv.view("v");
  ManagedTensor dq = output(dq_out, "dq", vq, dt, std::vector<int64_t>(vq.shape, vq.shape + vq.ndim));
  ManagedTensor dk = output(dk_out, "dk", vq, dt, std::vector<int64_t>(vk.shape, vk.shape + vk.ndim));
  ManagedTensor dv = output(dv_out, "dv", vq, dt, std::vector<int64_t>(vv.shape, vv.shape + vv.ndim));
  ManagedTensor dsinks;  // with sinks: [Hq] of lse's dtype (float64 for float64 inputs), on q's device
  if (!sinks.is_none()) {
    dsinks = output(dsinks_out, "dsinks", vq, lse_dtype(dt), {vq.shape[vq.ndim - 2]});
    opt.modifiers.dsinks = &dsinks.dl();
  }
  {
    py::gil_scoped_release nogil;
    if (cu.varlen())
      attention_backward_varlen(mdout.dl(), mq.dl(), mk.dl(), mv.dl(), mout.dl(), mlse.dl(),
                                cu.q.dl(), cu.k.dl(), pattern, dq.dl(), dk.dl(), dv.dl(), opt);
    else
      attention_backward(mdout.dl(), mq.dl(), mk.dl(), mv.dl(), mout.dl(), mlse.dl(), pattern,
                         dq.dl(), dk.dl(), dv.dl(), opt);
  }
  auto result = [](ManagedTensor& t, py::handle given) {
    return given.is_none() ? make_holder(std::move(t)) : py::reinterpret_borrow<py::object>(given);
  };
  if (sinks.is_none())
    return py::make_tuple(result(dq, dq_out), result(dk, dk_out), result(dv, dv_out));
  return py::make_tuple(result(dq, dq_out), result(dk, dk_out), result(dv, dv_out),
                        result(dsinks, dsinks_out));
}

}  // namespace

void bind_ops(py::module_& m) {
  m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pattern"),
        py::arg("scale") = py::none(), py::arg("out") = py::none(), py::arg("want_lse") = true,
        py::arg("cu_seqlens_q") = py::none(), py::arg("cu_seqlens_k") = py::none(),
        py::arg("num_threads") = 0, py::arg("lse_out") = py::none(),
        py::arg("stream") = py::none(), py::arg("workspace") = py::none(),
        py::arg("softcap") = py::none(), py::arg("alibi_slopes") = py::none(),
        py::arg("sinks") = py::none(),
        "Attention forward: returns (out, lse or None); out is `out` itself when given, else a "
        "DLPackTensor of q's dtype [B, Nq, Hq, Dv] (varlen: [Tq, Hq, Dv]); lse float32 "
        "[B, Hq, Nq] (varlen: [Hq, Tq]).");
  m.def("backward", &backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("pattern"), py::arg("scale") = py::none(),
        py::arg("cu_seqlens_q") = py::none(), py::arg("cu_seqlens_k") = py::none(),
        py::arg("num_threads") = 0, py::arg("dq") = py::none(), py::arg("dk") = py::none(),
        py::arg("dv") = py::none(), py::arg("stream") = py::none(),
        py::arg("workspace") = py::none(), py::arg("deterministic") = false,
        py::arg("softcap") = py::none(), py::arg("alibi_slopes") = py::none(),
        py::arg("sinks") = py::none(), py::arg("dsinks") = py::none(),
        "Attention backward: returns (dq, dk, dv) as DLPackTensor holders shaped like q, k, v, "
        "and with sinks also dsinks float32 [Hq] (float64 for float64 inputs). deterministic: bitwise reproducible gradients, "
        "or RuntimeError where the backend's kernel cannot give them (Options::deterministic).");
  m.def("info", &spattn::info, "Build and runtime facts, as a dict of strings.");
  m.def(
      "_threads_used",
      [](int64_t tasks, int limit) {
        // Test hook: how many distinct pool threads ran `tasks` short sleeping tasks under a
        // ThreadLimit of `limit` (0: none).
        py::gil_scoped_release nogil;
        const cpu::ThreadLimit scope(limit);
        std::vector<std::atomic<int>> seen(256);
        cpu::parallel_for(tasks, [&](int64_t, int thread) {
          seen[size_t(thread) % seen.size()].store(1);
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        });
        int n = 0;
        for (auto& s : seen) n += s.load();
        return n;
      },
      py::arg("tasks"), py::arg("limit"));
  m.def("version", []() { return std::string(spattn::version()); });
}

}  // namespace python
}  // namespace spattn
