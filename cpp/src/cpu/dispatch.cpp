// Chooses, once per process, the kernel set for this CPU.
#include <cstdlib>
#include <cstring>

#include "cpu/attention_cpu.hpp"
#include "cpu/kernel_api.hpp"

namespace spattn::cpu {

TileSize cpu_tile_size() { return {kTile, kTile}; }

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

const KernelTable* choose() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
                    __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2");
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
  if (base == kernels_avx512() && __builtin_cpu_supports("avx512bf16") && allowed("avx512bf16"))
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
