// One thread, one 64 x 64 x 64 tile product at a time: spattn's AVX-512 micro-kernel
// (gemm_tile.hpp, the code every CPU attention product runs) against a BLAS sgemm on the same
// shapes, the two products of the forward pass:
//   S^T = K Q^T   C[64 keys][64 queries] = A[64][64] (K rows, row-major) * B[64][64] (Q^T packed)
//   O  += P V     C[64 queries][64]     += A^T (P^T stored [key][query], read transposed) * V
// The operands stay in L1/L2 (as inside the attention kernel); GFLOP/s = 2 * 64^3 / time.
//
//   g++ -O3 -std=c++17 -Icpp/src bench/cpu_tile_gemm_bench.cpp -ldl -o /tmp/tile_bench
//   OPENBLAS_NUM_THREADS=1 BLAS_LIB=/path/to/libopenblas.so /tmp/tile_bench
//
// BLAS_LIB is dlopen'ed (numpy's bundled OpenBLAS works: `python -c "import numpy; print(
// numpy.__file__)"`, then ../numpy.libs/libscipy_openblas64_*.so); the symbol is cblas_sgemm,
// or scipy_cblas_sgemm64_ (64-bit integers) in numpy's build. Without BLAS_LIB only spattn's
// kernel is timed. x86-64 with AVX-512 only.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <immintrin.h>
#include <random>
#include <vector>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,bmi,bmi2")
#define SPATTN_ISA bench_avx512
#define SPATTN_VEC_BYTES 64
#define SPATTN_MR 4
#define SPATTN_NGMAX 4
#define SPATTN_FMA(a, b, c) ((vf)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#include "cpu/gemm_tile.hpp"

namespace {
void ours_qk(const float* k, const float* qt, float* s) {
  spattn::cpu::bench_avx512::gemm<false>(64, 64, 64, k, 64, 1, qt, 64, s, 64);
}
void ours_pv(const float* pt, const float* v, float* o) {
  spattn::cpu::bench_avx512::gemm<true>(64, 64, 64, pt, 1, 64, v, 64, o, 64);
}
}  // namespace
#pragma GCC pop_options

namespace {

enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using sgemm32_t = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t,
                           const float*, int32_t, float, float*, int32_t);
using sgemm64_t = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                           const float*, int64_t, float, float*, int64_t);

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best of `rounds` of `reps` calls, seconds per call.
template <class F>
double best(F&& f, int reps = 20000, int rounds = 7) {
  for (int i = 0; i < reps / 10; ++i) f();
  double b = 1e9;
  for (int r = 0; r < rounds; ++r) {
    const double t = now();
    for (int i = 0; i < reps; ++i) f();
    b = std::min(b, (now() - t) / reps);
  }
  return b;
}

}  // namespace

int main() {
  std::vector<float> a(64 * 64), b(64 * 64), c(64 * 64), ref(64 * 64);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto* x : {&a, &b}) for (float& f : *x) f = u(rng);
  const double flops = 2.0 * 64 * 64 * 64;

  sgemm32_t s32 = nullptr;
  sgemm64_t s64 = nullptr;
  if (const char* lib = std::getenv("BLAS_LIB")) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) { std::fprintf(stderr, "dlopen %s: %s\n", lib, dlerror()); return 1; }
    if (void* f = dlsym(h, "scipy_cblas_sgemm64_")) s64 = reinterpret_cast<sgemm64_t>(f);
    else if (void* g = dlsym(h, "cblas_sgemm")) s32 = reinterpret_cast<sgemm32_t>(g);
    else { std::fprintf(stderr, "no cblas_sgemm in %s\n", lib); return 1; }
    if (const char* (*core)() = reinterpret_cast<const char* (*)()>(dlsym(h, "scipy_openblas_get_corename64_")))
      std::printf("BLAS: %s (core %s)\n", lib, core());
    else
      std::printf("BLAS: %s\n", lib);
  }
  auto blas = [&](int ta, const float* A, int lda, const float* B, float beta, float* C) {
    if (s64) s64(kRowMajor, ta, kNoTrans, 64, 64, 64, 1.f, A, lda, B, 64, beta, C, 64);
    else s32(kRowMajor, ta, kNoTrans, 64, 64, 64, 1.f, A, lda, B, 64, beta, C, 64);
  };

  // Same results (a check that both compute the same product).
  if (s32 || s64) {
    ours_qk(a.data(), b.data(), c.data());
    blas(kNoTrans, a.data(), 64, b.data(), 0.f, ref.data());
    double e = 0;
    for (int i = 0; i < 64 * 64; ++i) e = std::max(e, double(std::abs(c[i] - ref[i])));
    std::printf("S^T = K Q^T: max |ours - blas| = %.3g\n", e);
  }
  const double t_qk = best([&] { ours_qk(a.data(), b.data(), c.data()); });
  const double t_pv = best([&] { ours_pv(a.data(), b.data(), c.data()); });
  std::printf("%-42s %8.3f us %7.1f GFLOP/s\n", "spattn micro-kernel, S^T = K Q^T", t_qk * 1e6, flops / t_qk * 1e-9);
  std::printf("%-42s %8.3f us %7.1f GFLOP/s\n", "spattn micro-kernel, O += P V (P^T)", t_pv * 1e6, flops / t_pv * 1e-9);
  if (s32 || s64) {
    const double b_qk = best([&] { blas(kNoTrans, a.data(), 64, b.data(), 0.f, c.data()); });
    const double b_pv = best([&] { blas(kTrans, a.data(), 64, b.data(), 1.f, c.data()); });
    std::printf("%-42s %8.3f us %7.1f GFLOP/s\n", "BLAS sgemm, S^T = K Q^T", b_qk * 1e6, flops / b_qk * 1e-9);
    std::printf("%-42s %8.3f us %7.1f GFLOP/s\n", "BLAS sgemm, O += P V (A transposed)", b_pv * 1e6, flops / b_pv * 1e-9);
  }
  return 0;
}
