// Shared by forward.cpp and backward.cpp (default target only; never include from isa_*.cpp).
#pragma once

#include <string>

#include "spattn/error.hpp"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "cpu/attention_cpu.hpp"
#include "cpu/kernel_api.hpp"
#include "large_buffers.hpp"

namespace spattn::cpu::detail {

// 64-byte aligned float scratch, released on scope exit (large ones to the buffer cache,
// large_buffers.hpp: the backward's dK/dV blocks come back already faulted in).
struct LargeFree {
  size_t bytes;
  void operator()(float* p) const { spattn::detail::free_large(p, bytes); }
};
using Scratch = std::unique_ptr<float[], LargeFree>;

inline Scratch alloc_floats(int64_t n) {
  const size_t bytes = size_t(n > 0 ? n : 1) * sizeof(float);
  void* p = spattn::detail::alloc_large(bytes);
  if (!p)  // a clear error, the same as an output that cannot be allocated (tensor.cpp)
    throw spattn::RuntimeError("spattn: out of memory: cannot allocate " +
                               std::to_string(bytes >> 20) + " MiB of scratch");
  return Scratch(static_cast<float*>(p), LargeFree{bytes});
}

inline int code_of(DType t) {
  return t == DType::Float32 ? kF32 : t == DType::Float16 ? kF16 : t == DType::BFloat16 ? kBF16 : kF64;
}

inline T4 t4(const TensorView& v) {
  T4 t;
  t.data = v.data;
  for (int i = 0; i < 4; ++i) t.s[i] = i < v.ndim ? v.strides[i] : 0;
  return t;
}

// Problem fields shared by both passes.
Problem make_problem(const TensorView& q, const TensorView& k, const TensorView& v,
                     DType dtype, float scale, const BlockLayout& layout, const Predicate& pred);

// Sets the score modifiers of p (kernel_api.hpp: base-2 units): softcap and ALiBi, and the sinks
// when with_sinks. The per-head arrays are kept in *store (2 * Hq floats), which must outlive p.
void set_modifiers(Problem& p, const backend::ScoreMods& m, bool with_sinks,
                   std::vector<float>* store);

// Throws ValueError unless the layout was compiled for this problem with cpu_tile_size().
void check_layout(const Problem& p, const BlockLayout& layout);

// Fills lo/hi (64 entries) with the key intervals of the rows of tile a of head h (window
// predicates).
void tile_ranges(const Predicate& pred, int64_t h, int64_t nq, int64_t a, int64_t* lo,
                 int64_t* hi);

}  // namespace spattn::cpu::detail
