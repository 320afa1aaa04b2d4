// ManagedTensor calls its deleter exactly once on every path (destruction, move, reset,
// release + wrapping in the other form, exceptions); view_of applies byte_offset, fills NULL
// strides and refuses bad tensors; float_dtype names the argument and the dtype.
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "spattn/error.hpp"
#include "spattn/tensor.hpp"

namespace spattn::detail {
int64_t live_cpu_allocations();  // tensor.cpp
}

using namespace spattn;

static int failures = 0;
#define CHECK(c)                                                     \
  do {                                                               \
    if (!(c)) {                                                      \
      ++failures;                                                    \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);       \
    }                                                                \
  } while (0)

template <class E, class F>
static bool throws(F&& f, const char* needle = nullptr) {
  try {
    f();
  } catch (const E& e) {
    return needle == nullptr || std::strstr(e.what(), needle) != nullptr;
  } catch (...) {
    return false;
  }
  return false;
}

// Producers with counting deleters.
static int v_deletes = 0, l_deletes = 0;
static float buf[16];
static int64_t shape2[2] = {2, 3};

static DLTensor tensor(int64_t* shape, int ndim, int64_t* strides = nullptr) {
  DLTensor t{};
  t.data = buf;
  t.device = {kDLCPU, 0};
  t.ndim = ndim;
  t.dtype = {kDLFloat, 32, 1};
  t.shape = shape;
  t.strides = strides;
  return t;
}
static DLManagedTensorVersioned* make_v(uint64_t flags = 0) {
  auto* m = new DLManagedTensorVersioned{};
  m->version = {1, 0};
  m->flags = flags;
  m->dl_tensor = tensor(shape2, 2);
  m->deleter = [](DLManagedTensorVersioned* s) { ++v_deletes; delete s; };
  return m;
}
static DLManagedTensor* make_l() {
  auto* m = new DLManagedTensor{};
  m->dl_tensor = tensor(shape2, 2);
  m->deleter = [](DLManagedTensor* s) { ++l_deletes; delete s; };
  return m;
}

int main() {
  // destruction, move construction, move assignment, reset
  {
    ManagedTensor a = ManagedTensor::adopt(make_v());
    ManagedTensor b = std::move(a);
    CHECK(a.empty() && !b.empty());
    ManagedTensor c = ManagedTensor::adopt(make_l());
    c = std::move(b);  // c's legacy tensor is deleted now
    CHECK(l_deletes == 1 && v_deletes == 0);
    c.reset();
    c.reset();
    CHECK(v_deletes == 1);
  }
  CHECK(v_deletes == 1 && l_deletes == 1);

  // release in the same form: nobody deletes until the new owner does
  {
    ManagedTensor a = ManagedTensor::adopt(make_v());
    DLManagedTensorVersioned* r = a.release_versioned();
    CHECK(a.empty() && v_deletes == 1);
    r->deleter(r);
    CHECK(v_deletes == 2);
  }
  // release in the other form: the wrapper's deleter calls the original's once
  {
    ManagedTensor a = ManagedTensor::adopt(make_v(DLPACK_FLAG_BITMASK_READ_ONLY));
    CHECK(a.read_only());
    DLManagedTensor* w = a.release_legacy();
    CHECK(a.empty() && w->dl_tensor.data == buf && v_deletes == 2);
    w->deleter(w);
    CHECK(v_deletes == 3);
    ManagedTensor b = ManagedTensor::adopt(make_l());
    CHECK(!b.read_only());
    DLManagedTensorVersioned* wv = b.release_versioned();
    CHECK(wv->version.major == 1 && wv->flags == 0 && wv->dl_tensor.shape == shape2);
    ManagedTensor c = ManagedTensor::adopt(wv);  // re-adopted wrapper
  }
  CHECK(v_deletes == 3 && l_deletes == 2);

  // an exception after adoption still deletes once
  try {
    ManagedTensor a = ManagedTensor::adopt(make_v());
    throw std::runtime_error("x");
  } catch (const std::runtime_error&) {
  }
  CHECK(v_deletes == 4);
  CHECK(ManagedTensor::adopt(static_cast<DLManagedTensor*>(nullptr)).empty());
  CHECK(throws<RuntimeError>([] { ManagedTensor().dl(); }));

  // allocate_cpu: aligned, compact, versioned 1.1, freed once
  const int64_t live = detail::live_cpu_allocations();
  {
    ManagedTensor a = ManagedTensor::allocate_cpu(DType::BFloat16, {2, 3, 5});
    CHECK(detail::live_cpu_allocations() == live + 1);
    const TensorView v = a.view("out");
    CHECK(reinterpret_cast<uintptr_t>(v.data) % 64 == 0);
    CHECK(v.strides[0] == 15 && v.strides[1] == 5 && v.strides[2] == 1);
    CHECK(v.dtype.code == kDLBfloat && v.dtype.bits == 16);
    DLManagedTensor* w = a.release_legacy();
    CHECK(detail::live_cpu_allocations() == live + 1);
    w->deleter(w);
    CHECK(detail::live_cpu_allocations() == live);
    ManagedTensor e = ManagedTensor::allocate_cpu(DType::Float32, {0, 4});
    CHECK(e.dl().data != nullptr && e.view("e").numel() == 0);
    DLManagedTensorVersioned* ev = e.release_versioned();
    CHECK(ev->version.major == 1 && ev->version.minor == 1);
    ev->deleter(ev);
  }
  CHECK(detail::live_cpu_allocations() == live);
  CHECK(throws<ValueError>([] { ManagedTensor::allocate_cpu(DType::Float32, {-1}); }));
  CHECK(throws<ValueError>(
      [] { ManagedTensor::allocate_cpu(DType::Float32, {int64_t(1) << 40, int64_t(1) << 40}); }));
  CHECK(detail::live_cpu_allocations() == live);

  // view_of
  {
    int64_t sh[2] = {2, 3};
    DLTensor t = tensor(sh, 2);
    t.byte_offset = 8;
    const TensorView v = view_of(t, "q");
    CHECK(v.data == buf + 2 && v.strides[0] == 3 && v.strides[1] == 1 && v.numel() == 6);
    CHECK(v.shape_str() == "[2, 3]");
    int64_t st[2] = {-1, 4};
    t.strides = st;
    CHECK(view_of(t, "q").strides[0] == -1);
    int64_t neg[2] = {2, -3};
    t.shape = neg;
    CHECK(throws<ValueError>([&] { view_of(t, "k"); }, "k: negative size"));
    int64_t empty[2] = {0, int64_t(1) << 62};
    t.shape = empty;
    t.strides = nullptr;
    t.data = nullptr;
    CHECK(view_of(t, "k").numel() == 0);
    t.shape = sh;
    CHECK(throws<ValueError>([&] { view_of(t, "v"); }, "v: null data"));
    t.data = buf;
    t.ndim = 9;
    CHECK(throws<ValueError>([&] { view_of(t, "q"); }, "at most 8"));
    t.ndim = 0;
    CHECK(view_of(t, "s").numel() == 1);
  }

  // dtypes
  {
    DLTensor t = tensor(shape2, 2);
    t.dtype = {kDLInt, 64, 1};
    CHECK(throws<TypeError>([&] { float_dtype(view_of(t, "q"), "q"); },
                            "q: expected float32, float16, bfloat16 or float64, got int64"));
    t.dtype = {kDLFloat, 32, 4};
    CHECK(throws<TypeError>([&] { float_dtype(view_of(t, "q"), "q"); }, "got float32x4"));
    t.dtype = {kDLBfloat, 16, 1};
    CHECK(float_dtype(view_of(t, "q"), "q") == DType::BFloat16);
    CHECK(describe(DLDataType{kDLBool, 8, 1}) == "bool");
    CHECK(describe(DLDataType{kDLComplex, 64, 1}) == "complex64");
    CHECK(describe(DLDevice{kDLCUDA, 1}) == "cuda:1" && describe(DLDevice{kDLCPU, 0}) == "cpu");
    CHECK(std::string(dtype_name(DType::Float16)) == "float16" && dtype_size(DType::Float16) == 2);
  }

  if (failures) return 1;
  std::printf("test_tensor: ok\n");
  return 0;
}
