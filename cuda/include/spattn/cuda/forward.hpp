// The CUDA attention forward, as the core calls it (cpp/src/api.cpp). Implemented by
// cuda/src/host/forward.cpp when spattn is built with CUDA and by cuda/src/stub.cpp otherwise
// (supports() is false there and attention_forward() throws RuntimeError), so callers need no
// #if. Host code only: no CUDA header is needed to include this.
//
// Used by the CUDA backend (cuda/src/host/cuda_backend.cpp), which stages and uploads the
// layout once per compiled pattern and fills ForwardProblem::staged / staged_dev.
#pragma once

#include <cstdint>
#include <string>

#include "spattn/cuda/forward_logic.hpp"
#include "spattn/layout.hpp"
#include "spattn/options.hpp"
#include "spattn/predicate.hpp"
#include "spattn/tensor.hpp"

namespace spattn::cuda {

// The query x key tile the forward kernel walks the block layout with: compile the layout for
// exactly this (CompiledPattern::layout(bq, bk)).
struct ForwardTile {
  int64_t bq, bk;
};
// The sm80-style float16 / bfloat16 kernel's tile (it runs on every supported device):
// kFwdBlockM x fwd_block_n(max(d, dv)), 32-key steps above head dim 128.
ForwardTile forward_tile(int64_t d, int64_t dv);
// The tile of the sm80-style kernels for (dtype, d, dv): the float32 SIMT kernel's is
// kFwdBlockM x kFwdBlockN at every head dim it has, the others' forward_tile(d, dv).
inline ForwardTile sm80_forward_tile(DType dtype, int64_t d, int64_t dv) {
  if (dtype == DType::Float32) return {kFwdBlockM, kFwdBlockN};
  return {kFwdBlockM, fwd_block_n(d > dv ? d : dv)};
}
// The tile of the kernel attention_forward() will pick for (dtype, D) on `device`: the sm90a
// kernel's (128 x hopper_block_n(D)) on a compute-capability 9.0 device when this build has it
// for (dtype, D), else the sm80-style kernel's. SPATTN_CUDA_FORWARD=sm80 in the environment
// (read on every call) forces the sm80-style kernel (tests run both on a Hopper GPU).
ForwardTile forward_tile(int64_t d, int64_t dv, int device, DType dtype);

// Whether this build has a forward kernel for the dtype and head dims (float16 / bfloat16,
// D == Dv, one of the compiled head dims). Needs no device.
bool supports(DType dtype, int64_t d, int64_t dv);

// The compiled (dtype, head dim) pairs, e.g. "bfloat16:128" or "float16:64,128;bfloat16:64,128";
// empty without CUDA.
std::string forward_kernels();
// The (dtype, head dim) pairs of the sm90a wgmma/TMA forward kernel in this build, same format
// (empty without it); compute-capability 9.0 devices run it, others the kernels above.
std::string forward_kernels_sm90a();

// One attention forward on device memory. Pointers are device pointers on `device`; strides
// are in elements, any values (the last one of q, k, v, out must be 1; a layout the kernel
// cannot read with 16-byte copies is repacked through a temporary). Shapes as in spattn.hpp:
//   q [B, Nq, Hq, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv], out [B, Nq, Hq, Dv] (dtype),
//   lse [B, Hq, Nq] float32 (nullptr: not written).
struct ForwardProblem {
  DType dtype = DType::BFloat16;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  int64_t b = 0, nq = 0, nk = 0, hq = 0, hkv = 0, d = 0, dv = 0;
  int64_t q_strides[4] = {0, 0, 0, 0};
  int64_t k_strides[4] = {0, 0, 0, 0};
  int64_t v_strides[4] = {0, 0, 0, 0};
  int64_t out_strides[4] = {0, 0, 0, 0};
  int64_t lse_strides[3] = {0, 0, 0};
  float scale = 1.f;                    // already resolved (1/sqrt(D) by default)
  ScoreModParams mods;                  // score modifiers (forward_logic.hpp); none by default
  // The layout (compiled with forward_tile(d, dv); 1 or Hq heads), schedule and predicate,
  // staged by stage_forward and copied to the device (staged_dev, relocated for it): see
  // cuda_backend.cpp, which keeps both with the compiled pattern.
  const StagedForward* staged = nullptr;
  const void* staged_dev = nullptr;
  void* stream = nullptr;               // cudaStream_t; nullptr: the legacy default stream
  int device = 0;                       // the device the tensors live on
  const Allocator* allocator = nullptr;  // workspace (repacked tensors); nullptr: spattn's own
};

// Runs the forward on `p.stream` (asynchronously: returns once the work is queued; the staged
// layout must stay alive on the device until the work is done). Throws
// RuntimeError for an unavailable backend (no CUDA, no device, no kernel for the device's
// architecture or for the dtype / head dims, pointers not on the device) and for any CUDA
// error, ValueError for a layout that does not fit the problem. Set SPATTN_CUDA_SYNC=1 to
// synchronise after the launch and report errors of the kernel itself (for debugging).
void attention_forward(const ForwardProblem& p);

// A ForwardProblem from checked views ([B, N, H, D] order; lse: data == nullptr for none).
inline ForwardProblem forward_problem(const TensorView& q, const TensorView& k,
                                      const TensorView& v, const TensorView& out,
                                      const TensorView& lse, DType dtype, float scale,
                                      void* stream) {
  ForwardProblem p;
  p.dtype = dtype;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.lse = static_cast<float*>(lse.data);
  p.b = q.shape[0];
  p.nq = q.shape[1];
  p.hq = q.shape[2];
  p.d = q.shape[3];
  p.nk = k.shape[1];
  p.hkv = k.shape[2];
  p.dv = v.shape[3];
  for (int i = 0; i < 4; ++i) {
    p.q_strides[i] = q.strides[i];
    p.k_strides[i] = k.strides[i];
    p.v_strides[i] = v.strides[i];
    p.out_strides[i] = out.strides[i];
  }
  if (lse.data)
    for (int i = 0; i < 3; ++i) p.lse_strides[i] = lse.strides[i];
  p.scale = scale;
  p.stream = stream;
  p.device = q.device.device_id;
  return p;
}

}  // namespace spattn::cuda
