// TopKBlocks in the CUDA decode with cache_len on the device: what the host-lengths path
// (decode_topk_logic.hpp) takes from the host per call, made on the device from each length,
// so that no host read is needed and the call can be captured in a CUDA graph.
//
// Two launches before the host-lengths path's six (kernels/decode_topk.cu):
//   always  one thread per (sequence, always head): decode_plan_logic.hpp's dec_plan_row over
//           the always pattern's device program (the rows CompiledPattern::layout(Nq, bk) makes
//           for cache_len[b]); it also records a bad length (outside [0, capacity], or
//           0 < cache_len < the always pattern's min_keys) in the decode's error record;
//   seq     one thread per sequence: dec_topk_dev_seq, the same length checks (so there is
//           one record of them with or without an always pattern), then the sequence's
//           geometry (topk_geom of its length), its slots in the workspace, its copy of the
//           element rule (the chosen leaf given the length's key blocks and the sequence's
//           mask) and the decode's DecodeSeq. A bad length plans as 0: every task of it exits.
// Then qpool, pages, kpool, choose, rows and union run as with host lengths: they read only
// what seq wrote. Buffers are sized on the host from the capacity (the geometry's bounds do not
// decrease with the length: candidates, kmax, key blocks, topk_row_tiles), the static part (the
// element rule's template, the always program) is planned and uploaded once per (pattern,
// sizes, capacity, device) and kept; the per-call workspace holds offsets only.
//
// Errors, as the CPU finds them: every bad length first (decode_api.cpp reads them all before
// planning; class kDecErrLength, the smallest index), then 0 < cache_len < min_keys (the always
// pattern's fit, class kDecErrPattern), then bad block-table entries (class kDecErrTable:
// dec_topk_check_page below cache_len when the cache is pooled, the decode kernels' visited
// pages otherwise). pooled_keys too small for a length is not found here: the launcher takes
// this path only when the caller's pooled_keys hold the blocks of the capacity.
#pragma once

#include <cstdint>

#include "spattn/cuda/decode_plan_logic.hpp"
#include "spattn/cuda/decode_topk_logic.hpp"
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <cstring>
#include <vector>
#endif

namespace spattn::cuda {

struct DecTopkDev {
  int64_t k = 0, bq = 1, bkt = 1;  // TopKBlocks' k and blocks
  bool causal = true;
  // The element rule's template (uploaded once): heads' programs over one node array; the
  // chosen leaves (block_sparse) get each sequence's key blocks and mask.
  const PredNode* tmpl = nullptr;
  int64_t nnodes = 0, heads = 1;
  const int32_t* head_begin = nullptr;
  const int32_t* head_end = nullptr;
  const int32_t* chosen = nullptr;
  int64_t nchosen = 0;
  // Per sequence, in the workspace: its node copy, its pooled keys and mask at fixed strides.
  PredNode* nodes = nullptr;  // [B, nnodes]
  DecTopkSeq* seqs = nullptr;  // [B] (what DecTopkParams::seqs points at)
  float* km = nullptr;
  int64_t km_stride = 0;  // floats: hkv * kmax(capacity) * d
  uint8_t* mask = nullptr;
  int64_t mask_stride = 0;  // bytes: hq * nqb * nkb(capacity)
  int64_t row_cap = 1;      // ranges of each class per layout row (a bound at the capacity)
  bool has_always = false;
  DecodePlanParams ap;  // the always pattern's rows (dec_plan_row), its own workspace
};

// The length sequence b is planned with (0 for a bad one) and its error, if any, recorded.
SPATTN_HD int64_t dec_topk_dev_len(const DecodePlanParams& pp, int64_t b) {
  unsigned long long key;
  const int64_t nk = dec_plan_len(pp, b, &key);
  if (key != ~0ull) dec_record_min(pp.error, key);
  return nk;
}

// Sequence b (one thread): see the top of this file.
SPATTN_HD void dec_topk_dev_seq(const DecTopkParams& p, const DecTopkDev& v, int64_t b) {
  const DecodePlanParams& pp = p.pp;
  const int64_t nk = dec_topk_dev_len(pp, b);
  DecTopkSeq t;
  t.g = topk_geom(pp.nq, nk, pp.hq, pp.hkv, p.dp.d, v.k, v.bq, v.bkt, v.causal);
  DecodeSeq d;
  d.nk = nk;
  d.lheads = pp.hq;
  if (nk > 0) {
    t.km = v.km + b * v.km_stride;
    t.mask = v.mask + b * v.mask_stride;
    t.nkb = (nk + pp.bk - 1) / pp.bk;
    t.row_cap = v.row_cap;
    t.row_base = b * pp.hq * v.row_cap;
    if (v.has_always) {
      const DecodePlanParams& a = v.ap;
      const int64_t r0 = b * a.lheads;
      t.always.heads = a.lheads;
      t.always.n_outer = 1;
      t.always.full_ptr = a.full_beg + r0;
      t.always.full_end = a.full_end + r0;
      t.always.part_ptr = a.part_beg + r0;
      t.always.part_end = a.part_end + r0;
      t.always.full_lo = a.full_lo, t.always.full_hi = a.full_hi;
      t.always.part_lo = a.part_lo, t.always.part_hi = a.part_hi;
    }
    PredNode* nodes = v.nodes + b * v.nnodes;
    for (int64_t x = 0; x < v.nnodes; ++x) nodes[x] = v.tmpl[x];
    for (int64_t c = 0; c < v.nchosen; ++c) {
      PredNode& n = nodes[v.chosen[c]];
      n.u.block_sparse.nbk = t.g.nkb;
      n.data = t.mask;
      n.data_bytes = pp.hq * t.g.nqb * t.g.nkb;
    }
    t.pred.nodes = nodes;
    t.pred.head_begin = v.head_begin;
    t.pred.head_end = v.head_end;
    t.pred.heads = v.heads;
    t.pred.off = t.g.off;
    const int64_t r0 = b * pp.hq;
    d.full_ptr = pp.full_beg + r0;
    d.full_end = pp.full_end + r0;
    d.part_ptr = pp.part_beg + r0;
    d.part_end = pp.part_end + r0;
    d.full_lo = pp.full_lo, d.full_hi = pp.full_hi;
    d.part_lo = pp.part_lo, d.part_hi = pp.part_hi;
    d.pred = t.pred;
  }
  v.seqs[b] = t;
  pp.seqs[b] = d;
}

// ---------------------------------------------------------------------------------------------
// Host side: the static part (planned once, decode_topk_host.hpp's plan_dec_topk_program fills
// it) and the per-call workspace.

#if !defined(__CUDA_ARCH__)

struct DecTopkDevProgram {
  std::vector<unsigned char> blob;  // template nodes, head arrays, node data | chosen indices
  StagedPredicate pred;
  size_t chosen = 0;
  int64_t nchosen = 0;
  bool has_always = false;
  DecodeProgram always;  // its own blob (decode_plan_logic.hpp)
  TopkGeom gcap;         // the geometry at the capacity (the bounds)
  int64_t k = 0, bq = 1, bkt = 1;
  bool causal = true;
  int64_t capacity = 0, min_keys = 0, nq = 0, hq = 1, hkv = 1, d = 0, bk = 1;
  int64_t row_cap = 1, nkb_cap = 0;

  // Rewrites data pointers for the copies at `base` (blob) and `abase` (always.blob).
  void relocate(const void* base, const void* abase) {
    pred.relocate(blob, base);
    if (has_always) always.relocate(abase);
  }
};

// The ranges of each class a decode layout row can hold for any length up to the capacity:
// its runs start where the chosen part's state or the always rows' state changes; the chosen
// part changes at most twice per tile it visits (topk_row_tiles, not decreasing with the
// length), the always rows twice per range (at most always_row_cap of each class).
inline int64_t dec_topk_dev_row_cap(const TopkGeom& gcap, int64_t nq, int64_t bk,
                                    int64_t always_row_cap) {
  const int64_t nkb = topk_blocks_of(gcap.nk, bk);
  const double bound = 2.0 * double(topk_row_tiles(gcap, nq, bk)) + 4.0 * double(always_row_cap) + 1;
  return std::max<int64_t>(1, bound >= double(nkb) ? nkb : int64_t(bound));
}

// The per-call workspace: [DecTopkSeq | node copies | pooled queries | pooled keys | masks |
// layout rows | unions | DecodeSeq | always rows (plan_decode_space) | error | partials].
struct DecTopkDevSpace : DecodePlanOffsets {
  size_t seqs = 0, nodes = 0, qm = 0, km = 0, mask = 0, dseqs = 0, always = 0, error = 0,
         part_m = 0, part_l = 0, part_acc = 0;  // and the plan's (DecodePlanOffsets)
  DecodePlanSpace aspace;
  size_t total = 0;
  int64_t b = 0, nqb = 0, ntasks = 0, rgroups = 0;

  // p's and v's pointers into the workspace at `base` and the program's copies at `pbase`
  // (blob) and `abase` (always.blob); cache_len is `lens` (int32 or int64, element stride
  // lens_s). p->dp's tensors, strides and modifiers are the launcher's (fill_decode_params).
  void bind(void* base, const DecTopkDevProgram& P, const void* pbase, const void* abase,
            const void* lens, bool lens64, int64_t lens_s, DecTopkParams* p,
            DecTopkDev* v) const {
    unsigned char* x = static_cast<unsigned char*>(base);
    unsigned char* pb = const_cast<unsigned char*>(static_cast<const unsigned char*>(pbase));
    DecodePlanParams& pp = p->pp;
    pp.lens = lens, pp.lens64 = lens64, pp.lens_s = lens_s;
    pp.b = b, pp.nq = P.nq, pp.hq = P.hq, pp.hkv = P.hkv, pp.group = P.hq / P.hkv, pp.bk = P.bk;
    pp.capacity = P.capacity, pp.min_keys = P.min_keys;
    pp.lheads = P.hq;
    pp.row_cap = P.row_cap;
    point_plan(x, &pp);
    pp.seqs = reinterpret_cast<DecodeSeq*>(x + dseqs);
    pp.error = reinterpret_cast<unsigned long long*>(x + error);
    p->seqs = reinterpret_cast<const DecTopkSeq*>(x + seqs);
    p->qm = reinterpret_cast<float*>(x + qm);
    p->nqb = nqb, p->bq = P.bq, p->bk = P.bkt, p->kmax_max = P.gcap.kmax;
    DecodeParams& dp = p->dp;
    dec_bind_device_plan(pp, &dp);  // lens, capacity and min_keys: the error's message
    dp.error = pp.error;
    dp.part_m = reinterpret_cast<float*>(x + part_m);
    dp.part_l = reinterpret_cast<float*>(x + part_l);
    dp.part_acc = reinterpret_cast<float*>(x + part_acc);

    *v = DecTopkDev{};
    v->k = P.k, v->bq = P.bq, v->bkt = P.bkt, v->causal = P.causal;
    Predicate tp;
    P.pred.bind(pb, &tp);
    v->tmpl = tp.nodes;
    v->nnodes = P.pred.nodes_count;
    v->heads = tp.heads;
    v->head_begin = tp.head_begin;
    v->head_end = tp.head_end;
    v->chosen = reinterpret_cast<const int32_t*>(pb + P.chosen);
    v->nchosen = P.nchosen;
    v->nodes = reinterpret_cast<PredNode*>(x + nodes);
    v->seqs = reinterpret_cast<DecTopkSeq*>(x + seqs);
    v->km = reinterpret_cast<float*>(x + km);
    v->km_stride = P.hkv * P.gcap.kmax * P.d;
    v->mask = x + mask;
    v->mask_stride = P.hq * P.gcap.nqb * P.gcap.nkb;
    v->row_cap = P.row_cap;
    v->has_always = P.has_always;
    if (P.has_always) {
      DecodePlanParams& a = v->ap;
      P.always.bind(abase, &a);
      aspace.bind(x + always, &a);
      a.lens = lens, a.lens64 = lens64, a.lens_s = lens_s;
      a.b = b, a.nq = P.nq, a.hq = P.hq, a.hkv = P.hkv, a.group = P.hq / P.hkv, a.bk = P.bk;
      a.capacity = P.capacity, a.min_keys = P.min_keys;
      a.error = pp.error;
    }
  }
};

// The workspace of a call of B sequences on a device of `sms` SMs (stage_decode's cells and
// target; ns_max from the capacity, as decode_plan_logic.hpp's), partial accumulators of dvp
// floats per row.
inline DecTopkDevSpace plan_dec_topk_space(const DecTopkDevProgram& P, int64_t B, int64_t dvp,
                                           int64_t sms) {
  DecTopkDevSpace s;
  s.b = B;
  s.nqb = topk_blocks_of(P.nq, P.bq);
  const int64_t G = P.hq / P.hkv;
  s.ucap = std::max<int64_t>(1, std::min<int64_t>(P.nkb_cap, G * 2 * P.row_cap));
  s.rgroups = dec_row_groups(G, P.nq);
  s.target = std::max<int64_t>(1, sms) * kDecCtasPerSm;
  s.cells = B * P.hkv * s.rgroups;
  s.ns_max = dec_num_splits(P.nkb_cap, P.bk, s.cells, s.target);
  s.ntasks = B * P.hkv * s.ns_max;
  if (s.ntasks >= (int64_t(1) << 31) || s.rgroups > 65535)
    throw ValueError("cuda decode: too many split-K tasks");
  size_t at = 0;
  auto take = [&](size_t n) {
    const size_t r = at;
    at = (at + n + 255) & ~size_t(255);
    return r;
  };
  s.seqs = take(size_t(B) * sizeof(DecTopkSeq));
  s.nodes = take(size_t(B * P.pred.nodes_count) * sizeof(PredNode));
  s.qm = take(size_t(B * P.hq * s.nqb * P.d) * sizeof(float));
  s.km = take(size_t(B * P.hkv * P.gcap.kmax * P.d) * sizeof(float));
  s.mask = take(size_t(B * P.hq * P.gcap.nqb * P.gcap.nkb));
  const size_t rr = size_t(B * P.hq * P.row_cap) * sizeof(int32_t);
  s.full_lo = take(rr), s.full_hi = take(rr), s.part_lo = take(rr), s.part_hi = take(rr);
  const size_t rp = size_t(B * P.hq) * sizeof(int64_t);
  s.full_beg = take(rp), s.full_end = take(rp), s.part_beg = take(rp), s.part_end = take(rp);
  const int64_t bgs = B * P.hkv;
  s.ulo = take(size_t(bgs * s.ucap) * sizeof(int32_t));
  s.uhi = take(size_t(bgs * s.ucap) * sizeof(int32_t));
  s.ubefore = take(size_t(bgs * s.ucap) * sizeof(int64_t));
  s.ubeg = take(size_t(bgs) * sizeof(int64_t));
  s.uend = take(size_t(bgs) * sizeof(int64_t));
  s.ublocks = take(size_t(bgs) * sizeof(int64_t));
  s.bg_ns = take(size_t(bgs) * sizeof(int32_t));
  s.dseqs = take(size_t(B) * sizeof(DecodeSeq));
  if (P.has_always) {
    s.aspace = plan_decode_space(P.always, B, P.hkv, G, P.nq, P.bk, sms);
    s.always = take(s.aspace.total);
  }
  s.error = take(kDecErrorWords * sizeof(unsigned long long));
  const size_t slots = size_t(s.ntasks * s.rgroups * kDecRows);
  s.part_m = take(slots * sizeof(float));
  s.part_l = take(slots * sizeof(float));
  s.part_acc = take(slots * size_t(dvp) * sizeof(float));
  s.total = at;
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
