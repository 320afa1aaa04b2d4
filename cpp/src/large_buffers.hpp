// Large host buffers that spattn allocates and writes (fresh outputs, gradients, the backward's
// private dK/dV blocks). Two costs of fresh memory are avoided:
// - page faults: a fresh 32 MB output takes 8192 of them, 3 to 20 ms of a ~100 ms forward at
//   16K tokens on the project's 2-core VM (measured: 101 to 118 ms with fresh outputs, 98 to 99
//   with a reused one). Blocks are 2 MB-aligned and advised to transparent huge pages, and
// - freed blocks are kept in a small cache and handed out again, already faulted in, like
//   torch's CUDA caching allocator. The cache holds at most kCacheBlocks blocks and
//   SPATTN_CPU_CACHE_MB megabytes (default 512; 0 turns it off); it is never returned to the
//   system before the process ends (spattn.info() reports its size).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace spattn::detail {

// Buffers of at least this many bytes are large: 2 MB-aligned, advised, cached when freed.
constexpr int64_t kLargeBuffer = int64_t(4) << 20;
constexpr int kCacheBlocks = 16;

// 64-byte aligned memory of at least `bytes` (null when out of memory); contents undefined.
void* alloc_large(size_t bytes);
// Releases what alloc_large returned for the same `bytes`: large blocks go to the cache (or
// to the system when it is full), others to std::free.
void free_large(void* p, size_t bytes);
// "12 MB in 3 blocks (limit 512 MB)", for spattn.info().
std::string buffer_cache_desc();

}  // namespace spattn::detail
