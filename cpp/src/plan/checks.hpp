// The argument checks of every entry point (attention, varlen, backward, decode, pool_keys,
// merge, select), written once. Each throws ValueError (shapes, lengths, values) or TypeError
// (dtypes) with a message naming the argument, what was expected and what was given.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "spattn/options.hpp"
#include "spattn/tensor.hpp"

namespace spattn::plan {

constexpr int64_t kMaxHeadDim = 256;

void expect_rank(const TensorView& t, const char* name, int rank, const char* layout);
void expect_shape(const TensorView& t, const char* name, const std::vector<int64_t>& want,
                  const char* layout);
// t's dtype is float32/float16/bfloat16 and equals `want` (ref: whose dtype it must match).
void expect_dtype(const TensorView& t, const char* name, DType want, const char* ref = "q");
void expect_same_device(const TensorView& t, const char* name, const TensorView& ref,
                        const char* ref_name = "q");
// Outputs: no two elements at one address (no stride 0 on a dimension longer than 1).
void expect_writable_layout(const TensorView& t, const char* name);
// A tensor of exactly dtype `want`, of the given shape, on ref's device.
void expect_typed(const TensorView& t, const char* name, DType want,
                  const std::vector<int64_t>& shape, const char* layout, const TensorView& ref,
                  const char* ref_name = "q");
// A float32 tensor of the given shape on ref's device (pooled keys).
void expect_float32(const TensorView& t, const char* name, const std::vector<int64_t>& shape,
                    const char* layout, const TensorView& ref, const char* ref_name = "q");
// The lse of inputs of dtype `inputs`: lse_dtype(inputs) (tensor.hpp), shape, q's device.
void expect_lse(const TensorView& t, const char* name, DType inputs,
                const std::vector<int64_t>& shape, const char* layout, const TensorView& q);
bool is_index_dtype(const TensorView& t);  // int32 or int64 scalars

// An input that must match q's shape-to-be, dtype and device; an output is also writable.
void check_input(const TensorView& t, const char* name, const std::vector<int64_t>& shape,
                 const char* layout, const TensorView& q, DType dtype);
void check_output(const TensorView& t, const char* name, const std::vector<int64_t>& shape,
                  const char* layout, const TensorView& q, DType dtype);

// q, k, v of attention ([B, N, H, D], or varlen [T, H, D]: b = 1, nq = Tq, nk = Tk): ranks,
// dtypes, one device, sizes against each other, GQA, head dims 1..kMaxHeadDim.
backend::Dims check_qkv(const TensorView& q, const TensorView& k, const TensorView& v,
                        DType* dtype, bool varlen);

// The validated options of one call: the softmax scale resolved for head dim d (Options::scale
// 0 means 1/sqrt(d)), and the thread limit. The only place either is checked.
struct CallOptions {
  double scale;  // float64 kernels use it as it is; the others round it to float
  int num_threads;
};
CallOptions resolve(const Options& o, int64_t d);

// The backend of q's device for `op`, checked to run it for (dtype, d, dv): RuntimeError
// naming what is missing otherwise. Also fills the call's context (device, stream, allocator).
backend::Backend& backend_for(const TensorView& q, backend::Op op, DType dtype, int64_t d,
                              int64_t dv, const Options& o, backend::Call* call);

}  // namespace spattn::plan
