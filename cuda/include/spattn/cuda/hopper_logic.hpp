// The index, pipeline and scheduling logic of the sm90a (Hopper) forward kernel
// (cuda/src/sm90a/fwd90_kernel.cuh), as SPATTN_HD functions so that the host test
// (tests/cpp/test_cuda_hopper_logic.cpp) checks exactly what the kernel runs.
//
//   hopper_block_n(), hopper_stages()  the tile and pipeline depth per head dim
//   PipeState                          stage index and mbarrier parity of a ring of buffers
//   PersistentWork                     which schedule entries one persistent CTA computes
//
// Mask, softmax, element offsets, the layout walk and the schedule order are those of the
// sm80-style kernel (forward_logic.hpp): one definition for CPU, sm80 and sm90a.
#pragma once

#include <cstdint>

#include "spattn/cuda/forward_logic.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::cuda {

// Query rows per CTA: two consumer warpgroups of 64 rows each (the wgmma M is 64).
constexpr int kHopperBlockM = 128;

// Keys per step. 128 at D <= 128: the score tile of a warpgroup is then 64 x 128 fp32
// (64 registers per thread), next to the 64 x D output accumulator. At D = 256 the output
// accumulator alone is 128 registers per thread, so the key tile halves.
SPATTN_HD constexpr int hopper_block_n(int d) { return d <= 128 ? 128 : 64; }

// K/V ring depth: (K, V) stages beside Q (and O) in 227 KB of shared memory, at most 4.
// Bytes per stage: 2 * block_n * d * 2; Q and O: 128 * d * 2 each.
//   d = 64: 16 KB Q + 16 KB O + 4 x 32 KB;  d = 128: 32 + 32 + 2 x 64;  d = 256: 64 + 2 x 64.
SPATTN_HD constexpr int hopper_stages(int d) { return d <= 64 ? 4 : 2; }

// Whether O is staged for its TMA store in a buffer of its own (d <= 128), so that Q's buffer
// is released as soon as the last score product of an item is done and the next item's Q
// loads during this item's last P V and epilogue; at d = 256 it does not fit, and O is
// staged in Q's buffer (released once the store has read it).
SPATTN_HD constexpr bool hopper_separate_o(int d) { return d <= 128; }

SPATTN_HD constexpr int64_t hopper_smem_bytes(int d, int elem_bytes) {
  return int64_t(kHopperBlockM) * d * elem_bytes * (hopper_separate_o(d) ? 2 : 1) +
         int64_t(hopper_stages(d)) * 2 * hopper_block_n(d) * d * elem_bytes;
}

// Whether the sm90a kernel's tile is the layout's: the host compiles the layout for
// (kHopperBlockM, hopper_block_n(d)) on sm90 devices when this kernel exists for (dtype, d).
SPATTN_HD constexpr bool hopper_head_dim(int d) { return d == 64 || d == 128 || d == 256; }

// A ring of `stages` buffers, each guarded by a full and an empty mbarrier. Both sides walk
// the ring in the same order; on each wrap the barrier's phase flips, so the parity a side
// waits for is the number of completed wraps mod 2. The consumer waits full barriers for
// `phase`; the producer waits empty barriers for `phase ^ 1` (its first pass finds every
// buffer free: a fresh mbarrier counts as having completed phase "-1", whose parity is 1).
struct PipeState {
  int stage = 0;
  uint32_t phase = 0;
  SPATTN_HD void advance(int stages) {
    if (++stage == stages) {
      stage = 0;
      phase ^= 1u;
    }
  }
  // The parity a producer waits for on the empty barrier of `stage`.
  SPATTN_HD uint32_t producer_wait_parity() const { return phase ^ 1u; }
  // The parity a consumer waits for on the full barrier of `stage`.
  SPATTN_HD uint32_t consumer_wait_parity() const { return phase; }
};

// The persistent grid: min(multiprocessors, work items) CTAs; CTA x computes work items
// x, x + grid, x + 2 grid, ... of the schedule (longest rows first, forward_logic.hpp's
// make_schedule; batch fastest), so every CTA starts on one of the longest rows and the
// short rows fill the end: a static longest-first round robin.
SPATTN_HD int64_t persistent_grid(int64_t work_items, int64_t multiprocessors) {
  if (work_items <= 0) return 0;
  const int64_t m = multiprocessors > 0 ? multiprocessors : 1;
  return work_items < m ? work_items : m;
}
struct PersistentWork {
  int64_t item, stride, end;
  SPATTN_HD PersistentWork(int64_t cta, int64_t grid, int64_t work_items)
      : item(cta), stride(grid), end(work_items) {}
  SPATTN_HD bool valid() const { return item < end; }
  SPATTN_HD void advance() { item += stride; }
};

}  // namespace spattn::cuda
