// Chooses, once per process, the kernel set for this CPU.
#include <cstdlib>
#include <cstring>

#include "cpu/attention_cpu.hpp"
#include "cpu/kernel_api.hpp"

namespace spattn::cpu {

TileSize cpu_tile_size() { return {kTile, kTile}; }

namespace {

const KernelTable* choose() {
  // SPATTN_SIMD=portable|avx2|avx512 caps the level (for tests); never raises it.
  const char* cap = std::getenv("SPATTN_SIMD");
  auto allowed = [cap](const char* level) {
    if (!cap || !*cap) return true;
    static const char* order[] = {"portable", "avx2", "avx512"};
    int c = -1, l = -1;
    for (int i = 0; i < 3; ++i) {
      if (std::strcmp(cap, order[i]) == 0) c = i;
      if (std::strcmp(level, order[i]) == 0) l = i;
    }
    return c < 0 || l <= c;
  };
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
#else
  (void)allowed;
#endif
  return kernels_portable();
}

}  // namespace

const KernelTable* kernels() {
  static const KernelTable* const t = choose();
  return t;
}

const char* simd_level() { return kernels()->name; }

}  // namespace spattn::cpu
