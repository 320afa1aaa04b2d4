// The index, mask and scheduling logic of the CUDA backward kernels (cuda/src/bwd/
// backward_kernel.cuh, cuda/src/kernels/backward.cu), written once as SPATTN_HD functions so
// that the host tests (tests/cpp/test_cuda_backward_logic.cpp) run exactly what the kernels
// run, in a scalar emulation of their loop structure. Built on the forward's logic
// (forward_logic.hpp): the same element rule (element_kept / row_interval / keeps()), the same
// range walk, the same staging of the predicate program.
//
// The backward is key-block major: one CTA per (batch, kv head g, key tile c) accumulates dK and
// dV of its kBwdBlockN keys in registers over every query tile that sees them, for each query
// head of the GQA group of g in turn, and adds its dQ contributions to an fp32 buffer with
// atomics. It walks the TRANSPOSED layout: per (layout head, key tile) the query tiles that
// visit it, full and partial kept apart, as sorted ranges (transpose_layout, host, O(ranges);
// the same columns are made on the device from a device-compiled layout by
// device_transpose_logic.hpp's kernels where the pattern allows it).
//
// What lives here:
//   BwdParams               the kernels' one parameter: the forward's problem (FwdParams: q, k,
//                           v, out, lse, sizes, strides, scale, predicate) plus dout, dq, dk,
//                           dv, the fp32 workspaces and the transposed layout (BwdCols)
//   bwd_cta_work()          CTA index -> (batch, kv head, key tile), through a schedule
//   ColumnWalk              the visits of a CTA: for each query head of the group, the column's
//                           full and partial query tiles in ascending order (RangeWalk)
//   bwd_lse2(), bwd_prob(), bwd_ds()   the per-element math, -inf safe (a row that sees no key
//                           has lse = -inf and gets P = 0, so zero gradients, never NaN)
//   *_offset()              element offsets of dout, dq, dk, dv and the workspaces
//   transpose_layout(), make_bwd_schedule(), stage_backward()   host only.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "spattn/cuda/forward_logic.hpp"
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#endif

namespace spattn::cuda {

// Tile of the backward kernel: each step multiplies kBwdBlockM query rows against the CTA's
// kBwdBlockN keys. The block layout handed to the backward must be compiled for exactly
// (kBwdBlockM, kBwdBlockN) (backward_tile()); it differs from the forward's 128 x 64.
constexpr int kBwdBlockM = 64;
constexpr int kBwdBlockN = 64;

// The transposed layout as the kernel reads it: row r = lh * nkb + c (layout head lh, key tile
// c) lists the query tiles that visit key tile c, as sorted ranges of query-tile indices, full
// and partial apart (the same CSR form as BlockLayout, roles of query and key swapped).
struct BwdCols {
  int64_t lheads = 1, nqb = 0, nkb = 0;
  const int64_t* full_ptr = nullptr;
  const int64_t* part_ptr = nullptr;
  const int32_t* full_lo = nullptr;
  const int32_t* full_hi = nullptr;
  const int32_t* part_lo = nullptr;
  const int32_t* part_hi = nullptr;
};

struct BwdParams {
  // The forward problem: q, k, v (read by the main kernel), out and lse (read by the
  // preprocess), their strides, the sizes, group, scale, scale_log2 and the predicate. Its
  // layout and schedule fields are not used by the backward.
  FwdParams f;
  int64_t o_sd = 1;  // out's last-dim stride (the preprocess reads out with any strides)
  const void* dout = nullptr;  // [B, Nq, Hq, Dv]; last stride 1 (repacked otherwise)
  int64_t do_sb = 0, do_sn = 0, do_sh = 0;
  void* dq = nullptr;  // [B, Nq, Hq, D], any strides (written by the convert kernel)
  int64_t dq_sb = 0, dq_sn = 0, dq_sh = 0, dq_sd = 1;
  void* dk = nullptr;  // [B, Nk, Hkv, D]; 16-byte stores (repacked otherwise)
  int64_t dk_sb = 0, dk_sn = 0, dk_sh = 0;
  void* dv = nullptr;  // [B, Nk, Hkv, Dv]; likewise
  int64_t dv_sb = 0, dv_sn = 0, dv_sh = 0;
  // Workspaces, compact, rows padded to whole query tiles (nq_pad = nqb * kBwdBlockM), so the
  // main kernel reads and adds whole tiles with no bounds checks:
  float* dq_accum = nullptr;  // [B, Hq, nq_pad, D] fp32, zeroed before the main kernel
  float* lse2 = nullptr;      // [B, Hq, nq_pad]: lse * log2(e); +inf for empty rows and padding
  float* delta = nullptr;     // [B, Hq, nq_pad]: rowsum(dout * out) in fp32; 0 for padding
  int64_t nq_pad = 0;
  BwdCols cols;  // the transposed layout
  // Work order: entry s = g * nkb + c (kv head g, key tile c); sched_len = hkv * nkb.
  const int32_t* sched = nullptr;
  int64_t sched_len = 0;
};

// ---------------------------------------------------------------------------------------------
// Scheduling: which (batch, kv head, key tile) a CTA computes.

struct BwdWork {
  int64_t b, g, c;  // batch, kv head, key tile
};

// 1-d grid of sched_len * B CTAs, batch fastest (longest columns of every batch element first).
SPATTN_HD int64_t bwd_grid_size(const BwdParams& p) { return p.sched_len * p.f.b; }

SPATTN_HD BwdWork bwd_cta_work(const BwdParams& p, int64_t cta) {
  const int64_t s = cta / p.f.b;
  const int64_t w = p.sched[s];
  BwdWork r;
  r.b = cta - s * p.f.b;
  r.g = w / p.cols.nkb;
  r.c = w - r.g * p.cols.nkb;
  return r;
}

// Rows of query tile a / keys of key tile c that exist, for the backward's tile.
SPATTN_HD int bwd_tile_rows(const BwdParams& p, int64_t a) {
  const int64_t r = p.f.nq - a * kBwdBlockM;
  return int(r < kBwdBlockM ? (r > 0 ? r : 0) : kBwdBlockM);
}
SPATTN_HD int bwd_block_keys(const BwdParams& p, int64_t c) {
  const int64_t r = p.f.nk - c * kBwdBlockN;
  return int(r < kBwdBlockN ? (r > 0 ? r : 0) : kBwdBlockN);
}

// The transposed-layout row of query head h, key tile c.
SPATTN_HD int64_t col_row(const BwdParams& p, int64_t h, int64_t c) {
  return (p.cols.lheads == 1 ? 0 : h) * p.cols.nkb + c;
}

// One step of a CTA: query head h, query tile a, full or partial.
struct BwdVisit {
  int64_t h, a;
  bool partial;
};

// The visits of CTA (g, c): for each query head h of kv head g's group (GQA: dK and dV of g sum
// over them), the query tiles of column (h, c) in ascending order, full and partial merged.
struct ColumnWalk {
  int64_t h, h_end, c;
  RangeWalk<BwdCols> w;
  SPATTN_HD ColumnWalk(const BwdParams& p, int64_t g, int64_t c_)
      : h(g * p.f.group), h_end(g * p.f.group + p.f.group), c(c_), w(p.cols, col_row(p, h, c_)) {}
  SPATTN_HD bool next(const BwdParams& p, BwdVisit* v) {
    for (;;) {
      int64_t a;
      bool partial;
      if (w.next(p.cols, &a, &partial)) {
        v->h = h;
        v->a = a;
        v->partial = partial;
        return true;
      }
      if (++h >= h_end) return false;
      w = RangeWalk<BwdCols>(p.cols, col_row(p, h, c));
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Offsets (in elements).

SPATTN_HD int64_t do_offset(const BwdParams& p, int64_t b, int64_t i, int64_t h) {
  return b * p.do_sb + i * p.do_sn + h * p.do_sh;
}
SPATTN_HD int64_t dq_offset(const BwdParams& p, int64_t b, int64_t i, int64_t h) {
  return b * p.dq_sb + i * p.dq_sn + h * p.dq_sh;
}
SPATTN_HD int64_t dk_offset(const BwdParams& p, int64_t b, int64_t j, int64_t g) {
  return b * p.dk_sb + j * p.dk_sn + g * p.dk_sh;
}
SPATTN_HD int64_t dv_offset(const BwdParams& p, int64_t b, int64_t j, int64_t g) {
  return b * p.dv_sb + j * p.dv_sn + g * p.dv_sh;
}
// Row i of (b, h) in the [B, Hq, nq_pad] workspaces (lse2, delta).
SPATTN_HD int64_t stat_offset(const BwdParams& p, int64_t b, int64_t h, int64_t i) {
  return (b * p.f.hq + h) * p.nq_pad + i;
}
// Row i of (b, h) in dq_accum [B, Hq, nq_pad, D].
SPATTN_HD int64_t dqacc_offset(const BwdParams& p, int64_t b, int64_t h, int64_t i) {
  return stat_offset(p, b, h, i) * p.f.d;
}

// ---------------------------------------------------------------------------------------------
// The math per element (base 2, as the forward).

// The preprocess's lse in base 2: P = exp2(s * scale_log2 - lse2). A row that saw no key
// (lse = -inf) and padding rows get +inf, so every P of theirs is exp2(-inf) = 0 (masked or
// not): zero gradients, never inf - inf = NaN.
SPATTN_HD float bwd_lse2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
}

// Probability of a score (raw q.k) given the row's lse2; 0 where the mask drops the pair.
SPATTN_HD float bwd_prob(float raw, float scale_log2, float lse2, bool kept) {
  return kept ? fast_exp2(raw * scale_log2 - lse2) : 0.f;
}

// dS = P * (dP - delta), delta = rowsum(dout * out). The 1/scale factors are applied once at
// the end (dq = scale * sum dS k, dk = scale * sum dS q).
SPATTN_HD float bwd_ds(float p, float dp, float delta) { return p * (dp - delta); }

// ---------------------------------------------------------------------------------------------
// Host side: transposition, schedule, staging.

#if !defined(__CUDA_ARCH__)

// The transposed layout of L: a BlockLayout whose rows are L's key tiles (row lh * L.nkb + c)
// and whose "key blocks" are L's query tiles; so T.nq = L.nk, T.bq = L.bk, T.nqb = L.nkb and
// the other way round. Pair (row a, column c) of head lh is full / partial in T exactly when it
// is in L. Ranges stay maximal (a run of query tiles of one kind is one range).
//
// Cost O(ranges of L + ranges of T): rows are swept in order and a column's open range is only
// touched where the row's covering changes (at the breakpoints of two consecutive rows' range
// lists), so a 1M-token causal layout transposes in about the time it took to compile.
inline BlockLayout transpose_layout(const BlockLayout& L) {
  BlockLayout T;
  T.heads = L.heads;
  T.nq = L.nk;
  T.nk = L.nq;
  T.bq = L.bk;
  T.bk = L.bq;
  T.nqb = L.nkb;
  T.nkb = L.nqb;
  const int64_t nqb = L.nqb, nkb = L.nkb;
  struct Seg {
    int32_t lo, hi;
    int8_t kind;  // 0 full, 1 partial
  };
  struct Out {
    int32_t col, lo, hi;
  };
  std::vector<Out> outs[2];  // per kind, in closing order: ascending row ends per column
  std::vector<int32_t> open_at(size_t(nkb), -1);
  std::vector<Seg> prev, cur;
  for (int64_t lh = 0; lh < L.heads; ++lh) {
    prev.clear();
    for (int64_t a = 0; a <= nqb; ++a) {
      cur.clear();
      if (a < nqb) {  // row a's segments, merged by lo (full and partial never overlap)
        const int64_t r = lh * nqb + a;
        int64_t f = L.full_ptr[size_t(r)], fe = L.full_ptr[size_t(r + 1)];
        int64_t q = L.part_ptr[size_t(r)], qe = L.part_ptr[size_t(r + 1)];
        while (f < fe || q < qe) {
          if (q >= qe || (f < fe && L.full_lo[size_t(f)] < L.part_lo[size_t(q)])) {
            cur.push_back({L.full_lo[size_t(f)], L.full_hi[size_t(f)], 0});
            ++f;
          } else {
            cur.push_back({L.part_lo[size_t(q)], L.part_hi[size_t(q)], 1});
            ++q;
          }
        }
      }
      // Sweep the breakpoints of prev and cur: on each elementary interval [x, y) where the
      // kind differs (-1: not covered), close prev's open ranges and open cur's.
      size_t ip = 0, ic = 0;
      int32_t x = 0;
      while (ip < prev.size() || ic < cur.size()) {
        // Skip segments that end at or before x.
        while (ip < prev.size() && prev[ip].hi <= x) ++ip;
        while (ic < cur.size() && cur[ic].hi <= x) ++ic;
        if (ip >= prev.size() && ic >= cur.size()) break;
        const int32_t pl = ip < prev.size() ? prev[ip].lo : INT32_MAX;
        const int32_t cl = ic < cur.size() ? cur[ic].lo : INT32_MAX;
        if (x < pl && x < cl) {  // covered by neither: jump to the next start
          x = std::min(pl, cl);
          continue;
        }
        const int pk = (ip < prev.size() && pl <= x) ? prev[ip].kind : -1;
        const int ck = (ic < cur.size() && cl <= x) ? cur[ic].kind : -1;
        int32_t y = INT32_MAX;  // end of the elementary interval starting at x
        if (pk >= 0) y = std::min(y, prev[ip].hi);
        else if (ip < prev.size()) y = std::min(y, pl);
        if (ck >= 0) y = std::min(y, cur[ic].hi);
        else if (ic < cur.size()) y = std::min(y, cl);
        if (pk != ck)
          for (int32_t c = x; c < y; ++c) {
            if (pk >= 0) outs[pk].push_back({c, open_at[size_t(c)], int32_t(a)});
            if (ck >= 0) open_at[size_t(c)] = int32_t(a);
          }
        x = y;
      }
      std::swap(prev, cur);
    }
    // This head's ranges into T's CSR rows lh * nkb + c (counting sort by column, stable:
    // a column's ranges were closed in ascending row order).
    for (int kind = 0; kind < 2; ++kind) {
      std::vector<int64_t>& ptr = kind == 0 ? T.full_ptr : T.part_ptr;
      std::vector<int32_t>& lo = kind == 0 ? T.full_lo : T.part_lo;
      std::vector<int32_t>& hi = kind == 0 ? T.full_hi : T.part_hi;
      if (ptr.empty()) ptr.push_back(0);
      std::vector<int64_t> count(size_t(nkb) + 1, 0);
      for (const Out& o : outs[kind]) ++count[size_t(o.col) + 1];
      for (int64_t c = 0; c < nkb; ++c) count[size_t(c + 1)] += count[size_t(c)];
      const int64_t base = int64_t(lo.size());
      for (int64_t c = 0; c < nkb; ++c) ptr.push_back(base + count[size_t(c + 1)]);
      lo.resize(size_t(base) + outs[kind].size());
      hi.resize(size_t(base) + outs[kind].size());
      for (const Out& o : outs[kind]) {
        const size_t at = size_t(base + count[size_t(o.col)]++);
        lo[at] = o.lo;
        hi[at] = o.hi;
      }
      outs[kind].clear();
    }
  }
  if (T.full_ptr.empty()) T.full_ptr.push_back(0);
  if (T.part_ptr.empty()) T.part_ptr.push_back(0);
  return T;
}

// Work per (kv head g, key tile c), longest first (cost 2 per full visit, 3 per partial, summed
// over the query heads of g's group); ties by ascending g * nkb + c. Entry = g * nkb + c.
inline std::vector<int32_t> make_bwd_schedule(const BlockLayout& T, int64_t hq, int64_t hkv) {
  const int64_t nkb = T.nqb;  // T's rows are key tiles
  const int64_t group = hq / hkv;
  std::vector<int64_t> col_cost(size_t(T.heads * nkb), 0);
  for (int64_t r = 0; r < T.heads * nkb; ++r) {
    int64_t c = 0;
    for (int64_t t = T.full_ptr[size_t(r)]; t < T.full_ptr[size_t(r + 1)]; ++t)
      c += 2 * (int64_t(T.full_hi[size_t(t)]) - T.full_lo[size_t(t)]);
    for (int64_t t = T.part_ptr[size_t(r)]; t < T.part_ptr[size_t(r + 1)]; ++t)
      c += 3 * (int64_t(T.part_hi[size_t(t)]) - T.part_lo[size_t(t)]);
    col_cost[size_t(r)] = c;
  }
  const int64_t n = hkv * nkb;
  std::vector<int64_t> cost(size_t(n), 0);
  for (int64_t g = 0; g < hkv; ++g)
    for (int64_t h = g * group; h < (g + 1) * group; ++h)
      for (int64_t c = 0; c < nkb; ++c)
        cost[size_t(g * nkb + c)] += col_cost[size_t((T.heads == 1 ? 0 : h) * nkb + c)];
  std::vector<int32_t> s(static_cast<size_t>(n));
  std::iota(s.begin(), s.end(), 0);
  std::stable_sort(s.begin(), s.end(),
                   [&](int32_t x, int32_t y) { return cost[size_t(x)] > cost[size_t(y)]; });
  return s;
}

// Everything the backward's main kernel reads besides its tensors, in one blob: the transposed
// layout CSR, the schedule, the predicate program with its data.
struct StagedBackward {
  std::vector<unsigned char> blob;
  StagedRanges cols;
  size_t sched = 0;
  StagedPredicate pred;
  int64_t lheads = 1, nqb = 0, nkb = 0, sched_len = 0;
  int64_t bq = kBwdBlockM, bk = kBwdBlockN;  // the tile the layout was compiled for
  // The row layout and the forward's schedule, staged too for the sm90a backward's query-major
  // dQ pass (hopper_bwd_logic.hpp); the sm80-style kernel reads the columns only.
  bool rows_staged = false;
  StagedRanges rows;
  size_t row_sched = 0;
  int64_t row_sched_len = 0;

  // Points p's transposed layout, schedule and predicate (and the row layout into p->f, when
  // staged) into the blob copied to `base` (relocate_nodes(base) first), and sets nq_pad.
  void bind(void* base, BwdParams* p) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    p->cols.lheads = lheads;
    p->cols.nqb = nqb;
    p->cols.nkb = nkb;
    cols.bind(b, &p->cols);
    p->sched = reinterpret_cast<const int32_t*>(b + sched);
    p->sched_len = sched_len;
    p->nq_pad = nqb * bq;
    pred.bind(b, &p->f.pred);
    if (rows_staged) {
      p->f.lheads = lheads;
      p->f.nqb = nqb;
      p->f.nkb = nkb;
      rows.bind(b, &p->f);
      p->f.sched = reinterpret_cast<const int32_t*>(b + row_sched);
      p->f.sched_len = row_sched_len;
    }
  }
  void relocate_nodes(const void* base) { pred.relocate(blob, base); }
};

// Stages a row-major layout compiled for bq x bk (kBwdBlockM x kBwdBlockN for the sm80-style
// kernel; 1 or hq heads) and the predicate for a problem with hq query and hkv kv heads; with
// `with_rows` also the row layout and its forward schedule (the sm90a dQ pass). Throws
// ValueError when the layout does not fit.
inline StagedBackward stage_backward(const BlockLayout& L, const Predicate& pred, int64_t nq,
                                     int64_t nk, int64_t hq, int64_t hkv,
                                     int64_t bq = kBwdBlockM, int64_t bk = kBwdBlockN,
                                     bool with_rows = false) {
  check_layout_fits(L, pred, bq, bk, nq, nk, hq, "cuda attention backward");
  if (hkv < 1 || hq % hkv != 0)
    throw ValueError("cuda attention backward: Hq=" + std::to_string(hq) +
                     " must be a multiple of Hkv=" + std::to_string(hkv));
  const BlockLayout T = transpose_layout(L);
  if (T.full_lo.size() >= size_t(INT32_MAX) || T.part_lo.size() >= size_t(INT32_MAX))
    throw ValueError("cuda attention backward: too many layout ranges for 32-bit indices");
  StagedBackward s;
  s.lheads = L.heads;
  s.nqb = L.nqb;
  s.nkb = L.nkb;
  BlobWriter w;
  s.cols = stage_ranges(w, T);
  const std::vector<int32_t> sched = make_bwd_schedule(T, hq, hkv);
  s.sched_len = int64_t(sched.size());
  s.sched = w.put(sched.data(), sched.size() * sizeof(int32_t));
  s.pred = stage_predicate(w, pred);
  s.bq = bq;
  s.bk = bk;
  if (with_rows) {
    s.rows_staged = true;
    s.rows = stage_ranges(w, L);
    const std::vector<int32_t> row_sched = make_schedule(L, hq);
    s.row_sched_len = int64_t(row_sched.size());
    s.row_sched = w.put(row_sched.data(), row_sched.size() * sizeof(int32_t));
  }
  w.finish();
  s.blob = std::move(w.bytes);
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
