// _core.merge: import the partial results, allocate the merged ones, call merge_partials.
#include <string>
#include <vector>

#include "capsule.hpp"
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

py::tuple merge(py::sequence outs, py::sequence lses) {
  std::vector<ManagedTensor> mo = import_all(outs, "outs"), ml = import_all(lses, "lses");
  if (mo.empty()) throw ValueError("outs: expected at least one partial result, got none");
  if (ml.empty()) throw ValueError("lses: expected one lse per output, got none");
  std::vector<DLTensor> o, l;
  for (auto& t : mo) o.push_back(t.dl());
  for (auto& t : ml) l.push_back(t.dl());
  const TensorView o0 = mo[0].view("outs[0]"), l0 = ml[0].view("lses[0]");
  if (o0.device.device_type != kDLCPU || l0.device.device_type != kDLCPU)
    throw RuntimeError("outs: merge runs on the CPU only in this version; pass CPU arrays");
  ManagedTensor out = ManagedTensor::allocate_cpu(
      float_dtype(o0, "outs[0]"), std::vector<int64_t>(o0.shape, o0.shape + o0.ndim));
  ManagedTensor lse = ManagedTensor::allocate_cpu(
      DType::Float32, std::vector<int64_t>(l0.shape, l0.shape + l0.ndim));
  {
    py::gil_scoped_release nogil;
    merge_partials(o, l, out.dl(), &lse.dl());
  }
  return py::make_tuple(make_holder(std::move(out)), make_holder(std::move(lse)));
}

}  // namespace

void bind_merge(py::module_& m) {
  m.def("merge", &merge, py::arg("outs"), py::arg("lses"),
        "Exact merge of partial attention results over disjoint key sets: (out, lse) holders.");
}

}  // namespace python
}  // namespace spattn
