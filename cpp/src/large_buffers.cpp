#include "large_buffers.hpp"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace spattn::detail {

namespace {

constexpr size_t kHuge = size_t(2) << 20;

size_t rounded(size_t bytes) {
  return bytes < size_t(kLargeBuffer) ? (bytes + 63) / 64 * 64 : (bytes + kHuge - 1) / kHuge * kHuge;
}

size_t cache_limit() {
  static const size_t limit = [] {
    const char* s = std::getenv("SPATTN_CPU_CACHE_MB");
    if (s == nullptr || *s == '\0') return size_t(512) << 20;
    char* end = nullptr;
    const long long mb = std::strtoll(s, &end, 10);
    return end != s && mb > 0 ? size_t(mb) << 20 : size_t(0);
  }();
  return limit;
}

struct Cache {
  std::mutex mutex;
  std::vector<std::pair<size_t, void*>> blocks;  // (rounded size, pointer)
  size_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: frees may come from static destructors
  return *c;
}

}  // namespace

void* alloc_large(size_t bytes) {
  const size_t size = rounded(bytes == 0 ? 1 : bytes);
  if (size < size_t(kLargeBuffer)) return std::aligned_alloc(64, size);
  {
    // The smallest cached block that fits and wastes at most half of itself.
    Cache& c = cache();
    std::lock_guard<std::mutex> lk(c.mutex);
    auto best = c.blocks.end();
    for (auto it = c.blocks.begin(); it != c.blocks.end(); ++it)
      if (it->first >= size && it->first <= 2 * size &&
          (best == c.blocks.end() || it->first < best->first))
        best = it;
    if (best != c.blocks.end()) {
      void* p = best->second;
      c.bytes -= best->first;
      c.blocks.erase(best);
      return p;
    }
  }
  void* p = std::aligned_alloc(kHuge, size);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) (void)madvise(p, size, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return p;
}

void free_large(void* p, size_t bytes) {
  if (p == nullptr) return;
  const size_t size = rounded(bytes == 0 ? 1 : bytes);
  if (size >= size_t(kLargeBuffer) && size <= cache_limit()) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lk(c.mutex);
    // Make room: the oldest blocks go back to the system first.
    while (!c.blocks.empty() &&
           (int(c.blocks.size()) >= kCacheBlocks || c.bytes + size > cache_limit())) {
      std::free(c.blocks.front().second);
      c.bytes -= c.blocks.front().first;
      c.blocks.erase(c.blocks.begin());
    }
    c.blocks.emplace_back(size, p);
    c.bytes += size;
    return;
  }
  std::free(p);
}

std::string buffer_cache_desc() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lk(c.mutex);
  return std::to_string(c.bytes >> 20) + " MB in " + std::to_string(c.blocks.size()) +
         " blocks (limit " + std::to_string(cache_limit() >> 20) + " MB)";
}

}  // namespace spattn::detail
