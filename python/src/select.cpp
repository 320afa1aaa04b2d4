// _core.select: TopKBlocks' chosen blocks for given q and k, per batch element (or sequence), as
// boolean numpy arrays [Hq, nqb, nkb]. The choice itself is the core's (select.hpp): for CUDA
// arrays of torch or cupy on the framework's current stream, with its allocator.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <vector>

#include "call_context.hpp"
#include "capsule.hpp"
#include "spattn/spattn.hpp"

namespace spattn {
namespace python {

namespace {

py::list select(py::handle q, py::handle k, const Pattern& pattern, py::handle cu_q,
                py::handle cu_k, py::handle stream, py::handle workspace) {
  CallContext call(py::none(), 0, stream, workspace);  // stream, allocator
  ManagedTensor mq = import_array(q, "q");
  ManagedTensor mk = import_array(k, "k");
  if (cu_q.is_none() != cu_k.is_none())
    throw ValueError("cu_seqlens_q, cu_seqlens_k: give both offsets arrays or neither");
  ManagedTensor mcq, mck;
  if (!cu_q.is_none()) {
    mcq = import_array(cu_q, "cu_seqlens_q");
    mck = import_array(cu_k, "cu_seqlens_k");
  }
  std::vector<BlockMask> chosen;
  {
    py::gil_scoped_release nogil;
    chosen = cu_q.is_none()
                 ? select_blocks(mq.dl(), mk.dl(), pattern, call.options())
                 : select_blocks_varlen(mq.dl(), mk.dl(), mcq.dl(), mck.dl(), pattern,
                                        call.options());
  }
  py::list r;
  for (const BlockMask& m : chosen) {
    py::array a(py::dtype("bool"), std::vector<py::ssize_t>{m.heads, m.nbq, m.nbk});
    if (!m.bits.empty()) std::memcpy(a.mutable_data(), m.bits.data(), m.bits.size());
    r.append(a);
  }
  return r;
}

}  // namespace

void bind_select(py::module_& m) {
  m.def("select", &select, py::arg("q"), py::arg("k"), py::arg("pattern"),
        py::arg("cu_seqlens_q") = py::none(), py::arg("cu_seqlens_k") = py::none(),
        py::arg("stream") = py::none(), py::arg("workspace") = py::none(),
        "TopKBlocks: the chosen key blocks of each batch element (or sequence), as boolean "
        "arrays [Hq, ceil(Nq/bq), ceil(Nk/bk)] (current blocks included when causal). CUDA "
        "arrays: chosen on the GPU on `stream` (workspaces from `workspace`), copied back.");
}

}  // namespace python
}  // namespace spattn
