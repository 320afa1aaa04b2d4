// XLA FFI custom-call targets for spattn.jax: attention forward, backward and decode, for the
// CPU and, in builds with CUDA, for CUDA (the same handlers, on XLA's stream and device).
//
// Compiled with the FFI headers jaxlib ships (xla/ffi/api/ffi.h) when the build finds them
// (python/CMakeLists.txt defines SPATTN_XLA_FFI); otherwise _core.xla_ffi_targets() is empty
// and spattn.jax says so. XLA hands each handler dense row-major buffers; they are viewed as
// DLTensors and passed to the same C++ entry points as every other caller. Patterns cannot be
// FFI attributes, so Python registers each core Pattern once (_core.register_ffi_pattern) and
// passes its index as the attribute `pattern`.
//
// Score modifiers (docs/score_modifiers.md): `softcap` is an attribute (0: none), a constant of
// the traced call. alibi_slopes and sinks are operands, not attributes: they are arrays that
// jax.jit traces (the sinks are learned, and jax.grad differentiates them), which attributes,
// baked into the compiled program, cannot be. Every target takes both, always: [Hq] of lse's
// dtype, or an empty [0] array for "none", so that one handler serves calls with and without
// them. The backward returns dsinks the same way ([Hq], or [0] without sinks).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "spattn/error.hpp"
#include "spattn/spattn.hpp"

#if SPATTN_XLA_FFI
#include "xla/ffi/api/ffi.h"
#endif

namespace spattn {
namespace python {

namespace py = pybind11;

namespace {

// The patterns JAX calls refer to, by index. Kept for the life of the process: a jitted
// function may run again at any time with the index it was traced with.
std::mutex g_patterns_mutex;
std::vector<Pattern> g_patterns;

int64_t register_pattern(const Pattern& p) {
  std::lock_guard<std::mutex> lock(g_patterns_mutex);
  g_patterns.push_back(p);
  return int64_t(g_patterns.size()) - 1;
}

#if SPATTN_XLA_FFI
namespace ffi = xla::ffi;

Pattern pattern_at(int64_t id) {
  std::lock_guard<std::mutex> lock(g_patterns_mutex);
  if (id < 0 || id >= int64_t(g_patterns.size()))
    throw ValueError("pattern: no registered pattern " + std::to_string(id));
  return g_patterns[size_t(id)];
}

// Where a custom call's buffers live and where its work is queued: the host (CPU targets), or
// the GPU and the stream XLA gives the call (CUDA targets).
struct Place {
  DLDevice device{kDLCPU, 0};
  void* stream = nullptr;
};

// A DLTensor view of an XLA buffer (dense, row-major, on `at`'s device). `strides` must
// outlive it.
DLTensor view(const ffi::AnyBuffer& b, std::vector<int64_t>& strides, const char* name,
              const Place& at) {
  DLTensor t{};
  t.data = b.untyped_data();
  t.device = at.device;
  const auto dims = b.dimensions();
  t.ndim = int(dims.size());
  switch (b.element_type()) {
    case ffi::DataType::F64: t.dtype = {kDLFloat, 64, 1}; break;  // jax_enable_x64
    case ffi::DataType::F32: t.dtype = {kDLFloat, 32, 1}; break;
    case ffi::DataType::F16: t.dtype = {kDLFloat, 16, 1}; break;
    case ffi::DataType::BF16: t.dtype = {kDLBfloat, 16, 1}; break;
    case ffi::DataType::S32: t.dtype = {kDLInt, 32, 1}; break;
    case ffi::DataType::S64: t.dtype = {kDLInt, 64, 1}; break;
    default:
      throw TypeError(std::string(name) + ": expected float32, float16, bfloat16, float64 (or "
                      "int32/int64 indices), got XLA data type " +
                      std::to_string(int(b.element_type())));
  }
  strides.assign(size_t(t.ndim), 1);
  for (int d = t.ndim - 2; d >= 0; --d) strides[size_t(d)] = strides[size_t(d) + 1] * dims[size_t(d) + 1];
  t.shape = t.ndim ? const_cast<int64_t*>(&dims[0]) : nullptr;
  t.strides = strides.data();
  return t;
}

// spattn's exceptions become FFI errors; JAX raises them with the message.
template <class F>
ffi::Error guarded(F&& f) {
  try {
    f();
    return ffi::Error::Success();
  } catch (const ValueError& e) {
    return ffi::Error::InvalidArgument(e.what());
  } catch (const TypeError& e) {
    return ffi::Error::InvalidArgument(e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

// A per-head modifier operand: null for the empty [0] array that stands for "none".
const DLTensor* given(const DLTensor& t) {
  return t.ndim == 1 && t.shape[0] == 0 ? nullptr : &t;
}

Options options(const Place& at, double scale, double softcap, const DLTensor& alibi,
                const DLTensor& sinks, const DLTensor* dsinks = nullptr) {
  Options o;
  o.stream = at.stream;
  o.scale = scale;  // 0: 1/sqrt(D)
  o.modifiers.softcap = softcap;  // 0: none
  o.modifiers.alibi_slopes = given(alibi);
  o.modifiers.sinks = given(sinks);
  o.modifiers.dsinks = o.modifiers.sinks ? dsinks : nullptr;
  return o;
}

ffi::Error forward_impl(const Place& at, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                        ffi::AnyBuffer alibi, ffi::AnyBuffer sinks, int64_t pattern, double scale,
                        double softcap, ffi::Result<ffi::AnyBuffer> out,
                        ffi::Result<ffi::AnyBuffer> lse) {
  return guarded([&] {
    std::vector<int64_t> s[7];
    const DLTensor tq = view(q, s[0], "q", at), tk = view(k, s[1], "k", at), tv = view(v, s[2], "v", at);
    const DLTensor ta = view(alibi, s[3], "alibi_slopes", at), ts = view(sinks, s[4], "sinks", at);
    const DLTensor to = view(*out, s[5], "out", at), tl = view(*lse, s[6], "lse", at);
    attention_forward(tq, tk, tv, pattern_at(pattern), to, &tl, options(at, scale, softcap, ta, ts));
  });
}

ffi::Error backward_impl(const Place& at, ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k,
                         ffi::AnyBuffer v, ffi::AnyBuffer out, ffi::AnyBuffer lse,
                         ffi::AnyBuffer alibi, ffi::AnyBuffer sinks, int64_t pattern, double scale,
                         double softcap, ffi::Result<ffi::AnyBuffer> dq,
                         ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                         ffi::Result<ffi::AnyBuffer> dsinks) {
  return guarded([&] {
    std::vector<int64_t> s[12];
    const DLTensor tdo = view(dout, s[0], "dout", at), tq = view(q, s[1], "q", at), tk = view(k, s[2], "k", at);
    const DLTensor tv = view(v, s[3], "v", at), to = view(out, s[4], "out", at), tl = view(lse, s[5], "lse", at);
    const DLTensor ta = view(alibi, s[6], "alibi_slopes", at), ts = view(sinks, s[7], "sinks", at);
    const DLTensor gq = view(*dq, s[8], "dq", at), gk = view(*dk, s[9], "dk", at), gv = view(*dv, s[10], "dv", at);
    const DLTensor gs = view(*dsinks, s[11], "dsinks", at);
    attention_backward(tdo, tq, tk, tv, to, tl, pattern_at(pattern), gq, gk, gv,
                       options(at, scale, softcap, ta, ts, &gs));
  });
}

ffi::Error decode_impl(const Place& at, ffi::AnyBuffer q, ffi::AnyBuffer k_cache, ffi::AnyBuffer v_cache,
                       ffi::AnyBuffer cache_len, ffi::AnyBuffer alibi, ffi::AnyBuffer sinks,
                       int64_t pattern, double scale, double softcap,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse) {
  return guarded([&] {
    std::vector<int64_t> s[8];
    const DLTensor tq = view(q, s[0], "q", at), tk = view(k_cache, s[1], "k_cache", at);
    const DLTensor tv = view(v_cache, s[2], "v_cache", at), tn = view(cache_len, s[3], "cache_len", at);
    const DLTensor ta = view(alibi, s[4], "alibi_slopes", at), ts = view(sinks, s[5], "sinks", at);
    const DLTensor to = view(*out, s[6], "out", at), tl = view(*lse, s[7], "lse", at);
    decode(tq, tk, tv, tn, pattern_at(pattern), nullptr, to, &tl, options(at, scale, softcap, ta, ts));
  });
}

ffi::Error decode_paged_impl(const Place& at, ffi::AnyBuffer q, ffi::AnyBuffer k_pages, ffi::AnyBuffer v_pages,
                             ffi::AnyBuffer cache_len, ffi::AnyBuffer block_table,
                             ffi::AnyBuffer alibi, ffi::AnyBuffer sinks, int64_t pattern,
                             double scale, double softcap, ffi::Result<ffi::AnyBuffer> out,
                             ffi::Result<ffi::AnyBuffer> lse) {
  return guarded([&] {
    std::vector<int64_t> s[9];
    const DLTensor tq = view(q, s[0], "q", at), tk = view(k_pages, s[1], "k_cache", at);
    const DLTensor tv = view(v_pages, s[2], "v_cache", at), tn = view(cache_len, s[3], "cache_len", at);
    const DLTensor tb = view(block_table, s[4], "block_table", at);
    const DLTensor ta = view(alibi, s[5], "alibi_slopes", at), ts = view(sinks, s[6], "sinks", at);
    const DLTensor to = view(*out, s[7], "out", at), tl = view(*lse, s[8], "lse", at);
    decode(tq, tk, tv, tn, pattern_at(pattern), &tb, to, &tl, options(at, scale, softcap, ta, ts));
  });
}

// Each operation's operands, attributes and results, in the order its impl takes them.
#define SPATTN_FFI_ARGS(n) SPATTN_FFI_ARGS_##n
#define SPATTN_FFI_ARGS_1 .Arg<ffi::AnyBuffer>()
#define SPATTN_FFI_ARGS_2 SPATTN_FFI_ARGS_1 SPATTN_FFI_ARGS_1
#define SPATTN_FFI_ARGS_4 SPATTN_FFI_ARGS_2 SPATTN_FFI_ARGS_2
#define SPATTN_FFI_ATTRS .Attr<int64_t>("pattern").Attr<double>("scale").Attr<double>("softcap")
#define SPATTN_FFI_RETS_2 .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
// q, k, v, alibi_slopes, sinks -> out, lse
#define SPATTN_FFI_FORWARD SPATTN_FFI_ARGS_4 SPATTN_FFI_ARGS_1 SPATTN_FFI_ATTRS SPATTN_FFI_RETS_2
// dout, q, k, v, out, lse, alibi_slopes, sinks -> dq, dk, dv, dsinks
#define SPATTN_FFI_BACKWARD \
  SPATTN_FFI_ARGS_4 SPATTN_FFI_ARGS_4 SPATTN_FFI_ATTRS SPATTN_FFI_RETS_2 SPATTN_FFI_RETS_2
// q, k_cache, v_cache, cache_len, alibi_slopes, sinks -> out, lse
#define SPATTN_FFI_DECODE SPATTN_FFI_ARGS_4 SPATTN_FFI_ARGS_2 SPATTN_FFI_ATTRS SPATTN_FFI_RETS_2
// q, k_pages, v_pages, cache_len, block_table, alibi_slopes, sinks -> out, lse
#define SPATTN_FFI_DECODE_PAGED \
  SPATTN_FFI_ARGS_4 SPATTN_FFI_ARGS_2 SPATTN_FFI_ARGS_1 SPATTN_FFI_ATTRS SPATTN_FFI_RETS_2

// Two handlers per operation: the CPU's (host buffers) and CUDA's, which XLA also hands its
// stream and device ordinal; the work is queued on that stream. The CUDA ones are registered
// only by builds with CUDA kernels (spattn/jax.py); without them the core would refuse the
// device anyway.
#define SPATTN_FFI_TARGETS(sym, impl, SIG)                                                  \
  constexpr auto sym##_on_cpu = [](auto... a) { return impl(Place{}, a...); };             \
  constexpr auto sym##_on_cuda = [](void* stream, int32_t device, auto... a) {             \
    return impl(Place{{kDLCUDA, device}, stream}, a...);                                    \
  };                                                                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(sym, sym##_on_cpu, ffi::Ffi::Bind() SIG);                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(sym##_cuda, sym##_on_cuda,                                  \
                                ffi::Ffi::Bind()                                            \
                                    .Ctx<ffi::PlatformStream<void*>>()                      \
                                    .Ctx<ffi::DeviceOrdinal>() SIG)

SPATTN_FFI_TARGETS(spattn_xla_forward, forward_impl, SPATTN_FFI_FORWARD);
SPATTN_FFI_TARGETS(spattn_xla_backward, backward_impl, SPATTN_FFI_BACKWARD);
SPATTN_FFI_TARGETS(spattn_xla_decode, decode_impl, SPATTN_FFI_DECODE);
SPATTN_FFI_TARGETS(spattn_xla_decode_paged, decode_paged_impl, SPATTN_FFI_DECODE_PAGED);
#endif  // SPATTN_XLA_FFI

// The handlers for `platform` ("cpu" or "cuda") by target name; empty without the FFI headers,
// and for "cuda" without CUDA kernels in this build.
py::dict targets(const std::string& platform) {
  py::dict d;
#if SPATTN_XLA_FFI
  auto capsule = [](XLA_FFI_Handler* fn) { return py::capsule(reinterpret_cast<void*>(fn)); };
  if (platform == "cpu") {
    d["spattn_forward"] = capsule(spattn_xla_forward);
    d["spattn_backward"] = capsule(spattn_xla_backward);
    d["spattn_decode"] = capsule(spattn_xla_decode);
    d["spattn_decode_paged"] = capsule(spattn_xla_decode_paged);
  } else if (platform == "cuda") {
#if SPATTN_WITH_CUDA
    d["spattn_forward"] = capsule(spattn_xla_forward_cuda);
    d["spattn_backward"] = capsule(spattn_xla_backward_cuda);
    d["spattn_decode"] = capsule(spattn_xla_decode_cuda);
    d["spattn_decode_paged"] = capsule(spattn_xla_decode_paged_cuda);
#endif
  } else {
    throw ValueError("platform: expected 'cpu' or 'cuda', got '" + platform + "'");
  }
#else
  (void)platform;
#endif
  return d;
}

}  // namespace

void bind_jax_ffi(py::module_& m) {
  m.def("xla_ffi_targets", &targets,
        "XLA FFI handlers for a platform ('cpu' or 'cuda') by target name, as PyCapsules for "
        "jax.ffi.register_ffi_target; empty when this build did not find jaxlib's FFI headers "
        "(and, for 'cuda', when it has no CUDA kernels).");
  m.def("register_ffi_pattern", &register_pattern, py::arg("pattern"),
        "Keep a pattern for the XLA FFI handlers; returns the index they take as `pattern`.");
}

}  // namespace python
}  // namespace spattn
