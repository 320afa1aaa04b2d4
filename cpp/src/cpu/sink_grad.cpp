// The gradient of the sinks (options.hpp, Modifiers::dsinks) on the host. A sink is one more
// term e^{sink_h} in a row's softmax denominator with no value row, so its probability is
// p = exp(sink_h - lse) and, as for any score, dL/dsink_h = p * (0 - delta) summed over the rows
// of head h, with delta = rowsum(dO * O). It is computed once per call from the final out and
// lse, after every part of the pattern has run: the sink is counted once.
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/common.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

namespace {

float to_float(const char* p, DType dtype) {
  uint16_t h;
  uint32_t u;
  switch (dtype) {
    case DType::Float32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::BFloat16:
      std::memcpy(&h, p, 2);
      u = uint32_t(h) << 16;
      break;
    default: {  // float16
      std::memcpy(&h, p, 2);
      const uint32_t sign = uint32_t(h & 0x8000u) << 16, em = h & 0x7fffu;
      if (em < 0x400u) {
        const float f = float(em) * 5.9604644775390625e-08f;
        std::memcpy(&u, &f, 4);
      } else {
        u = (em << 13) + (112u << 23);
        if (em >= 0x7c00u) u += 112u << 23;
      }
      u |= sign;
    }
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

void sink_grad(const TensorView& dout, const TensorView& out, const TensorView& lse,
               const backend::ScoreMods& mods, const TensorView& dsinks, DType dtype) {
  const int64_t B = out.shape[0], N = out.shape[1], H = out.shape[2], Dv = out.shape[3];
  const int64_t es = dtype_size(dtype);
  // One task per (b, h): sums in double, reduced over b in a fixed order (deterministic).
  std::vector<double> part(size_t(B * H), 0.0);
  parallel_for(B * H, [&](int64_t task, int) {
    const int64_t b = task / H, h = task % H;
    const float sink = mods.sinks[h * mods.sinks_stride];
    if (sink == -INFINITY) return;  // no sink: no gradient
    double acc = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      const float l = lse.ptr<const float>()[b * lse.strides[0] + h * lse.strides[1] + i * lse.strides[2]];
      const double p = std::exp(double(sink) - double(l));
      if (p == 0.0) continue;
      const char* o = static_cast<const char*>(out.data) +
                      (b * out.strides[0] + i * out.strides[1] + h * out.strides[2]) * es;
      const char* d = static_cast<const char*>(dout.data) +
                      (b * dout.strides[0] + i * dout.strides[1] + h * dout.strides[2]) * es;
      double delta = 0.0;
      for (int64_t x = 0; x < Dv; ++x)
        delta += double(to_float(o + x * out.strides[3] * es, dtype)) *
                 double(to_float(d + x * dout.strides[3] * es, dtype));
      acc -= p * delta;
    }
    part[size_t(task)] = acc;
  });
  for (int64_t h = 0; h < H; ++h) {
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) s += part[size_t(b * H + h)];
    dsinks.ptr<float>()[h * dsinks.strides[0]] = float(s);
  }
}

}  // namespace spattn::cpu
