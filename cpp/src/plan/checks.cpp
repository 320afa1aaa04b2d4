// The argument checks of every entry point (checks.hpp).
#include "plan/checks.hpp"

#include <cmath>
#include <sstream>

#include "spattn/error.hpp"

namespace spattn::plan {

void expect_rank(const TensorView& t, const char* name, int rank, const char* layout) {
  if (t.ndim != rank) {
    std::ostringstream m;
    m << name << ": expected " << rank << " dimensions " << layout << ", got " << t.ndim
      << " with shape " << t.shape_str();
    throw ValueError(m.str());
  }
}

void expect_shape(const TensorView& t, const char* name, const std::vector<int64_t>& want,
                  const char* layout) {
  expect_rank(t, name, int(want.size()), layout);
  bool ok = true;
  for (size_t d = 0; ok && d < want.size(); ++d) ok = t.shape[d] == want[d];
  if (ok) return;
  std::ostringstream m;
  m << name << ": expected shape [";
  for (size_t d = 0; d < want.size(); ++d) m << (d ? ", " : "") << want[d];
  m << "] " << layout << ", got " << t.shape_str();
  throw ValueError(m.str());
}

void expect_dtype(const TensorView& t, const char* name, DType want, const char* ref) {
  const DType got = float_dtype(t, name);
  if (got != want) {
    std::ostringstream m;
    m << name << ": dtype " << dtype_name(got) << " does not match " << ref << "'s "
      << dtype_name(want);
    throw TypeError(m.str());
  }
}

void expect_same_device(const TensorView& t, const char* name, const TensorView& ref,
                        const char* ref_name) {
  if (t.device.device_type != ref.device.device_type || t.device.device_id != ref.device.device_id) {
    std::ostringstream m;
    m << name << ": on device " << describe(t.device) << ", but " << ref_name << " is on "
      << describe(ref.device) << "; all tensors must be on one device";
    throw ValueError(m.str());
  }
}

void expect_writable_layout(const TensorView& t, const char* name) {
  expect_no_self_overlap(t, name);  // tensor.hpp: no two elements at one address
}

void expect_typed(const TensorView& t, const char* name, DType want,
                  const std::vector<int64_t>& shape, const char* layout, const TensorView& ref,
                  const char* ref_name) {
  const DLDataType w = to_dl(want);
  if (!(t.dtype.code == w.code && t.dtype.bits == w.bits && t.dtype.lanes == 1))
    throw TypeError(std::string(name) + ": expected " + dtype_name(want) + ", got " +
                    describe(t.dtype));
  expect_shape(t, name, shape, layout);
  expect_same_device(t, name, ref, ref_name);
}

void expect_float32(const TensorView& t, const char* name, const std::vector<int64_t>& shape,
                    const char* layout, const TensorView& ref, const char* ref_name) {
  expect_typed(t, name, DType::Float32, shape, layout, ref, ref_name);
}

void expect_lse(const TensorView& t, const char* name, DType inputs,
                const std::vector<int64_t>& shape, const char* layout, const TensorView& q) {
  expect_typed(t, name, lse_dtype(inputs), shape, layout, q, "q");
}

bool is_index_dtype(const TensorView& t) {
  return t.dtype.code == kDLInt && (t.dtype.bits == 32 || t.dtype.bits == 64) &&
         t.dtype.lanes == 1;
}

void check_input(const TensorView& t, const char* name, const std::vector<int64_t>& shape,
                 const char* layout, const TensorView& q, DType dtype) {
  expect_shape(t, name, shape, layout);
  expect_dtype(t, name, dtype);
  expect_same_device(t, name, q);
}

void check_output(const TensorView& t, const char* name, const std::vector<int64_t>& shape,
                  const char* layout, const TensorView& q, DType dtype) {
  check_input(t, name, shape, layout, q, dtype);
  expect_writable_layout(t, name);
}

backend::Dims check_qkv(const TensorView& q, const TensorView& k, const TensorView& v,
                        DType* dtype, bool varlen) {
  const int r = varlen ? 3 : 4, o = varlen ? 0 : 1;  // rank; index of the sequence dimension
  expect_rank(q, "q", r, varlen ? "[Tq, Hq, D]" : "[B, Nq, Hq, D]");
  expect_rank(k, "k", r, varlen ? "[Tk, Hkv, D]" : "[B, Nk, Hkv, D]");
  expect_rank(v, "v", r, varlen ? "[Tk, Hkv, Dv]" : "[B, Nk, Hkv, Dv]");
  *dtype = float_dtype(q, "q");
  expect_dtype(k, "k", *dtype);
  expect_dtype(v, "v", *dtype);
  expect_same_device(k, "k", q);
  expect_same_device(v, "v", q);
  backend::Dims s{varlen ? 1 : q.shape[0], q.shape[o],     k.shape[o],    q.shape[o + 1],
                  k.shape[o + 1],          q.shape[o + 2], v.shape[o + 2]};
  std::ostringstream m;
  if (!varlen && (k.shape[0] != s.b || v.shape[0] != s.b))
    m << "k, v: batch sizes " << k.shape[0] << " and " << v.shape[0] << " must equal q's "
      << s.b << " (q " << q.shape_str() << ", k " << k.shape_str() << ", v " << v.shape_str()
      << ")";
  else if (v.shape[o] != s.nk)
    m << "v: expected " << (varlen ? "Tk=" : "Nk=") << s.nk << " keys like k " << k.shape_str()
      << ", got " << v.shape_str();
  else if (v.shape[o + 1] != s.hkv)
    m << "v: expected Hkv=" << s.hkv << " heads like k " << k.shape_str() << ", got "
      << v.shape_str();
  else if (k.shape[o + 2] != s.d)
    m << "k: head dim " << k.shape[o + 2] << " must equal q's D=" << s.d << " (q "
      << q.shape_str() << ", k " << k.shape_str() << ")";
  else if (s.hq < 1 || s.hkv < 1)
    m << "q, k: expected at least one head, got Hq=" << s.hq << ", Hkv=" << s.hkv;
  else if (s.hq % s.hkv != 0)
    m << "q, k: Hq=" << s.hq << " query heads must be a multiple of Hkv=" << s.hkv
      << " key/value heads (GQA)";
  else if (s.d < 1 || s.d > kMaxHeadDim)
    m << "q: head dim D=" << s.d << " is outside 1.." << kMaxHeadDim;
  else if (s.dv < 1 || s.dv > kMaxHeadDim)
    m << "v: head dim Dv=" << s.dv << " is outside 1.." << kMaxHeadDim;
  if (!m.str().empty()) throw ValueError(m.str());
  return s;
}

CallOptions resolve(const Options& o, int64_t d) {
  if (!std::isfinite(o.scale)) {
    std::ostringstream m;
    m << "scale: expected a finite number, got " << o.scale;
    throw ValueError(m.str());
  }
  if (o.num_threads < 0)
    throw ValueError("num_threads: expected 0 (all) or a positive count, got " +
                     std::to_string(o.num_threads));
  const double scale = o.scale == 0.0 ? 1.0 / std::sqrt(double(d)) : o.scale;
  return {scale, o.num_threads};
}

backend::Backend& backend_for(const TensorView& q, backend::Op op, DType dtype, int64_t d,
                              int64_t dv, const Options& o, backend::Call* call) {
  backend::Backend& be = backend::for_device(q.device, "q");
  call->device = q.device;
  call->stream = o.stream;
  call->allocator = o.allocator;
  call->deterministic = o.deterministic;
  const std::string why = be.unsupported(op, dtype, d, dv, *call);
  if (!why.empty())
    throw RuntimeError("q: tensors are on " + describe(q.device) + ", but " + why);
  return be;
}

}  // namespace spattn::plan
