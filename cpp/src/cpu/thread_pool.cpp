// The process-wide worker pool behind parallel_for.
#include "cpu/thread_pool.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#endif

namespace spattn::cpu {
namespace {

int configured_threads() {
  if (const char* s = std::getenv("SPATTN_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(s, &end, 10);
    if (end != s && n > 0) return int(n > 1024 ? 1024 : n);
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

thread_local bool t_inside_task = false;
thread_local int t_limit = 0;  // ThreadLimit of the calling thread (0: none)

class Pool {
 public:
  explicit Pool(int n) : size_(n) {
    for (int i = 1; i < n; ++i) threads_.emplace_back([this, i] { worker(i); });
    for (auto& t : threads_) t.detach();  // the pool lives until the process ends
  }
  int size() const { return size_; }

  // Workers 1 .. active - 1 take tasks with the caller (thread 0); the others wake and go back
  // to sleep at once, so thread ids stay below `active`.
  void run(int64_t n, const std::function<void(int64_t, int)>& fn, int active) {
    std::lock_guard<std::mutex> call(call_mutex_);  // one job at a time
    {
      std::lock_guard<std::mutex> lk(mutex_);
      active_ = active;
      fn_ = &fn;
      count_ = n;
      next_.store(0, std::memory_order_relaxed);
      error_ = nullptr;
      busy_ = size_ - 1;
      ++generation_;
    }
    start_.notify_all();
    work(0);
    std::exception_ptr err;
    {
      std::unique_lock<std::mutex> lk(mutex_);
      done_.wait(lk, [this] { return busy_ == 0; });
      err = error_;
      error_ = nullptr;
      fn_ = nullptr;
    }
    if (err) std::rethrow_exception(err);
  }

 private:
  void work(int thread) {
    t_inside_task = true;
    for (;;) {
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= count_) break;
      try {
        (*fn_)(i, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(count_, std::memory_order_relaxed);  // hand out nothing more
      }
    }
    t_inside_task = false;
  }

  void worker(int thread) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mutex_);
        start_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
      }
      if (thread < active_) work(thread);
      std::lock_guard<std::mutex> lk(mutex_);
      if (--busy_ == 0) done_.notify_all();
    }
  }

  const int size_;
  std::vector<std::thread> threads_;
  std::mutex call_mutex_, mutex_;
  std::condition_variable start_, done_;
  uint64_t generation_ = 0;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;
  int active_ = 1;
  std::exception_ptr error_;
};

std::mutex g_create_mutex;
std::atomic<Pool*> g_pool{nullptr};

#if defined(__linux__)
// A forked child has none of the parent's threads: forget the pool (leaked) and make a new
// one on first use.
void after_fork_in_child() {
  g_pool.store(nullptr);
  new (&g_create_mutex) std::mutex();
}
#endif

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lk(g_create_mutex);
  p = g_pool.load(std::memory_order_acquire);
  if (!p) {
#if defined(__linux__)
    static bool registered = [] { return pthread_atfork(nullptr, nullptr, after_fork_in_child) == 0; }();
    (void)registered;
#endif
    p = new Pool(configured_threads());  // never deleted: workers may outlive static destructors
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

int num_threads() {
  const int n = pool().size();
  return t_limit > 0 && t_limit < n ? t_limit : n;
}

ThreadLimit::ThreadLimit(int n) : prev_(t_limit) { t_limit = n > 0 ? n : 0; }
ThreadLimit::~ThreadLimit() { t_limit = prev_; }

void parallel_for(int64_t n, const std::function<void(int64_t task, int thread)>& fn) {
  if (n <= 0) return;
  const int active = num_threads();
  if (t_inside_task || n == 1 || active == 1) {
    // Nested (or trivial) call: run inline on this thread, as thread 0 of this call.
    const bool outer = t_inside_task;
    t_inside_task = true;
    try {
      for (int64_t i = 0; i < n; ++i) fn(i, 0);
    } catch (...) {
      t_inside_task = outer;
      throw;
    }
    t_inside_task = outer;
    return;
  }
  pool().run(n, fn, active);
}

namespace {

#if defined(__linux__)
// Size of the cache of `level` and type (Data / Unified) from sysfs ("48K", "1024K", "32M").
int64_t sysfs_cache(int level, bool data) {
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lf(dir + "level"), tf(dir + "type"), sf(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(lf >> l) || !(tf >> type) || !(sf >> size)) continue;
    if (l != level || type == "Instruction" || (data && type != "Data" && type != "Unified"))
      continue;
    int64_t n = 0;
    size_t k = 0;
    while (k < size.size() && size[k] >= '0' && size[k] <= '9') n = n * 10 + (size[k++] - '0');
    if (k < size.size()) n <<= size[k] == 'K' ? 10 : size[k] == 'M' ? 20 : size[k] == 'G' ? 30 : 0;
    return n;
  }
  return 0;
}
#endif

CacheSizes read_cache_sizes() {
  CacheSizes c;
#if defined(__linux__)
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  c.l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE) > 0 ? sysconf(_SC_LEVEL1_DCACHE_SIZE) : 0;
  c.l2 = sysconf(_SC_LEVEL2_CACHE_SIZE) > 0 ? sysconf(_SC_LEVEL2_CACHE_SIZE) : 0;
  c.l3 = sysconf(_SC_LEVEL3_CACHE_SIZE) > 0 ? sysconf(_SC_LEVEL3_CACHE_SIZE) : 0;
#endif
  if (c.l1d <= 0) c.l1d = sysfs_cache(1, true);
  if (c.l2 <= 0) c.l2 = sysfs_cache(2, true);
  if (c.l3 <= 0) c.l3 = sysfs_cache(3, true);
#endif
  return c;
}

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes c = read_cache_sizes();
  return c;
}

const char* cache_desc() {
  static const std::string s = [] {
    const CacheSizes& c = cache_sizes();
    auto kb = [](int64_t n) { return n > 0 ? std::to_string(n >> 10) + "K" : std::string("?"); };
    return "L1d " + kb(c.l1d) + ", L2 " + kb(c.l2) + ", L3 " + kb(c.l3) + " (per cpu0)";
  }();
  return s.c_str();
}

}  // namespace spattn::cpu
