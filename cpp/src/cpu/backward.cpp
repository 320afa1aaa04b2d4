// The backward pass, deterministic and without atomics.
//
// Tasks are (batch, range of kv heads, chunk of consecutive query tiles); a task runs every
// query head of its kv heads over its tiles, owns the dq rows of those tiles, and accumulates
// dK/dV into private float32 blocks, per (kv head, chunk), covering the key blocks its tiles
// visit. A second parallel pass sums, for each
// key block, the private blocks that cover it in chunk order and writes dk/dv. The number of
// chunks is capped so that the private blocks stay within a few times the size of K and V.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/common.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

void backward(const BackwardArgs& a) {
  using namespace detail;
  if (backward_sparse_rows(a)) return;  // rows with few scattered keys (sparse_rows.cpp)
  const BlockLayout& layout = *a.layout;
  Problem p = make_problem(a.q, a.k, a.v, a.dtype, a.scale, layout, a.pred);
  check_layout(p, layout);
  std::vector<float> mods;
  set_modifiers(p, a.mods, false, &mods);
  p.o = t4(a.out);
  p.dout = t4(a.dout);
  p.exact_delta = a.rows_complete && a.dtype != DType::Float32;
  p.dq = t4(a.dq);
  p.dk = t4(a.dk);
  p.dv = t4(a.dv);
  p.lse = static_cast<float*>(a.lse.data);
  for (int i = 0; i < 3; ++i) p.lse_s[i] = a.lse.strides[i];
  if (p.B == 0 || p.Hkv == 0) return;

  const int64_t tiles = (p.Nq + kTile - 1) / kTile;
  const int64_t nkb = (p.Nk + kTile - 1) / kTile;
  const int64_t G = p.Hkv, BG = p.B * p.Hkv;

  // Key-block range [lo, hi] that tiles [t0, t1) of kv head g visit (lo > hi: none).
  auto block_range = [&](int64_t g, int64_t t0, int64_t t1, int64_t* lo, int64_t* hi) {
    *lo = nkb;
    *hi = -1;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h) {
        const int64_t r = layout.row(h, t);
        for (int pass = 0; pass < 2; ++pass) {
          const auto& ptr = pass ? layout.part_ptr : layout.full_ptr;
          const auto& rlo = pass ? layout.part_lo : layout.full_lo;
          const auto& rhi = pass ? layout.part_hi : layout.full_hi;
          if (ptr[r] == ptr[r + 1]) continue;
          *lo = std::min<int64_t>(*lo, rlo[size_t(ptr[r])]);
          *hi = std::max<int64_t>(*hi, int64_t(rhi[size_t(ptr[r + 1] - 1)]) - 1);
        }
      }
  };

  // Tasks are (b, range of kv heads, chunk of query tiles); inside a task the loop runs tile
  // by tile over all its heads, so that the rows it reads (q, out, dout: a row holds every
  // head) are used together. Enough chunks to balance the threads (within a memory budget
  // for the private blocks), then split the heads if there are still too few tasks.
  const int nthreads = num_threads();
  const int64_t target = 8 * int64_t(nthreads);
  int64_t S = std::min<int64_t>(std::max<int64_t>(1, (target + p.B - 1) / p.B), std::max<int64_t>(tiles, 1));
  const int64_t budget_rows = 4 * BG * nkb * kTile + 65536;
  std::vector<int64_t> t_begin, kb_lo, kb_n;  // per (g, s)
  for (;;) {
    t_begin.assign(G * S + 1, 0);
    kb_lo.assign(G * S, 0);
    kb_n.assign(G * S, 0);
    int64_t rows = 0;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t t0 = s * tiles / S, t1 = (s + 1) * tiles / S;
        int64_t lo, hi;
        block_range(g, t0, t1, &lo, &hi);
        t_begin[g * S + s] = t0;
        kb_lo[g * S + s] = lo;
        kb_n[g * S + s] = hi >= lo ? hi - lo + 1 : 0;
        rows += kb_n[g * S + s] * kTile;
      }
    if (S == 1 || rows * p.B <= budget_rows) break;
    S = (S + 1) / 2;
  }
  const int64_t NHG = std::min<int64_t>(G, std::max<int64_t>(1, (target + p.B * S - 1) / (p.B * S)));
  // Private block offsets (in rows of 64) per (b, g, s).
  std::vector<int64_t> off(BG * S + 1, 0);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = (b * G + g) * S + s;
        off[i + 1] = off[i] + kb_n[g * S + s];
      }
  Scratch dk_acc = alloc_floats(off[BG * S] * kTile * p.Dp);
  Scratch dv_acc = alloc_floats(off[BG * S] * kTile * p.Dvp);

  const KernelTable* kt = kernels_for(p.dtype);
  const int64_t ws_floats = kt->bwd_ws_floats(p);
  Scratch ws = alloc_floats(ws_floats * nthreads);
  const Predicate& pred = a.pred;

  parallel_for(p.B * NHG * S, [&](int64_t task, int thread) {
    const int64_t s = task % S, hg = (task / S) % NHG, b = task / (S * NHG);
    const int64_t g0 = hg * G / NHG, g1 = (hg + 1) * G / NHG;
    auto dk = [&](int64_t g) { return dk_acc.get() + off[(b * G + g) * S + s] * kTile * p.Dp; };
    auto dv = [&](int64_t g) { return dv_acc.get() + off[(b * G + g) * S + s] * kTile * p.Dvp; };
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t i = (b * G + g) * S + s, n = off[i + 1] - off[i];
      std::memset(dk(g), 0, sizeof(float) * n * kTile * p.Dp);
      std::memset(dv(g), 0, sizeof(float) * n * kTile * p.Dvp);
    }
    const int64_t t0 = s * tiles / S, t1 = (s + 1) * tiles / S;
    int64_t lo[kTile], hi[kTile];
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t g = g0; g < g1; ++g)
        for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h) {
          tile_ranges(pred, h, p.Nq, t, lo, hi);
          kt->bwd_tile(p, b, h, t, lo, hi, dk(g), dv(g), kb_lo[g * S + s],
                       ws.get() + thread * ws_floats);
        }
    }
  });

  parallel_for(BG * nkb, [&](int64_t task, int) {
    const int64_t c = task % nkb, g = (task / nkb) % G, b = task / (nkb * G);
    std::vector<const float*> dks, dvs;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t lo = kb_lo[g * S + s], n = kb_n[g * S + s];
      if (c < lo || c >= lo + n) continue;
      const int64_t row = off[(b * G + g) * S + s] + (c - lo);
      dks.push_back(dk_acc.get() + row * kTile * p.Dp);
      dvs.push_back(dv_acc.get() + row * kTile * p.Dvp);
    }
    kt->bwd_store(p, b, g, c, dks.data(), dvs.data(), int(dks.size()));
  });
}

}  // namespace spattn::cpu
