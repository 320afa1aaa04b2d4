// merge_partials: checks, then the merge of the backend of the tensors' device.
#include <sstream>

#include "backend/backend.hpp"
#include "plan/checks.hpp"
#include "spattn/error.hpp"
#include "spattn/merge.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

namespace {

std::string indexed(const char* name, size_t k) { return std::string(name) + "[" + std::to_string(k) + "]"; }

// A varlen [T, H, Dv] / [H, T] view as batch-of-one [1, T, H, Dv] / [1, H, T].
TensorView with_batch(TensorView t) {
  for (int d = t.ndim; d > 0; --d) {
    t.shape[d] = t.shape[d - 1];
    t.strides[d] = t.strides[d - 1];
  }
  t.shape[0] = 1;
  t.strides[0] = 0;
  ++t.ndim;
  return t;
}

bool same_shape(const TensorView& a, const TensorView& b) {
  if (a.ndim != b.ndim) return false;
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] != b.shape[d]) return false;
  return true;
}

void expect(bool ok, const std::string& name, const std::string& what, const TensorView& t) {
  if (!ok) throw ValueError(name + ": expected " + what + ", got shape " + t.shape_str());
}

}  // namespace

void merge_partials(const std::vector<DLTensor>& outs, const std::vector<DLTensor>& lses,
                    const DLTensor& out_, const DLTensor* lse_, const Options& options) {
  if (outs.empty()) throw ValueError("outs: expected at least one partial result, got none");
  if (outs.size() != lses.size()) {
    std::ostringstream m;
    m << "lses: expected one lse per output (" << outs.size() << "), got " << lses.size();
    throw ValueError(m.str());
  }
  std::vector<TensorView> o, l;
  const TensorView first = view_of(outs[0], "outs[0]");
  if (first.ndim != 3 && first.ndim != 4)
    throw ValueError("outs[0]: expected [B, N, H, Dv] or varlen [T, H, Dv], got shape " + first.shape_str());
  const bool varlen = first.ndim == 3;
  const DType dtype = float_dtype(first, "outs[0]");
  TensorView want_lse = first;  // the lse shape every part must have
  want_lse.ndim = varlen ? 2 : 3;
  if (varlen) {
    want_lse.shape[0] = first.shape[1];
    want_lse.shape[1] = first.shape[0];
  } else {
    want_lse.shape[1] = first.shape[2];
    want_lse.shape[2] = first.shape[1];
  }
  const std::string lse_shape = want_lse.shape_str() + (varlen ? " [H, T]" : " [B, H, N]");
  auto check_lse = [&](const TensorView& t, const std::string& name) {
    expect(same_shape(t, want_lse), name, lse_shape, t);
    const DLDataType w = to_dl(lse_dtype(dtype));  // float64 parts: float64 lse
    if (!(t.dtype.code == w.code && t.dtype.bits == w.bits && t.dtype.lanes == 1))
      throw TypeError(name + ": expected " + dtype_name(lse_dtype(dtype)) + ", got " +
                      describe(t.dtype));
    plan::expect_same_device(t, name.c_str(), first, "outs[0]");
  };
  auto check_out = [&](const TensorView& t, const std::string& name) {
    expect(same_shape(t, first), name, "the shape of outs[0] " + first.shape_str(), t);
    if (float_dtype(t, name.c_str()) != dtype)
      throw TypeError(name + ": dtype does not match outs[0]'s " + dtype_name(dtype));
    plan::expect_same_device(t, name.c_str(), first, "outs[0]");
  };
  for (size_t k = 0; k < outs.size(); ++k) {
    const std::string on = indexed("outs", k), ln = indexed("lses", k);
    TensorView ov = view_of(outs[k], on.c_str()), lv = view_of(lses[k], ln.c_str());
    check_out(ov, on);
    check_lse(lv, ln);
    o.push_back(varlen ? with_batch(ov) : ov);
    l.push_back(varlen ? with_batch(lv) : lv);
  }
  TensorView out = view_of(out_, "out");
  check_out(out, "out");
  TensorView lse;
  if (lse_) {
    lse = view_of(*lse_, "lse");
    check_lse(lse, "lse");
  }
  plan::expect_writable_layout(out, "out");
  if (lse_) plan::expect_writable_layout(lse, "lse");
  {  // outputs: one element per address, no memory shared with any part
    std::vector<std::string> names;
    for (size_t k = 0; k < outs.size(); ++k) names.push_back(indexed("outs", k)), names.push_back(indexed("lses", k));
    std::vector<NamedView> parts;
    for (size_t k = 0; k < outs.size(); ++k)
      parts.push_back({&o[k], names[2 * k].c_str()}), parts.push_back({&l[k], names[2 * k + 1].c_str()});
    expect_disjoint_outputs({{&out, "out"}, {&lse, "lse"}}, parts);
  }
  backend::Call call;
  backend::Backend& be = backend::for_device(first.device, "outs[0]");
  call.device = first.device;
  call.stream = options.stream;
  call.allocator = options.allocator;
  be.merge(o.data(), l.data(), int(o.size()), varlen ? with_batch(out) : out,
           lse_ ? (varlen ? with_batch(lse) : lse) : TensorView{}, dtype, call);
}

}  // namespace spattn
