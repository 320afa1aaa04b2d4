// The C++ entry points: every argument is checked here, once, before anything is written; then
// the pattern is compiled for the backend's tile size and the backend runs.
#include "spattn/spattn.hpp"

#include <cmath>
#include <sstream>

#include "cpu/attention_cpu.hpp"
#include "cpu/thread_pool.hpp"
#include "spattn/cuda/backend_info.hpp"

#ifndef SPATTN_VERSION
#define SPATTN_VERSION "0.0.0"
#endif

namespace spattn {

namespace {

constexpr int64_t kMaxHeadDim = 256;

std::string dims(const TensorView& t) { return t.shape_str(); }

void expect_rank(const TensorView& t, const char* name, int rank, const char* layout) {
  if (t.ndim != rank) {
    std::ostringstream m;
    m << name << ": expected " << rank << " dimensions " << layout << ", got " << t.ndim
      << " with shape " << dims(t);
    throw ValueError(m.str());
  }
}

void expect_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> want,
                  const char* layout) {
  expect_rank(t, name, int(want.size()), layout);
  int d = 0;
  for (int64_t w : want) {
    if (t.shape[d] != w) {
      std::ostringstream m;
      m << name << ": expected shape [";
      int e = 0;
      for (int64_t x : want) m << (e++ ? ", " : "") << x;
      m << "] " << layout << ", got " << dims(t);
      throw ValueError(m.str());
    }
    ++d;
  }
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

void expect_same_device(const TensorView& t, const char* name, const TensorView& q) {
  if (t.device.device_type != q.device.device_type || t.device.device_id != q.device.device_id) {
    std::ostringstream m;
    m << name << ": on device " << describe(t.device) << ", but q is on "
      << describe(q.device) << "; all tensors must be on one device";
    throw ValueError(m.str());
  }
}

// Outputs must not have two elements at one address (a stride of 0 on a dimension of size > 1).
void expect_writable_layout(const TensorView& t, const char* name) {
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] > 1 && t.strides[d] == 0) {
      std::ostringstream m;
      m << name << ": dimension " << d << " has stride 0 (a broadcast view); an output needs "
        << "one element per address";
      throw ValueError(m.str());
    }
}

void expect_cpu(const TensorView& q) {
  const auto type = q.device.device_type;
  if (type == kDLCPU || type == kDLCUDAHost) return;
  std::ostringstream m;
  if (type == kDLCUDA || type == kDLCUDAManaged) {
    m << "q: tensors are on " << describe(q.device) << ", but ";
    if (cuda::compiled())
      m << "the CUDA kernels are not part of this version yet (compiled for "
        << cuda::compiled_archs() << "); pass CPU tensors";
    else
      m << "this spattn was built without CUDA; rebuild with SPATTN_CUDA=ON or pass CPU "
           "tensors";
  } else {
    m << "q: no spattn backend for device " << describe(q.device) << "; pass CPU tensors";
  }
  throw RuntimeError(m.str());
}

float resolve_scale(double scale, int64_t d) {
  if (!std::isfinite(scale)) {
    std::ostringstream m;
    m << "scale: expected a finite number, got " << scale;
    throw ValueError(m.str());
  }
  return scale == 0.0 ? float(1.0 / std::sqrt(double(d))) : float(scale);
}

// The problem's sizes, read from q, k, v and checked against each other.
struct Dims {
  int64_t b, nq, nk, hq, hkv, d, dv;
};

Dims check_qkv(const TensorView& q, const TensorView& k, const TensorView& v, DType* dtype) {
  expect_rank(q, "q", 4, "[B, Nq, Hq, D]");
  expect_rank(k, "k", 4, "[B, Nk, Hkv, D]");
  expect_rank(v, "v", 4, "[B, Nk, Hkv, Dv]");
  *dtype = float_dtype(q, "q");
  expect_dtype(k, "k", *dtype, "q");
  expect_dtype(v, "v", *dtype, "q");
  expect_same_device(k, "k", q);
  expect_same_device(v, "v", q);
  Dims s{q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]};
  std::ostringstream m;
  if (k.shape[0] != s.b || v.shape[0] != s.b)
    m << "k, v: batch sizes " << k.shape[0] << " and " << v.shape[0] << " must equal q's "
      << s.b << " (q " << dims(q) << ", k " << dims(k) << ", v " << dims(v) << ")";
  else if (v.shape[1] != s.nk)
    m << "v: expected Nk=" << s.nk << " keys like k " << dims(k) << ", got " << dims(v);
  else if (v.shape[2] != s.hkv)
    m << "v: expected Hkv=" << s.hkv << " heads like k " << dims(k) << ", got " << dims(v);
  else if (k.shape[3] != s.d)
    m << "k: head dim " << k.shape[3] << " must equal q's D=" << s.d << " (q " << dims(q)
      << ", k " << dims(k) << ")";
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
  expect_cpu(q);
  return s;
}

void check_output(const TensorView& t, const char* name, std::initializer_list<int64_t> shape,
                  const char* layout, const TensorView& q, DType dtype, const char* ref) {
  expect_shape(t, name, shape, layout);
  expect_dtype(t, name, dtype, ref);
  expect_same_device(t, name, q);
  expect_writable_layout(t, name);
}

void check_lse(const TensorView& t, const char* name, const Dims& s, const TensorView& q) {
  expect_shape(t, name, {s.b, s.hq, s.nq}, "[B, Hq, Nq]");
  if (!(t.dtype.code == kDLFloat && t.dtype.bits == 32 && t.dtype.lanes == 1))
    throw TypeError(std::string(name) + ": expected float32, got " + describe(t.dtype));
  expect_same_device(t, name, q);
}

}  // namespace

void attention_forward(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
                       const Pattern& pattern, const DLTensor& out_, const DLTensor* lse_,
                       const Options& options) {
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k"), v = view_of(v_, "v");
  DType dtype;
  const Dims s = check_qkv(q, k, v, &dtype);
  const TensorView out = view_of(out_, "out");
  check_output(out, "out", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", q, dtype, "q");
  TensorView lse;
  if (lse_) {
    lse = view_of(*lse_, "lse");
    check_lse(lse, "lse", s, q);
    expect_writable_layout(lse, "lse");
  }
  const float scale = resolve_scale(options.scale, s.d);
  pattern.check(s.nq, s.nk, s.hq);

  const cpu::TileSize tile = cpu::cpu_tile_size();
  const BlockLayout layout = compile_layout(pattern, s.nq, s.nk, tile.bq, tile.bk, s.hq);
  cpu::ForwardArgs a{q, k, v, out, lse, dtype, scale, &layout, pattern.predicate(s.nq, s.nk)};
  cpu::forward(a);
}

void attention_backward(const DLTensor& dout_, const DLTensor& q_, const DLTensor& k_,
                        const DLTensor& v_, const DLTensor& out_, const DLTensor& lse_,
                        const Pattern& pattern, const DLTensor& dq_, const DLTensor& dk_,
                        const DLTensor& dv_, const Options& options) {
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k"), v = view_of(v_, "v");
  DType dtype;
  const Dims s = check_qkv(q, k, v, &dtype);
  const TensorView dout = view_of(dout_, "dout"), out = view_of(out_, "out");
  const TensorView lse = view_of(lse_, "lse");
  expect_shape(dout, "dout", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]");
  expect_dtype(dout, "dout", dtype, "q");
  expect_same_device(dout, "dout", q);
  expect_shape(out, "out", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]");
  expect_dtype(out, "out", dtype, "q");
  expect_same_device(out, "out", q);
  check_lse(lse, "lse", s, q);
  const TensorView dq = view_of(dq_, "dq"), dk = view_of(dk_, "dk"), dv = view_of(dv_, "dv");
  check_output(dq, "dq", {s.b, s.nq, s.hq, s.d}, "[B, Nq, Hq, D]", q, dtype, "q");
  check_output(dk, "dk", {s.b, s.nk, s.hkv, s.d}, "[B, Nk, Hkv, D]", q, dtype, "q");
  check_output(dv, "dv", {s.b, s.nk, s.hkv, s.dv}, "[B, Nk, Hkv, Dv]", q, dtype, "q");
  const float scale = resolve_scale(options.scale, s.d);
  pattern.check(s.nq, s.nk, s.hq);

  const cpu::TileSize tile = cpu::cpu_tile_size();
  const BlockLayout layout = compile_layout(pattern, s.nq, s.nk, tile.bq, tile.bk, s.hq);
  cpu::BackwardArgs a{dout, q,  k,  v,     out,   lse,     dq,
                      dk,   dv, dtype, scale, &layout, pattern.predicate(s.nq, s.nk)};
  cpu::backward(a);
}

const char* version() { return SPATTN_VERSION; }

std::map<std::string, std::string> info() {
  std::map<std::string, std::string> r;
  r["version"] = SPATTN_VERSION;
  r["backends"] = cuda::compiled() ? "cpu,cuda" : "cpu";
  r["cpu_simd"] = cpu::simd_level();
  r["cpu_threads"] = std::to_string(cpu::num_threads());
  r["cpu_tile"] = std::to_string(cpu::cpu_tile_size().bq) + "x" +
                  std::to_string(cpu::cpu_tile_size().bk);
  r["cuda_compiled"] = cuda::compiled() ? "yes" : "no";
  r["cuda_archs"] = cuda::compiled() ? cuda::compiled_archs() : "";
  r["cuda_kernels"] = "none yet (the CUDA attention kernels come in a later version)";
  return r;
}

}  // namespace spattn
