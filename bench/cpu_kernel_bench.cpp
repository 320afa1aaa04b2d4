// Times the CPU kernels on a sliding-window problem (float32, B=1, H=8, D=Dv=64 by default)
// and prints useful GFLOP/s = 4 * D * H * kept_pairs / time (forward; the backward is
// reported with 2.5x the forward's flops, the usual convention for attention).
//
//   g++ -O3 -std=c++17 -pthread -Icpp/include -Icpp/src bench/cpu_kernel_bench.cpp
//     $(ls cpp/src/cpu/*.cpp | grep -v decode) cpp/src/pattern/*.cpp cpp/src/tensor.cpp
//     -o /tmp/cpu_kernel_bench && /tmp/cpu_kernel_bench 8192 16384
//
// Arguments: sequence lengths; env WINDOW (default 512 keys, causal), HEADS, DIM, DTYPE
// (f32 | f16 | bf16), REPS, BWD (0: forward only). SPATTN_SIMD=avx512 compares bf16 without
// the AVX512_BF16 kernels.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/attention_cpu.hpp"
#include "spattn/pattern.hpp"

using namespace spattn;

namespace {

int64_t env_int(const char* name, int64_t def) {
  const char* s = std::getenv(name);
  return s && *s ? std::atoll(s) : def;
}

// Closed-form layout of a window predicate (rows' key intervals are monotone in i).
BlockLayout window_layout(const Predicate& p, int64_t nq, int64_t nk) {
  BlockLayout L;
  L.nq = nq;
  L.nk = nk;
  L.nqb = (nq + 63) / 64;
  L.nkb = (nk + 63) / 64;
  L.full_ptr.push_back(0);
  L.part_ptr.push_back(0);
  for (int64_t a = 0; a < L.nqb; ++a) {
    const int64_t i0 = a * 64, i1 = std::min(nq, i0 + 64) - 1;
    int64_t lo0, hi0, lo1, hi1;
    key_range(p, 0, i0, &lo0, &hi0);
    key_range(p, 0, i1, &lo1, &hi1);
    const int64_t ulo = std::max<int64_t>(lo0, 0), uhi = std::min(hi1, nk - 1);
    for (int64_t c = ulo >= 0 && uhi >= ulo ? ulo / 64 : 1; c <= (uhi >= ulo ? uhi / 64 : 0); ++c) {
      const int64_t j0 = c * 64, j1 = std::min(nk, j0 + 64) - 1;
      if (lo1 <= j0 && hi0 >= j1)
        { L.full_lo.push_back(int32_t(c)); L.full_hi.push_back(int32_t(c + 1)); }
      else
        { L.part_lo.push_back(int32_t(c)); L.part_hi.push_back(int32_t(c + 1)); }
    }
    L.full_ptr.push_back(int64_t(L.full_lo.size()));
    L.part_ptr.push_back(int64_t(L.part_lo.size()));
  }
  return L;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU seconds used by the whole process (all threads): robust against other load on the box.
double cpu_now() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> ns;
  for (int i = 1; i < argc; ++i) ns.push_back(std::atoll(argv[i]));
  if (ns.empty()) ns = {8192, 16384};
  const int64_t W = env_int("WINDOW", 512), H = env_int("HEADS", 8), D = env_int("DIM", 64);
  const int reps = int(env_int("REPS", 3));
  const std::string dts = std::getenv("DTYPE") ? std::getenv("DTYPE") : "f32";
  const DType dt = dts == "f16" ? DType::Float16 : dts == "bf16" ? DType::BFloat16 : DType::Float32;
  const int es = dt == DType::Float32 ? 4 : 2;
  std::printf("simd %s, %s, window %lld, H %lld, D %lld, %s\n", cpu::simd_level(),
              cpu::blocking_desc(), (long long)W, (long long)H, (long long)D, dts.c_str());
  for (int64_t N : ns) {
    const CompiledPattern compiled = Pattern::sliding_window(W - 1, 0).compile(N, N, H);
    const Predicate pred = compiled.predicate();
    const BlockLayout L = window_layout(pred, N, N);
    double kept = 0;
    for (int64_t i = 0; i < N; ++i) kept += double(std::min(i + 1, W));
    const size_t n = size_t(N * H * D);
    std::vector<uint8_t> q(n * es), k(n * es), v(n * es), o(n * es), dout(n * es), dq(n * es),
        dk(n * es), dv(n * es);
    std::vector<float> lse(size_t(H * N));
    std::mt19937 rng(1);
    for (auto* buf : {&q, &k, &v, &dout})
      for (size_t i = 0; i < n; ++i) {
        const float f = std::uniform_real_distribution<float>(-1, 1)(rng);
        if (es == 4) std::memcpy(buf->data() + 4 * i, &f, 4);
        else {
          uint32_t u;
          std::memcpy(&u, &f, 4);
          const uint16_t h = dt == DType::BFloat16 ? uint16_t(u >> 16) : uint16_t(0x3800 | (u & 0x3ff));
          std::memcpy(buf->data() + 2 * i, &h, 2);
        }
      }
    auto view = [&](std::vector<uint8_t>& b) {
      TensorView t;
      t.data = b.data();
      t.ndim = 4;
      const int64_t shape[4] = {1, N, H, D};
      const int64_t strides[4] = {N * H * D, H * D, D, 1};
      for (int d = 0; d < 4; ++d) t.shape[d] = shape[d], t.strides[d] = strides[d];
      return t;
    };
    TensorView lv;
    lv.data = lse.data();
    lv.ndim = 3;
    lv.shape[0] = 1, lv.shape[1] = H, lv.shape[2] = N;
    lv.strides[0] = H * N, lv.strides[1] = N, lv.strides[2] = 1;

    cpu::ForwardArgs fa;
    fa.q = view(q), fa.k = view(k), fa.v = view(v), fa.out = view(o), fa.lse = lv;
    fa.dtype = dt;
    fa.scale = float(1.0 / std::sqrt(double(D)));
    fa.layout = &L;
    fa.pred = pred;
    cpu::BackwardArgs ba;
    ba.dout = view(dout), ba.q = view(q), ba.k = view(k), ba.v = view(v), ba.out = view(o);
    ba.lse = lv, ba.dq = view(dq), ba.dk = view(dk), ba.dv = view(dv);
    ba.dtype = dt, ba.scale = fa.scale, ba.layout = &L, ba.pred = pred;

    const double flops = 4.0 * D * H * kept;
    double tf = 1e9, tb = 1e9, cf = 1e9, cb = 1e9;
    cpu::forward(fa);  // warm up (threads, pages)
    for (int r = 0; r < reps; ++r) {
      const double t = now(), c = cpu_now();
      cpu::forward(fa);
      tf = std::min(tf, now() - t);
      cf = std::min(cf, cpu_now() - c);
    }
    const bool do_bwd = env_int("BWD", 1) != 0;
    if (do_bwd) cpu::backward(ba);
    for (int r = 0; r < reps && do_bwd; ++r) {
      const double t = now(), c = cpu_now();
      cpu::backward(ba);
      tb = std::min(tb, now() - t);
      cb = std::min(cb, cpu_now() - c);
    }
    std::printf("N %6lld  fwd %8.2f ms %6.1f GFLOP/s (%5.1f per cpu-s)", (long long)N, tf * 1e3,
                flops / tf * 1e-9, flops / cf * 1e-9);
    if (do_bwd)
      std::printf("   bwd %8.2f ms %6.1f GFLOP/s (%5.1f per cpu-s, 2.5x flops)", tb * 1e3,
                  2.5 * flops / tb * 1e-9, 2.5 * flops / cb * 1e-9);
    std::printf("\n");
  }
  return 0;
}
