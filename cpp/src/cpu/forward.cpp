// The forward pass: one task per (batch, query tile, query head), dynamically scheduled. Heads
// vary fastest: a row of q or out holds every head, so neighbouring tasks read and write the
// same pages and cache lines (head-major order measured ~15% slower at 8K tokens, 8 heads).
#include <algorithm>
#include <vector>

#include "cpu/common.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

void forward(const ForwardArgs& a) {
  using namespace detail;
  if (forward_sparse_rows(a)) return;  // rows with few scattered keys (sparse_rows.cpp)
  if (forward_grid_tiles(a)) return;   // grid neighbourhoods in gathered patches (grid_tiles.cpp)
  Problem p = make_problem(a.q, a.k, a.v, a.dtype, a.scale, *a.layout, a.pred);
  check_layout(p, *a.layout);
  std::vector<float> mods;
  set_modifiers(p, a.mods, true, &mods);
  p.o = t4(a.out);
  if (a.lse.data) {
    p.lse = static_cast<float*>(a.lse.data);
    for (int i = 0; i < 3; ++i) p.lse_s[i] = a.lse.strides[i];
  }
  const int64_t tiles = (p.Nq + kTile - 1) / kTile;
  const int64_t tasks = p.B * p.Hq * tiles;
  if (tasks == 0 || p.Dv == 0) return;

  const KernelTable* kt = kernels_for(p.dtype);
  const int64_t ws_floats = kt->fwd_ws_floats(p);
  const int nthreads = num_threads();
  Scratch ws = alloc_floats(ws_floats * nthreads);
  const Predicate& pred = a.pred;
  const int es = p.dtype == kF32 ? 4 : 2;
  // The q rows of a tile are Hq * D elements apart, too far for the hardware prefetchers.
  // Tasks are handed out in order, so a thread's next task is most likely `task + nthreads`:
  // its q rows are prefetched into L2 while this one runs (a wrong guess costs only
  // bandwidth). Not measured on its own: it went in with the packing fix of pack_rows_t.
  auto prefetch_q = [&](int64_t task) {
    if (task >= tasks) return;
    const int64_t h = task % p.Hq, tile = (task / p.Hq) % tiles, b = task / (tiles * p.Hq);
    const int64_t i0 = tile * kTile, n = std::min<int64_t>(kTile, p.Nq - i0);
    const int64_t bytes = p.q.s[3] == 1 ? p.D * es : es;
    for (int64_t r = 0; r < n; ++r) {
      const char* row = static_cast<const char*>(p.q.data) +
                        (b * p.q.s[0] + (i0 + r) * p.q.s[1] + h * p.q.s[2]) * es;
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o, 0, 2);
      __builtin_prefetch(row + bytes - 1, 0, 2);
    }
  };
  parallel_for(tasks, [&](int64_t task, int thread) {
    const int64_t h = task % p.Hq;
    const int64_t tile = (task / p.Hq) % tiles;
    const int64_t b = task / (tiles * p.Hq);
    prefetch_q(task + nthreads);
    int64_t lo[kTile], hi[kTile];
    tile_ranges(pred, h, p.Nq, tile, lo, hi);
    kt->fwd_tile(p, b, h, tile, lo, hi, ws.get() + thread * ws_floats);
  });
}

}  // namespace spattn::cpu
