// TopKBlocks' selection on the GPU (cuda/src/kernels/topk_select.cu): the index logic, written
// once as SPATTN_HD functions so that the host test (tests/cpp/test_cuda_topk_logic.cpp) runs
// exactly what the kernels run and compares it with the CPU's select::choose.
//
// The CPU's rule (cpp/src/select/topk.cpp, docs/patterns.md): pool q and k per block (float32
// means, rows summed in order), score pooled q . pooled k with 16 partial sums, keep per (head,
// query block) the current blocks (causal) and the top k candidates, higher score first, ties to
// the lower block index, NaN last. The kernels do the same float32 operations in the same order
// (no fused multiply-add, correctly rounded division), so on a CPU build that does not contract
// a * b + c either (x86-64: no FMA in the baseline ISA, and GCC does not contract in ISO C++) the
// scores are the same bits and the choice is the same, ties included.
//
// What lives here:
//   TopkGeom, topk_geom()        sizes, blocks, candidates, the blocks any query block scores
//   topk_add/mul/pool_scale()    the float operations, unfused and correctly rounded
//   topk_dot_lane/finish()       the CPU's 16-partial-sum dot product, one lane per partial sum
//   topk_rank_key()              score -> unsigned key, ascending = better (NaN last, -0 == +0)
//   topk_digit(), topk_find_bucket()   the radix select of the k smallest keys
//   topk_fixed_bit()             the mask bits set before scoring (current blocks, all candidates)
//   topk_sel_state(), TopkRanges, topk_layout_row()   chosen mask -> the kernels' layout rows:
//                                each tile of a forward row or backward column is empty,
//                                partial or full for the chosen blocks & causal, united with the
//                                `always` pattern's own layout
//   TopkSelectParams, TopkLayoutParams   the kernels' parameters
//   host only: topk_predicate() (the concrete pattern's element rule with the chosen mask as a
//   device pointer), topk_capacity(), TopkStaging / stage_topk() (what is uploaded once and the
//   per-call workspace layout).
#pragma once

#include <cstdint>
#include <cstring>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"
#include "spattn/tensor.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#endif

namespace spattn::cuda {

// ---------------------------------------------------------------------------------------------
// Geometry of one batch element's selection (select::choose's variables).

struct TopkGeom {
  int64_t nq = 0, nk = 0, hq = 1, hkv = 1, d = 0;
  int64_t k = 0, bq = 1, bk = 1;
  bool causal = true;
  int64_t nqb = 0, nkb = 0;  // pattern blocks (bq x bk), not kernel tiles
  int64_t off = 0;           // nk - nq: query i sits at key position i + off
  int64_t kmax = 0;          // key blocks any query block scores (0: none is scored)
};

SPATTN_HD int64_t topk_blocks_of(int64_t n, int64_t b) { return n <= 0 ? 0 : 1 + (n - 1) / b; }

// Query block a holds key positions [plo(a), phi(a)].
SPATTN_HD int64_t topk_plo(const TopkGeom& g, int64_t a) { return a * g.bq + g.off; }
SPATTN_HD int64_t topk_phi(const TopkGeom& g, int64_t a) {
  const int64_t end = (a + 1) * g.bq;
  return (end < g.nq ? end : g.nq) - 1 + g.off;
}
// Candidates of query block a: the key blocks [0, n) it may choose from (causal: the blocks
// entirely before its first position).
SPATTN_HD int64_t topk_candidates(const TopkGeom& g, int64_t a) {
  if (!g.causal) return g.nkb;
  const int64_t c = ::spattn::detail::floor_div(topk_plo(g, a), g.bk);
  return c < 0 ? 0 : (c > g.nkb ? g.nkb : c);
}
// Only query blocks with more candidates than k compare scores; the others keep them all.
SPATTN_HD bool topk_scored(const TopkGeom& g, int64_t a) {
  return g.k > 0 && topk_candidates(g, a) > g.k;
}
// The current blocks of query block a (causal): [*lo, *hi], empty (lo > hi) when every position
// is negative.
SPATTN_HD void topk_current(const TopkGeom& g, int64_t a, int64_t* lo, int64_t* hi) {
  const int64_t l = ::spattn::detail::floor_div(topk_plo(g, a), g.bk);
  const int64_t h = ::spattn::detail::floor_div(topk_phi(g, a), g.bk);
  *lo = l > 0 ? l : 0;
  *hi = h < g.nkb - 1 ? h : g.nkb - 1;
}

SPATTN_HD TopkGeom topk_geom(int64_t nq, int64_t nk, int64_t hq, int64_t hkv, int64_t d,
                             int64_t k, int64_t bq, int64_t bk, bool causal) {
  TopkGeom g;
  g.nq = nq, g.nk = nk, g.hq = hq, g.hkv = hkv, g.d = d;
  g.k = k, g.bq = bq, g.bk = bk, g.causal = causal;
  g.nqb = topk_blocks_of(nq, bq);
  g.nkb = topk_blocks_of(nk, bk);
  g.off = nk - nq;
  // Candidates never decrease with a, so the last query block scores the most (if any does).
  g.kmax = 0;
  if (nq > 0 && nk > 0 && topk_scored(g, g.nqb - 1)) g.kmax = topk_candidates(g, g.nqb - 1);
  return g;
}

// ---------------------------------------------------------------------------------------------
// Float operations as the CPU does them: separately rounded multiply and add (never fused),
// IEEE division.

SPATTN_HD float topk_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
SPATTN_HD float topk_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
// The factor a block's row sum is multiplied by: 1 / rows, as select::pool computes it.
SPATTN_HD float topk_pool_scale(int64_t rows) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(1.f, float(rows));
#else
  return 1.f / float(rows);
#endif
}
// Rows [*j0, *j1) of block c of bs rows in a sequence of n (empty past the end).
SPATTN_HD void topk_pool_rows(int64_t n, int64_t bs, int64_t c, int64_t* j0, int64_t* j1) {
  *j0 = c * bs;
  *j1 = n < *j0 + bs ? n : *j0 + bs;
}

// The CPU's dot product (select::dot): partial sum t holds elements x = t, t + 16, ... in
// ascending order (its main loop and its tail alike), then r = ((0 + s0) + s1) + ... + s15.
constexpr int kTopkLanes = 16;
SPATTN_HD float topk_dot_lane(const float* a, const float* b, int64_t n, int t) {
  float s = 0.f;
  for (int64_t x = t; x < n; x += kTopkLanes) s = topk_add(s, topk_mul(a[x], b[x]));
  return s;
}
SPATTN_HD float topk_dot_finish(const float* s) {
  float r = 0.f;
  for (int t = 0; t < kTopkLanes; ++t) r = topk_add(r, s[t]);
  return r;
}
SPATTN_HD float topk_dot(const float* a, const float* b, int64_t n) {
  float s[kTopkLanes];
  for (int t = 0; t < kTopkLanes; ++t) s[t] = topk_dot_lane(a, b, n, t);
  return topk_dot_finish(s);
}

// ---------------------------------------------------------------------------------------------
// Ranking: candidate x goes before y when (key(x), x) < (key(y), y). key orders scores from the
// highest down; -0 and +0 are one score (they compare equal on the CPU), every NaN is the last
// key, so ties (NaN ties too) fall to the lower block index, as in select::choose.

SPATTN_HD uint32_t topk_rank_key(float s) {
  if (s != s) return 0xFFFFFFFFu;
  if (s == 0.f) s = 0.f;
  uint32_t u;
  std::memcpy(&u, &s, sizeof(u));
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

// Radix select of the k smallest keys: 4 passes of 8 bits, most significant first. Pass p
// counts the keys that agree with the prefix found so far in their top 8p bits by their next
// digit; topk_find_bucket picks the digit holding the need-th smallest of them.
constexpr int kTopkRadixBins = 256;
constexpr int kTopkRadixPasses = 4;
SPATTN_HD uint32_t topk_digit(uint32_t key, int pass) { return (key >> (24 - 8 * pass)) & 255u; }
SPATTN_HD bool topk_prefix_match(uint32_t key, uint32_t prefix, int pass) {
  return pass == 0 || ((key ^ prefix) >> (32 - 8 * pass)) == 0;
}
// The smallest digit whose cumulative count reaches need (1 <= need <= sum of hist), and the
// count of keys with smaller digits.
SPATTN_HD void topk_find_bucket(const int32_t* hist, int64_t need, uint32_t* digit,
                                int64_t* below) {
  int64_t acc = 0;
  for (int x = 0; x < kTopkRadixBins; ++x) {
    if (acc + hist[x] >= need) {
      *digit = uint32_t(x);
      *below = acc;
      return;
    }
    acc += hist[x];
  }
  *digit = kTopkRadixBins - 1;
  *below = acc;
}

// The bits of query block a's mask row that do not depend on scores: the current blocks
// (causal), and every candidate when there are at most k of them.
SPATTN_HD bool topk_fixed_bit(const TopkGeom& g, int64_t a, int64_t c) {
  if (g.causal) {
    int64_t lo, hi;
    topk_current(g, a, &lo, &hi);
    if (c >= lo && c <= hi) return true;
  }
  const int64_t nc = topk_candidates(g, a);
  return nc <= g.k && c < nc;
}

// ---------------------------------------------------------------------------------------------
// Chosen mask -> layout rows of the attention kernels. A layout row lists, per (head, outer
// tile), the inner tiles to visit as maximal runs of full and of partial tiles: the forward's
// rows (outer = query tile, inner = key tiles) or the backward's columns (outer = key tile,
// inner = query tiles). Tile states: 0 empty, 1 partial, 2 full.

// The chosen part (BlockSparse(mask) & Causal() when causal) on query tile a x key tile c of
// tm x tn: full when every existing pair of the tile is kept, empty when none can be, else
// partial (the kernels then ask the element rule; a tile of mixed bits whose set blocks the
// causal rule hides is called partial: exact results, a little work).
SPATTN_HD int topk_sel_state(const TopkGeom& g, const uint8_t* mask, int64_t h, int64_t a,
                             int64_t c, int64_t tm, int64_t tn) {
  const int64_t i0 = a * tm, j0 = c * tn;
  if (i0 >= g.nq || j0 >= g.nk) return 0;
  const int64_t i1 = ((a + 1) * tm < g.nq ? (a + 1) * tm : g.nq) - 1;
  const int64_t j1 = ((c + 1) * tn < g.nk ? (c + 1) * tn : g.nk) - 1;
  if (g.causal && j0 > i1 + g.off) return 0;
  const int64_t u0 = i0 / g.bq, u1 = i1 / g.bq, w0 = j0 / g.bk, w1 = j1 / g.bk;
  int64_t set = 0;
  for (int64_t u = u0; u <= u1; ++u) {
    const uint8_t* row = mask + (h * g.nqb + u) * g.nkb;
    for (int64_t w = w0; w <= w1; ++w) set += row[w] != 0;
  }
  if (set == 0) return 0;
  if (set < (u1 - u0 + 1) * (w1 - w0 + 1)) return 1;
  return (g.causal && j1 > i0 + g.off) ? 1 : 2;
}

SPATTN_HD int topk_union_state(int s, int t) { return (s == 2 || t == 2) ? 2 : ((s | t) ? 1 : 0); }

// The `always` pattern's layout in the same orientation and tiles (rows of heads * n_outer;
// heads 1 when shared; full_ptr null: no always pattern). Row r's ranges are
// [full_ptr[r], full_ptr[r + 1]) (a CSR), or [full_ptr[r], full_end[r]) when full_end is set
// (rows of fixed capacity, made on the device: decode_topk_dev_logic.hpp); the same for part.
struct TopkRanges {
  int64_t heads = 1, n_outer = 0;
  const int64_t* full_ptr = nullptr;
  const int64_t* part_ptr = nullptr;
  const int32_t* full_lo = nullptr;
  const int32_t* full_hi = nullptr;
  const int32_t* part_lo = nullptr;
  const int32_t* part_hi = nullptr;
  const int64_t* full_end = nullptr;
  const int64_t* part_end = nullptr;
};

// The state of inner tiles t of one row of a TopkRanges, asked in ascending t.
struct TopkRangeCursor {
  int64_t f = 0, fe = 0, p = 0, pe = 0;
  SPATTN_HD TopkRangeCursor(const TopkRanges& r, int64_t h, int64_t o) {
    if (r.full_ptr == nullptr) return;
    const int64_t row = (r.heads == 1 ? 0 : h) * r.n_outer + o;
    f = r.full_ptr[row], fe = r.full_end ? r.full_end[row] : r.full_ptr[row + 1];
    p = r.part_ptr[row], pe = r.part_end ? r.part_end[row] : r.part_ptr[row + 1];
  }
  SPATTN_HD int state(const TopkRanges& r, int64_t t) {
    while (f < fe && r.full_hi[f] <= t) ++f;
    if (f < fe && r.full_lo[f] <= t) return 2;
    while (p < pe && r.part_hi[p] <= t) ++p;
    if (p < pe && r.part_lo[p] <= t) return 1;
    return 0;
  }
};

// Calls emit(kind, lo, hi) (kind 0 full, 1 partial; inner tiles [lo, hi)) for every maximal run
// of one layout row, in ascending order: head h, outer tile o; by_cols: o is a key tile and the
// run's tiles are query tiles.
template <class Emit>
SPATTN_HD void topk_layout_row(const TopkGeom& g, const uint8_t* mask, const TopkRanges& always,
                               int64_t tm, int64_t tn, bool by_cols, int64_t h, int64_t o,
                               Emit&& emit) {
  const int64_t n_inner = by_cols ? topk_blocks_of(g.nq, tm) : topk_blocks_of(g.nk, tn);
  TopkRangeCursor cur(always, h, o);
  int run = 0;
  int64_t run_lo = 0;
  for (int64_t t = 0; t < n_inner; ++t) {
    const int s = topk_union_state(
        topk_sel_state(g, mask, h, by_cols ? t : o, by_cols ? o : t, tm, tn), cur.state(always, t));
    if (s != run) {
      if (run) emit(run == 2 ? 0 : 1, run_lo, t);
      run = s;
      run_lo = t;
    }
  }
  if (run) emit(run == 2 ? 0 : 1, run_lo, n_inner);
}

// ---------------------------------------------------------------------------------------------
// Kernel parameters.

// Pooling, scoring and choosing for B batch elements (q [B, Nq, Hq, D], k [B, Nk, Hkv, D], any
// strides in elements). Workspaces: qm [B, Hq, nqb, D] and km [B, Hkv, kmax, D] float32 means;
// mask [B, Hq, nqb, nkb] uint8, the CPU's BlockMask bits of each batch element.
struct TopkSelectParams {
  DType dtype = DType::BFloat16;
  const void* q = nullptr;
  const void* k = nullptr;
  int64_t q_s[4] = {0, 0, 0, 0};
  int64_t k_s[4] = {0, 0, 0, 0};
  int64_t b = 0;
  TopkGeom g;
  float* qm = nullptr;
  float* km = nullptr;
  uint8_t* mask = nullptr;
};

// One layout (rows or columns) for each of B batch elements, written into batch b's region
// regions + b * region_bytes at the byte offsets below: the CSR of `rows` layout rows with room
// for `cap` ranges of each kind. counts [B, rows, 2] is scratch. With copy_tail, the region's
// tail (schedules, predicate nodes, head arrays: tail_bytes from tail_src, the template on the
// device) is copied to region_tail, and the predicate nodes listed in chosen (indices into the
// nodes at nodes_at) are pointed at batch b's mask.
struct TopkLayoutParams {
  TopkGeom g;
  int64_t b = 0;
  const uint8_t* mask = nullptr;
  int64_t tm = 0, tn = 0;
  bool by_cols = false;
  TopkRanges always;
  int64_t rows = 0, cap = 0;
  int32_t* counts = nullptr;
  unsigned char* regions = nullptr;
  int64_t region_bytes = 0;
  size_t full_ptr = 0, part_ptr = 0, full_lo = 0, full_hi = 0, part_lo = 0, part_hi = 0;
  bool copy_tail = false;
  const unsigned char* tail_src = nullptr;
  size_t tail_bytes = 0, region_tail = 0, nodes_at = 0;
  const int32_t* chosen = nullptr;
  int64_t chosen_count = 0;
};

// Layout row r (0 <= r < rows) of a TopkLayoutParams: head and outer tile.
SPATTN_HD void topk_row_of(const TopkLayoutParams& p, int64_t r, int64_t* h, int64_t* o) {
  const int64_t n_outer = p.by_cols ? topk_blocks_of(p.g.nk, p.tn) : topk_blocks_of(p.g.nq, p.tm);
  *h = r / n_outer;
  *o = r - *h * n_outer;
}

// ---------------------------------------------------------------------------------------------
// Host side: the element rule, capacities, staging.

#if !defined(__CUDA_ARCH__)

// The concrete pattern's element rule, (BlockSparse(mask) & Causal()) | always per head, as one
// postfix program: head h runs [chosen leaf, causal leaf, And,] always(h) program, Or. The
// chosen leaf's data (the mask) is left null: each batch element's copy points it at its own
// mask (on the device, the layout kernel does; in tests, the test).
struct TopkPredicate {
  std::vector<PredNode> nodes;
  std::vector<int32_t> begin, end;
  std::vector<int32_t> chosen;  // indices of the chosen leaves
  int64_t off = 0;
  Predicate view() const {
    Predicate p;
    p.off = off;
    p.nodes = nodes.data();
    p.head_begin = begin.data();
    p.head_end = end.data();
    p.heads = int64_t(begin.size());
    return p;
  }
};

// always: the always pattern's compiled rule (nullptr: none); causal_leaf: Causal()'s one leaf.
inline TopkPredicate topk_predicate(const TopkGeom& g, const Predicate* always,
                                    const PredNode& causal_leaf) {
  TopkPredicate r;
  r.off = g.off;
  const int64_t heads = always != nullptr && always->heads != 1 ? g.hq : 1;
  for (int64_t h = 0; h < heads; ++h) {
    r.begin.push_back(int32_t(r.nodes.size()));
    r.chosen.push_back(int32_t(r.nodes.size()));
    r.nodes.push_back(pred_leaf(rules::block_sparse{g.bq, g.bk, g.nqb, g.nkb, g.hq}));
    int depth = 1;
    if (g.causal) {
      r.nodes.push_back(causal_leaf);
      PredNode both;
      both.kind = PredKind::And;
      r.nodes.push_back(both);
    }
    if (always != nullptr) {
      const int64_t ah = always->heads == 1 ? 0 : h;
      int sp = 0, deepest = 0;
      for (int32_t x = always->head_begin[ah]; x < always->head_end[ah]; ++x) {
        const PredNode& n = always->nodes[x];
        sp += (n.kind == PredKind::Or || n.kind == PredKind::And) ? -1 : 1;
        deepest = std::max(deepest, sp);
        r.nodes.push_back(n);
      }
      PredNode either;
      either.kind = PredKind::Or;
      r.nodes.push_back(either);
      depth = std::max(2, 1 + deepest);
    } else if (g.causal) {
      depth = 2;
    }
    if (depth > kMaxPredDepth)
      throw ValueError("pattern: TopKBlocks' always pattern is nested too deeply for the CUDA "
                       "element rule (" + std::to_string(depth) + " levels, at most " +
                       std::to_string(kMaxPredDepth) + ")");
    r.end.push_back(int32_t(r.nodes.size()));
  }
  return r;
}

// Key tiles of tn keys a row of query tiles of tm rows can touch through chosen blocks: at most
// (query blocks in the tile) x (k + current blocks) x (key tiles per block), and never more than
// the row has.
inline int64_t topk_row_tiles(const TopkGeom& g, int64_t tm, int64_t tn) {
  const int64_t nkt = topk_blocks_of(g.nk, tn);
  const int64_t u = std::min(g.nqb, (tm - 1) / g.bq + 2);
  const int64_t per_block = std::min(g.nkb, g.k + (g.causal ? (g.bq - 1) / g.bk + 2 : 0));
  const int64_t tiles = (g.bk - 1) / tn + 2;
  const double bound = double(u) * double(per_block) * double(tiles);
  return bound >= double(nkt) ? nkt : int64_t(bound);
}

// Ranges of each kind a layout of tm x tn tiles can hold over all hq heads (rows or columns
// alike: a range holds at least one tile, and transposing keeps the tiles): the chosen part's
// bound plus the always layout's listed tiles (always_tiles of a layout with always_heads
// heads), capped by all tiles.
inline int64_t topk_capacity(const TopkGeom& g, int64_t tm, int64_t tn, int64_t always_tiles,
                             int64_t always_heads) {
  const int64_t nqt = topk_blocks_of(g.nq, tm), nkt = topk_blocks_of(g.nk, tn);
  const double all = double(g.hq) * double(nqt) * double(nkt);
  const double bound = double(g.hq) * double(nqt) * double(topk_row_tiles(g, tm, tn)) +
                       double(always_tiles) * double(always_heads == 1 ? g.hq : 1);
  const double cap = std::min(all, bound);
  if (cap >= double(INT32_MAX))
    throw ValueError("cuda attention: TopKBlocks' layout would need " + std::to_string(cap) +
                     " ranges, beyond the kernels' 32-bit indices");
  return int64_t(cap);
}

// Everything one TopKBlocks problem (sizes, k, blocks, always, tile) needs that does not depend
// on the data, and the layout of each batch element's region of the per-call workspace.
// Layout 0: rows (forward; the sm90a backward's dQ pass), layout 1: columns (backward).
struct TopkStaging {
  // Uploaded once: [tail | always layouts | node data], node data pointers relocated.
  std::vector<unsigned char> blob;
  size_t tail_bytes = 0;   // [0, tail_bytes): copied into every region at region_tail
  StagedPredicate pred;    // offsets within the tail
  size_t chosen = 0;       // int32 [chosen_count]: node indices (within pred.nodes) of the chosen leaves
  int64_t chosen_count = 0;
  bool want[2] = {false, false};
  size_t sched[2] = {0, 0};  // within the tail
  int64_t sched_len[2] = {0, 0};
  StagedRanges always[2];    // within the blob
  int64_t always_heads[2] = {1, 1}, always_outer[2] = {0, 0};
  // One batch element's region of the workspace.
  StagedRanges csr[2];
  int64_t rows[2] = {0, 0}, cap[2] = {0, 0};
  size_t region_tail = 0, region_bytes = 0;
  int64_t tm = 0, tn = 0, nqt = 0, nkt = 0, hq = 1;

  // The host descriptions the kernels' launchers bind at a region's address.
  StagedForward forward() const {
    StagedForward s;
    s.layout = shifted(csr[0], 0);
    s.sched = region_tail + sched[0];
    s.sched_len = sched_len[0];
    s.pred = tail_pred();
    s.lheads = hq, s.nqb = nqt, s.nkb = nkt, s.bq = tm, s.bk = tn;
    return s;
  }
  StagedBackward backward() const {
    StagedBackward s;
    s.cols = shifted(csr[1], 0);
    s.sched = region_tail + sched[1];
    s.sched_len = sched_len[1];
    s.pred = tail_pred();
    s.lheads = hq, s.nqb = nqt, s.nkb = nkt, s.bq = tm, s.bk = tn;
    if (want[0]) {
      s.rows_staged = true;
      s.rows = shifted(csr[0], 0);
      s.row_sched = region_tail + sched[0];
      s.row_sched_len = sched_len[0];
    }
    return s;
  }
  // Device (or host) views of the always layouts inside the uploaded blob at base.
  TopkRanges always_at(const void* base, int l) const {
    TopkRanges r;
    const unsigned char* b = static_cast<const unsigned char*>(base);
    r.heads = always_heads[l];
    r.n_outer = always_outer[l];
    r.full_ptr = reinterpret_cast<const int64_t*>(b + always[l].full_ptr);
    r.part_ptr = reinterpret_cast<const int64_t*>(b + always[l].part_ptr);
    r.full_lo = reinterpret_cast<const int32_t*>(b + always[l].full_lo);
    r.full_hi = reinterpret_cast<const int32_t*>(b + always[l].full_hi);
    r.part_lo = reinterpret_cast<const int32_t*>(b + always[l].part_lo);
    r.part_hi = reinterpret_cast<const int32_t*>(b + always[l].part_hi);
    return r;
  }
  // The layout kernels' parameters for layout l, except the workspace pointers.
  TopkLayoutParams layout_params(const TopkGeom& g, int l, const void* blob_base) const {
    TopkLayoutParams p;
    p.g = g;
    p.tm = tm, p.tn = tn;
    p.by_cols = l == 1;
    p.always = always_at(blob_base, l);
    p.rows = rows[l], p.cap = cap[l];
    p.region_bytes = int64_t(region_bytes);
    p.full_ptr = csr[l].full_ptr, p.part_ptr = csr[l].part_ptr;
    p.full_lo = csr[l].full_lo, p.full_hi = csr[l].full_hi;
    p.part_lo = csr[l].part_lo, p.part_hi = csr[l].part_hi;
    p.tail_src = static_cast<const unsigned char*>(blob_base);
    p.tail_bytes = tail_bytes;
    p.region_tail = region_tail;
    p.nodes_at = region_tail + pred.nodes;
    p.chosen = reinterpret_cast<const int32_t*>(static_cast<const unsigned char*>(blob_base) + chosen);
    p.chosen_count = chosen_count;
    return p;
  }

 private:
  static StagedRanges shifted(const StagedRanges& r, size_t by) {
    StagedRanges s = r;
    s.full_ptr += by, s.part_ptr += by, s.full_lo += by, s.full_hi += by;
    s.part_lo += by, s.part_hi += by;
    return s;
  }
  StagedPredicate tail_pred() const {
    StagedPredicate p = pred;
    p.nodes += region_tail;
    p.head_begin += region_tail;
    p.head_end += region_tail;
    return p;
  }
};

// Work estimate of row (h, o) for the schedules, longest first: the chosen part's bound (rows:
// k and the current blocks per query block; columns: the query tiles that can see the key tile)
// plus the always layout's tiles in that row.
inline std::vector<int32_t> topk_schedule(const TopkGeom& g, const BlockLayout& always, int64_t tm,
                                          int64_t tn, bool by_cols) {
  const int64_t nqt = topk_blocks_of(g.nq, tm), nkt = topk_blocks_of(g.nk, tn);
  const int64_t n_outer = by_cols ? nkt : nqt;
  const int64_t sel = topk_row_tiles(g, tm, tn);
  auto always_tiles = [&](int64_t h, int64_t o) {
    const int64_t r = (always.heads == 1 ? 0 : h) * always.nqb + o;
    int64_t n = 0;
    for (int64_t t = always.full_ptr[size_t(r)]; t < always.full_ptr[size_t(r + 1)]; ++t)
      n += 2 * (int64_t(always.full_hi[size_t(t)]) - always.full_lo[size_t(t)]);
    for (int64_t t = always.part_ptr[size_t(r)]; t < always.part_ptr[size_t(r + 1)]; ++t)
      n += 3 * (int64_t(always.part_hi[size_t(t)]) - always.part_lo[size_t(t)]);
    return n;
  };
  auto chosen_tiles = [&](int64_t o) -> int64_t {
    if (!by_cols) {
      if (!g.causal) return sel;
      const int64_t last = std::min(g.nq, (o + 1) * tm) - 1 + g.off;  // the row's last position
      return std::min(sel, last < 0 ? 0 : last / tn + 1);
    }
    if (!g.causal) return nqt;
    // Query tiles whose last position reaches the key tile's first key.
    const int64_t i = o * tn - g.off;  // first row that sees key o * tn
    const int64_t a = i <= 0 ? 0 : i / tm;
    return a >= nqt ? 0 : nqt - a;
  };
  const int64_t groups = by_cols ? g.hkv : g.hq, per = by_cols ? g.hq / g.hkv : 1;
  std::vector<int64_t> cost(size_t(groups * n_outer), 0);
  for (int64_t x = 0; x < groups; ++x)
    for (int64_t h = x * per; h < (x + 1) * per; ++h)
      for (int64_t o = 0; o < n_outer; ++o)
        cost[size_t(x * n_outer + o)] += 2 * chosen_tiles(o) + always_tiles(h, o);
  std::vector<int32_t> s(cost.size());
  std::iota(s.begin(), s.end(), 0);
  std::stable_sort(s.begin(), s.end(),
                   [&](int32_t x, int32_t y) { return cost[size_t(x)] > cost[size_t(y)]; });
  return s;
}

// Stages one TopKBlocks problem for kernels of tm x tn tiles: want_rows / want_cols say which
// layouts the kernels walk; always_rows is the always pattern's layout compiled for tm x tn
// (an empty one without always); pred from topk_predicate. Host only, once per problem.
inline TopkStaging stage_topk(const TopkGeom& g, int64_t tm, int64_t tn, bool want_rows,
                              bool want_cols, const BlockLayout& always_rows,
                              const TopkPredicate& pred) {
  TopkStaging s;
  s.tm = tm, s.tn = tn, s.hq = g.hq;
  s.nqt = topk_blocks_of(g.nq, tm);
  s.nkt = topk_blocks_of(g.nk, tn);
  s.want[0] = want_rows;
  s.want[1] = want_cols;
  if (g.hq * s.nqt > INT32_MAX || g.hq * s.nkt > INT32_MAX)
    throw ValueError("cuda attention: the problem has too many tiles for the kernels' 32-bit "
                     "indices");
  BlockLayout always_cols;
  if (want_cols) always_cols = transpose_layout(always_rows);
  const BlockLayout* alw[2] = {&always_rows, &always_cols};
  BlobWriter w;
  for (int l = 0; l < 2; ++l) {
    if (!s.want[l]) continue;
    const std::vector<int32_t> sched = topk_schedule(g, *alw[l], tm, tn, l == 1);
    s.sched_len[l] = int64_t(sched.size());
    s.sched[l] = w.put(sched.data(), sched.size() * sizeof(int32_t));
  }
  const Predicate view = pred.view();
  s.pred = stage_predicate(w, view);
  s.tail_bytes = (s.pred.head_end + size_t(view.heads) * sizeof(int32_t) + 15) & ~size_t(15);
  // The node data (the always pattern's) was put after the head arrays: outside the tail.
  s.chosen_count = int64_t(pred.chosen.size());
  s.chosen = w.put(pred.chosen.data(), pred.chosen.size() * sizeof(int32_t));
  for (int l = 0; l < 2; ++l) {
    if (!s.want[l]) continue;
    s.always[l] = stage_ranges(w, *alw[l]);
    s.always_heads[l] = alw[l]->heads;
    s.always_outer[l] = alw[l]->nqb;
  }
  w.finish();
  s.blob = std::move(w.bytes);

  // The region: both CSRs, then the tail.
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t r = at;
    at = (at + bytes + 15) & ~size_t(15);
    return r;
  };
  for (int l = 0; l < 2; ++l) {
    if (!s.want[l]) continue;
    s.rows[l] = g.hq * (l == 1 ? s.nkt : s.nqt);
    s.cap[l] = topk_capacity(g, tm, tn, alw[l]->blocks_visited(), alw[l]->heads);
    const size_t ptr = size_t(s.rows[l] + 1) * sizeof(int64_t);
    const size_t idx = size_t(s.cap[l]) * sizeof(int32_t);
    s.csr[l].full_ptr = take(ptr);
    s.csr[l].part_ptr = take(ptr);
    s.csr[l].full_lo = take(idx);
    s.csr[l].full_hi = take(idx);
    s.csr[l].part_lo = take(idx);
    s.csr[l].part_hi = take(idx);
  }
  s.region_tail = take(s.tail_bytes);
  s.region_bytes = (at + 255) & ~size_t(255);
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
