// spattn: sparse attention on DLPack tensors. The C++ entry points (SPEC §5).
//
//   q   [B, Nq, Hq, D]     k [B, Nk, Hkv, D]     v [B, Nk, Hkv, Dv]
//   out [B, Nq, Hq, Dv]    lse [B, Hq, Nq] float32 (natural-log logsumexp of scaled scores)
//
// Any strides; float32, float16 or bfloat16 (q, k, v, out, dout and the gradients share one
// dtype); Hq % Hkv == 0. The tensors' device picks the backend. Errors are thrown as
// spattn::ValueError / TypeError / RuntimeError (error.hpp) before anything is written.
#pragma once

#include <map>
#include <string>

#include "spattn/dlpack.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/merge.hpp"
#include "spattn/pattern.hpp"
#include "spattn/tensor.hpp"

namespace spattn {

struct Options {
  // Softmax scale; 0 means 1/sqrt(D).
  double scale = 0.0;
};

// out (and lse when not null) are written; nothing else is.
void attention_forward(const DLTensor& q, const DLTensor& k, const DLTensor& v,
                       const Pattern& pattern, const DLTensor& out, const DLTensor* lse,
                       const Options& options = {});

// dq, dk, dv are written (overwritten, not accumulated into).
void attention_backward(const DLTensor& dout, const DLTensor& q, const DLTensor& k,
                        const DLTensor& v, const DLTensor& out, const DLTensor& lse,
                        const Pattern& pattern, const DLTensor& dq, const DLTensor& dk,
                        const DLTensor& dv, const Options& options = {});

// Build and runtime facts: version, backends, compiled CUDA architectures, SIMD level, threads.
std::map<std::string, std::string> info();

// The library version, "MAJOR.MINOR.PATCH".
const char* version();

}  // namespace spattn
