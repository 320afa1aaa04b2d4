// TopKBlocks in the CUDA decode: each sequence's blocks chosen on the device, and the decode
// plan made there from that choice. SPATTN_HD code, so that the host test
// (tests/cpp/test_cuda_decode_topk.cpp) runs exactly what the kernels (kernels/decode_topk.cu)
// run and compares it with the CPU decode (cpu/decode.cpp: select::choose per sequence, then
// the concrete pattern's layout with one query block of Nq rows) and the host plan
// (decode_logic.hpp's stage_decode).
//
// Per sequence b (nk = cache_len[b], a host length; 0: nothing to do) the CPU's choice
// (topk_logic.hpp's rule, the same float operations in the same order):
//   qpool   the mean of each query block's rows (bq of the Nq queries), per query head;
//   kpool   the mean of each scored key block (bk keys of rows [0, nk), read through the block
//           table when paged), per kv head; or a copy of the caller's pooled_keys;
//   choose  per (query block, head): the current blocks and the top k candidates
//           (topk_select.cu's choose step, shared with attention);
// then the decode plan of the concrete pattern (chosen & Causal() | always):
//   rows    one thread per (sequence, query head): the layout row of ONE query tile of all Nq
//           rows and key tiles of the decode's block (page size, or kDecContigBlock), as
//           CompiledPattern::layout(Nq, bk) makes it: a tile is full when the chosen part or
//           the always pattern's own layout is full there, partial when one of them is partial
//           and the other empty, and settled by its elements (RowEmit) when both are partial
//           (layout.cpp's ambiguous piece of a union); rows of fixed capacity;
//   union   one thread per (sequence, kv head): decode_plan_logic.hpp's dec_plan_union.
// The decode kernels then run the device plan's task list (ns_max tasks per (sequence, kv
// head), decode_logic.hpp). The per-sequence data the host knows from the lengths (the geometry,
// the always pattern's layout, the element rule with the chosen leaf pointed at the sequence's
// mask, every buffer's offset) is uploaded once per call in one blob.
//
// Block-table entries: without pooled_keys the CPU checks every page below cache_len[b] before
// it pools (cpu/decode.cpp, cache_key_rows); here one thread per (sequence, page) does the same
// and records the smallest bad (sequence, page) in the decode's error record (kv head 0's key,
// decode_logic.hpp), and pooling never dereferences a bad page.
#pragma once

#include <cstdint>

#include "spattn/cuda/decode_logic.hpp"
#include "spattn/cuda/decode_plan_logic.hpp"
#include "spattn/cuda/device_layout_logic.hpp"
#include "spattn/cuda/topk_logic.hpp"
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <vector>

#include "spattn/layout.hpp"
#endif

namespace spattn::cuda {

// What the kernels know of sequence b (device pointers, written by the host).
struct DecTopkSeq {
  TopkGeom g;              // g.nk = cache_len[b]; the TopKBlocks blocks (bq x bk)
  float* km = nullptr;     // [hkv, g.kmax, d] pooled keys of the scored blocks
  uint8_t* mask = nullptr; // [hq, g.nqb, g.nkb] the chosen blocks (select::choose's bits)
  int64_t nkb = 0;         // decode key tiles: ceil(nk / bk of the decode)
  int64_t row_cap = 0;     // ranges of each class per layout row
  int64_t row_base = 0;    // row of head h: [row_base + h * row_cap, + row_cap)
  TopkRanges always;       // the always pattern's decode layout (full_ptr null: none)
  Predicate pred;          // the concrete pattern's element rule (off = nk - Nq)
};

struct DecTopkParams {
  DecodeParams dp;       // tensors, table, error record (the decode kernels' own)
  DecodePlanParams pp;   // rows and union arrays, splits (decode_plan_logic.hpp)
  const DecTopkSeq* seqs = nullptr;
  float* qm = nullptr;   // [B, hq, nqb, d] pooled queries
  int64_t nqb = 0, bq = 1, bk = 1;  // TopKBlocks' blocks (the same for every sequence)
  int64_t kmax_max = 0;  // the largest g.kmax (grid size)
  // The caller's pooled keys [B, blocks, hkv, d] float32 (null: pool the cache).
  const float* pooled = nullptr;
  int64_t pk_sb = 0, pk_sc = 0, pk_sh = 0, pk_sd = 1;
};

// Query q[b, i, h, f] as float (the decode kernels' dtype codes).
template <class T>
SPATTN_HD const T* dec_topk_q(const DecTopkParams& p, int64_t b, int64_t i, int64_t h, int64_t f) {
  const DecodeParams& d = p.dp;
  return static_cast<const T*>(d.q) + b * d.q_sb + i * d.q_sn + h * d.q_sh + f * d.q_sd;
}

// Pooled query of block a, head h, feature f of sequence b: rows summed in order, then times
// 1 / rows (select::pool; topk_logic.hpp's operations). `load` reads one element as float.
template <class Load>
SPATTN_HD float dec_topk_query_mean(const DecTopkParams& p, int64_t b, int64_t h, int64_t a,
                                    int64_t f, Load load) {
  int64_t j0, j1;
  topk_pool_rows(p.dp.nq, p.bq, a, &j0, &j1);
  float acc = 0.f;
  for (int64_t j = j0; j < j1; ++j) acc = topk_add(acc, load(b, j, h, f, /*key=*/false, 0));
  if (j1 > j0) acc = topk_mul(acc, topk_pool_scale(j1 - j0));
  return acc;
}

// The page holding key j of sequence b (contiguous caches: -1, unused), *ok false for a bad
// table entry (never dereferenced).
SPATTN_HD int64_t dec_topk_page(const DecTopkParams& p, int64_t b, int64_t j, bool* ok) {
  *ok = true;
  if (!p.dp.paged) return -1;
  const int64_t page = dec_table_entry(p.dp, b, j / p.dp.bk);
  *ok = dec_page_ok(p.dp, page);
  return page;
}

// Element offset of feature f of key j of sequence b, kv head g, on `page` (dec_topk_page).
SPATTN_HD int64_t dec_topk_k_offset(const DecTopkParams& p, int64_t b, int64_t page, int64_t j,
                                    int64_t g, int64_t f) {
  const DecodeParams& d = p.dp;
  const int64_t row = d.paged ? dec_k_offset(d, b, page, j - (j / d.bk) * d.bk, g)
                              : dec_k_offset(d, b, 0, j, g);
  return row + f * d.k_sd;
}

// Pooled key of block c, kv head g, feature f of sequence b: the caller's pooled_keys when
// given, else the mean of the block's cache rows (bad pages skipped: the call reports them).
template <class Load>
SPATTN_HD float dec_topk_key_mean(const DecTopkParams& p, int64_t b, int64_t g, int64_t c,
                                  int64_t f, Load load) {
  if (p.pooled) return p.pooled[b * p.pk_sb + c * p.pk_sc + g * p.pk_sh + f * p.pk_sd];
  int64_t j0, j1;
  topk_pool_rows(p.seqs[b].g.nk, p.bk, c, &j0, &j1);
  float acc = 0.f;
  for (int64_t j = j0; j < j1; ++j) {
    bool ok;
    const int64_t page = dec_topk_page(p, b, j, &ok);
    if (ok) acc = topk_add(acc, load(b, j, g, f, /*key=*/true, page));
  }
  if (j1 > j0) acc = topk_mul(acc, topk_pool_scale(j1 - j0));
  return acc;
}

// Page c of sequence b: the CPU's check of every page below cache_len[b] before pooling
// (only when the cache is pooled, paged, and c is such a page).
SPATTN_HD void dec_topk_check_page(const DecTopkParams& p, int64_t b, int64_t c) {
  if (p.pooled || !p.dp.paged) return;
  const int64_t nk = p.seqs[b].g.nk;
  if (c >= (nk + p.dp.bk - 1) / p.dp.bk) return;
  if (!dec_page_ok(p.dp, dec_table_entry(p.dp, b, c)))
    dec_record_min(p.dp.error, dec_error_key(p.dp, b, 0, c));
}

// Layout row r = b * hq + h (see the top of this file): the tiles' classes from the chosen
// mask and the always layout, written at the row's fixed place; overflow is recorded as a bound
// error (a library bug).
SPATTN_HD void dec_topk_row(const DecTopkParams& p, int64_t r) {
  const DecodePlanParams& pp = p.pp;
  const int64_t b = r / pp.hq, h = r - b * pp.hq;
  const DecTopkSeq& s = p.seqs[b];
  const int64_t base = s.row_base + h * s.row_cap;
  const int64_t nq = pp.nq, bk = pp.bk;
  RowEmit em{&s.pred, h, 0, nq - 1, s.g.nk, bk, CsrOut{}, CsrOut{}};
  em.full.lo = pp.full_lo, em.full.hi = pp.full_hi, em.full.base = base;
  em.part.lo = pp.part_lo, em.part.hi = pp.part_hi, em.part.base = base;
  em.full.cap = em.part.cap = base + s.row_cap;
  if (s.g.nk > 0) {
    TopkRangeCursor cur(s.always, h, 0);
    for (int64_t t = 0; t < s.nkb; ++t) {
      const int sel = topk_sel_state(s.g, s.mask, h, 0, t, nq, bk);
      const int alw = cur.state(s.always, t);
      if (sel == 2 || alw == 2)
        em.put(t, t + 1, brange::kFull);
      else if (sel == 1 && alw == 1)
        em.put(t, t + 1, brange::kAmbiguous);  // settled by its elements
      else if (sel | alw)
        em.put(t, t + 1, brange::kPartial);
    }
  }
  em.full.flush();
  em.part.flush();
  pp.full_beg[r] = base;
  pp.full_end[r] = base + (em.full.n < s.row_cap ? em.full.n : s.row_cap);
  pp.part_beg[r] = base;
  pp.part_end[r] = base + (em.part.n < s.row_cap ? em.part.n : s.row_cap);
  if (em.full.overflow || em.part.overflow)
    dec_record_min(pp.error, kDecErrBound << kDecErrClassShift);
}

// ---------------------------------------------------------------------------------------------
// Host side: what the launcher (host/decode_topk.cpp) and the test compute from the lengths.

#if !defined(__CUDA_ARCH__)

// Ranges of each class a decode layout row of sequence g can hold: at most one per visited
// tile, the visited tiles being the chosen part's (topk_row_tiles with one query tile of Nq
// rows) plus the always layout's in that row (most over its heads), never more than the row.
inline int64_t dec_topk_row_cap(const TopkGeom& g, int64_t nq, int64_t bk,
                                const BlockLayout* always) {
  const int64_t nkb = topk_blocks_of(g.nk, bk);
  int64_t alw = 0;
  if (always != nullptr)
    for (int64_t r = 0; r < always->heads; ++r) {
      int64_t n = 0;
      for (int64_t t = always->full_ptr[size_t(r)]; t < always->full_ptr[size_t(r + 1)]; ++t)
        n += int64_t(always->full_hi[size_t(t)]) - always->full_lo[size_t(t)];
      for (int64_t t = always->part_ptr[size_t(r)]; t < always->part_ptr[size_t(r + 1)]; ++t)
        n += int64_t(always->part_hi[size_t(t)]) - always->part_lo[size_t(t)];
      alw = std::max(alw, n);
    }
  return std::max<int64_t>(1, std::min(nkb, topk_row_tiles(g, nq, bk) + alw));
}


// What the host knows of sequence b: its geometry (g.nk = cache_len[b]), the always pattern's
// decode layout (null: none; CompiledPattern::layout(Nq, bk)) and the element rule
// (topk_predicate, host pointers; its chosen leaves are pointed at the sequence's mask).
struct DecTopkSeqIn {
  TopkGeom g;
  const BlockLayout* always = nullptr;
  const TopkPredicate* pred = nullptr;
};

// One call's blob and workspace, one allocation: [blob | pooled queries | per sequence pooled
// keys and mask | layout rows | unions | error record | partials]; byte offsets from its base.
struct StagedDecTopk : DecodePlanOffsets {
  std::vector<unsigned char> blob;  // DecTopkSeq [B] | DecodeSeq [B] | per sequence data
  size_t seqs = 0, dseqs = 0;
  std::vector<StagedRanges> always;
  std::vector<StagedPredicate> pred;
  std::vector<DecTopkSeqIn> in;
  std::vector<size_t> km, mask;
  std::vector<int64_t> row_cap, row_base;
  size_t qm = 0, rows_lo = 0, error = 0, part_m = 0, part_l = 0, part_acc = 0;  // and the plan's
  size_t total = 0;
  int64_t b = 0, nq = 0, hq = 0, hkv = 0, group = 1, d = 0, bq = 1, bkt = 1, bk = 1, nqb = 0;
  int64_t kmax_max = 0, ntasks = 0, rgroups = 0;

  // Writes the DecTopkSeq and DecodeSeq arrays and the predicates' pointers into the blob for
  // the allocation at `base` (the device's; in tests, a host buffer).
  void relocate(void* base) {
    unsigned char* x = static_cast<unsigned char*>(base);
    for (int64_t s = 0; s < b; ++s) {
      const DecTopkSeqIn& q = in[size_t(s)];
      DecTopkSeq t;
      t.g = q.g;
      DecodeSeq d;
      d.nk = q.g.nk;
      d.lheads = hq;
      if (q.g.nk > 0) {
        t.km = reinterpret_cast<float*>(x + km[size_t(s)]);
        t.mask = x + mask[size_t(s)];
        t.nkb = topk_blocks_of(q.g.nk, bk);
        t.row_cap = row_cap[size_t(s)];
        t.row_base = row_base[size_t(s)];
        if (q.always != nullptr) {
          t.always.heads = q.always->heads;
          t.always.n_outer = q.always->nqb;
          t.always.full_ptr = reinterpret_cast<const int64_t*>(x + always[size_t(s)].full_ptr);
          t.always.part_ptr = reinterpret_cast<const int64_t*>(x + always[size_t(s)].part_ptr);
          t.always.full_lo = reinterpret_cast<const int32_t*>(x + always[size_t(s)].full_lo);
          t.always.full_hi = reinterpret_cast<const int32_t*>(x + always[size_t(s)].full_hi);
          t.always.part_lo = reinterpret_cast<const int32_t*>(x + always[size_t(s)].part_lo);
          t.always.part_hi = reinterpret_cast<const int32_t*>(x + always[size_t(s)].part_hi);
        }
        const StagedPredicate& sp = pred[size_t(s)];
        sp.relocate(blob, base);
        for (int32_t c : q.pred->chosen) {  // the chosen leaves read this sequence's mask
          PredNode n;
          unsigned char* at = blob.data() + sp.nodes + size_t(c) * sizeof(PredNode);
          std::memcpy(&n, at, sizeof n);
          n.data = t.mask;
          std::memcpy(at, &n, sizeof n);
        }
        sp.bind(x, &t.pred);
        t.pred.off = q.g.off;
        const int64_t r0 = s * hq;
        d.full_ptr = reinterpret_cast<const int64_t*>(x + full_beg) + r0;
        d.full_end = reinterpret_cast<const int64_t*>(x + full_end) + r0;
        d.part_ptr = reinterpret_cast<const int64_t*>(x + part_beg) + r0;
        d.part_end = reinterpret_cast<const int64_t*>(x + part_end) + r0;
        d.full_lo = reinterpret_cast<const int32_t*>(x + full_lo);
        d.full_hi = reinterpret_cast<const int32_t*>(x + full_hi);
        d.part_lo = reinterpret_cast<const int32_t*>(x + part_lo);
        d.part_hi = reinterpret_cast<const int32_t*>(x + part_hi);
        d.pred = t.pred;
      }
      std::memcpy(blob.data() + seqs + size_t(s) * sizeof(DecTopkSeq), &t, sizeof t);
      std::memcpy(blob.data() + dseqs + size_t(s) * sizeof(DecodeSeq), &d, sizeof d);
    }
  }

  // p's pointers and sizes into the allocation at `base` (after relocate); p->dp's tensors,
  // strides and modifiers are the launcher's (fill_decode_params).
  void bind(void* base, DecTopkParams* p) const {
    unsigned char* x = static_cast<unsigned char*>(base);
    p->seqs = reinterpret_cast<const DecTopkSeq*>(x + seqs);
    p->qm = reinterpret_cast<float*>(x + qm);
    p->nqb = nqb, p->bq = bq, p->bk = bkt, p->kmax_max = kmax_max;
    DecodePlanParams& pp = p->pp;
    pp.b = b, pp.nq = nq, pp.hq = hq, pp.hkv = hkv, pp.group = group, pp.bk = bk;
    pp.lheads = hq;
    point_plan(x, &pp);
    pp.seqs = reinterpret_cast<DecodeSeq*>(x + dseqs);
    pp.error = reinterpret_cast<unsigned long long*>(x + error);
    DecodeParams& dp = p->dp;
    dec_bind_device_plan(pp, &dp);
    dp.lens = nullptr;  // host lengths: no length errors on the device
    dp.min_keys = 0;
    dp.error = pp.error;
    dp.part_m = reinterpret_cast<float*>(x + part_m);
    dp.part_l = reinterpret_cast<float*>(x + part_l);
    dp.part_acc = reinterpret_cast<float*>(x + part_acc);
  }
};

// Stages a call of in.size() sequences (Nq queries, hq query heads over hkv kv heads, head dim
// d; TopKBlocks blocks bq x bkt; decode key tiles of bk; partial accumulators of dvp floats per
// row) for a device of `sms` SMs: stage_decode's cells and target, and ns_max from the longest
// sequence, so each (sequence, kv head) gets the host plan's split count.
inline StagedDecTopk stage_dec_topk(const std::vector<DecTopkSeqIn>& in, int64_t nq, int64_t hq,
                                    int64_t hkv, int64_t d, int64_t bq, int64_t bkt, int64_t bk,
                                    int64_t dvp, int64_t sms) {
  StagedDecTopk s;
  s.in = in;
  s.b = int64_t(in.size()), s.nq = nq, s.hq = hq, s.hkv = hkv, s.group = hq / hkv, s.d = d;
  s.bq = bq, s.bkt = bkt, s.bk = bk;
  s.nqb = topk_blocks_of(nq, bq);
  const int64_t B = s.b;
  BlobWriter w;
  s.seqs = w.put(nullptr, 0);
  w.bytes.resize(s.seqs + size_t(B) * sizeof(DecTopkSeq));
  s.dseqs = w.put(nullptr, 0);
  w.bytes.resize(s.dseqs + size_t(B) * sizeof(DecodeSeq));
  s.always.resize(size_t(B));
  s.pred.resize(size_t(B));
  s.row_cap.assign(size_t(B), 0);
  s.row_base.assign(size_t(B), 0);
  int64_t rows_total = 0, nkb_max = 0, ucap = 1;
  for (int64_t x = 0; x < B; ++x) {
    const DecTopkSeqIn& q = in[size_t(x)];
    if (q.g.nk == 0) continue;
    if (q.always != nullptr) s.always[size_t(x)] = stage_ranges(w, *q.always);
    s.pred[size_t(x)] = stage_predicate(w, q.pred->view());
    const int64_t nkb = topk_blocks_of(q.g.nk, bk);
    if (nkb >= INT32_MAX) throw ValueError("cuda decode: too many key blocks for 32-bit indices");
    s.row_cap[size_t(x)] = dec_topk_row_cap(q.g, nq, bk, q.always);
    s.row_base[size_t(x)] = rows_total;
    rows_total += hq * s.row_cap[size_t(x)];
    nkb_max = std::max(nkb_max, nkb);
    ucap = std::max(ucap, std::min(nkb, s.group * 2 * s.row_cap[size_t(x)]));
    s.kmax_max = std::max(s.kmax_max, q.g.kmax);
  }
  w.finish();
  s.blob = std::move(w.bytes);
  s.ucap = ucap;
  s.rgroups = dec_row_groups(s.group, nq);
  s.target = std::max<int64_t>(1, sms) * kDecCtasPerSm;
  s.cells = B * hkv * s.rgroups;
  s.ns_max = dec_num_splits(nkb_max, bk, s.cells, s.target);
  s.ntasks = B * hkv * s.ns_max;
  if (s.ntasks >= (int64_t(1) << 31) || s.rgroups > 65535)
    throw ValueError("cuda decode: too many split-K tasks");

  size_t at = s.blob.size();
  auto take = [&](size_t n) {
    const size_t r = (at + 15) & ~size_t(15);
    at = r + n;
    return r;
  };
  s.qm = take(size_t(B * hq * s.nqb * d) * sizeof(float));
  s.km.assign(size_t(B), 0);
  s.mask.assign(size_t(B), 0);
  for (int64_t x = 0; x < B; ++x) {
    const TopkGeom& g = in[size_t(x)].g;
    if (g.nk == 0) continue;
    s.km[size_t(x)] = take(size_t(hkv * g.kmax * d) * sizeof(float));
    s.mask[size_t(x)] = take(size_t(hq * g.nqb * g.nkb));
  }
  const size_t rr = size_t(std::max<int64_t>(rows_total, 1)) * sizeof(int32_t);
  s.full_lo = take(rr), s.full_hi = take(rr), s.part_lo = take(rr), s.part_hi = take(rr);
  const size_t rp = size_t(B * hq) * sizeof(int64_t);
  s.full_beg = take(rp), s.full_end = take(rp), s.part_beg = take(rp), s.part_end = take(rp);
  const int64_t bgs = B * hkv;
  s.ulo = take(size_t(bgs * ucap) * sizeof(int32_t));
  s.uhi = take(size_t(bgs * ucap) * sizeof(int32_t));
  s.ubefore = take(size_t(bgs * ucap) * sizeof(int64_t));
  s.ubeg = take(size_t(bgs) * sizeof(int64_t));
  s.uend = take(size_t(bgs) * sizeof(int64_t));
  s.ublocks = take(size_t(bgs) * sizeof(int64_t));
  s.bg_ns = take(size_t(bgs) * sizeof(int32_t));
  s.error = take(kDecErrorWords * sizeof(unsigned long long));
  const size_t slots = size_t(s.ntasks * s.rgroups * kDecRows);
  s.part_m = take(slots * sizeof(float));
  s.part_l = take(slots * sizeof(float));
  s.part_acc = take(slots * size_t(dvp) * sizeof(float));
  s.total = (at + 255) & ~size_t(255);
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
