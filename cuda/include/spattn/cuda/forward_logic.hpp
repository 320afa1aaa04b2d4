// The index, mask and scheduling logic of the CUDA forward kernel (cuda/src/kernels/
// forward_kernel.cuh), written once as SPATTN_HD functions so that the host tests
// (tests/cpp/test_cuda_forward_logic.cpp) run exactly what the kernel runs, in a scalar
// emulation of the kernel's loop structure.
//
// What lives here:
//   FwdParams              the kernel's one plain-data parameter (device pointers, strides, sizes)
//   cta_work()             CTA index -> (batch, query head, query tile), through a schedule
//   RowWalk                a layout row's full and partial key blocks, merged in ascending order
//   block_needs_mask()     full blocks skip the mask unless they stick out past Nk
//   element_kept()         the per-element rule of a masked block (keeps() on partial blocks)
//   q_offset() ...         element offsets from strides; kv_head() for GQA
//   softmax_*()            the online-softmax steps, -inf safe (a row that sees nothing: out 0,
//                          lse -inf, never NaN)
//   make_schedule(), stage_forward()   host only: longest rows first; the one byte blob that is
//                          uploaded (layout CSR, schedule, predicate program with its data),
//                          with the pointers of FwdParams relocated to wherever it lands.
//
// Plain data and plain functions: no CuTe, no CUDA runtime. The kernel adds the tensor-core
// tiling around these.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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

// Tile of the sm80-style forward kernel: kFwdBlockM query rows per CTA, fwd_block_n(D) keys
// per step (kFwdBlockN up to D = 128; the float32 SIMT kernel takes kFwdBlockN at every D it
// has). The block layout handed to a kernel must be compiled for exactly its (bq, bk).
constexpr int kFwdBlockM = 128;
constexpr int kFwdBlockN = 64;
// Above D = 128 a step takes 32 keys: a warp's 16 rows x D fp32 output accumulator is D / 2
// registers per thread (128 at D = 256), and with 64-key steps the scores, P and the operand
// fragments pushed it past 255 registers (138 bytes spilled on sm_80). Query tiles stay 128
// rows: a warp's share of the accumulator does not depend on the CTA's rows.
constexpr int kFwdBlockNWide = 32;
SPATTN_HD constexpr int fwd_block_n(int64_t d) { return d > 128 ? kFwdBlockNWide : kFwdBlockN; }

// The kernel's parameter block. Strides are in elements (of the tensor's dtype; float for lse).
// Sizes fit int32 where the kernel uses them as tile indices; element offsets are int64.
// Score modifiers (spattn/options.hpp, Modifiers), pointers on the device: softcap_log2 =
// softcap * log2(e) (0: none); alibi [hq] slopes in natural units, stride alibi_s (null: none),
// with rel = rel_step * (i - j) + rel_base for row i, key j; sinks [hq] in natural units, stride
// sinks_s (null: none; the forward only: the backward's lse already holds them).
struct ScoreModParams {
  float softcap_log2 = 0.f;
  const float* alibi = nullptr;
  int64_t alibi_s = 1;
  const float* sinks = nullptr;
  int64_t sinks_s = 1;
  int64_t rel_step = 1, rel_base = 0;
};

struct FwdParams {
  const void* q = nullptr;  // [B, Nq, Hq, D]
  const void* k = nullptr;  // [B, Nk, Hkv, D]
  const void* v = nullptr;  // [B, Nk, Hkv, Dv]
  void* o = nullptr;        // [B, Nq, Hq, Dv]
  float* lse = nullptr;     // [B, Hq, Nq]; null: not written
  int64_t q_sb = 0, q_sn = 0, q_sh = 0;
  int64_t k_sb = 0, k_sn = 0, k_sh = 0;
  int64_t v_sb = 0, v_sn = 0, v_sh = 0;
  int64_t o_sb = 0, o_sn = 0, o_sh = 0;
  int64_t lse_sb = 0, lse_sh = 0, lse_sn = 0;
  int64_t b = 0, nq = 0, nk = 0, hq = 0, hkv = 0, d = 0, dv = 0;
  int64_t group = 1;         // hq / hkv
  float scale = 1.f;         // softmax scale (natural units)
  float scale_log2 = 1.f;    // scale * log2(e): the kernel exponentiates in base 2
  // Block layout (see spattn/layout.hpp), tiles of the running kernel, 1 or hq heads.
  int64_t lheads = 1, nqb = 0, nkb = 0;
  const int64_t* full_ptr = nullptr;
  const int64_t* part_ptr = nullptr;
  const int32_t* full_lo = nullptr;
  const int32_t* full_hi = nullptr;
  const int32_t* part_lo = nullptr;
  const int32_t* part_hi = nullptr;
  // Work order: entry s = h * nqb + a (query head h, query tile a); sched_len = hq * nqb.
  const int32_t* sched = nullptr;
  int64_t sched_len = 0;
  // The element rule (device copy of the predicate program and its data).
  Predicate pred;
  // Score modifiers (ScoreModParams): mods is true with softcap or ALiBi (one branch on a kernel
  // parameter, the same in every thread); the sinks act in the epilogue only.
  bool mods = false;
  ScoreModParams m;
};

// ---------------------------------------------------------------------------------------------
// Scheduling: which (batch, head, query tile) a CTA computes.

struct CtaWork {
  int64_t b, h, a;  // batch, query head, query tile
};

// CTAs in a 1-d grid of sched_len * B. Batch varies fastest, so the longest rows of every batch
// element start first (the schedule sorts rows longest first).
SPATTN_HD int64_t fwd_grid_size(const FwdParams& p) { return p.sched_len * p.b; }

SPATTN_HD CtaWork cta_work(const FwdParams& p, int64_t cta) {
  const int64_t s = cta / p.b;
  const int64_t w = p.sched[s];
  CtaWork r;
  r.b = cta - s * p.b;
  r.h = w / p.nqb;
  r.a = w - r.h * p.nqb;
  return r;
}

// GQA / MQA: query head h reads key/value head h / (Hq / Hkv).
SPATTN_HD int64_t kv_head(const FwdParams& p, int64_t h) { return h / p.group; }

// The layout row of query head h, tile a (a shared layout serves every head).
SPATTN_HD int64_t layout_row(const FwdParams& p, int64_t h, int64_t a) {
  return (p.lheads == 1 ? 0 : h) * p.nqb + a;
}

// Rows of query tile a that exist (the last tile may be short), keys of key block c (of bn
// keys: the kernel's key tile) likewise.
SPATTN_HD int tile_rows(const FwdParams& p, int64_t a) {
  const int64_t r = p.nq - a * kFwdBlockM;
  return int(r < kFwdBlockM ? (r > 0 ? r : 0) : kFwdBlockM);
}
SPATTN_HD int block_keys(const FwdParams& p, int64_t c, int bn) {
  const int64_t r = p.nk - c * bn;
  return int(r < bn ? (r > 0 ? r : 0) : bn);
}

// ---------------------------------------------------------------------------------------------
// Element offsets (in elements of each tensor's dtype).

SPATTN_HD int64_t q_offset(const FwdParams& p, int64_t b, int64_t i, int64_t h) {
  return b * p.q_sb + i * p.q_sn + h * p.q_sh;
}
SPATTN_HD int64_t k_offset(const FwdParams& p, int64_t b, int64_t j, int64_t g) {
  return b * p.k_sb + j * p.k_sn + g * p.k_sh;
}
SPATTN_HD int64_t v_offset(const FwdParams& p, int64_t b, int64_t j, int64_t g) {
  return b * p.v_sb + j * p.v_sn + g * p.v_sh;
}
SPATTN_HD int64_t o_offset(const FwdParams& p, int64_t b, int64_t i, int64_t h) {
  return b * p.o_sb + i * p.o_sn + h * p.o_sh;
}
SPATTN_HD int64_t lse_offset(const FwdParams& p, int64_t b, int64_t h, int64_t i) {
  return b * p.lse_sb + h * p.lse_sh + i * p.lse_sn;
}

// ---------------------------------------------------------------------------------------------
// The walk over a layout row: full and partial ranges merged, key blocks in ascending order.

// The walk is generic over where the CSR lives (L: any struct with the six arrays full_ptr,
// part_ptr, full_lo, full_hi, part_lo, part_hi): the forward walks a row of its layout
// (L = FwdParams); the backward walks a column of the transposed layout (backward_logic.hpp)
// with the same code.
template <class L>
struct RangeWalk {
  static constexpr int32_t kDone = INT32_MAX;
  int32_t ft, fe, pt, pe;  // current and end range of each kind (< 2^31: checked when staged)
  int32_t fc, pc;          // next block of each kind; kDone when none is left

  SPATTN_HD RangeWalk(const L& l, int64_t r) {
    ft = int32_t(l.full_ptr[r]);
    fe = int32_t(l.full_ptr[r + 1]);
    pt = int32_t(l.part_ptr[r]);
    pe = int32_t(l.part_ptr[r + 1]);
    fc = ft < fe ? l.full_lo[ft] : kDone;
    pc = pt < pe ? l.part_lo[pt] : kDone;
  }
  SPATTN_HD bool done() const { return fc == kDone && pc == kDone; }
  // The next block (ascending) and whether it is partial; false when the row is done.
  SPATTN_HD bool next(const L& l, int64_t* c, bool* partial) {
    if (done()) return false;
    if (fc < pc) {
      *c = fc;
      *partial = false;
      if (++fc >= l.full_hi[ft]) fc = ++ft < fe ? l.full_lo[ft] : kDone;
    } else {
      *c = pc;
      *partial = true;
      if (++pc >= l.part_hi[pt]) pc = ++pt < pe ? l.part_lo[pt] : kDone;
    }
    return true;
  }
};

// The forward's walk: layout row of (query head h, query tile a).
struct RowWalk : RangeWalk<FwdParams> {
  SPATTN_HD RowWalk(const FwdParams& p, int64_t h, int64_t a)
      : RangeWalk<FwdParams>(p, layout_row(p, h, a)) {}
};

// ---------------------------------------------------------------------------------------------
// Masks. Full blocks keep every (query, key) pair that exists, so they are computed without a
// mask unless the block sticks out past Nk (its padding keys were zero-filled and must not
// count). Query rows past Nq need no mask in full blocks: they read zeros and are not stored.

// Key block c of bn keys in a problem of nk keys (any tile: the backward's too).
SPATTN_HD bool block_needs_mask_n(int64_t nk, int64_t bn, bool partial, int64_t c) {
  return partial || (c + 1) * bn > nk;
}
SPATTN_HD bool block_needs_mask(const FwdParams& p, bool partial, int64_t c, int bn) {
  return block_needs_mask_n(p.nk, bn, partial, c);
}

// The rule of a masked block for query i (head h) and key j; never reads the pattern's data
// outside the problem (rows >= Nq and keys >= Nk are masked before keeps() is asked).
SPATTN_HD bool element_kept(const FwdParams& p, bool partial, int64_t h, int64_t i, int64_t j) {
  if (i >= p.nq || j >= p.nk) return false;
  return !partial || keeps(p.pred, h, i, j);
}

// A masked block is cheapest when every row keeps one interval of keys: full blocks (the
// interval is the existing keys), and partial blocks of a head whose rule is one window
// (range_is_exact). Then the kernel compares against [lo, hi] per row; otherwise it asks
// element_kept() per element. rule_exact is range_is_exact(p.pred, h), once per CTA.
SPATTN_HD bool mask_by_interval(bool partial, bool rule_exact) { return !partial || rule_exact; }

// Row i's interval [*lo, *hi] of kept keys in a masked block (empty, lo > hi, for rows past Nq);
// only valid when mask_by_interval(). Agrees with element_kept() on every key of the block.
SPATTN_HD void row_interval(const FwdParams& p, bool partial, int64_t h, int64_t i, int64_t* lo,
                            int64_t* hi) {
  int64_t a = 0, b = p.nk - 1;
  if (i >= p.nq) {
    a = 1;
    b = 0;
  } else if (partial) {
    int64_t klo, khi;
    key_range(p.pred, h, i, &klo, &khi);
    a = klo > a ? klo : a;
    b = khi < b ? khi : b;
  }
  *lo = a;
  *hi = b;
}

// ---------------------------------------------------------------------------------------------
// Online softmax, per query row, in base 2. Scores are scaled first (s * scale * log2(e), so any
// sign of scale works); masked scores are -inf. State: m, the largest scaled score seen so far
// (-inf: none yet), and l, the sum of exp2(s - m) over the keys seen.

SPATTN_HD float neg_inf() { return -INFINITY; }

SPATTN_HD float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

SPATTN_HD float fmax_(float a, float b) { return a > b ? a : b; }

// A raw score in base-2 units, or -inf when the mask drops it (after scaling, so that a
// negative scale cannot turn a masked score into +inf).
SPATTN_HD float score_scaled(float raw, float scale_log2, bool kept) {
  return kept ? raw * scale_log2 : neg_inf();
}

// The max subtracted in the exponent: 0 while the row has seen nothing (every score is then
// -inf, every exp2 is 0, and no -inf - -inf = NaN arises).
SPATTN_HD float softmax_max_safe(float m) { return m == neg_inf() ? 0.f : m; }

// Factor that rescales the accumulator and l when the running max goes from m_old to m_new
// (m_new >= m_old): 1 while both are -inf, 0 when the row sees its first key.
SPATTN_HD float softmax_rescale(float m_old, float m_new) {
  return fast_exp2(m_old == neg_inf() ? (m_new == neg_inf() ? 0.f : neg_inf()) : m_old - m_new);
}

// One probability (unnormalised) against the row's new max: 0 for a masked (-inf) score.
SPATTN_HD float softmax_p(float s, float m_safe) { return fast_exp2(s - m_safe); }

// Final normalisation: out = acc * inv_l; lse (natural log) = (m + log2 l) * ln 2. A row that
// saw no key (l == 0) gets inv_l 0 (so out 0, never NaN) and lse -inf.
SPATTN_HD float softmax_inv_l(float l) { return (l == 0.f || l != l) ? 0.f : 1.f / l; }
SPATTN_HD float softmax_lse(float m, float l) {
  return (l == 0.f || l != l) ? neg_inf() : m * 0.6931471805599453f + logf(l);
}

// ---------------------------------------------------------------------------------------------
// Score modifiers (FwdParams::mods, sinks), on scaled base-2 scores.

// The modifiers of one head, read once per CTA: softcap (cap = softcap * log2 e, 0: none) and
// the ALiBi slope in base-2 units (0: none).
struct ScoreMod {
  float cap = 0.f, inv_cap = 0.f, slope = 0.f;
};
SPATTN_HD ScoreMod score_mod(const FwdParams& p, int64_t h) {
  ScoreMod r;
  r.cap = p.m.softcap_log2;
  r.inv_cap = r.cap != 0.f ? 1.f / r.cap : 0.f;
  r.slope = p.m.alibi ? p.m.alibi[h * p.m.alibi_s] * 1.4426950408889634f : 0.f;
  return r;
}

// rel of row i, key j (exact in float while |rel| < 2^24); the kernels form it as the block's
// rel_of(i0, j0) plus rel_step * (r - x) for the element (i0 + r, j0 + x).
SPATTN_HD float rel_of(const FwdParams& p, int64_t i, int64_t j) {
  return float(p.m.rel_step * (i - j) + p.m.rel_base);
}

// tanh(y) = sign(y) (1 - e) / (1 + e), e = 2^(-2 log2(e) |y|): ex2.approx and a fast division on
// the device (a few ulp), no overflow for any y.
SPATTN_HD float tanh_fast(float y) {
#if defined(__CUDA_ARCH__)
  const float e = fast_exp2(-2.8853900817779268f * fabsf(y));
  return copysignf(__fdividef(1.f - e, 1.f + e), y);
#else
  return std::tanh(y);
#endif
}

// Score s2 (base 2, already scaled; -inf: masked) with softcap, then ALiBi at distance rel.
// Masked scores stay -inf. With dcap, *dcap = the softcap's derivative 1 - tanh^2 (1 without
// softcap), for the backward's chain rule.
SPATTN_HD float apply_mod(const ScoreMod& m, float s2, float rel, float* dcap) {
  if (dcap) *dcap = 1.f;
  if (s2 == neg_inf()) return s2;
  if (m.cap != 0.f) {
    const float t = tanh_fast(s2 * m.inv_cap);
    s2 = m.cap * t;
    if (dcap) *dcap = 1.f - t * t;
  }
  return s2 - m.slope * fabsf(rel);
}

// The same for row i, key j of head h, from the parameters (host tests, simple callers).
SPATTN_HD float modified_score(const FwdParams& p, int64_t h, int64_t i, int64_t j, float s2,
                               float* dcap) {
  return apply_mod(score_mod(p, h), s2, rel_of(p, i, j), dcap);
}

// The end of a row of head h with the sink (if any): m (base 2) and l (sum of exp2(s - m)) of
// the row's keys become those of its keys plus the sink; returns the factor the accumulated
// output is multiplied by before 1 / l. A row that kept no key gets l = 1 at m = sink: out 0,
// lse = sink.
SPATTN_HD float sink_finish(const FwdParams& p, int64_t h, float* m, float* l) {
  if (!p.m.sinks) return 1.f;
  const float s2 = p.m.sinks[h * p.m.sinks_s] * 1.4426950408889634f;
  if (s2 == neg_inf() || *l != *l) return 1.f;
  const float mf = fmax_(*m, s2);
  const float keep = *m == neg_inf() ? 0.f : exp2f(*m - mf);
  *l = *l * keep + exp2f(s2 - mf);
  *m = mf;
  return keep;
}

// ---------------------------------------------------------------------------------------------
// Host side: schedule and upload staging.

#if !defined(__CUDA_ARCH__)

// Rows (h, a) of the problem ordered by descending work (key blocks visited; partial blocks
// count 1.5x for their mask), ties by ascending (h, a): the longest rows start first, so the
// tail of the grid is short rows. Entry = h * nqb + a.
inline std::vector<int32_t> make_schedule(const BlockLayout& L, int64_t hq) {
  const int64_t n = hq * L.nqb;
  std::vector<int32_t> s(static_cast<size_t>(n));
  std::vector<int64_t> cost(static_cast<size_t>(n));
  for (int64_t h = 0; h < hq; ++h)
    for (int64_t a = 0; a < L.nqb; ++a) {
      const int64_t r = L.row(h, a);
      int64_t c = 0;
      for (int64_t t = L.full_ptr[size_t(r)]; t < L.full_ptr[size_t(r + 1)]; ++t)
        c += 2 * (int64_t(L.full_hi[size_t(t)]) - L.full_lo[size_t(t)]);
      for (int64_t t = L.part_ptr[size_t(r)]; t < L.part_ptr[size_t(r + 1)]; ++t)
        c += 3 * (int64_t(L.part_hi[size_t(t)]) - L.part_lo[size_t(t)]);
      cost[size_t(h * L.nqb + a)] = c;
    }
  std::iota(s.begin(), s.end(), 0);
  std::stable_sort(s.begin(), s.end(),
                   [&](int32_t x, int32_t y) { return cost[size_t(x)] > cost[size_t(y)]; });
  return s;
}

// Bytes of the data a predicate node points to (Global positions, BlockMask bits, BigBird's
// random blocks, ...), as its kind recorded them; 0 for nodes without data. Throws RuntimeError
// for a node that points to data of unknown size (it could not be copied to the device).
inline int64_t pred_node_data_bytes(const PredNode& n) {
  if (n.data == nullptr) return 0;
  if (n.data_bytes <= 0)
    throw RuntimeError("cuda attention: predicate node kind " +
                       std::to_string(static_cast<int>(n.kind)) +
                       " points to data without a size; the CUDA launcher cannot copy it");
  return n.data_bytes;
}

// The upload blob: pieces appended at 16-byte aligned offsets, so that one allocation and one
// copy move everything a kernel reads besides its tensors to the device.
struct BlobWriter {
  std::vector<unsigned char> bytes;
  size_t put(const void* src, size_t n) {
    const size_t at = (bytes.size() + 15) & ~size_t(15);
    bytes.resize(at + n);
    if (n) std::memcpy(bytes.data() + at, src, n);
    return at;
  }
  void finish() { bytes.resize((bytes.size() + 15) & ~size_t(15)); }
};

// A range CSR (BlockLayout's six arrays) inside a blob: byte offsets of each array.
struct StagedRanges {
  size_t full_ptr = 0, part_ptr = 0, full_lo = 0, full_hi = 0, part_lo = 0, part_hi = 0;
  // Points l's six arrays (FwdParams, or the backward's column CSR) into the blob at `base`.
  template <class L>
  void bind(unsigned char* b, L* l) const {
    l->full_ptr = reinterpret_cast<const int64_t*>(b + full_ptr);
    l->part_ptr = reinterpret_cast<const int64_t*>(b + part_ptr);
    l->full_lo = reinterpret_cast<const int32_t*>(b + full_lo);
    l->full_hi = reinterpret_cast<const int32_t*>(b + full_hi);
    l->part_lo = reinterpret_cast<const int32_t*>(b + part_lo);
    l->part_hi = reinterpret_cast<const int32_t*>(b + part_hi);
  }
};

inline StagedRanges stage_ranges(BlobWriter& w, const BlockLayout& L) {
  StagedRanges r;
  r.full_ptr = w.put(L.full_ptr.data(), L.full_ptr.size() * sizeof(int64_t));
  r.part_ptr = w.put(L.part_ptr.data(), L.part_ptr.size() * sizeof(int64_t));
  r.full_lo = w.put(L.full_lo.data(), L.full_lo.size() * sizeof(int32_t));
  r.full_hi = w.put(L.full_hi.data(), L.full_hi.size() * sizeof(int32_t));
  r.part_lo = w.put(L.part_lo.data(), L.part_lo.size() * sizeof(int32_t));
  r.part_hi = w.put(L.part_hi.data(), L.part_hi.size() * sizeof(int32_t));
  return r;
}

// A predicate program with its data inside a blob (node data pointers relocated on upload).
struct StagedPredicate {
  size_t nodes = 0, head_begin = 0, head_end = 0;
  std::vector<size_t> node_data;  // per node: offset of its data (SIZE_MAX: none)
  int64_t nodes_count = 0, heads = 1, off = 0;

  void bind(unsigned char* b, Predicate* p) const {
    p->off = off;
    p->heads = heads;
    p->nodes = reinterpret_cast<const PredNode*>(b + nodes);
    p->head_begin = reinterpret_cast<const int32_t*>(b + head_begin);
    p->head_end = reinterpret_cast<const int32_t*>(b + head_end);
  }
  // Rewrites the data pointers of the nodes stored in `blob` to base + their offset.
  void relocate(std::vector<unsigned char>& blob, const void* base) const {
    const unsigned char* b = static_cast<const unsigned char*>(base);
    for (int64_t x = 0; x < nodes_count; ++x) {
      PredNode n;
      std::memcpy(&n, blob.data() + nodes + size_t(x) * sizeof(PredNode), sizeof(PredNode));
      n.data = node_data[size_t(x)] == SIZE_MAX ? nullptr : b + node_data[size_t(x)];
      std::memcpy(blob.data() + nodes + size_t(x) * sizeof(PredNode), &n, sizeof(PredNode));
    }
  }
};

// The program: every node any head runs (head entries index one shared node array), and the
// data of each node that has some.
inline StagedPredicate stage_predicate(BlobWriter& w, const Predicate& pred) {
  StagedPredicate s;
  s.heads = pred.heads;
  s.off = pred.off;
  int32_t nend = 0;
  for (int64_t h = 0; h < pred.heads; ++h) nend = std::max(nend, pred.head_end[h]);
  s.nodes_count = nend;
  s.nodes = w.put(pred.nodes, size_t(nend) * sizeof(PredNode));
  s.head_begin = w.put(pred.head_begin, size_t(pred.heads) * sizeof(int32_t));
  s.head_end = w.put(pred.head_end, size_t(pred.heads) * sizeof(int32_t));
  s.node_data.assign(size_t(nend), SIZE_MAX);
  for (int32_t x = 0; x < nend; ++x) {
    const int64_t bytes = pred_node_data_bytes(pred.nodes[x]);
    if (bytes > 0) s.node_data[size_t(x)] = w.put(pred.nodes[x].data, size_t(bytes));
  }
  return s;
}

// Checks that a layout was compiled for (bq, bk) tiles of an (nq, nk) problem with 1 or hq
// heads and a well-formed CSR, that the predicate has 1 or hq heads, and that the kernels'
// 32-bit indices suffice. `who` names the caller in the messages (ValueError).
inline void check_layout_fits(const BlockLayout& L, const Predicate& pred, int64_t bq, int64_t bk,
                              int64_t nq, int64_t nk, int64_t hq, const char* who) {
  const int64_t nqb = (nq + bq - 1) / bq;
  const int64_t nkb = (nk + bk - 1) / bk;
  const int64_t rows = L.heads * nqb;
  if (L.bq != bq || L.bk != bk || L.nq != nq || L.nk != nk || L.nqb != nqb || L.nkb != nkb ||
      (L.heads != 1 && L.heads != hq) || int64_t(L.full_ptr.size()) != rows + 1 ||
      int64_t(L.part_ptr.size()) != rows + 1 || L.full_lo.size() != L.full_hi.size() ||
      L.part_lo.size() != L.part_hi.size() || L.full_ptr.back() != int64_t(L.full_lo.size()) ||
      L.part_ptr.back() != int64_t(L.part_lo.size()))
    throw ValueError(std::string(who) + ": the block layout does not match the problem (expected " +
                     std::to_string(bq) + "x" + std::to_string(bk) + " tiles for Nq=" +
                     std::to_string(nq) + ", Nk=" + std::to_string(nk) + ", 1 or " +
                     std::to_string(hq) + " heads; got " + std::to_string(L.bq) + "x" +
                     std::to_string(L.bk) + " tiles, " + std::to_string(L.heads) +
                     " heads, Nq=" + std::to_string(L.nq) + ", Nk=" + std::to_string(L.nk) + ")");
  if (pred.heads != 1 && pred.heads != hq)
    throw ValueError(std::string(who) + ": the predicate has " + std::to_string(pred.heads) +
                     " heads for a problem with " + std::to_string(hq));
  if (hq * nqb > INT32_MAX || hq * nkb > INT32_MAX || L.full_lo.size() >= size_t(INT32_MAX) ||
      L.part_lo.size() >= size_t(INT32_MAX) || nkb >= INT32_MAX)
    throw ValueError(std::string(who) + ": the problem has too many tiles or layout ranges "
                     "for the kernel's 32-bit indices");
}

// Everything the forward kernel reads besides q, k, v, in one byte blob: the layout CSR, the
// schedule, the predicate's nodes (data pointers relocated), head entry arrays and node data.
struct StagedForward {
  std::vector<unsigned char> blob;
  StagedRanges layout;
  size_t sched = 0;
  StagedPredicate pred;
  int64_t lheads = 1, nqb = 0, nkb = 0, sched_len = 0;
  int64_t bq = kFwdBlockM, bk = kFwdBlockN;  // the tile the layout was compiled for

  // Points p's layout, schedule and predicate fields into a copy of the blob at `base` (the
  // device allocation; in tests, the host blob itself). Node data pointers inside the blob
  // must have been fixed with relocate_nodes(base) before the copy.
  void bind(void* base, FwdParams* p) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    p->lheads = lheads;
    p->nqb = nqb;
    p->nkb = nkb;
    layout.bind(b, p);
    p->sched = reinterpret_cast<const int32_t*>(b + sched);
    p->sched_len = sched_len;
    pred.bind(b, &p->pred);
  }
  // Rewrites the data pointers of the nodes stored in the blob to base + their offset.
  void relocate_nodes(const void* base) { pred.relocate(blob, base); }
};

// Stages a layout (compiled for the kernel's (bq, bk) tiles: kFwdBlockM x fwd_block_n(D) for
// the sm80-style kernel, hopper_logic.hpp's tile for the sm90a one; 1 or hq heads) and a predicate
// (host pointers, CompiledPattern::predicate()) for a problem with hq query heads. Throws
// ValueError when the layout does not fit (nq, nk, hq, tile).
inline StagedForward stage_forward(const BlockLayout& L, const Predicate& pred, int64_t nq,
                                   int64_t nk, int64_t hq, int64_t bq = kFwdBlockM,
                                   int64_t bk = kFwdBlockN) {
  check_layout_fits(L, pred, bq, bk, nq, nk, hq, "cuda attention");
  StagedForward s;
  s.bq = bq;
  s.bk = bk;
  s.lheads = L.heads;
  s.nqb = L.nqb;
  s.nkb = L.nkb;
  BlobWriter w;
  s.layout = stage_ranges(w, L);
  const std::vector<int32_t> sched = make_schedule(L, hq);
  s.sched_len = int64_t(sched.size());
  s.sched = w.put(sched.data(), sched.size() * sizeof(int32_t));
  s.pred = stage_predicate(w, pred);
  w.finish();
  s.blob = std::move(w.bytes);
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
