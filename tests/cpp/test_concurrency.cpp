// Concurrency without Python: 8 threads call attention_forward, attention_backward, decode and
// merge_partials at once, with different patterns and thread limits, and must get what serial
// calls get. Built into every ctest run; under ThreadSanitizer (SPATTN_SANITIZE=thread,
// tests/reliability/sanitize.sh tsan) it checks the thread pool, the buffer cache and the
// per-call thread limits for data races.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "spattn/spattn.hpp"

namespace {

struct Buf {
  std::vector<int64_t> shape, strides;
  std::vector<float> data;
  DLTensor dl{};
  Buf(std::vector<int64_t> s, std::mt19937* rng) : shape(std::move(s)), strides(shape.size()) {
    int64_t n = 1;
    for (int i = int(shape.size()) - 1; i >= 0; --i) strides[size_t(i)] = n, n *= shape[size_t(i)];
    data.resize(size_t(n));
    std::normal_distribution<float> nd;
    for (auto& x : data) x = rng ? nd(*rng) : 0.f;
    dl.data = data.data();
    dl.device = DLDevice{kDLCPU, 0};
    dl.ndim = int32_t(shape.size());
    dl.dtype = DLDataType{kDLFloat, 32, 1};
    dl.shape = shape.data();
    dl.strides = strides.data();
  }
  Buf(const Buf& o) : shape(o.shape), strides(o.strides), data(o.data), dl(o.dl) {
    dl.data = data.data();
    dl.shape = shape.data();
    dl.strides = strides.data();
  }
};

struct IntBuf {
  std::vector<int64_t> shape;
  std::vector<int32_t> data;
  DLTensor dl{};
  explicit IntBuf(std::vector<int32_t> v) : shape{int64_t(v.size())}, data(std::move(v)) {
    dl.data = data.data();
    dl.device = DLDevice{kDLCPU, 0};
    dl.ndim = 1;
    dl.dtype = DLDataType{kDLInt, 32, 1};
    dl.shape = shape.data();
  }
};

// One task: runs a call into fresh outputs and returns them concatenated.
using Task = std::function<std::vector<float>()>;

}  // namespace

int main() {
  using spattn::Pattern;
  std::mt19937 rng(7);
  const int64_t B = 2, N = 150, Hq = 4, Hkv = 2, D = 32;
  const Buf q({B, N, Hq, D}, &rng), k({B, N, Hkv, D}, &rng), v({B, N, Hkv, D}, &rng);
  const Buf dout({B, N, Hq, D}, &rng);
  const Buf qd({B, 2, Hq, D}, &rng);
  const IntBuf lens({150, 37});
  const Buf p1({B, N, Hq, D}, &rng), p2({B, N, Hq, D}, &rng), l1({B, Hq, N}, &rng), l2({B, Hq, N}, &rng);

  const std::vector<Pattern> patterns = {
      Pattern::causal(),
      Pattern::sliding_window(31, 0),
      Pattern::union_of({Pattern::sink(4), Pattern::sliding_window(15, 0)}),
      Pattern::dilated(8, 0, 3),
      Pattern::union_of({Pattern::strided(5, true), Pattern::sliding_window(7, 0)}),
      Pattern::topk_blocks(2, 32, 32, true, Pattern::sink(2)),
      Pattern::per_head({Pattern::causal(), Pattern::strided(4, true), Pattern::sink(3),
                         Pattern::sliding_window(9, 2)}),
  };
  std::vector<Task> tasks;
  for (size_t i = 0; i < patterns.size(); ++i) {
    const Pattern p = patterns[i];
    spattn::Options o;
    o.num_threads = int(i % 3);
    tasks.push_back([&, p, o] {
      Buf out({B, N, Hq, D}, nullptr), lse({B, Hq, N}, nullptr);
      spattn::attention_forward(q.dl, k.dl, v.dl, p, out.dl, &lse.dl, o);
      out.data.insert(out.data.end(), lse.data.begin(), lse.data.end());
      return out.data;
    });
    tasks.push_back([&, p, o] {
      Buf out({B, N, Hq, D}, nullptr), lse({B, Hq, N}, nullptr);
      spattn::attention_forward(q.dl, k.dl, v.dl, p, out.dl, &lse.dl, o);
      Buf dq({B, N, Hq, D}, nullptr), dk({B, N, Hkv, D}, nullptr), dv({B, N, Hkv, D}, nullptr);
      spattn::attention_backward(dout.dl, q.dl, k.dl, v.dl, out.dl, lse.dl, p, dq.dl, dk.dl,
                                 dv.dl, o);
      dq.data.insert(dq.data.end(), dk.data.begin(), dk.data.end());
      dq.data.insert(dq.data.end(), dv.data.begin(), dv.data.end());
      return dq.data;
    });
    tasks.push_back([&, p, o] {
      Buf out({B, 2, Hq, D}, nullptr);
      spattn::decode(qd.dl, k.dl, v.dl, lens.dl, p, nullptr, out.dl, nullptr, o);
      return out.data;
    });
  }
  tasks.push_back([&] {
    Buf out({B, N, Hq, D}, nullptr), lse({B, Hq, N}, nullptr);
    spattn::merge_partials({p1.dl, p2.dl}, {l1.dl, l2.dl}, out.dl, &lse.dl);
    out.data.insert(out.data.end(), lse.data.begin(), lse.data.end());
    return out.data;
  });

  std::vector<std::vector<float>> serial;
  for (auto& t : tasks) serial.push_back(t());

  std::vector<std::string> errors[8];
  std::vector<std::thread> threads;
  for (int w = 0; w < 8; ++w)
    threads.emplace_back([&, w] {
      std::mt19937 r{static_cast<unsigned>(w)};
      for (int it = 0; it < 2 * int(tasks.size()); ++it) {
        const size_t t = size_t(r() % tasks.size());
        try {
          const std::vector<float> got = tasks[t]();
          for (size_t e = 0; e < got.size(); ++e) {
            const float a = got[e], b = serial[t][e];
            if (!(a == b || std::fabs(a - b) <= 1e-5f * (1.f + std::fabs(b)) ||
                  (std::isnan(a) && std::isnan(b)))) {
              errors[w].push_back("task " + std::to_string(t) + " element " + std::to_string(e) +
                                  ": " + std::to_string(a) + " vs serial " + std::to_string(b));
              break;
            }
          }
        } catch (const std::exception& e) {
          errors[w].push_back("task " + std::to_string(t) + " threw: " + e.what());
        }
      }
    });
  for (auto& t : threads) t.join();
  int failures = 0;
  for (auto& e : errors)
    for (auto& m : e) {
      std::printf("FAIL: %s\n", m.c_str());
      ++failures;
    }
  std::printf("%zu tasks, 8 threads x %zu calls: %d failures\n", tasks.size(), 2 * tasks.size(),
              failures);
  return failures ? 1 : 0;
}
