// _core.Pattern: the C++ Pattern, its dense mask and its compiled block layout, as numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"

namespace spattn {
namespace python {

namespace py = pybind11;

namespace {

// A window bound: None -> unbounded; any Python int, values beyond +-kUnbounded clamped (they
// mean the same, and clamping keeps the core's sums from overflowing).
int64_t window_bound(py::handle v, const char* name) {
  if (v.is_none()) return kUnbounded;
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    throw TypeError(std::string(name) + ": expected an int or None, got " +
                    Py_TYPE(v.ptr())->tp_name);
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow != 0) return overflow > 0 ? kUnbounded : -kUnbounded;
  if (x == -1 && PyErr_Occurred()) throw py::error_already_set();
  return std::clamp<int64_t>(x, -kUnbounded, kUnbounded);
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

Pattern block_sparse(py::handle bits, int64_t bq, int64_t bk) {
  if (!py::isinstance<py::array>(bits))
    throw TypeError("layout: expected a numpy array of bool or integers [heads, nbq, nbk], got " +
                    std::string(Py_TYPE(bits.ptr())->tp_name));
  py::array a = py::reinterpret_borrow<py::array>(bits);
  const char kind = a.dtype().kind();
  if (kind != 'b' && kind != 'i' && kind != 'u')
    throw TypeError("layout: expected a numpy array of bool or integers, got dtype " +
                    py::str(a.dtype()).cast<std::string>());
  if (a.ndim() != 3)
    throw ValueError("layout: expected 3 dimensions [heads, nbq, nbk], got " +
                     std::to_string(a.ndim()));
  // Nonzero -> 1, as a C-contiguous uint8 copy.
  py::array nonzero = a.attr("__ne__")(0);
  auto u8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(nonzero);
  if (!u8) throw py::error_already_set();
  BlockMask m;
  m.heads = a.shape(0);
  m.nbq = a.shape(1);
  m.nbk = a.shape(2);
  m.bq = bq;
  m.bk = bk;
  m.bits.assign(u8.data(), u8.data() + u8.size());
  return Pattern::block_sparse(std::move(m));
}

// Ranges [lo, hi) as an int32 array [n, 2].
py::array_t<int32_t> ranges_to_numpy(const std::vector<int32_t>& lo, const std::vector<int32_t>& hi) {
  const py::ssize_t n = static_cast<py::ssize_t>(lo.size());
  py::array_t<int32_t> a(std::vector<py::ssize_t>{n, 2});
  int32_t* d = a.mutable_data();
  for (py::ssize_t t = 0; t < n; ++t) {
    d[2 * t] = lo[size_t(t)];
    d[2 * t + 1] = hi[size_t(t)];
  }
  return a;
}

py::dict block_layout(const Pattern& p, int64_t nq, int64_t nk, int64_t bq, int64_t bk,
                      int64_t heads) {
  BlockLayout l;
  {
    py::gil_scoped_release nogil;
    l = compile_layout(p, nq, nk, bq, bk, heads);
  }
  py::dict d;
  d["full_rowptr"] = to_numpy(l.full_ptr);
  d["full_ranges"] = ranges_to_numpy(l.full_lo, l.full_hi);
  d["partial_rowptr"] = to_numpy(l.part_ptr);
  d["partial_ranges"] = ranges_to_numpy(l.part_lo, l.part_hi);
  d["heads"] = l.heads;
  d["nqb"] = l.nqb;
  d["nkb"] = l.nkb;
  d["block"] = py::make_tuple(l.bq, l.bk);
  return d;
}

py::array mask(const Pattern& p, int64_t nq, int64_t nk, int64_t heads) {
  std::vector<uint8_t> m;
  {
    py::gil_scoped_release nogil;
    m = p.mask(nq, nk, heads);
  }
  const int64_t want = heads * nq * nk;
  if (int64_t(m.size()) != want)
    throw RuntimeError("Pattern.mask: the core returned " + std::to_string(m.size()) +
                       " values, expected " + std::to_string(want));
  py::array a(py::dtype("bool"), std::vector<py::ssize_t>{heads, nq, nk});
  if (!m.empty()) std::memcpy(a.mutable_data(), m.data(), m.size());
  return a;
}

}  // namespace

void bind_patterns(py::module_& m) {
  py::class_<Pattern>(m, "Pattern", "A compiled-side pattern (see spattn.patterns for the API).")
      .def_static("dense", &Pattern::dense)
      .def_static("causal", &Pattern::causal)
      .def_static(
          "sliding_window",
          [](py::handle left, py::handle right) {
            return Pattern::sliding_window(window_bound(left, "left"), window_bound(right, "right"));
          },
          py::arg("left"), py::arg("right"))
      .def_static("block_sparse", &block_sparse, py::arg("bits"), py::arg("bq"), py::arg("bk"))
      .def_static(
          "dilated",
          [](py::handle left, py::handle right, int64_t dilation) {
            return Pattern::dilated(window_bound(left, "left"), window_bound(right, "right"),
                                    dilation);
          },
          py::arg("left"), py::arg("right"), py::arg("dilation"))
      .def_static("strided", &Pattern::strided, py::arg("stride"), py::arg("causal"))
      .def_static("fixed", &Pattern::fixed, py::arg("block"), py::arg("summary"),
                  py::arg("causal"))
      .def_static("global_", &Pattern::global, py::arg("positions"))
      .def_static("sink", &Pattern::sink, py::arg("n"))
      .def_static("bigbird", &Pattern::bigbird, py::arg("block"), py::arg("window"),
                  py::arg("globals"), py::arg("randoms"), py::arg("seed"))
      .def_static("document", &document, py::arg("cu_seqlens"))
      .def_static("prefix_lm", &prefix_lm, py::arg("n"))
      .def_static("log_sparse", &log_sparse, py::arg("local"))
      .def_static("union", &Pattern::union_of, py::arg("parts"))
      .def_static("intersection", &Pattern::intersection_of, py::arg("parts"))
      .def_static("per_head", &Pattern::per_head, py::arg("parts"))
      .def_static(
          "topk_blocks",
          [](int64_t k, int64_t bq, int64_t bk, bool causal, const Pattern* always) {
            return Pattern::topk_blocks(k, bq, bk, causal, always ? *always : Pattern());
          },
          py::arg("k"), py::arg("bq"), py::arg("bk"), py::arg("causal"),
          py::arg("always") = nullptr)
      .def_static("neighborhood", &neighborhood, py::arg("grid"), py::arg("window"),
                  py::arg("dilation"), py::arg("causal"), py::arg("start"))
      .def_static("sliding_tile", &sliding_tile, py::arg("grid"), py::arg("tile"),
                  py::arg("window_tiles"), py::arg("start"))
      .def_static("longnet", &longnet, py::arg("segments"), py::arg("dilations"),
                  py::arg("causal"))
      .def(
          "mask_row",
          [](const Pattern& p, int64_t nq, int64_t nk, int64_t heads, int64_t h, int64_t i) {
            std::vector<uint8_t> r;
            {
              py::gil_scoped_release nogil;
              r = p.mask_row(nq, nk, heads, h, i);
            }
            py::array a(py::dtype("bool"), std::vector<py::ssize_t>{py::ssize_t(r.size())});
            if (!r.empty()) std::memcpy(a.mutable_data(), r.data(), r.size());
            return a;
          },
          py::arg("nq"), py::arg("nk"), py::arg("heads"), py::arg("head"), py::arg("i"))
      .def("heads", &Pattern::heads)
      .def("describe", &Pattern::describe)
      .def("__repr__", [](const Pattern& p) { return "<_core.Pattern " + p.describe() + ">"; })
      .def("check", &Pattern::check, py::arg("nq"), py::arg("nk"), py::arg("hq"))
      .def("mask", &mask, py::arg("nq"), py::arg("nk"), py::arg("heads") = 1)
      .def("block_layout", &block_layout, py::arg("nq"), py::arg("nk"), py::arg("bq"),
           py::arg("bk"), py::arg("heads") = 1)
      .def(
          "kept_pairs",
          [](const Pattern& p, int64_t nq, int64_t nk, int64_t heads) {
            return kept_pairs(p, nq, nk, heads);
          },
          py::arg("nq"), py::arg("nk"), py::arg("heads") = 1);
}

}  // namespace python
}  // namespace spattn
