// The planner's seam without a GPU: the registry (one entry per backend, clear errors for a
// device without one), the compiled-pattern cache (one compile per problem size, layouts and
// attachments made once, bounded), window interning, and a fake device backend registered for
// nothing but driven through the same interface the planner uses, to show that a backend is
// one class: here it forwards to the CPU backend and counts calls.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"
#include "spattn/spattn.hpp"

using namespace spattn;

static int failures = 0;
#define CHECK(c)                                               \
  do {                                                         \
    if (!(c)) {                                                \
      ++failures;                                              \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c); \
    }                                                          \
  } while (0)

namespace {

void test_registry() {
  backend::Backend* cpu = backend::find(kDLCPU);
  CHECK(cpu != nullptr && std::strcmp(cpu->name(), "cpu") == 0);
  CHECK(backend::find(kDLCUDAHost) == cpu);  // pinned host memory is host memory
  const bool cuda = info()["cuda_compiled"] == "yes";
  CHECK((backend::find(kDLCUDA) != nullptr) == cuda);
  CHECK(backend::all().size() == (cuda ? 2u : 1u));
  std::string msg;
  try {
    backend::for_device(DLDevice{kDLVulkan, 0}, "q");
  } catch (const RuntimeError& e) {
    msg = e.what();
  }
  CHECK(msg.find("q: tensors are on") == 0 && msg.find("no spattn backend") != std::string::npos);
  if (!cuda) {
    msg.clear();
    try {
      backend::for_device(DLDevice{kDLCUDA, 0}, "q");
    } catch (const RuntimeError& e) {
      msg = e.what();
    }
    CHECK(msg.find("built without CUDA") != std::string::npos);
  }
  CHECK(info()["backends"] == (cuda ? "cpu,cuda" : "cpu"));
}

void test_compile_cache() {
  const Pattern p = Pattern::union_of({Pattern::sink(4), Pattern::sliding_window(100, 0)});
  auto a = p.compiled(1000, 1200, 4);
  auto b = p.compiled(1000, 1200, 4);
  CHECK(a.get() == b.get());                        // one compile per problem size
  CHECK(p.compiled(1000, 1201, 4).get() != a.get());  // another size: another compile
  const BlockLayout& l1 = a->layout_for(64, 64);
  const BlockLayout& l2 = a->layout_for(64, 64);
  CHECK(&l1 == &l2);
  CHECK(&a->layout_for(128, 64) != &l1);
  CHECK(l1.blocks_visited() == a->layout(64, 64).blocks_visited());
  int made = 0;
  auto make = [&]() -> std::shared_ptr<void> {
    ++made;
    return std::make_shared<int>(7);
  };
  auto x = a->attachment("k", make);
  auto y = a->attachment("k", make);
  CHECK(made == 1 && x.get() == y.get());
  (void)a->attachment("other", make);
  CHECK(made == 2);
  // Bounded: many sizes push the oldest out (it is compiled again when asked), and what a
  // caller still holds stays valid.
  for (int64_t n = 1; n <= 100; ++n) (void)p.compiled(n, n, 1);
  auto again = p.compiled(1000, 1200, 4);
  CHECK(again.get() != a.get());
  CHECK(a->layout_for(64, 64).blocks_visited() == l1.blocks_visited());
  // The pattern is checked on every lookup, cached or not.
  bool threw = false;
  try {
    (void)Pattern::per_head({Pattern::causal(), Pattern::causal()}).compiled(10, 10, 3);
  } catch (const ValueError&) {
    threw = true;
  }
  CHECK(threw);
}

void test_window_interning() {
  const Pattern a = Pattern::sliding_window(511, 0), b = Pattern::sliding_window(511, 0);
  CHECK(&a.node() == &b.node());
  CHECK(&Pattern::causal().node() == &Pattern::sliding_window(kUnbounded, 0).node());
  CHECK(&a.node() != &Pattern::sliding_window(511, 1).node());
  // Shared nodes share their compile cache.
  CHECK(a.compiled(300, 300, 2).get() == b.compiled(300, 300, 2).get());
}

// A backend that is not a device: it forwards to the CPU backend and counts what it is asked.
// The planner's pieces (make the views, ask for the compiled pattern, call forward, merge) are
// driven here as api.cpp drives them, to show they need nothing device-specific.
class CountingBackend final : public backend::Backend {
 public:
  explicit CountingBackend(backend::Backend& inner) : inner_(inner) {}
  int forwards = 0, merges = 0, allocations = 0;
  const char* name() const override { return "counting"; }
  std::string unsupported(backend::Op op, DType t, int64_t d, int64_t dv,
                          const backend::Call& c) const override {
    return inner_.unsupported(op, t, d, dv, c);
  }
  backend::Tile tile(backend::Op op, const backend::Dims& s, DType t,
                     const backend::Call& c) const override {
    return inner_.tile(op, s, t, c);
  }
  void forward(const backend::Attention& a, const CompiledPattern& cp,
               const backend::Call& c) override {
    ++forwards;
    inner_.forward(a, cp, c);
  }
  void backward(const backend::Attention& a, const backend::Gradients& g,
                const CompiledPattern& cp, const backend::Call& c) override {
    inner_.backward(a, g, cp, c);
  }
  void decode(const backend::Decode& d, const backend::Call& c) override { inner_.decode(d, c); }
  void pool_keys(const backend::PoolKeys& p, const backend::Call& c) override {
    inner_.pool_keys(p, c);
  }
  ManagedTensor allocate(DType t, const std::vector<int64_t>& shape,
                         const backend::Call& c) override {
    ++allocations;
    return inner_.allocate(t, shape, c);
  }
  void merge(const TensorView* outs, const TensorView* lses, int n, const TensorView& out,
             const TensorView& lse, DType t, const backend::Call& c) override {
    ++merges;
    inner_.merge(outs, lses, n, out, lse, t, c);
  }
  void sum(const TensorView& dst, const TensorView* srcs, int n, DType t,
           const backend::Call& c) override {
    inner_.sum(dst, srcs, n, t, c);
  }
  void read_to_host(const TensorView& t, void* host, size_t bytes,
                    const backend::Call& c) override {
    inner_.read_to_host(t, host, bytes, c);
  }
  void describe(std::map<std::string, std::string>& i) const override { inner_.describe(i); }

 private:
  backend::Backend& inner_;
};

void test_backend_interface() {
  CountingBackend be(*backend::find(kDLCPU));
  const int64_t n = 200, h = 2, d = 16;
  std::vector<float> q(size_t(n * h * d)), k(q.size()), v(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = float((i * 7) % 13) / 13.f - 0.5f;
    k[i] = float((i * 5) % 11) / 11.f - 0.5f;
    v[i] = float((i * 3) % 17) / 17.f;
  }
  backend::Call call;
  // Two disjoint key ranges computed separately and merged, as the planner runs union parts.
  ManagedTensor o1 = be.allocate(DType::Float32, {1, n, h, d}, call);
  ManagedTensor l1 = be.allocate(DType::Float32, {1, h, n}, call);
  ManagedTensor o2 = be.allocate(DType::Float32, {1, n, h, d}, call);
  ManagedTensor l2 = be.allocate(DType::Float32, {1, h, n}, call);
  ManagedTensor out = be.allocate(DType::Float32, {1, n, h, d}, call);
  auto view = [&](std::vector<float>& x) {
    TensorView t;
    t.data = x.data();
    t.ndim = 4;
    const int64_t shape[4] = {1, n, h, d}, strides[4] = {n * h * d, h * d, d, 1};
    for (int i = 0; i < 4; ++i) t.shape[i] = shape[i], t.strides[i] = strides[i];
    return t;
  };
  backend::Attention a;
  a.q = view(q);
  a.k = view(k);
  a.v = view(v);
  a.dtype = DType::Float32;
  a.scale = 0.25f;
  a.s = backend::Dims{1, n, n, h, h, d, d};
  const Pattern win = Pattern::sliding_window(20, 0);
  const Pattern rest = Pattern::sliding_window(kUnbounded, -21);  // rel >= 21: the rest of causal
  backend::Attention p1 = a, p2 = a;
  p1.out = o1.view("o1");
  p1.lse = l1.view("l1");
  p2.out = o2.view("o2");
  p2.lse = l2.view("l2");
  be.forward(p1, *win.compiled(n, n, h), call);
  be.forward(p2, *rest.compiled(n, n, h), call);
  TensorView outs[2] = {p1.out, p2.out}, lses[2] = {p1.lse, p2.lse};
  be.merge(outs, lses, 2, out.view("out"), TensorView{}, DType::Float32, call);
  CHECK(be.forwards == 2 && be.merges == 1 && be.allocations == 5);
  // The merge equals one causal walk.
  ManagedTensor whole = be.allocate(DType::Float32, {1, n, h, d}, call);
  backend::Attention w = a;
  w.out = whole.view("whole");
  be.forward(w, *Pattern::causal().compiled(n, n, h), call);
  const float* x = static_cast<const float*>(out.dl().data);
  const float* y = static_cast<const float*>(whole.dl().data);
  double worst = 0;
  for (int64_t i = 0; i < n * h * d; ++i) worst = std::max(worst, double(std::abs(x[i] - y[i])));
  std::printf("merged parts vs one causal walk: max |diff| %.3g\n", worst);
  CHECK(worst < 1e-5);
}

}  // namespace

int main() {
  test_registry();
  test_compile_cache();
  test_window_interning();
  test_backend_interface();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("PASS test_backend_seam\n");
  return 0;
}
