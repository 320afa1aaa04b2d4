// Tensors as spattn sees them: a checked, non-owning view of a DLPack tensor (TensorView), and
// an owner of a DLPack managed tensor that calls its deleter exactly once (ManagedTensor).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spattn/dlpack.hpp"

namespace spattn {

constexpr int kMaxDims = 8;

// Float64 runs on the CPU only (for gradient checking: a plain kernel computed in float64
// throughout); the CUDA backend refuses it.
enum class DType : uint8_t { Float32, Float16, BFloat16, Float64 };

// "float32", "float16", "bfloat16", "float64".
const char* dtype_name(DType t);
// The dtype of the lse (logsumexp) of inputs of dtype t: float64 for float64 inputs (so that a
// float64 gradient check sees an lse as exact as the output), float32 for the others.
DType lse_dtype(DType t);
// Size of one element in bytes.
int dtype_size(DType t);
// The DLPack description of a dtype.
DLDataType to_dl(DType t);
// A readable name for any DLPack dtype ("float32", "int64", "complex128", "uint8x4", ...).
std::string describe(DLDataType t);
// "cpu", "cuda:0", ...
std::string describe(DLDevice d);

// A non-owning view with everything a kernel needs, already checked: data includes the byte
// offset, strides are in elements and always present (NULL strides become compact ones).
struct TensorView {
  void* data = nullptr;
  DLDataType dtype{kDLFloat, 32, 1};
  DLDevice device{kDLCPU, 0};
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  bool read_only = false;

  int64_t numel() const;
  // Shape as "[2, 97, 8, 64]", for messages.
  std::string shape_str() const;
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

// Check a DLTensor and view it. `name` is the argument name used in error messages.
// Throws ValueError for more than kMaxDims dimensions, negative sizes, a null data pointer
// on a non-empty tensor, or a data pointer (byte_offset included) that is not a multiple of
// the element size (misaligned elements cannot be read portably). Any dtype is accepted here;
// see float_dtype.
TensorView view_of(const DLTensor& t, const char* name, bool read_only = false);

// The attention dtype of a view; TypeError naming `name` unless float32, float16, bfloat16 or
// float64.
DType float_dtype(const TensorView& t, const char* name);

// A view and its argument name, for the checks below.
struct NamedView {
  const TensorView* view;
  const char* name;
};

// ValueError naming `name` when two elements of an output share an address. Decided for the
// layouts arrays have (sorted by stride, each stride steps over everything the smaller ones
// span); a layout that interleaves its dimensions is refused too, as it cannot be proved
// free of overlap cheaply. Empty tensors have no elements and always pass.
void expect_no_self_overlap(const TensorView& t, const char* name);

// ValueError unless every output is free of self-overlap and shares no byte of memory (its
// range from lowest to highest address) with any input or any other output. Views with a
// null data pointer or no elements are skipped. Writing an output while reading an input
// that lies in the same memory would give wrong answers silently, so it is refused.
void expect_disjoint_outputs(const std::vector<NamedView>& outputs,
                             const std::vector<NamedView>& inputs);

// Owns one DLPack managed tensor, in either the versioned (1.x) or the legacy (0.x) form, and
// calls its deleter exactly once: when the owner is destroyed, or never if ownership was
// released to someone else. Move-only.
class ManagedTensor {
 public:
  ManagedTensor() = default;
  static ManagedTensor adopt(DLManagedTensorVersioned* t);  // takes ownership (null: empty)
  static ManagedTensor adopt(DLManagedTensor* t);           // takes ownership (null: empty)
  // A new compact row-major tensor in memory allocated (64-byte aligned) by spattn, on the CPU.
  // Its deleter frees that memory. Contents are uninitialised.
  static ManagedTensor allocate_cpu(DType dtype, const std::vector<int64_t>& shape);

  ManagedTensor(ManagedTensor&& o) noexcept;
  ManagedTensor& operator=(ManagedTensor&& o) noexcept;
  ManagedTensor(const ManagedTensor&) = delete;
  ManagedTensor& operator=(const ManagedTensor&) = delete;
  ~ManagedTensor();

  bool empty() const { return versioned_ == nullptr && legacy_ == nullptr; }
  bool read_only() const;  // the versioned flag; always false for a legacy tensor
  const DLTensor& dl() const;
  DLTensor& dl();
  // The checked view (see view_of).
  TensorView view(const char* name) const;

  // Give up ownership; the caller (a capsule, say) becomes responsible for the deleter.
  // release_versioned() on a legacy tensor (or the reverse) wraps it in a new managed
  // tensor of the requested form whose deleter calls the original's, so either form can
  // be produced from either.
  DLManagedTensorVersioned* release_versioned();
  DLManagedTensor* release_legacy();
  // Call the deleter now (idempotent).
  void reset();

 private:
  DLManagedTensorVersioned* versioned_ = nullptr;
  DLManagedTensor* legacy_ = nullptr;
};

}  // namespace spattn
