// Compiling a block layout on the device (issue #11 item 2): the per-row logic as SPATTN_HD
// code, and host-only planning of the buffers.
//
// The program is the predicate program a pattern already compiles to (predicate.hpp): per
// head, a postfix list of leaves (each its kind's rule with typed parameters and data) and
// binary Or / And nodes (unions, intersections; PerHead is resolved per head). Every leaf kind
// that gives its rule the optional `block_ranges` / `block_range_bound` methods
// (kinds/README.md, spattn/block_ranges.hpp) can be compiled here; a program with any other
// leaf keeps the host compiler (pattern/layout.cpp) and its cached upload.
//
// One thread per layout row (layout head, query tile), three launches on the caller's stream:
//   1. count: evaluate the row (every node into its scratch slot of fixed capacity: leaves by
//      their block rule, Or / And sweep-merge two slots; then the root's ranges into the
//      emitter, which settles ambiguous blocks by element checks, as layout.cpp does), write
//      the row's full / partial range
//      counts and its cost (2 per full block, 3 per partial, make_schedule's);
//   2. scan the counts into full_ptr / part_ptr (one CTA);
//   3. fill: evaluate again and write the ranges at the row's offsets.
// Then the schedule: entries h * nqb + a (every query head) sorted by descending cost of their
// layout row, stable (cub's radix sort), as make_schedule does on the host. Every buffer
// has a capacity known on the host from the rules' bounds (rows x per-row bound), so nothing
// is read back: no host synchronisation. The result is the staged form the forward kernels
// walk (StagedForward), bit for bit the same as stage_forward(host layout) would upload
// (tests/cpp/test_device_layout.cpp emulates the kernels with this code on the host).
//
// The backward runs the same compile for its tile (64 x 64; 128 x 128 on sm90a, whose dQ pass
// walks this row layout and schedule) and transposes the result on the device into its columns
// and schedule (device_transpose_logic.hpp), bit for bit what stage_backward would upload.
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"

#include <type_traits>

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <string>
#include <vector>
#endif

// SPATTN_HD_CALL (called, not inlined, by kernels) for free functions of a header: `inline`
// for linkage too, since every architecture's object has a copy.
#if defined(__CUDACC__)
#define SPATTN_LAYOUT_CALL inline __host__ __device__ __noinline__
#else
#define SPATTN_LAYOUT_CALL inline
#endif

namespace spattn::cuda {

// ---- leaves: which rules have a block rule for the device, and the dispatch -----------------

namespace detail {
template <class R, class = void>
struct has_block_ranges : std::false_type {};
template <class R>
struct has_block_ranges<R, decltype(void(&R::block_range_bound))> : std::true_type {};

template <class R, class Out>
SPATTN_HD void rule_block_ranges(const R& r, const void* data, int64_t h, const brange::Ctx& x,
                                 Out& out) {
  if constexpr (has_block_ranges<R>::value) {
    r.block_ranges(data, h, x, out);
  } else {
    (void)r, (void)data, (void)h, (void)x, (void)out;
  }
}
template <class R>
SPATTN_HD brange::Bound rule_block_bound(const R& r, const void* data, const brange::Ctx& x) {
  if constexpr (has_block_ranges<R>::value) {
    return r.block_range_bound(data, x);
  } else {
    (void)r, (void)data, (void)x;
    return brange::Bound{-1, -1};
  }
}
}  // namespace detail

// Whether a leaf's kind has a device block rule.
SPATTN_HD bool leaf_has_block_ranges(const PredNode& n) {
  switch (n.kind) {
#define SPATTN_RULE(name) \
  case PredKind::name:    \
    return detail::has_block_ranges<rules::name>::value;
#include "spattn/kind_rules.inc"
#undef SPATTN_RULE
    default:
      return false;
  }
}

// A leaf's ranges for the current row into its slot. Called, not inlined, from the kernel: every
// rule's block rule is inlined here, and keeping it out of the caller keeps the row kernel's
// registers at what one rule needs.
SPATTN_LAYOUT_CALL void leaf_block_ranges(const PredNode& n, int64_t h, const brange::Ctx& x,
                                      brange::RangeSink* out) {
  switch (n.kind) {
#define SPATTN_RULE(name)                                                 \
  case PredKind::name:                                                    \
    detail::rule_block_ranges(n.u.name, n.data, h, x, *out);              \
    break;
#include "spattn/kind_rules.inc"
#undef SPATTN_RULE
    default:
      break;
  }
}

SPATTN_HD brange::Bound leaf_block_bound(const PredNode& n, const brange::Ctx& x) {
  switch (n.kind) {
#define SPATTN_RULE(name) \
  case PredKind::name:    \
    return detail::rule_block_bound(n.u.name, n.data, x);
#include "spattn/kind_rules.inc"
#undef SPATTN_RULE
    default:
      return brange::Bound{-1, -1};
  }
}

// ---- the kernels' parameters and per-row work -------------------------------------------------

struct DevLayoutParams {
  Predicate pred;  // device pointers
  int64_t nq = 0, nk = 0, bq = 1, bk = 1, nqb = 0, nkb = 0, off = 0, cap = 64;
  int64_t lheads = 1, hq = 1;
  // Scratch: row r's slots start at scratch + r * row_stride; node x's slot
  // at slot_off[x] with capacity slot_cap[x] ranges.
  brange::Seg* scratch = nullptr;
  int64_t row_stride = 0;
  const int64_t* slot_off = nullptr;
  const int64_t* slot_cap = nullptr;
  // Outputs: the layout CSR (ptr arrays rows + 1; range arrays of out_cap entries each), the
  // rows' costs, and a flag set when a bound was exceeded (never, by construction; tests check).
  int64_t* full_ptr = nullptr;
  int64_t* part_ptr = nullptr;
  int32_t* full_lo = nullptr;
  int32_t* full_hi = nullptr;
  int32_t* part_lo = nullptr;
  int32_t* part_hi = nullptr;
  int64_t out_cap = 0, row_out_cap = 0;  // ranges of each class: in all, in one row
  uint32_t* cost = nullptr;  // [rows]
  int32_t* overflow = nullptr;

  SPATTN_HD int64_t rows() const { return lheads * nqb; }
};

// Everything the launches need: the rows' parameters and the schedule's sort (entries
// h * nqb + a keyed by their layout row's cost; keys_in / vals_in made by a kernel).
struct DevLayoutLaunch {
  DevLayoutParams p;
  uint32_t* keys_in = nullptr;
  uint32_t* keys_out = nullptr;
  int32_t* vals_in = nullptr;
  int32_t* sched = nullptr;
  int64_t sched_len = 0;
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
};

// The sort key of schedule entry e (make_schedule's cost of its row).
SPATTN_HD uint32_t schedule_key(const DevLayoutParams& p, int64_t e) {
  return p.cost[p.lheads == 1 ? e % p.nqb : e];
}

// One class of a row's output (full or partial ranges): appended with merging, written at
// [base, base + n) in fill mode, counted otherwise.
struct CsrOut {
  int32_t* lo = nullptr;
  int32_t* hi = nullptr;
  int64_t base = 0, cap = 0, n = 0, blocks = 0;
  bool have = false, overflow = false;
  int32_t llo = 0, lhi = 0;

  SPATTN_HD void flush() {
    if (!have) return;
    if (lo) {
      if (base + n < cap) {
        lo[base + n] = llo;
        hi[base + n] = lhi;
      } else {
        overflow = true;
      }
    }
    ++n;
    blocks += int64_t(lhi) - llo;
    have = false;
  }
  SPATTN_HD void put(int64_t a, int64_t b) {
    if (have && lhi == a) {
      lhi = int32_t(b);
      return;
    }
    flush();
    llo = int32_t(a);
    lhi = int32_t(b);
    have = true;
  }
};

// Where the root of a row's program goes (layout.cpp's emit): full and partial ranges to their
// lists; an ambiguous block is settled by its elements (full, partial, or dropped).
struct RowEmit {
  const Predicate* pred;
  int64_t h, r0, r1, nk, bk;
  CsrOut full, part;

  SPATTN_HD_CALL uint8_t settle(int64_t c) const {
    const int64_t k0 = c * bk, k1 = brange::imin(nk, (c + 1) * bk) - 1;
    bool any = false, none_missing = true;
    for (int64_t i = r0; i <= r1; ++i)
      for (int64_t j = k0; j <= k1; ++j) {
        if (keeps(*pred, h, i, j))
          any = true;
        else
          none_missing = false;
        if (any && !none_missing) return brange::kPartial;
      }
    return any ? brange::kFull : brange::kAmbiguous;
  }
  SPATTN_HD void put(int64_t lo, int64_t hi, uint8_t cls) {
    if (lo >= hi) return;
    if (cls == brange::kFull) {
      full.put(lo, hi);
    } else if (cls == brange::kPartial) {
      part.put(lo, hi);
    } else {
      for (int64_t c = lo; c < hi; ++c) {
        const uint8_t s = settle(c);
        if (s == brange::kFull)
          full.put(c, c + 1);
        else if (s == brange::kPartial)
          part.put(c, c + 1);
      }
    }
  }
};

// Sweep-merges two rows (ascending, non-overlapping ranges) into out: a union keeps a block
// either keeps (full if one is full; ambiguous if both are not full), an intersection keeps a
// block both keep (full if both are; partial if one is full and the other partial; else
// ambiguous). Per block the classes layout.cpp's n-ary merge gives.
SPATTN_LAYOUT_CALL void merge_rows2(const brange::Seg* A, int64_t na, const brange::Seg* B,
                                int64_t nb, bool is_union, brange::RangeSink& out) {
  constexpr int64_t kEnd = INT64_MAX;
  int64_t i = 0, j = 0;
  int64_t ca = na ? A[0].lo : kEnd, cb = nb ? B[0].lo : kEnd;
  while (ca != kEnd || cb != kEnd) {
    if (ca < cb) {
      const int64_t e = brange::imin(A[i].hi, cb);
      if (is_union) out.put(ca, e, A[i].cls);
      ca = e;
      if (ca == A[i].hi) ca = ++i < na ? A[i].lo : kEnd;
    } else if (cb < ca) {
      const int64_t e = brange::imin(B[j].hi, ca);
      if (is_union) out.put(cb, e, B[j].cls);
      cb = e;
      if (cb == B[j].hi) cb = ++j < nb ? B[j].lo : kEnd;
    } else {
      const int64_t e = brange::imin(A[i].hi, B[j].hi);
      const uint8_t a = A[i].cls, b = B[j].cls;
      uint8_t cls;
      if (is_union)
        cls = (a == brange::kFull || b == brange::kFull) ? brange::kFull : brange::kAmbiguous;
      else if (a == brange::kFull && b == brange::kFull)
        cls = brange::kFull;
      else if ((a == brange::kFull && b == brange::kPartial) ||
               (b == brange::kFull && a == brange::kPartial))
        cls = brange::kPartial;
      else
        cls = brange::kAmbiguous;
      out.put(ca, e, cls);
      ca = cb = e;
      if (ca == A[i].hi) ca = ++i < na ? A[i].lo : kEnd;
      if (cb == B[j].hi) cb = ++j < nb ? B[j].lo : kEnd;
    }
  }
}

// The problem and row r's tile as a block rule sees them.
SPATTN_HD brange::Ctx row_ctx(const DevLayoutParams& p, int64_t a) {
  brange::Ctx x;
  x.nq = p.nq;
  x.nk = p.nk;
  x.bq = p.bq;
  x.bk = p.bk;
  x.off = p.off;
  x.nkb = p.nkb;
  x.cap = p.cap;
  x.r0 = a * p.bq;
  x.r1 = brange::imin(p.nq, x.r0 + p.bq) - 1;
  x.p0 = x.r0 + p.off;
  x.p1 = x.r1 + p.off;
  return x;
}

// One layout row of a predicate program: every node of head h's postfix list (its leaves by
// their block rule, Or / And by sweep-merging its two operands' slots) into its scratch slot
// (row + slot_off[k], capacity slot_cap[k]), then the root's ranges into the emitter. Shared
// by the forward's row compile and decode's device plan; overflow is or-ed with any slot's.
template <class Emit>
SPATTN_HD void emit_program_row(const Predicate& pred, int64_t h, const brange::Ctx& x,
                                brange::Seg* row, const int64_t* slot_off,
                                const int64_t* slot_cap, Emit& em, bool& overflow) {
  const int64_t hh = pred.heads == 1 ? 0 : h;
  const int32_t b = pred.head_begin[hh], e = pred.head_end[hh];
  int32_t st[kMaxPredDepth];
  int64_t stn[kMaxPredDepth];
  int sp = 0;
  for (int32_t k = b; k < e; ++k) {
    const PredNode& n = pred.nodes[k];
    brange::RangeSink s;
    s.seg = row + slot_off[k];
    s.cap = slot_cap[k];
    if (n.kind == PredKind::Or || n.kind == PredKind::And) {
      merge_rows2(row + slot_off[st[sp - 2]], stn[sp - 2], row + slot_off[st[sp - 1]],
                  stn[sp - 1], n.kind == PredKind::Or, s);
      sp -= 2;
    } else {
      leaf_block_ranges(n, h, x, &s);
    }
    s.finish();
    overflow = overflow || s.overflow;
    st[sp] = k;
    stn[sp] = s.n;
    ++sp;
  }
  const brange::Seg* root = row + slot_off[st[0]];
  for (int64_t t = 0; t < stn[0]; ++t) em.put(root[t].lo, root[t].hi, root[t].cls);
}

// Evaluates layout row r. fill false: writes the row's range counts to full_ptr[r + 1] /
// part_ptr[r + 1] and its cost; fill true: writes its ranges at full_ptr[r] / part_ptr[r]
// (already scanned).
SPATTN_HD void compile_layout_row(const DevLayoutParams& p, int64_t r, bool fill) {
  const int64_t h = r / p.nqb, a = r % p.nqb;
  const brange::Ctx x = row_ctx(p, a);
  RowEmit em{&p.pred, h, x.r0, x.r1, p.nk, p.bk, CsrOut{}, CsrOut{}};
  if (fill) {
    em.full.lo = p.full_lo, em.full.hi = p.full_hi, em.full.base = p.full_ptr[r];
    em.part.lo = p.part_lo, em.part.hi = p.part_hi, em.part.base = p.part_ptr[r];
    em.full.cap = em.part.cap = p.out_cap;
  }
  bool overflow = false;
  if (p.nk > 0)
    emit_program_row(p.pred, h, x, p.scratch + r * p.row_stride, p.slot_off, p.slot_cap, em,
                     overflow);
  em.full.flush();
  em.part.flush();
  if (!fill) {
    p.full_ptr[r + 1] = em.full.n;
    p.part_ptr[r + 1] = em.part.n;
    p.cost[r] = uint32_t(2 * em.full.blocks + 3 * em.part.blocks);
    if (r == 0) p.full_ptr[0] = p.part_ptr[0] = 0;
    overflow = overflow || em.full.n > p.row_out_cap || em.part.n > p.row_out_cap;
  } else {
    overflow = overflow || em.full.overflow || em.part.overflow;
  }
  if (overflow) *p.overflow = 1;
}

// ---- host: can a pattern compile on the device, and where everything lies ---------------------

#if !defined(__CUDA_ARCH__)

// The plan of one device compile: the host part of the blob (predicate program with its data,
// slot tables) and the offsets of what the kernels make: the staged layout and schedule in one
// persistent allocation (kept with the compiled pattern), the scratch slots, costs and the
// sort's buffers in one temporary allocation (freed in stream order after the launches).
struct DeviceLayoutPlan {
  StagedForward staged;      // staged.blob: the part uploaded; offsets: the whole allocation
  DevLayoutParams params;    // pointers as offsets from 0 (bind() adds the base)
  size_t slot_off = 0, slot_cap = 0, scratch = 0, cost = 0, keys_in = 0, keys_out = 0, vals_in = 0;
  size_t overflow = 0, sort_temp = 0, sort_temp_bytes = 0;
  size_t total = 0, temp_total = 0;  // bytes of the persistent and the temporary allocation
  int64_t sched_len = 0;

  // The kernels' parameters with the allocations at `base` and `temp`.
  DevLayoutParams bind(void* base, void* temp) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    unsigned char* t = static_cast<unsigned char*>(temp);
    DevLayoutParams p = params;
    staged.pred.bind(b, &p.pred);
    p.scratch = reinterpret_cast<brange::Seg*>(t + scratch);
    p.slot_off = reinterpret_cast<const int64_t*>(b + slot_off);
    p.slot_cap = reinterpret_cast<const int64_t*>(b + slot_cap);
    p.full_ptr = reinterpret_cast<int64_t*>(b + staged.layout.full_ptr);
    p.part_ptr = reinterpret_cast<int64_t*>(b + staged.layout.part_ptr);
    p.full_lo = reinterpret_cast<int32_t*>(b + staged.layout.full_lo);
    p.full_hi = reinterpret_cast<int32_t*>(b + staged.layout.full_hi);
    p.part_lo = reinterpret_cast<int32_t*>(b + staged.layout.part_lo);
    p.part_hi = reinterpret_cast<int32_t*>(b + staged.layout.part_hi);
    p.cost = reinterpret_cast<uint32_t*>(t + cost);
    p.overflow = reinterpret_cast<int32_t*>(b + overflow);
    return p;
  }
  DevLayoutLaunch launch(void* base, void* temp) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    unsigned char* t = static_cast<unsigned char*>(temp);
    DevLayoutLaunch l;
    l.p = bind(base, temp);
    l.keys_in = reinterpret_cast<uint32_t*>(t + keys_in);
    l.keys_out = reinterpret_cast<uint32_t*>(t + keys_out);
    l.vals_in = reinterpret_cast<int32_t*>(t + vals_in);
    l.sched = reinterpret_cast<int32_t*>(b + staged.sched);
    l.sched_len = sched_len;
    l.sort_temp = t + sort_temp;
    l.sort_temp_bytes = sort_temp_bytes;
    return l;
  }
};

// Why the pattern's layout cannot be compiled on the device (empty: it can): a leaf without a
// device block rule, or buffers past max_bytes.
inline std::string device_layout_refusal(const Predicate& pred) {
  int32_t nend = 0;
  for (int64_t h = 0; h < pred.heads; ++h) nend = std::max(nend, pred.head_end[h]);
  for (int32_t k = 0; k < nend; ++k) {
    const PredNode& n = pred.nodes[k];
    if (n.kind == PredKind::Or || n.kind == PredKind::And) continue;
    if (!leaf_has_block_ranges(n))
      return "leaf kind " + std::to_string(int(n.kind)) + " has no device block rule";
  }
  return {};
}

// Plans the device compile of `pred` (CompiledPattern::predicate(), host pointers) for an
// (nq, nk, hq) problem with bq x bk tiles and range budget cap (layout.cpp's, per row).
// sort_temp_bytes: what the schedule's sort needs (cub, asked by the caller; 0 in host tests).
// Returns false with *why when it cannot (device_layout_refusal, or more than max_bytes).
inline bool plan_device_layout(const Predicate& pred, int64_t nq, int64_t nk, int64_t hq,
                               int64_t bq, int64_t bk, int64_t cap, size_t sort_temp_bytes,
                               size_t max_bytes, DeviceLayoutPlan* plan, std::string* why) {
  *why = device_layout_refusal(pred);
  if (!why->empty()) return false;
  DeviceLayoutPlan& P = *plan;
  DevLayoutParams& p = P.params;
  p.nq = nq, p.nk = nk, p.bq = bq, p.bk = bk, p.off = nk - nq, p.cap = cap, p.hq = hq;
  p.nqb = (nq + bq - 1) / bq;
  p.nkb = (nk + bk - 1) / bk;
  p.lheads = pred.heads;
  const int64_t rows = p.rows();
  if (pred.heads != 1 && pred.heads != hq) {
    *why = "the predicate's heads do not match the problem";
    return false;
  }
  if (hq * p.nqb > INT32_MAX || hq * p.nkb > INT32_MAX || p.nkb >= INT32_MAX) {
    *why = "too many tiles for the kernels' 32-bit indices";
    return false;
  }
  // Bounds, slots: per head program, a leaf's slot holds its bound, a merge's twice the sum of
  // its operands' (each boundary of the result is one of theirs).
  brange::Ctx x{nq, nk, bq, bk, nk - nq, p.nkb, cap, 0, 0, 0, 0};
  int32_t nend = 0;
  for (int64_t h = 0; h < pred.heads; ++h) nend = std::max(nend, pred.head_end[h]);
  std::vector<int64_t> slot_off(size_t(nend), 0), slot_cap(size_t(nend), 0);
  int64_t row_stride = 0, out_cap = 0;
  for (int64_t h = 0; h < pred.heads; ++h) {
    const int32_t b = pred.head_begin[h], e = pred.head_end[h];
    std::vector<int64_t> st;
    int64_t used = 0, partials = 0;
    for (int32_t k = b; k < e; ++k) {
      const PredNode& n = pred.nodes[k];
      int64_t c;
      if (n.kind == PredKind::Or || n.kind == PredKind::And) {
        c = std::min<int64_t>(2 * (st[st.size() - 1] + st[st.size() - 2]), p.nkb + 1);
        st.pop_back();
        st.pop_back();
      } else {
        const brange::Bound bd = leaf_block_bound(n, x);
        c = std::min<int64_t>(bd.ranges, p.nkb + 1);
        partials += std::min<int64_t>(bd.partial_blocks, p.nkb);
      }
      st.push_back(c);
      slot_off[size_t(k)] = used;
      slot_cap[size_t(k)] = c;
      used += c;
    }
    row_stride = std::max(row_stride, used);
    const int64_t root = st.empty() ? 0 : st.back();
    out_cap = std::max(out_cap, std::min<int64_t>(p.nkb, root + (e - b > 1 ? partials : 0)));
  }
  p.row_stride = row_stride;
  // out_cap is per row; the range arrays hold rows * out_cap.
  const double bytes = double(rows) * double(out_cap) * 16.0 +
                       double(rows) * double(row_stride) * double(sizeof(brange::Seg)) +
                       double(rows + 1) * 16.0 + double(hq * p.nqb) * 12.0 +
                       double(sort_temp_bytes) + double(nend) * 16.0;
  if (bytes > double(max_bytes)) {
    *why = "the layout's buffers would take " + std::to_string(int64_t(bytes)) +
           " bytes (bound: " + std::to_string(int64_t(max_bytes)) + ")";
    return false;
  }
  p.row_out_cap = out_cap;
  p.out_cap = rows * out_cap;

  // The uploaded part: predicate program and data, slot tables.
  StagedForward& s = P.staged;
  s.bq = bq, s.bk = bk, s.lheads = pred.heads, s.nqb = p.nqb, s.nkb = p.nkb;
  s.sched_len = hq * p.nqb;
  P.sched_len = s.sched_len;
  BlobWriter w;
  s.pred = stage_predicate(w, pred);
  P.slot_off = w.put(slot_off.data(), slot_off.size() * sizeof(int64_t));
  P.slot_cap = w.put(slot_cap.data(), slot_cap.size() * sizeof(int64_t));
  w.finish();
  s.blob = w.bytes;
  // What the kernels make, after it (offsets only).
  size_t at = s.blob.size(), tmp = 0;
  auto take = [&](size_t n) {
    const size_t r = at;
    at = (at + n + 15) & ~size_t(15);
    return r;
  };
  auto take_temp = [&](size_t n) {
    const size_t r = tmp;
    tmp = (tmp + n + 15) & ~size_t(15);
    return r;
  };
  s.layout.full_ptr = take(size_t(rows + 1) * sizeof(int64_t));
  s.layout.part_ptr = take(size_t(rows + 1) * sizeof(int64_t));
  s.layout.full_lo = take(size_t(p.out_cap) * sizeof(int32_t));
  s.layout.full_hi = take(size_t(p.out_cap) * sizeof(int32_t));
  s.layout.part_lo = take(size_t(p.out_cap) * sizeof(int32_t));
  s.layout.part_hi = take(size_t(p.out_cap) * sizeof(int32_t));
  s.sched = take(size_t(s.sched_len) * sizeof(int32_t));
  P.overflow = take(sizeof(int32_t));
  P.total = at;
  P.scratch = take_temp(size_t(rows * row_stride) * sizeof(brange::Seg));
  P.cost = take_temp(size_t(rows) * sizeof(uint32_t));
  P.keys_in = take_temp(size_t(s.sched_len) * sizeof(uint32_t));
  P.keys_out = take_temp(size_t(s.sched_len) * sizeof(uint32_t));
  P.vals_in = take_temp(size_t(s.sched_len) * sizeof(int32_t));
  P.sort_temp_bytes = sort_temp_bytes;
  P.sort_temp = take_temp(sort_temp_bytes);
  P.temp_total = tmp;
  return true;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
