// The forward of one gathered grid tile (GridTile, kernel_api.hpp; built by grid_tiles.cpp):
// 64 queries forming a patch of a grid, against the box of cells their neighbourhoods lie in.
// The box's keys are walked in blocks of its packed order (kGridBlock keys: the whole box of a
// 13 x 13 window's tile is one block); float32 K and V rows are read in place through row
// pointers (gemm_tile.hpp's gathered products), others converted into the tile kernels' packed
// blocks. The score product, the online softmax and O += P V are the tile kernels'
// (attention_tiles.hpp), restricted per block to what the rows keep:
//   - S^T = K Q^T only for the 16-query groups whose union box holds the key;
//   - a group's softmax only over the keys of its union box's span in packed order;
//   - O += P V per row only over the span of its own box.
// Inside those, a (key, query) pair is kept when the key's cell lies in the query's box in every
// dim (per-dim keep tables, or one compare pair per dim), which is the neighbourhood rule since
// each query's kept cells are a product of per-dim ranges (grid_tiles.cpp gathers dilated dims
// by residue class).
//
// Why a separate walk: in row-major order a query tile is one grid line and meets one partial
// 64-key block per key line of its window (13 for a 13 x 13 window), each needing its fixed
// per-block work for a 13-key band per row. Here a 4 x 16 patch of a 2D grid walks its
// 16 x 28-cell box in one block whose ranges are known in closed form (bench/RESULTS.md).
// ISA-namespaced (simd.hpp); included by attention_tiles.hpp.
#pragma once

namespace spattn::cpu::SPATTN_ISA {

// Keys per block: the whole box of a 13 x 13 window's tile (16 x 28 cells) in one block, so
// that its softmax runs once and O is never rescaled (64-key blocks measured ~2% slower);
// larger boxes walk several.
constexpr int kGridBlock = 512;
// Cells per dim the keep tables cover (GridBufs::keep); larger boxes mask by comparisons.
constexpr int kGridKeepCells = 64;

struct GridBufs {
  FwdBufs f;            // the tile kernels' buffers; st, kp, vp, glo, ghi sized for kGridBlock keys
  int32_t* kc[3];       // a block's keys' box coordinates per dim
  int64_t* kpos;        // and their tokens
  float* qrow;          // each column's query row, as float (ALiBi)
  const float** krow;   // float32 K and V rows read in place (see fwd_grid_tile)
  const float** vrow;
  // keep[d][c * kTile + r]: -1 when box coordinate c of dim d lies in row r's range, else 0.
  int32_t* keep[3];
  int64_t total;
};

inline GridBufs grid_bufs(const Problem& p, float* base) {
  GridBufs b;
  b.f = fwd_bufs(p, base);
  Carve c{base};
  c.n = b.f.total;
  constexpr int K = kGridBlock;
  b.f.st = c.take(int64_t(K) * kTile);
  b.f.kp = c.take(int64_t(K) * p.Dp);
  b.f.vp = c.take(int64_t(K) * p.Dvp);
  b.f.glo = reinterpret_cast<int32_t*>(c.take(K));
  b.f.ghi = reinterpret_cast<int32_t*>(c.take(K));
  for (int d = 0; d < 3; ++d) b.kc[d] = reinterpret_cast<int32_t*>(c.take(K));
  b.kpos = reinterpret_cast<int64_t*>(c.take(2 * K));
  b.qrow = c.take(kTile);
  b.krow = reinterpret_cast<const float**>(c.take(2 * K));
  b.vrow = reinterpret_cast<const float**>(c.take(2 * K));
  for (int d = 0; d < 3; ++d) b.keep[d] = reinterpret_cast<int32_t*>(c.take(kGridKeepCells * kTile));
  b.total = c.n;
  return b;
}

inline int64_t fwd_grid_ws_floats(const Problem& p) { return grid_bufs(p, nullptr).total; }

// The packed index of box cell (c0, c1, c2).
SP_INLINE int64_t grid_packed(const GridTile& t, int64_t c0, int64_t c1, int64_t c2) {
  return (c2 * t.e[0] + c0) * t.e[1] + c1;
}

// [first, last] of the cells lo..hi (per dim) in packed order; empty (first > last) when some
// dim is.
SP_INLINE void grid_span(const GridTile& t, const int32_t* lo, const int32_t* hi, int stride,
                         int64_t* first, int64_t* last) {
  if (lo[0] > hi[0] || lo[stride] > hi[stride] || lo[2 * stride] > hi[2 * stride]) {
    *first = 1;
    *last = 0;
    return;
  }
  *first = grid_packed(t, lo[0], lo[stride], lo[2 * stride]);
  *last = grid_packed(t, hi[0], hi[stride], hi[2 * stride]);
}

// [first, last] clipped to the block [j0, j0 + nk), in block coordinates [*b, *e).
SP_INLINE void clip_span(int64_t first, int64_t last, int64_t j0, int nk, int32_t* b, int32_t* e) {
  if (first > last) {
    *b = *e = 0;
    return;
  }
  const int64_t lo = max_<int64_t>(first - j0, 0), hi = min_<int64_t>(last - j0 + 1, nk);
  *b = int32_t(min_<int64_t>(lo, nk));
  *e = int32_t(max_<int64_t>(*b, hi));
}

// The cells and tokens of the box's keys j0 .. j0 + nk - 1 (walked forward: no division per key).
inline void block_keys(const GridTile& t, int64_t j0, int nk, int32_t* const* kc, int64_t* kpos) {
  const int64_t lines = int64_t(t.e[0]) * t.e[1];
  int64_t c2 = j0 / lines;
  int32_t c0 = int32_t((j0 % lines) / t.e[1]), c1 = int32_t(j0 % t.e[1]);
  for (int k = 0; k < nk; ++k) {
    kc[0][k] = c0;
    kc[1][k] = c1;
    kc[2][k] = int32_t(c2);
    kpos[k] = t.base + c0 * t.step[0] + c1 * t.step[1] + c2 * t.step[2];
    if (++c1 == t.e[1]) {
      c1 = 0;
      if (++c0 == t.e[0]) c0 = 0, ++c2;
    }
  }
}

// ALiBi on gathered rows and keys: s -= slope_h |rel|, rel = rel_step (i - j) + rel_base for
// the column's query row i and the key's token j.
inline void grid_alibi(const Problem& p, int64_t h, const GridBufs& w, const int64_t* kpos, int nk) {
  const vf vslope = splat(-p.alibi2[h]), vstep = splat(float(p.rel_step));
  for (int k = 0; k < nk; ++k) {
    const vf base = splat(float(p.rel_base - p.rel_step * kpos[k]));
    float* s = w.f.st + k * kTile;
    for (int q = 0; q < kTile; q += W) {
      const vf rel = fma(vstep, load(w.qrow + q), base);
      store(s + q, fma(vslope, vabs(rel), load(s + q)));
    }
  }
}

inline void fwd_grid_tile(const Problem& p, int64_t b, int64_t h, const GridTile& t, float* ws) {
  const GridBufs gw = grid_bufs(p, ws);
  const FwdBufs& w = gw.f;
  const int D = int(p.D), Dv = int(p.Dv), Dp = int(p.Dp), Dvp = int(p.Dvp);
  const int64_t g = h / p.group;
  const int es = p.dtype == kF32 ? 4 : 2;
  // As the block walk: the K chunking (p.kc) matters for D > 128 only, where rows are copied.
  const bool k_direct = p.dtype == kF32 && p.k.s[3] == 1 && D <= p.kc;
  const bool v_direct = p.dtype == kF32 && p.v.s[3] == 1 && Dv == Dvp;

  // Q^T of the tile's rows, pre-scaled; padding columns 0. Float32 is read straight from the
  // rows (as pack_rows_t: a vector store reread as scalars stalls on store forwarding), 16 whole
  // rows at a time transposed in registers where it can be.
  for (int r = 0; r < kTile; ++r) gw.qrow[r] = t.row[r] < 0 ? 0.f : float(t.row[r]);
  for (int r0 = 0; r0 < kTile; r0 += 16) {
#if SPATTN_VEC_BYTES == 64
    bool whole = p.dtype == kF32 && p.q.s[3] == 1 && D % 16 == 0;
    const float* rows[16];
    for (int i = 0; i < 16 && whole; ++i) {
      whole = t.row[r0 + i] >= 0;
      if (whole) rows[i] = reinterpret_cast<const float*>(at(p.q, 4, b, t.row[r0 + i], h));
    }
    if (whole) {
      transpose16_rows(rows, D, p.scale2, w.qt + r0);
      continue;
    }
#endif
    for (int r = r0; r < r0 + 16; ++r) {
      if (t.row[r] < 0) {
        for (int d = 0; d < D; ++d) w.qt[d * kTile + r] = 0.f;
      } else if (p.dtype == kF32) {
        const float* s = reinterpret_cast<const float*>(at(p.q, 4, b, t.row[r], h));
        for (int d = 0; d < D; ++d) w.qt[d * kTile + r] = s[d * p.q.s[3]] * p.scale2;
      } else {
        load_row(at(p.q, es, b, t.row[r], h), p.dtype, p.q.s[3], D, p.scale2, w.tmp);
        for (int d = 0; d < D; ++d) w.qt[d * kTile + r] = w.tmp[d];
      }
    }
  }
  for (int i = 0; i < kTile * Dvp; ++i) w.o[i] = 0.f;
  for (int q = 0; q < kTile; ++q) {
    w.m[q] = -kInf;
    w.l[q] = 0.f;
  }
  // Packed-order spans of each group's union box and of each row's box.
  int64_t gfirst[kTileGroups], glast[kTileGroups], rfirst[kTile], rlast[kTile];
  for (int q = 0; q < kTileGroups; ++q)
    grid_span(t, &t.glo[0][q], &t.ghi[0][q], kTileGroups, &gfirst[q], &glast[q]);
  for (int r = 0; r < kTile; ++r) grid_span(t, &t.lo[0][r], &t.hi[0][r], kTile, &rfirst[r], &rlast[r]);

  // The masks' keep tables (a key is kept by row r when each of its coordinates is), when the
  // box is small enough; one vector AND per dim then replaces two compares per dim.
  const bool tables = t.e[0] <= kGridKeepCells && t.e[1] <= kGridKeepCells && t.e[2] <= kGridKeepCells;
  if (tables) {
    for (int d = 0; d < 3; ++d)
      for (int c = 0; c < t.e[d]; ++c)
        for (int r = 0; r < kTile; r += W) {
          const vi in = (splati(c) >= loadi(t.lo[d] + r)) & (splati(c) <= loadi(t.hi[d] + r));
          __builtin_memcpy(gw.keep[d] + c * kTile + r, &in, sizeof in);
        }
  }
  const bool cap = p.softcap2 != 0.f, alibi = p.alibi2 != nullptr && p.alibi2[h] != 0.f;
  const int64_t lines = int64_t(t.e[0]) * t.e[1], nbox = lines * t.e[2];
  bool first = true;
  const int KB = kGridBlock;
  for (int64_t j0 = 0; j0 < nbox; j0 += KB) {
    const int nk = int(min_<int64_t>(KB, nbox - j0));
    bool needed = false;
    for (int q = 0; q < kTileGroups; ++q) {
      clip_span(gfirst[q], glast[q], j0, nk, &w.gk0[q], &w.gk1[q]);
      needed |= w.gk1[q] > w.gk0[q];
    }
    if (!needed) continue;
    // This block's keys. (Prefetching the next block's K and V rows measured no gain: the
    // products read them in place, and their loads overlap the multiplications.)
    int32_t* const* kc = gw.kc;
    const int64_t* kpos = gw.kpos;
    block_keys(t, j0, nk, gw.kc, gw.kpos);
    // Per key, the groups whose union box holds it, as a range [glo, ghi) (the gemm takes one),
    // W keys at a time (entries past nk are not read).
    for (int k = 0; k < nk; k += W) {
      const vi k0 = loadi(kc[0] + k), k1 = loadi(kc[1] + k), k2 = loadi(kc[2] + k);
      vi g0 = splati(0), g1 = splati(0);
      for (int q = 0; q < kTileGroups; ++q) {
        const vi in = (k0 >= splati(t.glo[0][q])) & (k0 <= splati(t.ghi[0][q])) &
                      (k1 >= splati(t.glo[1][q])) & (k1 <= splati(t.ghi[1][q])) &
                      (k2 >= splati(t.glo[2][q])) & (k2 <= splati(t.ghi[2][q]));
        g0 = (in & (g1 == 0)) ? splati(q) : g0;
        g1 = in ? splati(q + 1) : g1;
      }
      __builtin_memcpy(w.glo + k, &g0, sizeof g0);
      __builtin_memcpy(w.ghi + k, &g1, sizeof g1);
    }
    for (int r = 0; r < kTile; ++r) clip_span(rfirst[r], rlast[r], j0, nk, &w.klo[r], &w.khi[r]);

    // S^T = K Q^T over the gathered rows: float32 rows read in place (the loads overlap the
    // products, where a copy would wait on them), others converted into w.kp.
    if (k_direct) {
      for (int k = 0; k < nk; ++k) gw.krow[k] = reinterpret_cast<const float*>(at(p.k, 4, b, kpos[k], g));
      gemm_cols_ap(nk, D, gw.krow, w.qt, kTile, w.st, kTile, w.glo, w.ghi);
    } else {
      for (int k = 0; k < nk; ++k) {
        float* d = w.kp + int64_t(k) * Dp;
        load_row(at(p.k, es, b, kpos[k], g), p.dtype, p.k.s[3], D, 1.f, d);
        for (int c = D; c < Dp; ++c) d[c] = 0.f;
      }
      gemm_cols_chunked(nk, D, int(p.kc), w.kp, Dp, w.qt, kTile, w.st, kTile, w.glo, w.ghi);
    }
    if (cap) modify_block<true, false>(p, h, 0, kTile, 0, nk, w.st, 1.f, nullptr);
    if (alibi) grid_alibi(p, h, gw, kpos, nk);
    // Mask each group's span: a key outside a row's box in some dim scores -inf.
    if (tables) {
      for (int q = 0; q < kTileGroups; ++q)
        for (int k = w.gk0[q]; k < w.gk1[q]; ++k) {
          const int32_t* t0 = gw.keep[0] + kc[0][k] * kTile;
          const int32_t* t1 = gw.keep[1] + kc[1][k] * kTile;
          const int32_t* t2 = gw.keep[2] + kc[2][k] * kTile;
          for (int c = q * 16; c < q * 16 + 16; c += W) {
            const vi in = loadi(t0 + c) & loadi(t1 + c) & loadi(t2 + c);
            float* s = w.st + k * kTile + c;
            store(s, in ? load(s) : splat(-kInf));
          }
        }
    } else {
      for (int q = 0; q < kTileGroups; ++q) {
        for (int c = q * 16; c < q * 16 + 16; c += W) {
          const vi lo0 = loadi(t.lo[0] + c), hi0 = loadi(t.hi[0] + c);
          const vi lo1 = loadi(t.lo[1] + c), hi1 = loadi(t.hi[1] + c);
          const vi lo2 = loadi(t.lo[2] + c), hi2 = loadi(t.hi[2] + c);
          for (int k = w.gk0[q]; k < w.gk1[q]; ++k) {
            const vi k0 = splati(kc[0][k]), k1 = splati(kc[1][k]), k2 = splati(kc[2][k]);
            const vi bad = (k0 < lo0) | (k0 > hi0) | (k1 < lo1) | (k1 > hi1) | (k2 < lo2) | (k2 > hi2);
            float* s = w.st + k * kTile + c;
            store(s, bad ? splat(-kInf) : load(s));
          }
        }
      }
    }
    // P outside a group's span is left unwritten: a P V micro tile's rows (MR of them, MR
    // dividing 16) lie in one group, and each row's span lies in its group's.
    static_assert(16 % MR == 0, "a P V micro tile must not straddle two groups");
    online_softmax(w, kTile, nk, kTile, Dvp, w.gk0, w.gk1, first, false);
    first = false;
    // O += P V over the gathered rows (in place as K).
    if (v_direct) {
      for (int k = 0; k < nk; ++k) gw.vrow[k] = reinterpret_cast<const float*>(at(p.v, 4, b, kpos[k], g));
      gemm_krange_bp(kTile, Dvp, w.st, 1, kTile, gw.vrow, w.o, Dvp, w.klo, w.khi);
    } else {
      for (int k = 0; k < nk; ++k) {
        float* d = w.vp + int64_t(k) * Dvp;
        load_row(at(p.v, es, b, kpos[k], g), p.dtype, p.v.s[3], Dv, 1.f, d);
        for (int c = Dv; c < Dvp; ++c) d[c] = 0.f;
      }
      gemm_krange<true>(kTile, Dvp, w.st, 1, kTile, w.vp, Dvp, w.o, Dvp, w.klo, w.khi);
    }
  }

  for (int r = 0; r < kTile; ++r) {
    if (t.row[r] < 0) continue;
    float mul, lse;
    finish_row(p, h, w.m[r], w.l[r], &mul, &lse);
    store_row(at_mut(p.o, es, b, t.row[r], h), p.dtype, p.o.s[3], Dv, w.o + r * Dvp, mul);
    if (p.lse) p.lse[b * p.lse_s[0] + h * p.lse_s[1] + t.row[r] * p.lse_s[2]] = lse;
  }
}

}  // namespace spattn::cpu::SPATTN_ISA
