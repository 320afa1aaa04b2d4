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
};

}  // namespace spattn
