// The decode plan made on the device, from lengths (cache_len) that live on the device and that
// the host never reads: what lets a decode step run with no host synchronisation and be
// captured in a CUDA graph (cuda/src/host/decode.cpp). SPATTN_HD code, so that the host test
// (tests/cpp/test_cuda_decode_plan.cpp) runs exactly what the kernels (kernels/decode_plan.cu)
// run, and checks it equals the host plan (decode_logic.hpp's stage_decode) bit for bit.
//
// Two launches on the caller's stream, before the decode kernels:
//   rows   one thread per (sequence b, layout head lh): reads cache_len[b] (an error record
//          entry and length 0 when it is outside [0, capacity] or below the pattern's
//          min_keys), evaluates the layout row of one query block of Nq rows and key blocks of
//          bk (device_layout_logic.hpp's leaves and merges, the host compiler's classes) into
//          a row of fixed capacity; lh == 0 also writes the sequence's DecodeSeq;
//   union  one thread per (sequence, kv head) bg: the union of its G query heads' rows
//          (visited_block_union's rule, by binary searches in the rows' sorted lists), the
//          blocks before each range, and its split count dec_num_splits(T, ...) with the
//          host's cells and target.
// The decode kernels then run ns_max tasks per bg (ns_max: the split count of the largest T a
// length up to the capacity can give); a task past its bg's split count exits at once. So the
// splits, their blocks and every sum are those of the host plan for the same lengths.
//
// The pattern: the predicate program compiled for one length (any length >= min_keys; the
// rule is the same for every length, pattern/length_rule.hpp), uploaded once and kept with the
// compiled pattern; each sequence's copy gets its own off = nk - Nq. Buffers have capacities
// known on the host, from the rules' bounds at the capacity (the bounds do not decrease with
// Nk): nothing is read back.
#pragma once

#include <cstdint>

#include "spattn/block_ranges.hpp"
#include "spattn/cuda/decode_logic.hpp"
#include "spattn/cuda/device_layout_logic.hpp"
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <string>
#include <vector>
#endif

namespace spattn::cuda {

struct DecodePlanParams {
  Predicate pred;  // device copy (off: set per sequence)
  // cache_len [B]: int32 or int64, element stride lens_s (device memory).
  const void* lens = nullptr;
  bool lens64 = false;
  int64_t lens_s = 1;
  int64_t b = 0, nq = 0, hq = 0, hkv = 0, group = 1, bk = 1;
  int64_t capacity = 0, min_keys = 0;
  int64_t lheads = 1;  // layout heads (1 or hq)
  int64_t cap = 64;    // the host compiler's range budget per row (layout_row_budget(lheads))
  // Scratch of the program's nodes, per row: row r's node x at scratch + r * row_stride +
  // slot_off[x], capacity slot_cap[x] (device_layout_logic.hpp's slots).
  brange::Seg* scratch = nullptr;
  int64_t row_stride = 0;
  const int64_t* slot_off = nullptr;
  const int64_t* slot_cap = nullptr;
  // Rows r = b * lheads + lh, row_cap ranges of each class each: [beg[r], end[r]).
  int64_t row_cap = 0;
  int32_t* full_lo = nullptr;
  int32_t* full_hi = nullptr;
  int32_t* part_lo = nullptr;
  int32_t* part_hi = nullptr;
  int64_t* full_beg = nullptr;
  int64_t* full_end = nullptr;
  int64_t* part_beg = nullptr;
  int64_t* part_end = nullptr;
  // Union of bg: ucap ranges at bg * ucap: [ubeg[bg], uend[bg]), blocks before each, in all.
  int64_t ucap = 0;
  int32_t* ulo = nullptr;
  int32_t* uhi = nullptr;
  int64_t* ubefore = nullptr;
  int64_t* ubeg = nullptr;
  int64_t* uend = nullptr;
  int64_t* ublocks = nullptr;
  int32_t* bg_ns = nullptr;
  // dec_num_splits' cells and target (the host plan's), and the splits' bound.
  int64_t cells = 1, target = 1, ns_max = 1;
  DecodeSeq* seqs = nullptr;             // [B], written by the rows launch
  unsigned long long* error = nullptr;  // the decode's error record (decode_logic.hpp)
};

// atomicMin on the device; a plain min in the host emulation (one thread).
SPATTN_HD void dec_record_min(unsigned long long* where, unsigned long long key) {
#if defined(__CUDA_ARCH__)
  atomicMin(where, key);
#else
  if (key < *where) *where = key;
#endif
}

// cache_len[b] as stored.
SPATTN_HD int64_t dec_len_raw(const void* lens, bool lens64, int64_t lens_s, int64_t b) {
  return lens64 ? static_cast<const int64_t*>(lens)[b * lens_s]
                : int64_t(static_cast<const int32_t*>(lens)[b * lens_s]);
}

// The length sequence b is planned with (0 for a bad one), and *key its error (UINT64_MAX:
// none): outside [0, capacity] first, then below min_keys (the CPU's order of checks).
SPATTN_HD int64_t dec_plan_len(const DecodePlanParams& p, int64_t b, unsigned long long* key) {
  const int64_t n = dec_len_raw(p.lens, p.lens64, p.lens_s, b);
  *key = ~0ull;
  if (n < 0 || n > p.capacity) {
    *key = (kDecErrLength << kDecErrClassShift) | (unsigned long long)b;
    return 0;
  }
  if (n > 0 && n < p.min_keys) {
    *key = (kDecErrPattern << kDecErrClassShift) | (unsigned long long)b;
    return 0;
  }
  return n;
}

// Layout row r = b * lheads + lh of the decode layout of sequence b (one query block of all nq
// rows, key blocks of bk), as CompiledPattern::layout(nq, bk) makes it for cache_len[b]: the
// program of head lh (device_layout_logic.hpp's compile_layout_row, in one pass into a row of
// fixed capacity). lh == 0 also writes seqs[b] and records the length's error.
SPATTN_HD void dec_plan_row(const DecodePlanParams& p, int64_t r) {
  const int64_t b = r / p.lheads, lh = r - b * p.lheads;
  unsigned long long key;
  const int64_t nk = dec_plan_len(p, b, &key);
  Predicate pred = p.pred;
  pred.off = nk - p.nq;
  brange::Ctx x;
  x.nq = p.nq;
  x.nk = nk;
  x.bq = p.nq;
  x.bk = p.bk;
  x.off = nk - p.nq;
  x.nkb = (nk + p.bk - 1) / p.bk;
  x.cap = p.cap;
  x.r0 = 0;
  x.r1 = p.nq - 1;
  x.p0 = x.r0 + x.off;
  x.p1 = x.r1 + x.off;
  const int64_t base = r * p.row_cap;
  RowEmit em{&pred, lh, x.r0, x.r1, nk, p.bk, CsrOut{}, CsrOut{}};
  em.full.lo = p.full_lo, em.full.hi = p.full_hi, em.full.base = base;
  em.part.lo = p.part_lo, em.part.hi = p.part_hi, em.part.base = base;
  em.full.cap = em.part.cap = base + p.row_cap;  // CsrOut writes while base + n < cap
  bool overflow = false;
  if (nk > 0)
    emit_program_row(pred, lh, x, p.scratch + r * p.row_stride, p.slot_off, p.slot_cap, em,
                     overflow);
  em.full.flush();
  em.part.flush();
  overflow = overflow || em.full.overflow || em.part.overflow;
  p.full_beg[r] = base;
  p.full_end[r] = base + (em.full.n < p.row_cap ? em.full.n : p.row_cap);
  p.part_beg[r] = base;
  p.part_end[r] = base + (em.part.n < p.row_cap ? em.part.n : p.row_cap);
  if (overflow) dec_record_min(p.error, kDecErrBound << kDecErrClassShift);
  if (lh != 0) return;
  if (key != ~0ull) dec_record_min(p.error, key);
  DecodeSeq s;
  s.nk = nk;
  s.lheads = p.lheads;
  const int64_t r0 = b * p.lheads;
  s.full_ptr = p.full_beg + r0;
  s.full_end = p.full_end + r0;
  s.part_ptr = p.part_beg + r0;
  s.part_end = p.part_end + r0;
  s.full_lo = p.full_lo, s.full_hi = p.full_hi, s.part_lo = p.part_lo, s.part_hi = p.part_hi;
  s.pred = pred;
  p.seqs[b] = s;
}

// The union of the rows of bg's query heads (visited_block_union: every full and partial range,
// clipped to [0, nkb), merged where they touch or overlap, ascending), the blocks listed before
// each range, and bg's split count. Runs after the rows launch (reads seqs[b].nk).
SPATTN_HD void dec_plan_union(const DecodePlanParams& p, int64_t bg) {
  const int64_t b = bg / p.hkv, g = bg - b * p.hkv;
  const int64_t nk = p.seqs[b].nk, nkb = (nk + p.bk - 1) / p.bk;
  const int64_t r0 = b * p.lheads;
  const int64_t hb = p.lheads == 1 ? 0 : g * p.group, he = p.lheads == 1 ? 1 : hb + p.group;
  const int64_t base = bg * p.ucap;
  int64_t n = 0, before = 0;
  bool overflow = false;
  // Each list (a head's full or partial ranges) is ascending and disjoint, so "its first range
  // ending past e" is a binary search. A component starts at the smallest lo of the ranges
  // ending past the last component's end f (none of them starts at or before f, else it would
  // have been extended), and grows while some range starts at or before its end.
  int64_t f = 0;
  while (f < nkb) {
    int64_t s = INT64_MAX;
    for (int64_t h = hb; h < he; ++h)
      for (int cls = 0; cls < 2; ++cls) {
        const int64_t row = r0 + h;
        const int64_t beg = cls ? p.part_beg[row] : p.full_beg[row];
        const int64_t end = cls ? p.part_end[row] : p.full_end[row];
        const int32_t* lo = cls ? p.part_lo : p.full_lo;
        const int32_t* hi = cls ? p.part_hi : p.full_hi;
        const int64_t t = dec_seek(hi, beg, end, f);
        if (t < end && int64_t(lo[t]) < s) s = lo[t];
      }
    if (s < 0) s = 0;
    if (s >= nkb) break;
    int64_t e = s;
    bool grew = true;
    while (grew && e < nkb) {
      grew = false;
      for (int64_t h = hb; h < he; ++h)
        for (int cls = 0; cls < 2; ++cls) {
          const int64_t row = r0 + h;
          const int64_t beg = cls ? p.part_beg[row] : p.full_beg[row];
          const int64_t end = cls ? p.part_end[row] : p.full_end[row];
          const int32_t* lo = cls ? p.part_lo : p.full_lo;
          const int32_t* hi = cls ? p.part_hi : p.full_hi;
          const int64_t t = dec_seek(hi, beg, end, e);
          if (t < end && int64_t(lo[t]) <= e) {
            e = int64_t(hi[t]) < nkb ? int64_t(hi[t]) : nkb;
            grew = true;
          }
        }
    }
    if (e <= s) break;  // (not reached: s < nkb and some range holds block s)
    if (n < p.ucap) {
      p.ulo[base + n] = int32_t(s);
      p.uhi[base + n] = int32_t(e);
      p.ubefore[base + n] = before;
    } else {
      overflow = true;
    }
    ++n;
    before += e - s;
    f = e;
  }
  if (overflow) {
    dec_record_min(p.error, kDecErrBound << kDecErrClassShift);
    n = p.ucap;
  }
  p.ubeg[bg] = base;
  p.uend[bg] = base + n;
  p.ublocks[bg] = overflow ? 0 : before;
  const int64_t ns = dec_num_splits(p.ublocks[bg], p.bk, p.cells, p.target);
  p.bg_ns[bg] = int32_t(ns < p.ns_max ? ns : p.ns_max);
}

// Points the decode kernels' plan fields at the device plan's arrays.
SPATTN_HD void dec_bind_device_plan(const DecodePlanParams& pp, DecodeParams* p) {
  p->seqs = pp.seqs;
  p->uptr = pp.ubeg;
  p->uend = pp.uend;
  p->ulo = pp.ulo;
  p->uhi = pp.uhi;
  p->ubefore = pp.ubefore;
  p->ublocks = pp.ublocks;
  p->task_bg = nullptr;
  p->task_split = nullptr;
  p->bg_task0 = nullptr;
  p->bg_ns = pp.bg_ns;
  p->ns_max = pp.ns_max;
  p->ntasks = pp.b * pp.hkv * pp.ns_max;
  p->rgroups = dec_row_groups(pp.group, pp.nq);
  p->lens = pp.lens;
  p->lens64 = pp.lens64;
  p->lens_s = pp.lens_s;
  p->capacity = pp.capacity;
  p->min_keys = pp.min_keys;
}

// ---------------------------------------------------------------------------------------------
// Host side: what is planned once per (compiled pattern, Nq, bk, capacity) and uploaded (the
// program and the slot tables), and the per-call workspace (offsets only).

#if !defined(__CUDA_ARCH__)

// The program part, kept on the device with the compiled pattern.
struct DecodeProgram {
  std::vector<unsigned char> blob;  // predicate program and data, slot_off, slot_cap
  StagedPredicate pred;
  size_t slot_off = 0, slot_cap = 0;
  int64_t lheads = 1, cap = 64, row_stride = 0, row_cap = 0, nkb_max = 0;

  // Rewrites the program's data pointers for a copy of the blob at `base`.
  void relocate(const void* base) { pred.relocate(blob, base); }
  // p's program fields for the copy at `base`.
  void bind(const void* base, DecodePlanParams* p) const {
    unsigned char* b = const_cast<unsigned char*>(static_cast<const unsigned char*>(base));
    pred.bind(b, &p->pred);
    p->slot_off = reinterpret_cast<const int64_t*>(b + slot_off);
    p->slot_cap = reinterpret_cast<const int64_t*>(b + slot_cap);
    p->lheads = lheads;
    p->cap = cap;
    p->row_stride = row_stride;
    p->row_cap = row_cap;
  }
};

// The program of `pred` (host pointers; compiled for any length >= min_keys) for decode layouts
// of nq rows and key blocks of bk over lengths up to `capacity`, with range budget `cap`
// (layout_row_budget(lheads)). False with *why when a leaf has no device block rule.
inline bool plan_decode_program(const Predicate& pred, int64_t nq, int64_t hq, int64_t bk,
                                int64_t capacity, int64_t cap, DecodeProgram* out,
                                std::string* why) {
  DeviceLayoutPlan lp;
  // The bounds at the capacity bound every length below it. No sort, no byte bound here (the
  // caller bounds the whole workspace).
  if (!plan_device_layout(pred, nq, capacity, hq, nq, bk, cap, 0, SIZE_MAX, &lp, why))
    return false;
  DecodeProgram& P = *out;
  P.blob = lp.staged.blob;
  P.pred = lp.staged.pred;
  P.slot_off = lp.slot_off;
  P.slot_cap = lp.slot_cap;
  P.lheads = pred.heads;
  P.cap = cap;
  P.row_stride = std::max<int64_t>(lp.params.row_stride, 1);
  P.nkb_max = (capacity + bk - 1) / bk;
  P.row_cap = std::max<int64_t>(lp.params.row_out_cap, 1);
  return true;
}

// The per-call workspace: the plan's arrays, then (decode.cpp) the error record and partials.
// The device plan's arrays (DecodePlanParams' rows, unions and split counts) as byte offsets
// into one allocation, with the split-K sizes that go with them: the part of the workspace
// every device-planned decode shares (DecodePlanSpace here, the TopKBlocks decode's
// StagedDecTopk and DecTopkDevSpace).
struct DecodePlanOffsets {
  size_t full_lo = 0, full_hi = 0, part_lo = 0, part_hi = 0, full_beg = 0, full_end = 0,
         part_beg = 0, part_end = 0, ulo = 0, uhi = 0, ubefore = 0, ubeg = 0, uend = 0,
         ublocks = 0, bg_ns = 0;
  int64_t ucap = 1, ns_max = 1, cells = 1, target = 1;

  // Points p's plan arrays into the allocation at `base` and copies the sizes.
  void point_plan(unsigned char* base, DecodePlanParams* p) const {
    p->full_lo = reinterpret_cast<int32_t*>(base + full_lo);
    p->full_hi = reinterpret_cast<int32_t*>(base + full_hi);
    p->part_lo = reinterpret_cast<int32_t*>(base + part_lo);
    p->part_hi = reinterpret_cast<int32_t*>(base + part_hi);
    p->full_beg = reinterpret_cast<int64_t*>(base + full_beg);
    p->full_end = reinterpret_cast<int64_t*>(base + full_end);
    p->part_beg = reinterpret_cast<int64_t*>(base + part_beg);
    p->part_end = reinterpret_cast<int64_t*>(base + part_end);
    p->ulo = reinterpret_cast<int32_t*>(base + ulo);
    p->uhi = reinterpret_cast<int32_t*>(base + uhi);
    p->ubefore = reinterpret_cast<int64_t*>(base + ubefore);
    p->ubeg = reinterpret_cast<int64_t*>(base + ubeg);
    p->uend = reinterpret_cast<int64_t*>(base + uend);
    p->ublocks = reinterpret_cast<int64_t*>(base + ublocks);
    p->bg_ns = reinterpret_cast<int32_t*>(base + bg_ns);
    p->ucap = ucap;
    p->ns_max = ns_max;
    p->cells = cells;
    p->target = target;
  }
};

struct DecodePlanSpace : DecodePlanOffsets {
  size_t scratch = 0, seqs = 0;
  size_t total = 0;

  // Points p's workspace fields into the allocation at `base`.
  void bind(void* base, DecodePlanParams* p) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    p->scratch = reinterpret_cast<brange::Seg*>(b + scratch);
    point_plan(b, p);
    p->seqs = reinterpret_cast<DecodeSeq*>(b + seqs);
  }
};

// The workspace of a call with B sequences, hkv kv heads of `group` query heads, nq queries,
// on a device of `sms` SMs (stage_decode's cells and target), for program `prog`.
inline DecodePlanSpace plan_decode_space(const DecodeProgram& prog, int64_t B, int64_t hkv,
                                         int64_t group, int64_t nq, int64_t bk, int64_t sms) {
  DecodePlanSpace s;
  const int64_t rows = B * prog.lheads, bgs = B * hkv;
  const int64_t heads_per_bg = prog.lheads == 1 ? 1 : group;
  s.ucap = std::max<int64_t>(1, std::min<int64_t>(prog.nkb_max, heads_per_bg * 2 * prog.row_cap));
  s.target = std::max<int64_t>(1, sms) * kDecCtasPerSm;
  s.cells = B * hkv * dec_row_groups(group, nq);
  s.ns_max = dec_num_splits(prog.nkb_max, bk, s.cells, s.target);
  size_t at = 0;
  auto take = [&](size_t n) {
    const size_t r = at;
    at = (at + n + 15) & ~size_t(15);
    return r;
  };
  s.seqs = take(size_t(B) * sizeof(DecodeSeq));
  s.scratch = take(size_t(rows * prog.row_stride) * sizeof(brange::Seg));
  const size_t rr = size_t(rows * prog.row_cap) * sizeof(int32_t);
  s.full_lo = take(rr), s.full_hi = take(rr), s.part_lo = take(rr), s.part_hi = take(rr);
  const size_t rp = size_t(rows) * sizeof(int64_t);
  s.full_beg = take(rp), s.full_end = take(rp), s.part_beg = take(rp), s.part_end = take(rp);
  s.ulo = take(size_t(bgs * s.ucap) * sizeof(int32_t));
  s.uhi = take(size_t(bgs * s.ucap) * sizeof(int32_t));
  s.ubefore = take(size_t(bgs * s.ucap) * sizeof(int64_t));
  const size_t bp = size_t(bgs) * sizeof(int64_t);
  s.ubeg = take(bp), s.uend = take(bp), s.ublocks = take(bp);
  s.bg_ns = take(size_t(bgs) * sizeof(int32_t));
  s.total = at;
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
