// Head dims the CUDA kernels were not compiled for (D = 80, say, or D != Dv) run on the next
// larger compiled head dim P: q and k are copied into zero-filled [.., P] temporaries (the extra
// zeros add nothing to q.k), v likewise (the extra output columns are dropped), and results are
// copied back. The scale stays the caller's (1/sqrt(D) of the real D). One general mechanism
// instead of a kernel per (D, Dv) pair; it costs the copies, so the common head dims have kernels.
#pragma once

#include <cstdint>

#include "backend/backend.hpp"
#include "launch_util.hpp"

namespace spattn::cuda {

// The head dim P the kernel runs with for (d, dv): d itself when d == dv has a kernel, else
// the smallest compiled P >= max(d, dv); 0 when there is none. `forward`: the forward's kernel
// table, else the backward's.
int64_t padded_head_dim(DType dtype, int64_t d, int64_t dv, bool forward);

// The views the forward kernel runs on: the caller's, or padded temporaries. finish() copies a
// padded out back into the caller's.
class PaddedForward {
 public:
  PaddedForward(const backend::Attention& a, const backend::Call& call);
  void finish();
  TensorView q, k, v, out;

 private:
  const backend::Attention& a_;
  const backend::Call& call_;
  int64_t p_ = 0;
  std::unique_ptr<launch::DeviceScratch> buf_;
};

class PaddedBackward {
 public:
  PaddedBackward(const backend::Attention& a, const backend::Gradients& g, const backend::Call& call);
  void finish();
  TensorView dout, q, k, v, out, dq, dk, dv;

 private:
  const backend::Attention& a_;
  const backend::Gradients& g_;
  const backend::Call& call_;
  int64_t p_ = 0;
  std::unique_ptr<launch::DeviceScratch> buf_;
};

}  // namespace spattn::cuda
