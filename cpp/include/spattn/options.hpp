// Per-call options of every entry point (attention, backward, varlen, decode, merge).
#pragma once

#include <cstddef>

#include "spattn/dlpack.hpp"

namespace spattn {

// Memory for results and workspaces on a device, supplied by the caller so that spattn's
// allocations go through the caller's pool (torch's or cupy's caching allocator, a serving
// engine's arena) and are visible to its accounting. `allocate` returns memory usable in stream
// order on `stream` (nullptr: out of memory; spattn raises RuntimeError); `deallocate` gets back
// exactly what `allocate` gave, once spattn has queued its last use on `stream` (the memory may
// be reused by later work on that stream, never earlier). Both may be called from any thread
// that calls spattn; neither may call back into spattn.
struct Allocator {
  void* (*allocate)(void* ctx, size_t bytes, DLDevice device, void* stream) = nullptr;
  void (*deallocate)(void* ctx, void* ptr, size_t bytes, DLDevice device, void* stream) = nullptr;
  void* ctx = nullptr;
};

// Score modifiers (docs/: "Score modifiers"; README: "Choices where the contract is silent").
// Every kept score of query row i (query head h) and key j becomes, in this order:
//   s = scale * q_i . k_j
//   s = softcap * tanh(s / softcap)           (softcap > 0; Gemma 2 caps the scaled score)
//   s = s - alibi_slopes[h] * |rel|           (rel = i + Nk - Nq - j, docs/patterns.md)
// and with sinks every row's softmax gets one more term exp(sinks[h]) in its denominator, with
// no value row (GPT-OSS's learned sinks):
//   out_i = sum_j e^{s_ij} v_j / (e^{sinks[h]} + sum_j e^{s_ij}),
//   lse_i = log(e^{sinks[h]} + sum_j e^{s_ij}).
// A row that keeps no key gets out = 0 and lse = sinks[h] (-inf without sinks). Masked pairs
// stay masked: modifiers change kept scores only. The arrays are [Hq] of lse's dtype (float32;
// float64 for float64 inputs) on q's device (for a batch, varlen batch or decode alike); slopes must be finite, sinks finite or -inf (-inf: no
// sink for that head). Empty (all defaults): plain attention, and the plain kernels run.
struct Modifiers {
  double softcap = 0.0;                     // 0: none; else finite and > 0
  const DLTensor* alibi_slopes = nullptr;   // float32 [Hq] (float64 inputs: float64), or none
  const DLTensor* sinks = nullptr;          // float32 [Hq] (float64 inputs: float64), or none
  // Backward only, with sinks: written (overwritten) with dL/dsinks, [Hq] as the sinks:
  //   dsinks[h] = -sum over rows (b, i) of exp(sinks[h] - lse[b, h, i]) * sum_d dout * out.
  // Null: not wanted.
  const DLTensor* dsinks = nullptr;
  bool any() const { return softcap != 0.0 || alibi_slopes || sinks; }
};

struct Options {
  // Softmax scale; 0 means 1/sqrt(D).
  double scale = 0.0;
  // CPU threads for this call: 0 means the whole pool (SPATTN_NUM_THREADS, else every CPU the
  // process may use), n > 0 at most n. A caller inside another library's thread budget (the
  // Python layer passes torch.get_num_threads() for torch tensors) sets it so that the two
  // never oversubscribe the cores. Negative: ValueError.
  int num_threads = 0;
  // The stream device work is queued on (CUDA: a cudaStream_t; nullptr is the legacy default
  // stream). Calls on CUDA tensors return once their work is queued: results are ready in
  // stream order, as for any CUDA library. Ignored on the CPU.
  void* stream = nullptr;
  // Device memory for results and workspaces; nullptr: spattn's own (stream-ordered pools where
  // the device has them). Host memory never goes through it.
  const Allocator* allocator = nullptr;
  // Backward only: bitwise identical gradients from run to run (same inputs, device, build and
  // thread count). The CPU backward always is (no atomics; sums in a fixed order); on CUDA the
  // sm90a backward is (every gradient tile written once by one CTA), and the sm80-style backward
  // is not (dq by float32 atomics): deterministic=true raises RuntimeError where it would run.
  // Other entry points ignore it (their results are reproducible already).
  bool deterministic = false;
  // Score modifiers of attention, its backward, their varlen forms and decode (ignored by
  // merge and pool_keys).
  Modifiers modifiers;
  // Decode and pool_keys on CUDA only: do not synchronise to report a bad block table entry or
  // cache_len value in this call; leave the error on the device, where check_decode_errors(device)
  // raises it later (docs/api.md, "Decode errors"). A call captured into a CUDA graph always
  // defers. On the CPU errors are raised at once either way.
  bool decode_defer_errors = false;
};

}  // namespace spattn
