// The CUDA attention backward, as the core calls it (cpp/src/api.cpp). Implemented by
// cuda/src/host/backward.cpp when spattn is built with CUDA and by cuda/src/stub.cpp otherwise
// (supports_backward() is false there and attention_backward() throws RuntimeError), so
// callers need no #if. Host code only: no CUDA header is needed to include this.
//
// Used by the CUDA backend (cuda/src/host/cuda_backend.cpp). The layout is compiled for the
// BACKWARD's tile (backward_tile), which differs from the forward's, staged with
// stage_backward and uploaded once per compiled pattern.
#pragma once

#include <cstdint>
#include <string>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/hopper_bwd_logic.hpp"
#include "spattn/layout.hpp"
#include "spattn/options.hpp"
#include "spattn/predicate.hpp"
#include "spattn/tensor.hpp"

namespace spattn::cuda {

// The query x key tile the backward kernel walks the (transposed) block layout with: compile
// the row-major layout for exactly this (CompiledPattern::layout(bq, bk)); the launcher
// transposes it on the host.
struct BackwardTile {
  int64_t bq, bk;
};
BackwardTile backward_tile(int64_t d, int64_t dv);
// The tile for a problem on `device`: the sm90a backward's 128 x 128 (hopper_bwd_logic.hpp;
// stage the layout with stage_backward90) where it runs, else the sm80-style one. The sm90a
// backward is opt-in until it has run on a GPU: SPATTN_CUDA_BACKWARD=sm90a on a compute
// capability 9.0 device, for its compiled (dtype, D).
BackwardTile backward_tile(int64_t d, int64_t dv, int device, DType dtype);
// Whether the kernel of a tile gives bitwise reproducible gradients: the sm90a backward's
// (every gradient tile written once, fixed order), not the sm80-style one (dq by atomics).
inline bool backward_tile_deterministic(const BackwardTile& t) {
  return t.bq == kHopperBwdBlockM && t.bk == kHopperBwdBlockN;
}
// The compiled (dtype, head dim) pairs of the sm90a backward, e.g. "bfloat16:64,128".
std::string backward_kernels_sm90a();

// Whether this build has a backward kernel for the dtype and head dims (float16 / bfloat16,
// D == Dv, one of the compiled head dims). Needs no device.
bool supports_backward(DType dtype, int64_t d, int64_t dv);

// The compiled (dtype, head dim) pairs of the backward, e.g. "bfloat16:128"; empty without CUDA.
std::string backward_kernels();

// One attention backward on device memory. Pointers are device pointers on `device`; strides
// are in elements, any values (tensors the kernels cannot read or write with 16-byte accesses
// go through temporaries). Shapes as in spattn.hpp:
//   dout, out [B, Nq, Hq, Dv], q [B, Nq, Hq, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv] (dtype),
//   lse [B, Hq, Nq] float32 (the forward's), dq [B, Nq, Hq, D], dk [B, Nk, Hkv, D],
//   dv [B, Nk, Hkv, Dv] (dtype; every element is written).
struct BackwardProblem {
  DType dtype = DType::BFloat16;
  const void* dout = nullptr;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const float* lse = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t b = 0, nq = 0, nk = 0, hq = 0, hkv = 0, d = 0, dv_dim = 0;
  int64_t dout_strides[4] = {0, 0, 0, 0};
  int64_t q_strides[4] = {0, 0, 0, 0};
  int64_t k_strides[4] = {0, 0, 0, 0};
  int64_t v_strides[4] = {0, 0, 0, 0};
  int64_t out_strides[4] = {0, 0, 0, 0};
  int64_t lse_strides[3] = {0, 0, 0};
  int64_t dq_strides[4] = {0, 0, 0, 0};
  int64_t dk_strides[4] = {0, 0, 0, 0};
  int64_t dv_strides[4] = {0, 0, 0, 0};
  float scale = 1.f;                    // already resolved (1/sqrt(D) by default)
  ScoreModParams mods;                  // score modifiers (forward_logic.hpp); none by default
  // The transposed layout (from one compiled with backward_tile(d, dv)), schedule and
  // predicate, staged by stage_backward and copied to the device (staged_dev, relocated for
  // it): cuda_backend.cpp keeps both with the compiled pattern.
  const StagedBackward* staged = nullptr;
  const void* staged_dev = nullptr;
  void* stream = nullptr;               // cudaStream_t; nullptr: the legacy default stream
  int device = 0;                       // the device the tensors live on
  const Allocator* allocator = nullptr;  // workspace (dq accumulator, repacks); nullptr: own
  // Bitwise reproducible gradients asked for: the sm90a backward then keeps its query-major dQ
  // pass whatever SPATTN_CUDA_DQ says (backward90.cpp).
  bool deterministic = false;
};

// Runs the backward on `p.stream` (asynchronously: returns once the work is queued; the layout
// and predicate are copied first, so they may be freed on return). Three kernels: preprocess
// (delta, lse), the key-block-major main kernel (dk, dv; dq into an fp32 workspace by
// atomics), dq conversion. Gradients are not bitwise deterministic (the order of the dq atomics
// varies); dk and dv are. Throws RuntimeError for an unavailable backend (no CUDA, no device,
// no kernel for the device's architecture or for the dtype / head dims, pointers not on the
// device) and for any CUDA error, ValueError for a layout that does not fit the problem.
// SPATTN_CUDA_SYNC=1 synchronises after the launches to report kernel errors (debugging).
void attention_backward(const BackwardProblem& p);

// A BackwardProblem from checked views ([B, N, H, D] order).
inline BackwardProblem backward_problem(const TensorView& dout, const TensorView& q,
                                        const TensorView& k, const TensorView& v,
                                        const TensorView& out, const TensorView& lse,
                                        const TensorView& dq, const TensorView& dk,
                                        const TensorView& dv, DType dtype, float scale,
                                        void* stream) {
  BackwardProblem p;
  p.dtype = dtype;
  p.dout = dout.data;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.lse = static_cast<const float*>(lse.data);
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.b = q.shape[0];
  p.nq = q.shape[1];
  p.hq = q.shape[2];
  p.d = q.shape[3];
  p.nk = k.shape[1];
  p.hkv = k.shape[2];
  p.dv_dim = v.shape[3];
  for (int i = 0; i < 4; ++i) {
    p.dout_strides[i] = dout.strides[i];
    p.q_strides[i] = q.strides[i];
    p.k_strides[i] = k.strides[i];
    p.v_strides[i] = v.strides[i];
    p.out_strides[i] = out.strides[i];
    p.dq_strides[i] = dq.strides[i];
    p.dk_strides[i] = dk.strides[i];
    p.dv_strides[i] = dv.strides[i];
  }
  for (int i = 0; i < 3; ++i) p.lse_strides[i] = lse.strides[i];
  p.scale = scale;
  p.stream = stream;
  p.device = q.device.device_id;
  return p;
}

}  // namespace spattn::cuda
