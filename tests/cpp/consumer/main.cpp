// Uses the installed C++ library: float32 q/k/v in plain std::vectors, wrapped in DLTensor
// views, through spattn::attention_forward with a causal sliding window, checked against a
// naive computation of docs/patterns.md (bottom-right alignment: query i sits at key position
// i + Nk - Nq). Exits 0 on success.
#include <spattn/spattn.hpp>
#include <spattn/cuda/backend_info.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

namespace {

DLTensor view(std::vector<float>& data, std::vector<int64_t>& shape) {
  DLTensor t{};
  t.data = data.data();
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = DLDataType{kDLFloat, 32, 1};
  t.shape = shape.data();
  t.strides = nullptr;  // compact row-major
  t.byte_offset = 0;
  return t;
}

}  // namespace

int main() {
  const int64_t B = 2, Nq = 5, Nk = 9, Hq = 4, Hkv = 2, D = 8, Dv = 6;
  const int64_t left = 3, right = 0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));

  std::vector<float> q(B * Nq * Hq * D), k(B * Nk * Hkv * D), v(B * Nk * Hkv * Dv);
  uint32_t seed = 12345;
  auto rnd = [&seed] {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>((seed >> 8) & 0xFFFF) / 65536.0f * 2.0f - 1.0f;
  };
  for (auto& x : q) x = rnd();
  for (auto& x : k) x = rnd();
  for (auto& x : v) x = rnd();
  std::vector<float> out(B * Nq * Hq * Dv, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(B * Hq * Nq, std::numeric_limits<float>::quiet_NaN());

  std::vector<int64_t> qs{B, Nq, Hq, D}, ks{B, Nk, Hkv, D}, vs{B, Nk, Hkv, Dv}, os{B, Nq, Hq, Dv},
      ls{B, Hq, Nq};
  DLTensor tq = view(q, qs), tk = view(k, ks), tv = view(v, vs), to = view(out, os),
           tl = view(lse, ls);

  try {
    spattn::attention_forward(tq, tk, tv, spattn::Pattern::sliding_window(left, right), to, &tl);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_forward threw: %s\n", e.what());
    return 1;
  }

  double max_err = 0.0;
  const int64_t group = Hq / Hkv, off = Nk - Nq;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < Nq; ++i) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t g = h / group;
        std::vector<double> s(Nk, -std::numeric_limits<double>::infinity());
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Nk; ++j) {
          const int64_t rel = i + off - j;
          if (rel < -right || rel > left) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d)
            dot += static_cast<double>(q[((b * Nq + i) * Hq + h) * D + d]) *
                   static_cast<double>(k[((b * Nk + j) * Hkv + g) * D + d]);
          s[j] = dot * scale;
          m = std::max(m, s[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < Nk; ++j) sum += std::isinf(s[j]) ? 0.0 : std::exp(s[j] - m);
        const double want_lse = m + std::log(sum);
        max_err = std::max(max_err, std::abs(want_lse - lse[(b * Hq + h) * Nq + i]));
        for (int64_t e = 0; e < Dv; ++e) {
          double acc = 0.0;
          for (int64_t j = 0; j < Nk; ++j)
            if (!std::isinf(s[j]))
              acc += std::exp(s[j] - m) / sum * v[((b * Nk + j) * Hkv + g) * Dv + e];
          const double got = out[((b * Nq + i) * Hq + h) * Dv + e];
          const double err = std::abs(acc - got);
          if (!(err <= 1e30)) max_err = std::numeric_limits<double>::infinity();  // NaN
          max_err = std::max(max_err, err);
        }
      }
    }
  }

  std::printf("spattn %s (CUDA compiled: %s%s): sliding_window(%lld, %lld), max error %.3g\n",
              spattn::version(), spattn::cuda::compiled() ? "yes, " : "no",
              spattn::cuda::compiled_archs().c_str(), static_cast<long long>(left),
              static_cast<long long>(right), max_err);
  if (!(max_err < 1e-5)) {
    std::fprintf(stderr, "FAILED: max error %.3g\n", max_err);
    return 1;
  }
  return 0;
}
