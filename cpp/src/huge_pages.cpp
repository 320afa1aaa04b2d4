#include "huge_pages.hpp"

#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace spattn::detail {

void* alloc_large(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes < size_t(kHugePageMin)) return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  const size_t padded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, padded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) (void)madvise(p, padded, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return p;
}

}  // namespace spattn::detail
