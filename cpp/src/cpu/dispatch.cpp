// Chooses, once per process, the kernel set for this CPU, and the cache blocking (see
// cpu_blocking() in attention_cpu.hpp).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include "cpu/attention_cpu.hpp"
#include "cpu/kernel_api.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

TileSize cpu_tile_size() { return {kTile, kTile}; }

namespace {
Blocking decide_blocking(const CacheSizes& c) {
  Blocking b;
  b.l1d = c.l1d;
  b.l2 = c.l2;
  // The rule of attention_cpu.hpp: a [head_chunk][64] float32 panel fits in L1d.
  const int64_t l1 = c.l1d > 0 ? c.l1d : 32 << 10;
  const int64_t panel_row = int64_t(kTile) * int64_t(sizeof(float));
  b.head_chunk = std::min<int64_t>(256, std::max<int64_t>(16, l1 / panel_row / 16 * 16));
  // Forward scratch of one tile at D = Dv = 256 (see fwd_bufs): Q^T, O, K and V blocks of
  // 64 x 256 floats and the 64 x 64 S^T.
  const int64_t fwd_ws = (4 * int64_t(kTile) * 256 + int64_t(kTile) * kTile) * int64_t(sizeof(float));
  b.l2_fits = c.l2 <= 0 || fwd_ws <= c.l2;
  return b;
}
}  // namespace

const Blocking& cpu_blocking() {
  static const Blocking b = decide_blocking(cache_sizes());
  return b;
}

const char* blocking_desc() {
  static const std::string s = [] {
    const Blocking& b = cpu_blocking();
    return std::to_string(kTile) + "x" + std::to_string(kTile) + " tiles, head-dim chunk " +
           std::to_string(b.head_chunk) + " (L1d " +
           (b.l1d > 0 ? std::to_string(b.l1d >> 10) + "K" : std::string("unknown: 32K assumed")) +
           (b.l2_fits ? ")" : "; L2 smaller than a D=256 tile's scratch)");
  }();
  return s.c_str();
}

namespace {

// SPATTN_SIMD=portable|avx2|avx512|avx512bf16 caps the level (for tests); never raises it.
bool allowed(const char* level) {
  const char* cap = std::getenv("SPATTN_SIMD");
  if (!cap || !*cap) return true;
  static const char* order[] = {"portable", "avx2", "avx512", "avx512bf16"};
  int c = -1, l = -1;
  for (int i = 0; i < 4; ++i) {
    if (std::strcmp(cap, order[i]) == 0) c = i;
    if (std::strcmp(level, order[i]) == 0) l = i;
  }
  return c < 0 || l <= c;
}

#if defined(__x86_64__) || defined(_M_X64)
// F16C and AVX512_BF16 read from CPUID directly: clang's __builtin_cpu_supports (14 and older)
// knows neither name. Both are used only on top of AVX2 / AVX-512, which
// __builtin_cpu_supports confirms together with the OS's support for their registers.
bool cpuid_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}
bool cpuid_avx512bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)) != 0;
}
#endif

const KernelTable* choose() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  // The avx2 level also converts float16 with F16C (every AVX2 CPU made has it).
  const bool avx2 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
                    __builtin_cpu_supports("fma") && cpuid_f16c() &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq");
  if (avx512 && allowed("avx512")) return kernels_avx512();
  if (avx2 && allowed("avx2")) return kernels_avx2();
#endif
  return kernels_portable();
}

// The bfloat16 table: AVX512_BF16 on top of the AVX-512 level (null: none).
const KernelTable* choose_bf16(const KernelTable* base) {
#if defined(__x86_64__) || defined(_M_X64)
  if (base == kernels_avx512() && cpuid_avx512bf16() && allowed("avx512bf16"))
    return kernels_avx512bf16();
#else
  (void)base;
#endif
  return nullptr;
}

const KernelTable* bf16_table() {
  static const KernelTable* const t = choose_bf16(kernels());
  return t;
}

}  // namespace

const KernelTable* kernels() {
  static const KernelTable* const t = choose();
  return t;
}

const KernelTable* kernels_for(int dtype) {
  const KernelTable* bf = dtype == kBF16 ? bf16_table() : nullptr;
  return bf ? bf : kernels();
}

const char* simd_level() { return bf16_table() ? "avx512 (+bf16)" : kernels()->name; }

}  // namespace spattn::cpu
