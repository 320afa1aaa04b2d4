// check_modifiers (modifiers.hpp).
#include "plan/modifiers.hpp"

#include <cmath>
#include <sstream>
#include <string>

#include "plan/checks.hpp"
#include "spattn/error.hpp"

namespace spattn::plan {

namespace {

bool host_memory(const TensorView& t) {
  return t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost;
}

// A per-head array [hq] of dtype `want` on q's device.
TensorView per_head(const DLTensor& t, const char* name, const TensorView& q, int64_t hq,
                    DType want, const char* what) {
  const TensorView v = view_of(t, name);
  const DLDataType w = to_dl(want);
  if (!(v.dtype.code == w.code && v.dtype.bits == w.bits && v.dtype.lanes == 1))
    throw TypeError(std::string(name) + ": expected " + dtype_name(want) + " " + what +
                    " [Hq]" + (want == DType::Float64 ? " (float64 inputs take float64 modifiers)" : "") +
                    ", got dtype " + describe(v.dtype));
  if (v.ndim != 1 || v.shape[0] != hq) {
    std::ostringstream m;
    m << name << ": expected shape [" << hq << "] (one " << what << " per query head, Hq=" << hq
      << "), got " << v.shape_str();
    throw ValueError(m.str());
  }
  expect_same_device(v, name, q);
  return v;
}

// Element h of a checked per-head array, as double.
double at(const TensorView& v, int64_t h) {
  return v.dtype.bits == 64 ? v.ptr<const double>()[h * v.strides[0]]
                            : double(v.ptr<const float>()[h * v.strides[0]]);
}

}  // namespace

backend::ScoreMods check_modifiers(const Modifiers& m, const TensorView& q, DType dtype, int64_t hq,
                                   bool backward, TensorView* dsinks) {
  backend::ScoreMods r;
  if (!std::isfinite(m.softcap) || m.softcap < 0.0) {
    std::ostringstream s;
    s << "softcap: expected a finite number > 0 (or none), got " << m.softcap;
    throw ValueError(s.str());
  }
  r.softcap = float(m.softcap);
  r.softcap64 = m.softcap;
  if (m.softcap != 0.0 && !(r.softcap > 0.f && std::isfinite(1.f / r.softcap)))
    throw ValueError("softcap: " + std::to_string(m.softcap) + " is outside float32's range");
  const DType want = lse_dtype(dtype);
  const bool wide = want == DType::Float64;
  if (m.alibi_slopes) {
    const TensorView v = per_head(*m.alibi_slopes, "alibi_slopes", q, hq, want, "slope");
    if (wide)
      r.alibi64 = v.ptr<const double>();
    else
      r.alibi = v.ptr<const float>();
    r.alibi_stride = v.strides[0];
    if (host_memory(v))
      for (int64_t h = 0; h < hq; ++h)
        if (!std::isfinite(at(v, h))) {
          std::ostringstream s;
          s << "alibi_slopes: expected finite slopes, got alibi_slopes[" << h << "] = " << at(v, h);
          throw ValueError(s.str());
        }
  }
  if (m.sinks) {
    const TensorView v = per_head(*m.sinks, "sinks", q, hq, want, "sink logit");
    if (wide)
      r.sinks64 = v.ptr<const double>();
    else
      r.sinks = v.ptr<const float>();
    r.sinks_stride = v.strides[0];
    if (host_memory(v))
      for (int64_t h = 0; h < hq; ++h) {
        const double x = at(v, h);
        if (std::isnan(x) || x == INFINITY) {
          std::ostringstream s;
          s << "sinks: expected finite logits (or -inf: no sink), got sinks[" << h << "] = " << x;
          throw ValueError(s.str());
        }
      }
  }
  if (dsinks) *dsinks = TensorView{};
  if (m.dsinks) {
    if (!backward) throw ValueError("dsinks: is an output of the backward pass only");
    if (!m.sinks) throw ValueError("dsinks: given without sinks (there is no sink to differentiate)");
    *dsinks = per_head(*m.dsinks, "dsinks", q, hq, want, "sink gradient");
    expect_writable_layout(*dsinks, "dsinks");
  }
  return r;
}

void expect_modifiers_supported(const backend::ScoreMods& mods, const backend::Backend& be,
                                backend::Op op, const backend::Call& call, const TensorView& q) {
  if (!mods.any()) return;
  const std::string why = be.unsupported_modifiers(op, call);
  if (!why.empty()) throw RuntimeError("q: tensors are on " + describe(q.device) + ", but " + why);
}

}  // namespace spattn::plan
