// One process-wide pool of worker threads, created on first use and reused by every call.
// Size: SPATTN_NUM_THREADS if set (> 0), else the CPUs this process may run on.
#pragma once

#include <cstdint>
#include <functional>

namespace spattn::cpu {

// Number of threads parallel_for uses (the caller included): the pool's size, or less while a
// ThreadLimit is in force on the calling thread.
int num_threads();

// While alive, parallel_for calls made by this thread use at most n threads (n <= 0: no limit).
// One call, one limit: a framework that runs spattn inside its own thread budget (torch's
// set_num_threads, a data-loader worker with one thread) passes it down, so the two never
// oversubscribe the cores between them. Nestable; restores the previous limit on destruction.
class ThreadLimit {
 public:
  explicit ThreadLimit(int n);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int prev_;
};

// Run fn(task) for task in [0, n) on the pool, tasks handed out dynamically (an atomic
// counter), the calling thread taking part. Returns when all are done. An exception thrown by
// fn is rethrown here (the first one) after every thread has stopped. Calls from inside a
// task run inline (no nested parallelism, no deadlock).
void parallel_for(int64_t n, const std::function<void(int64_t task, int thread)>& fn);

// Data cache sizes of this CPU in bytes (0: unknown), read once at run time: sysconf, else
// /sys/devices/system/cpu/cpu0/cache (Linux).
struct CacheSizes {
  int64_t l1d = 0, l2 = 0, l3 = 0;
};
const CacheSizes& cache_sizes();

}  // namespace spattn::cpu
