// _core.decode: import the arrays, allocate out (and lse), call spattn::decode without the GIL.
// Every check is the core's (cpp/src/decode_api.cpp) apart from what allocation needs.
#include <cmath>
#include <string>
#include <vector>

#include "call_context.hpp"
#include "capsule.hpp"
#include "spattn/cuda/allocate.hpp"
#include "spattn/cuda/backend_info.hpp"
#include "spattn/spattn.hpp"

namespace spattn {
namespace python {

namespace {

// Results spattn allocates itself when the Python layer passes none: host memory, or device
// memory (cudaMalloc) for arrays on a CUDA device. For torch and cupy on CUDA the Python layer
// allocates them through the framework and passes its stream and workspace allocator.
ManagedTensor allocate_like(const TensorView& like, const char* name, DType dtype,
                            const std::vector<int64_t>& shape) {
  if (like.device.device_type == kDLCUDA) {
    const int n = cuda::device_count();
    if (like.device.device_id < 0 || like.device.device_id >= n)
      throw RuntimeError(std::string(name) + ": the array is on " + describe(like.device) +
                         ", but this process sees " +
                         (n == 0 ? std::string("no CUDA device (or no driver)")
                                 : std::to_string(n) + " CUDA device(s)"));
    return cuda::allocate(dtype, shape, like.device.device_id);
  }
  return ManagedTensor::allocate_cpu(dtype, shape);
}

ManagedTensor given_or_new(py::handle given, const char* name, const TensorView& like,
                           const char* like_name, DType dtype, const std::vector<int64_t>& shape) {
  if (given.is_none()) return allocate_like(like, like_name, dtype, shape);
  ManagedTensor t = import_array(given, name);
  if (t.read_only()) throw ValueError(std::string(name) + ": the array is read-only");
  return t;
}

py::tuple decode(py::handle q, py::handle k, py::handle v, py::handle cache_len,
                 const Pattern& pattern, py::handle block_table, py::handle scale,
                 bool want_lse, py::handle pooled_keys, int num_threads, py::handle softcap,
                 py::handle alibi_slopes, py::handle sinks, py::handle out_given,
                 py::handle lse_given, py::handle stream, py::handle workspace, bool defer_errors) {
  CallContext call(py::none(), num_threads, stream, workspace);  // stream, allocator
  Options opt = call.options();
  opt.num_threads = num_threads;
  opt.decode_defer_errors = defer_errors;
  if (!scale.is_none()) opt.scale = scale.cast<double>();
  ManagedTensor ma, ms;  // score modifiers (options.hpp; checked by the core)
  if (!softcap.is_none()) {
    opt.modifiers.softcap = softcap.cast<double>();
    if (opt.modifiers.softcap == 0.0)
      throw ValueError("softcap: expected a finite number > 0 (None: no softcap), got 0.0");
  }
  if (!alibi_slopes.is_none()) {
    ma = import_array(alibi_slopes, "alibi_slopes");
    opt.modifiers.alibi_slopes = &ma.dl();
  }
  if (!sinks.is_none()) {
    ms = import_array(sinks, "sinks");
    opt.modifiers.sinks = &ms.dl();
  }
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k_cache");
  ManagedTensor mv = import_array(v, "v_cache");
  ManagedTensor ml = import_array(cache_len, "cache_len");
  ManagedTensor mt;
  if (!block_table.is_none()) mt = import_array(block_table, "block_table");
  ManagedTensor mp;
  if (!pooled_keys.is_none()) mp = import_array(pooled_keys, "pooled_keys");
  const TensorView vq = mq.view("q"), vv = mv.view("v_cache");
  const DType dt = float_dtype(vq, "q");
  if (vq.ndim != 4)
    throw ValueError("q: expected 4 dimensions [B, Nq, Hq, D], got shape " + vq.shape_str());
  if (vv.ndim != 4)
    throw ValueError("v_cache: expected 4 dimensions, got shape " + vv.shape_str());
  ManagedTensor out = given_or_new(out_given, "out", vq, "q", dt,
                                   {vq.shape[0], vq.shape[1], vq.shape[2], vv.shape[3]});
  ManagedTensor lse;
  if (want_lse)
    lse = given_or_new(lse_given, "lse", vq, "q", lse_dtype(dt), {vq.shape[0], vq.shape[2], vq.shape[1]});
  {
    py::gil_scoped_release nogil;
    spattn::decode(mq.dl(), mk.dl(), mv.dl(), ml.dl(), pattern,
                   block_table.is_none() ? nullptr : &mt.dl(), out.dl(),
                   want_lse ? &lse.dl() : nullptr, opt,
                   pooled_keys.is_none() ? nullptr : &mp.dl());
  }
  return py::make_tuple(make_holder(std::move(out)),
                        want_lse ? make_holder(std::move(lse)) : py::none());
}

// Result [B, blocks, Hkv, D] float32 with blocks = ceil(capacity / block): every length the
// cache can hold fits.
py::object pool_keys(py::handle k, py::handle cache_len, int64_t block, py::handle block_table,
                     py::handle out_given, py::handle stream, py::handle workspace,
                     bool defer_errors) {
  CallContext call(py::none(), 0, stream, workspace);
  Options opt = call.options();
  opt.decode_defer_errors = defer_errors;
  ManagedTensor mk = import_array(k, "k_cache");
  ManagedTensor ml = import_array(cache_len, "cache_len");
  ManagedTensor mt;
  const TensorView vk = mk.view("k_cache");
  if (vk.ndim != 4)
    throw ValueError("k_cache: expected 4 dimensions, got shape " + vk.shape_str());
  if (block < 1) throw ValueError("block_size: expected >= 1, got " + std::to_string(block));
  int64_t B = vk.shape[0], capacity = vk.shape[1];
  if (!block_table.is_none()) {
    mt = import_array(block_table, "block_table");
    const TensorView vt = mt.view("block_table");
    if (vt.ndim != 2)
      throw ValueError("block_table: expected 2 dimensions [B, max_pages], got shape " +
                       vt.shape_str());
    B = vt.shape[0];
    capacity = vt.shape[1] * vk.shape[1];
  }
  ManagedTensor out = given_or_new(
      out_given, "out", vk, "k_cache", DType::Float32,
      {B, capacity == 0 ? 0 : 1 + (capacity - 1) / block, vk.shape[2], vk.shape[3]});
  {
    py::gil_scoped_release nogil;
    spattn::pool_keys(mk.dl(), ml.dl(), block, block_table.is_none() ? nullptr : &mt.dl(),
                      out.dl(), opt);
  }
  return make_holder(std::move(out));
}

}  // namespace

void bind_decode(py::module_& m) {
  m.def("decode", &decode, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("cache_len"), py::arg("pattern"), py::arg("block_table") = py::none(),
        py::arg("scale") = py::none(), py::arg("want_lse") = false,
        py::arg("pooled_keys") = py::none(), py::arg("num_threads") = 0,
        py::arg("softcap") = py::none(), py::arg("alibi_slopes") = py::none(),
        py::arg("sinks") = py::none(), py::arg("out") = py::none(),
        py::arg("lse_out") = py::none(), py::arg("stream") = py::none(),
        py::arg("workspace") = py::none(), py::arg("defer_errors") = false,
        "Decode over a KV cache: (out [B, Nq, Hq, Dv], lse [B, Hq, Nq] or None) holders.");
  m.def(
      "check_decode_errors",
      [](int device) {
        py::gil_scoped_release nogil;
        spattn::check_decode_errors(DLDevice{kDLCUDA, device});
      },
      py::arg("device"),
      "Raises the first error a deferred decode left on CUDA device `device`, and forgets it.");
  m.def("pool_keys", &pool_keys, py::arg("k_cache"), py::arg("cache_len"), py::arg("block"),
        py::arg("block_table") = py::none(), py::arg("out") = py::none(),
        py::arg("stream") = py::none(), py::arg("workspace") = py::none(),
        py::arg("defer_errors") = false,
        "Mean key of every block of a cache: float32 [B, ceil(capacity / block), Hkv, D].");
}

}  // namespace python
}  // namespace spattn
