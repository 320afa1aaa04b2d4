// _core.merge: import the partial results, allocate the merged ones, call merge_partials.
#include <string>
#include <vector>

#include "call_context.hpp"
#include "capsule.hpp"
#include "spattn/cuda/allocate.hpp"
#include "spattn/spattn.hpp"

namespace spattn {
namespace python {

namespace {

std::vector<ManagedTensor> import_all(const py::sequence& arrays, const char* name) {
  std::vector<ManagedTensor> r;
  for (size_t k = 0; k < arrays.size(); ++k) {
    const std::string n = std::string(name) + "[" + std::to_string(k) + "]";
    r.push_back(import_array(arrays[k], n.c_str()));
  }
  return r;
}

py::tuple merge(py::sequence outs, py::sequence lses, py::handle stream) {
  CallContext call(py::none(), 0, stream, py::none());
  std::vector<ManagedTensor> mo = import_all(outs, "outs"), ml = import_all(lses, "lses");
  if (mo.empty()) throw ValueError("outs: expected at least one partial result, got none");
  if (ml.empty()) throw ValueError("lses: expected one lse per output, got none");
  std::vector<DLTensor> o, l;
  for (auto& t : mo) o.push_back(t.dl());
  for (auto& t : ml) l.push_back(t.dl());
  const TensorView o0 = mo[0].view("outs[0]"), l0 = ml[0].view("lses[0]");
  // Results on the device of outs[0] (the core checks that every array is there).
  auto allocate = [&](DType dt, const TensorView& like) {
    std::vector<int64_t> shape(like.shape, like.shape + like.ndim);
    if (o0.device.device_type == kDLCUDA) return cuda::allocate(dt, shape, o0.device.device_id);
    return ManagedTensor::allocate_cpu(dt, shape);
  };
  const DType dt = float_dtype(o0, "outs[0]");
  ManagedTensor out = allocate(dt, o0);
  ManagedTensor lse = allocate(lse_dtype(dt), l0);
  {
    py::gil_scoped_release nogil;
    merge_partials(o, l, out.dl(), &lse.dl(), call.options());
  }
  return py::make_tuple(make_holder(std::move(out)), make_holder(std::move(lse)));
}

}  // namespace

void bind_merge(py::module_& m) {
  m.def("merge", &merge, py::arg("outs"), py::arg("lses"), py::arg("stream") = py::none(),
        "Exact merge of partial attention results over disjoint key sets: (out, lse) holders.");
}

}  // namespace python
}  // namespace spattn
