// Transparent huge pages for large buffers this library allocates and then writes once (fresh
// outputs, the backward's private dK/dV blocks). A fresh 32 MB output otherwise takes 8192 page
// faults: measured ~15 ms of a ~120 ms forward at 16K tokens on the project's 2-core VM. Only
// for memory spattn owns: a caller's buffers are left as they are.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spattn::detail {

// Buffers of at least this many bytes are allocated 2 MB-aligned and advised.
constexpr int64_t kHugePageMin = int64_t(4) << 20;

// aligned_alloc(64 or 2 MB, bytes rounded up), with madvise(MADV_HUGEPAGE) on Linux for buffers
// of kHugePageMin bytes or more; release with std::free. Null when out of memory.
void* alloc_large(size_t bytes);

}  // namespace spattn::detail
