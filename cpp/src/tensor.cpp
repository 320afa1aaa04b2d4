// TensorView checks and ManagedTensor ownership (tensor.hpp). Plain C++17: no Python here.
#include "spattn/tensor.hpp"

#include "large_buffers.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "spattn/error.hpp"

namespace spattn {

namespace {
// *r = a * b for a, b >= 0; true (and *r unspecified) when that overflows int64.
bool mul_overflows(int64_t a, int64_t b, int64_t* r) {
  if (a != 0 && b > INT64_MAX / a) return true;
  *r = a * b;
  return false;
}
}  // namespace

// ------------------------------------------------------------------------------------------
// dtypes and devices

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float64: return "float64";
  }
  return "?";
}

int dtype_size(DType t) { return t == DType::Float64 ? 8 : t == DType::Float32 ? 4 : 2; }

DType lse_dtype(DType t) { return t == DType::Float64 ? DType::Float64 : DType::Float32; }

DLDataType to_dl(DType t) {
  switch (t) {
    case DType::Float32: return DLDataType{kDLFloat, 32, 1};
    case DType::Float16: return DLDataType{kDLFloat, 16, 1};
    case DType::BFloat16: return DLDataType{kDLBfloat, 16, 1};
    case DType::Float64: return DLDataType{kDLFloat, 64, 1};
  }
  return DLDataType{kDLFloat, 32, 1};
}

std::string describe(DLDataType t) {
  std::string s;
  switch (t.code) {
    case kDLInt: s = "int"; break;
    case kDLUInt: s = "uint"; break;
    case kDLFloat: s = "float"; break;
    case kDLOpaqueHandle: s = "handle"; break;
    case kDLBfloat: s = "bfloat"; break;
    case kDLComplex: s = "complex"; break;
    case kDLBool: s = "bool"; break;
    default: s = "dtype(code=" + std::to_string(int(t.code)) + ")"; break;
  }
  if (!(t.code == kDLBool && t.bits == 8)) s += std::to_string(int(t.bits));
  if (t.lanes != 1) s += "x" + std::to_string(int(t.lanes));
  return s;
}

std::string describe(DLDevice d) {
  const char* n = nullptr;
  switch (d.device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: n = "cuda"; break;
    case kDLCUDAHost: n = "cuda_host"; break;
    case kDLOpenCL: n = "opencl"; break;
    case kDLVulkan: n = "vulkan"; break;
    case kDLMetal: n = "metal"; break;
    case kDLVPI: n = "vpi"; break;
    case kDLROCM: n = "rocm"; break;
    case kDLROCMHost: n = "rocm_host"; break;
    case kDLExtDev: n = "ext_dev"; break;
    case kDLCUDAManaged: n = "cuda_managed"; break;
    case kDLOneAPI: n = "oneapi"; break;
    case kDLWebGPU: n = "webgpu"; break;
    case kDLHexagon: n = "hexagon"; break;
    case kDLMAIA: n = "maia"; break;
  }
  std::string s = n ? n : "device(" + std::to_string(int(d.device_type)) + ")";
  return s + ":" + std::to_string(d.device_id);
}

// ------------------------------------------------------------------------------------------
// TensorView

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

TensorView view_of(const DLTensor& t, const char* name, bool read_only) {
  const std::string arg = name ? name : "tensor";
  if (t.ndim < 0 || t.ndim > kMaxDims)
    throw ValueError(arg + ": expected at most " + std::to_string(kMaxDims) +
                     " dimensions, got " + std::to_string(t.ndim));
  if (t.ndim > 0 && t.shape == nullptr)
    throw ValueError(arg + ": the DLPack tensor has " + std::to_string(t.ndim) +
                     " dimensions but no shape");
  // The device type as the integer the producer wrote: DLDeviceType may only hold values of
  // its range (0..31), so anything else is refused before it is read as the enum.
  int32_t device_type = 0;
  static_assert(sizeof(t.device.device_type) == sizeof(int32_t), "DLDeviceType is an int");
  std::memcpy(&device_type, &t.device.device_type, sizeof(device_type));
  if (device_type < 0 || device_type > 31)
    throw ValueError(arg + ": unknown DLPack device type " + std::to_string(device_type));
  TensorView v;
  v.dtype = t.dtype;
  v.device = t.device;
  v.ndim = t.ndim;
  v.read_only = read_only;
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) {
    const int64_t n = t.shape[i];
    if (n < 0)
      throw ValueError(arg + ": negative size " + std::to_string(n) + " in dimension " +
                       std::to_string(i));
    v.shape[i] = n;
    empty = empty || n == 0;
  }
  int64_t numel = 0;
  if (!empty) {
    numel = 1;
    for (int i = 0; i < t.ndim; ++i)
      if (mul_overflows(numel, v.shape[i], &numel))
        throw ValueError(arg + ": the number of elements of " + v.shape_str() +
                         " overflows int64");
  }
  if (t.strides) {
    for (int i = 0; i < t.ndim; ++i) v.strides[i] = t.strides[i];
  } else {
    // NULL strides: compact row-major (saturating: an empty tensor may have huge sizes).
    int64_t s = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      v.strides[i] = s;
      if (mul_overflows(s, v.shape[i] > 0 ? v.shape[i] : 1, &s)) s = INT64_MAX;
    }
  }
  if (t.data == nullptr && numel > 0)
    throw ValueError(arg + ": null data pointer on a non-empty tensor of shape " +
                     v.shape_str());
  if (numel > 0) {
    // A dimension of size 1 never steps, so DLPack allows any stride there; a wild one would
    // only overflow offset arithmetic downstream (block * stride). It gets the compact stride.
    int64_t compact = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (v.shape[i] == 1) v.strides[i] = compact;
      compact = mul_overflows(compact, v.shape[i], &compact) ? INT64_MAX : compact;
    }
    // Strides whose span exceeds any address space describe no real memory; refusing them
    // keeps every offset computed from them inside int64.
    constexpr __int128 kLimit = __int128(1) << 62;
    __int128 span = 0;  // stays below 2^63 * 2^62: each term is bounded before it is added
    for (int i = 0; i < t.ndim && span <= kLimit; ++i) {
      const __int128 st = v.strides[i] < 0 ? -__int128(v.strides[i]) : __int128(v.strides[i]);
      span += st * (v.shape[i] - 1);
    }
    if (span > kLimit ||
        (span + 1) * std::max<int64_t>(1, (t.dtype.bits * std::max<int>(1, t.dtype.lanes) + 7) / 8) >
            kLimit)
      throw ValueError(arg + ": strides of shape " + v.shape_str() +
                       " span more than 2^62 bytes; no tensor in memory has them");
  }
  // data + byte_offset in integers: an offset that runs past the address space is refused
  // (as pointer arithmetic it would be undefined).
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.data);
  if (t.data != nullptr && t.byte_offset > uint64_t(UINTPTR_MAX - base))
    throw ValueError(arg + ": byte_offset " + std::to_string(t.byte_offset) +
                     " runs past the end of the address space");
  v.data = t.data == nullptr ? nullptr : reinterpret_cast<void*>(base + uintptr_t(t.byte_offset));
  // Elements must be aligned to their size (a power of two up to 16 bytes); every producer's
  // allocations are, and a misaligned float read is undefined behaviour in C++.
  const int64_t es = (int64_t(t.dtype.bits) * std::max<int64_t>(1, t.dtype.lanes) + 7) / 8;
  if (numel > 0 && es > 1 && es <= 16 && (es & (es - 1)) == 0 &&
      reinterpret_cast<uintptr_t>(v.data) % uintptr_t(es) != 0)
    throw ValueError(arg + ": data pointer (byte_offset included) is not aligned to its " +
                     std::to_string(es) + "-byte " + describe(t.dtype) + " elements");
  return v;
}

namespace {

int64_t element_bytes(const TensorView& t) {
  return std::max<int64_t>(1, (int64_t(t.dtype.bits) * std::max<int64_t>(1, t.dtype.lanes) + 7) / 8);
}

// [lo, hi): the bytes a non-empty view touches, as integers (no pointer arithmetic overflow).
void byte_range(const TensorView& t, __int128* lo, __int128* hi) {
  __int128 neg = 0, pos = 0;
  for (int d = 0; d < t.ndim; ++d) {
    const __int128 span = __int128(t.strides[d]) * (t.shape[d] - 1);
    (span < 0 ? neg : pos) += span;
  }
  const __int128 base = __int128(reinterpret_cast<uintptr_t>(t.data));
  const int64_t es = element_bytes(t);
  *lo = base + neg * es;
  *hi = base + (pos + 1) * es;
}

bool has_elements(const TensorView& t) { return t.data != nullptr && t.numel() > 0; }

}  // namespace

void expect_no_self_overlap(const TensorView& t, const char* name) {
  if (!has_elements(t)) return;
  // Dimensions of size > 1 by |stride|; each must step past everything the previous span.
  int dims[kMaxDims];
  int n = 0;
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[d] > 1) dims[n++] = d;
  std::sort(dims, dims + n, [&](int a, int b) {
    return std::abs(t.strides[a]) < std::abs(t.strides[b]);
  });
  __int128 span = 0;  // elements covered by the smaller dimensions, minus one
  for (int i = 0; i < n; ++i) {
    const int d = dims[i];
    const __int128 s = t.strides[d] < 0 ? -__int128(t.strides[d]) : __int128(t.strides[d]);
    if (s <= span) {
      std::string m = std::string(name) + ": dimension " + std::to_string(d) + " has stride " +
                      std::to_string(t.strides[d]);
      m += s == 0 ? " (a broadcast view)" : " and overlaps the dimensions with smaller strides";
      throw ValueError(m + "; an output needs one element per address, shape " + t.shape_str());
    }
    span += s * (t.shape[d] - 1);
  }
}

void expect_disjoint_outputs(const std::vector<NamedView>& outputs,
                             const std::vector<NamedView>& inputs) {
  for (const NamedView& o : outputs) {
    expect_no_self_overlap(*o.view, o.name);
    if (!has_elements(*o.view)) continue;
    __int128 olo, ohi;
    byte_range(*o.view, &olo, &ohi);
    auto check = [&](const NamedView& x) {
      if (x.view == o.view || !has_elements(*x.view)) return;
      __int128 lo, hi;
      byte_range(*x.view, &lo, &hi);
      if (lo < ohi && olo < hi)
        throw ValueError(std::string(o.name) + ": its memory overlaps " + x.name +
                         "'s; an output must not share memory with an input or another output");
    };
    for (const NamedView& x : inputs) check(x);
    for (const NamedView& x : outputs) check(x);
  }
}

DType float_dtype(const TensorView& t, const char* name) {
  const DLDataType d = t.dtype;
  if (d.lanes == 1) {
    if (d.code == kDLFloat && d.bits == 32) return DType::Float32;
    if (d.code == kDLFloat && d.bits == 16) return DType::Float16;
    if (d.code == kDLBfloat && d.bits == 16) return DType::BFloat16;
    if (d.code == kDLFloat && d.bits == 64) return DType::Float64;
  }
  throw TypeError(std::string(name ? name : "tensor") +
                  ": expected float32, float16, bfloat16 or float64, got " + describe(d));
}

// ------------------------------------------------------------------------------------------
// ManagedTensor

namespace detail {
// Buffers made by ManagedTensor::allocate_cpu and not yet freed (a test hook: exactly-once
// deleters keep this at its baseline; a double call would drive it down).
std::atomic<int64_t> g_live_cpu_allocations{0};
int64_t live_cpu_allocations() { return g_live_cpu_allocations.load(); }
}  // namespace detail

namespace {

// Everything one allocate_cpu tensor owns, freed by its deleter in one go.
struct CpuBlock {
  DLManagedTensorVersioned managed;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  void* data;
  size_t bytes;  // what alloc_large was asked for
};

void cpu_block_deleter(DLManagedTensorVersioned* self) {
  auto* block = static_cast<CpuBlock*>(self->manager_ctx);
  detail::free_large(block->data, block->bytes);
  delete block;
  detail::g_live_cpu_allocations.fetch_sub(1);
}

// A versioned tensor wrapping a legacy one, and the reverse: the wrapper's deleter calls the
// wrapped tensor's deleter and frees the wrapper.
void versioned_wrapper_deleter(DLManagedTensorVersioned* self) {
  auto* inner = static_cast<DLManagedTensor*>(self->manager_ctx);
  if (inner && inner->deleter) inner->deleter(inner);
  delete self;
}

void legacy_wrapper_deleter(DLManagedTensor* self) {
  auto* inner = static_cast<DLManagedTensorVersioned*>(self->manager_ctx);
  if (inner && inner->deleter) inner->deleter(inner);
  delete self;
}

}  // namespace

ManagedTensor ManagedTensor::adopt(DLManagedTensorVersioned* t) {
  ManagedTensor m;
  m.versioned_ = t;
  return m;
}

ManagedTensor ManagedTensor::adopt(DLManagedTensor* t) {
  ManagedTensor m;
  m.legacy_ = t;
  return m;
}

ManagedTensor ManagedTensor::allocate_cpu(DType dtype, const std::vector<int64_t>& shape) {
  if (shape.size() > size_t(kMaxDims))
    throw ValueError("allocate: expected at most " + std::to_string(kMaxDims) +
                     " dimensions, got " + std::to_string(shape.size()));
  bool empty = false;
  for (int64_t n : shape) {
    if (n < 0) throw ValueError("allocate: negative size " + std::to_string(n));
    empty = empty || n == 0;
  }
  int64_t numel = empty ? 0 : 1;
  for (int64_t n : shape)
    if (!empty && mul_overflows(numel, n, &numel))
      throw ValueError("allocate: the number of elements overflows int64");
  int64_t bytes = 0;
  if (mul_overflows(numel, int64_t(dtype_size(dtype)), &bytes) ||
      bytes > (int64_t(1) << 62))
    throw ValueError("allocate: the tensor is too large");
  // Never 0 bytes, so even an empty tensor has a valid, unique data pointer.
  const size_t want = bytes == 0 ? 64 : size_t(bytes);

  auto* block = new CpuBlock();  // value-initialised: zeros
  block->data = detail::alloc_large(want);
  block->bytes = want;
  if (block->data == nullptr) {
    delete block;
    // A clear error (RuntimeError in Python, as torch reports a failed CPU allocation); the
    // call that asked stops here and nothing else is changed, so the process goes on.
    std::string dims = "[";
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    throw RuntimeError("spattn: out of memory: cannot allocate " + std::to_string(want >> 20) +
                       " MiB for a " + dtype_name(dtype) + " tensor of shape " + dims + "]");
  }
  const int nd = int(shape.size());
  int64_t stride = 1;
  for (int i = nd - 1; i >= 0; --i) {
    block->shape[i] = shape[size_t(i)];
    block->strides[i] = stride;
    if (mul_overflows(stride, shape[size_t(i)] > 0 ? shape[size_t(i)] : 1, &stride))
      stride = INT64_MAX;  // only an empty tensor gets here
  }
  DLManagedTensorVersioned& m = block->managed;
  m.version = DLPackVersion{1, 1};
  m.manager_ctx = block;
  m.deleter = &cpu_block_deleter;
  m.flags = 0;
  m.dl_tensor.data = block->data;
  m.dl_tensor.device = DLDevice{kDLCPU, 0};
  m.dl_tensor.ndim = nd;
  m.dl_tensor.dtype = to_dl(dtype);
  m.dl_tensor.shape = block->shape;
  m.dl_tensor.strides = block->strides;
  m.dl_tensor.byte_offset = 0;
  detail::g_live_cpu_allocations.fetch_add(1);
  return adopt(&m);
}

ManagedTensor::ManagedTensor(ManagedTensor&& o) noexcept
    : versioned_(std::exchange(o.versioned_, nullptr)),
      legacy_(std::exchange(o.legacy_, nullptr)) {}

ManagedTensor& ManagedTensor::operator=(ManagedTensor&& o) noexcept {
  if (this != &o) {
    reset();
    versioned_ = std::exchange(o.versioned_, nullptr);
    legacy_ = std::exchange(o.legacy_, nullptr);
  }
  return *this;
}

ManagedTensor::~ManagedTensor() { reset(); }

void ManagedTensor::reset() {
  // Clear the members first so that a deleter that (indirectly) looks at this owner, or
  // throws, can never lead to a second call.
  DLManagedTensorVersioned* v = std::exchange(versioned_, nullptr);
  DLManagedTensor* l = std::exchange(legacy_, nullptr);
  if (v && v->deleter) v->deleter(v);
  if (l && l->deleter) l->deleter(l);
}

bool ManagedTensor::read_only() const {
  return versioned_ != nullptr && (versioned_->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
}

const DLTensor& ManagedTensor::dl() const {
  if (versioned_) return versioned_->dl_tensor;
  if (legacy_) return legacy_->dl_tensor;
  throw RuntimeError("spattn: use of an empty ManagedTensor (released or never set)");
}

DLTensor& ManagedTensor::dl() {
  return const_cast<DLTensor&>(static_cast<const ManagedTensor&>(*this).dl());
}

TensorView ManagedTensor::view(const char* name) const { return view_of(dl(), name, read_only()); }

DLManagedTensorVersioned* ManagedTensor::release_versioned() {
  if (versioned_) return std::exchange(versioned_, nullptr);
  if (!legacy_) return nullptr;
  // Allocate the wrapper before giving anything up, so a bad_alloc leaves ownership here.
  auto* w = new DLManagedTensorVersioned();
  w->version = DLPackVersion{1, 1};
  w->manager_ctx = legacy_;
  w->deleter = &versioned_wrapper_deleter;
  w->flags = 0;
  w->dl_tensor = legacy_->dl_tensor;
  legacy_ = nullptr;
  return w;
}

DLManagedTensor* ManagedTensor::release_legacy() {
  if (legacy_) return std::exchange(legacy_, nullptr);
  if (!versioned_) return nullptr;
  auto* w = new DLManagedTensor();
  w->dl_tensor = versioned_->dl_tensor;
  w->manager_ctx = versioned_;
  w->deleter = &legacy_wrapper_deleter;
  versioned_ = nullptr;
  return w;
}

}  // namespace spattn
