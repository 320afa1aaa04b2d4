// The index, split and scheduling logic of the CUDA decode kernels (cuda/src/kernels/decode.cu),
// written once as SPATTN_HD functions so that the host test (tests/cpp/test_cuda_decode_logic.cpp)
// runs exactly what the kernels run, in a scalar emulation of their loops.
//
// The work of one call (the CPU decode's plan, cpp/src/cpu/decode.cpp, moved to the device):
//   - per sequence b, the pattern compiled for (Nq, cache_len[b], Hq) and its block layout with
//     ONE query block of all Nq rows and key blocks of the page size (paged caches) or
//     kDecContigBlock keys (contiguous caches): DecodeSeq;
//   - per (sequence, kv head) "bg", the union of the key-block ranges its G = Hq / Hkv query
//     heads visit: the only blocks (pages) ever read. A window of 4096 keys over a 1M-token
//     cache lists 4096 / page_size blocks, whatever the cache length;
//   - those blocks, in ascending order, are cut into splits of equal block counts (split-K);
//     one CTA per (split, row group) reads each K and V row of its split once for the
//     kDecRows query rows of its row group (rows r = hh * Nq + i: query head g * G + hh, query
//     i; with Nq = 1 and G <= kDecRows, all query heads of a kv head share every load);
//   - each CTA writes an unnormalised partial (m, l, acc) in base-2 units; the finish kernel
//     merges the splits of each row exactly (logsumexp), adds the sink, writes out and lse.
//
// Block-table entries are checked by the kernel itself where it reads them (the table is device
// memory): an entry outside [0, pages) is never dereferenced, the block counts as not visited,
// and the smallest (b, g, column) of such a read is recorded in a device word (atomicMin). The
// finish kernel reads that entry back into the error record, and the launcher copies the
// record to the host and raises ValueError with the CPU's message (or leaves it on the device:
// decode.cpp). When cache_len lives on the device too, the plan itself is made there
// (decode_plan_logic.hpp): one task list sized from the capacity (DecodeParams::ns_max), and
// the lengths' own errors join the same record (error classes below).
//
// Plain data and plain functions: no CUDA runtime.
#pragma once

#include <cstdint>

#include "spattn/cuda/forward_logic.hpp"  // ScoreMod, apply_mod, softmax helpers, BlobWriter
#include "spattn/hostdevice.hpp"
#include "spattn/predicate.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <string>
#include <vector>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/visited_blocks.hpp"
#endif

namespace spattn::cuda {

// Query rows per CTA (of the G * Nq rows of a kv head), warps per CTA, keys per lane group and
// step, elements per lane (one 16-byte load of a 2-byte dtype), the largest head dim.
constexpr int kDecRows = 4;
constexpr int kDecWarps = 4;
constexpr int kDecUnroll = 4;
constexpr int kDecVec = 8;
constexpr int kDecMaxDim = 256;
// Key block of contiguous caches (the CPU decode's): the grain of the layout and of the splits.
constexpr int64_t kDecContigBlock = 64;
// A split below this many keys costs more to merge than it saves.
constexpr int64_t kDecMinSplitKeys = 128;
// CTAs per SM the splits aim for (memory-level parallelism of a bandwidth-bound kernel).
constexpr int64_t kDecCtasPerSm = 8;

// One sequence: its length and the block layout and predicate of its compiled pattern (device
// pointers). The layout has one query block, so its row for query head h is (lheads == 1 ? 0 : h).
struct DecodeSeq {
  int64_t nk = 0;
  int64_t lheads = 1;
  // Row r's ranges: [full_ptr[r], full_ptr[r + 1]) (a CSR, host plan), or [full_ptr[r],
  // full_end[r]) when full_end is set (device plan: rows of fixed capacity). Likewise part_*.
  const int64_t* full_ptr = nullptr;
  const int64_t* part_ptr = nullptr;
  const int64_t* full_end = nullptr;
  const int64_t* part_end = nullptr;
  const int32_t* full_lo = nullptr;
  const int32_t* full_hi = nullptr;
  const int32_t* part_lo = nullptr;
  const int32_t* part_hi = nullptr;
  Predicate pred;
};

// The error record (device memory, 3 words): [0] the smallest error key (UINT64_MAX: none; set
// with atomicMin), [1] its value and [2] the sequence's length (both written by the finish
// kernel). A key is class << 56 | index; the classes in the order the CPU checks (so the
// smallest key is the error the CPU would report):
//   kDecErrLength   cache_len[b] outside [0, capacity]       index b, value cache_len[b]
//   kDecErrPattern  0 < cache_len[b] < the pattern's min_keys index b, value cache_len[b]
//   kDecErrBlocks   pool_keys: out's blocks hold fewer keys than cache_len[b]
//                                                            index b, value cache_len[b]
//   kDecErrTable    table[b, c] outside [0, pages), read by kv head g
//                   index (b * hkv + g) * max_pages + c, value the entry
//   kDecErrBound    a device plan buffer's bound was exceeded (a library bug), index 0
// The first three arise only when the lengths are read on the device (device cache_len).
// pool_keys records its errors the same way (PoolParams), as kv head 0 of one (hkv = 1).
constexpr int kDecErrorWords = 3;
constexpr unsigned long long kDecErrLength = 0, kDecErrPattern = 1, kDecErrBlocks = 2,
                             kDecErrTable = 3, kDecErrBound = 4;
constexpr int kDecErrClassShift = 56;
// The record a deferred call leaves in the device's persistent one (decode.cpp): the error
// record and what its message needs. [0..2] as above, [3] hkv, [4] max_pages, [5] pages,
// [6] capacity, [7] min_keys (pool_keys: out's blocks), [8] nq (pool_keys: keys per block).
constexpr int kDecStickyWords = 9;

struct DecodeParams {
  // q [B, Nq, Hq, D]; out [B, Nq, Hq, Dv]; lse [B, Hq, Nq] float32 (null: not written).
  const void* q = nullptr;
  int64_t q_sb = 0, q_sn = 0, q_sh = 0, q_sd = 1;
  void* out = nullptr;
  int64_t o_sb = 0, o_sn = 0, o_sh = 0, o_sd = 1;
  float* lse = nullptr;
  int64_t lse_sb = 0, lse_sh = 0, lse_sn = 0;
  // Caches. Contiguous [B, Ncap, Hkv, D]: k_sp is the batch stride. Paged [pages, page_size,
  // Hkv, D]: k_sp is the page stride and table[b, c] (int32 or int64) names block c's page.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_sp = 0, k_sn = 0, k_sh = 0, k_sd = 1;
  int64_t v_sp = 0, v_sn = 0, v_sh = 0, v_sd = 1;
  bool paged = false;
  int64_t bk = kDecContigBlock;  // keys per block (the page size when paged)
  int64_t pages = 0;             // paged: k's first dimension
  const void* table = nullptr;
  bool table64 = false;
  int64_t table_sb = 0, table_sc = 1, max_pages = 0;
  // K, V rows can be read with 16-byte loads (aligned, unit feature stride, strides multiples
  // of 8 elements); else element by element.
  bool vec_k = false, vec_v = false;
  int64_t b = 0, nq = 0, hq = 0, hkv = 0, group = 1, d = 0, dv = 0;
  float scale_log2 = 1.f;
  // Score modifiers (natural units; ScoreModParams's meaning, rel = i + nk - nq - j).
  float softcap_log2 = 0.f;
  const float* alibi = nullptr;
  int64_t alibi_s = 1;
  const float* sinks = nullptr;
  int64_t sinks_s = 1;
  // The plan (device copies): seqs [B]; per bg = b * hkv + g: union ranges
  // [uptr[bg], uptr[bg + 1]) of ulo / uhi, ubefore[t] = blocks of bg listed before range t,
  // ublocks[bg] = all of them; tasks [ntasks] = (bg, split) with the tasks of one bg
  // contiguous, from bg_task0[bg] to bg_task0[bg + 1].
  const DecodeSeq* seqs = nullptr;
  const int64_t* uptr = nullptr;
  const int32_t* ulo = nullptr;
  const int32_t* uhi = nullptr;
  const int64_t* ubefore = nullptr;
  const int64_t* ublocks = nullptr;
  const int32_t* task_bg = nullptr;
  const int32_t* task_split = nullptr;
  const int32_t* bg_task0 = nullptr;
  int64_t ntasks = 0, rgroups = 0;
  // Partials of CTA (task, rg), slot = task * rgroups + rg: m and l [slot * kDecRows + rr],
  // acc [(slot * kDecRows + rr) * dvp + x].
  float* part_m = nullptr;
  float* part_l = nullptr;
  float* part_acc = nullptr;
  int64_t dvp = 0;
  unsigned long long* error = nullptr;  // kDecErrorWords words
  // Device plan (decode_plan_logic.hpp): ns_max > 0 means no task tables: task t is split
  // t % ns_max of bg t / ns_max, and bg runs bg_ns[bg] <= ns_max splits (the others exit at
  // once); union ranges of bg are [uptr[bg], uend[bg]).
  int64_t ns_max = 0;
  const int32_t* bg_ns = nullptr;
  const int64_t* uend = nullptr;
  // Device lengths (device plan): read back into the error record for its message.
  const void* lens = nullptr;
  bool lens64 = false;
  int64_t lens_s = 1;
  int64_t capacity = 0, min_keys = 0;
  // The device's persistent record (kDecStickyWords) a deferred call copies its error into, if
  // that one is still empty; null: the launcher reads the record itself.
  unsigned long long* sticky = nullptr;
};

// The tasks: (bg, split) of task t, and the splits bg runs. Host plan: the task tables; device
// plan: ns_max tasks per bg, of which the first bg_ns[bg] run.
SPATTN_HD void dec_task(const DecodeParams& p, int64_t t, int64_t* bg, int64_t* split, int64_t* ns) {
  if (p.ns_max > 0) {
    *bg = t / p.ns_max;
    *split = t - *bg * p.ns_max;
    *ns = p.bg_ns[*bg];
  } else {
    *bg = p.task_bg[t];
    *split = p.task_split[t];
    *ns = p.bg_task0[*bg + 1] - p.bg_task0[*bg];
  }
}
SPATTN_HD void dec_bg_tasks(const DecodeParams& p, int64_t bg, int64_t* t0, int64_t* t1) {
  if (p.ns_max > 0) {
    *t0 = bg * p.ns_max;
    *t1 = *t0 + p.bg_ns[bg];
  } else {
    *t0 = p.bg_task0[bg];
    *t1 = p.bg_task0[bg + 1];
  }
}
// The end of bg's union ranges.
SPATTN_HD int64_t dec_union_end(const DecodeParams& p, int64_t bg) {
  return p.uend ? p.uend[bg] : p.uptr[bg + 1];
}

// ---------------------------------------------------------------------------------------------
// Rows and splits.

// Splits of a bg with T visited blocks of bk keys, when the call has `cells` (b, g, row group)
// cells and aims at target_ctas CTAs: enough to fill the device, never below kDecMinSplitKeys
// keys per split, never more than T. Non-decreasing in T (the device plan sizes its task list
// with the largest T).
SPATTN_HD int64_t dec_num_splits(int64_t T, int64_t bk, int64_t cells, int64_t target_ctas) {
  if (T <= 0) return 1;
  int64_t by_keys = (T * bk) / kDecMinSplitKeys;
  by_keys = by_keys > 1 ? by_keys : 1;
  const int64_t c = cells > 1 ? cells : 1;
  int64_t by_fill = (target_ctas + c - 1) / c;
  by_fill = by_fill > 1 ? by_fill : 1;
  int64_t n = by_keys < by_fill ? by_keys : by_fill;
  n = n < T ? n : T;
  return n > 1 ? n : 1;
}

SPATTN_HD int64_t dec_rows(const DecodeParams& p) { return p.group * p.nq; }
SPATTN_HD int64_t dec_row_groups(int64_t group, int64_t nq) {
  return (group * nq + kDecRows - 1) / kDecRows;
}

// Row r of kv head g: query head g * G + r / Nq, query r % Nq.
SPATTN_HD void dec_row(const DecodeParams& p, int64_t g, int64_t r, int64_t* h, int64_t* i) {
  *h = g * p.group + r / p.nq;
  *i = r % p.nq;
}

// Split s of ns over T blocks: positions [*lo, *hi) of the bg's blocks in ascending order.
SPATTN_HD void dec_split(int64_t T, int64_t ns, int64_t s, int64_t* lo, int64_t* hi) {
  *lo = T * s / ns;
  *hi = T * (s + 1) / ns;
}

// The block at position pos (0 <= pos < ublocks[bg]) of bg's ascending block list: the range t
// with ubefore[t] <= pos, found by binary search.
SPATTN_HD int64_t dec_block_at(const DecodeParams& p, int64_t bg, int64_t pos) {
  int64_t lo = p.uptr[bg], hi = dec_union_end(p, bg) - 1;  // the answer lies in [lo, hi]
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (p.ubefore[mid] <= pos)
      lo = mid;
    else
      hi = mid - 1;
  }
  return p.ulo[lo] + (pos - p.ubefore[lo]);
}

// ---------------------------------------------------------------------------------------------
// Pages and addresses.

// Table entry [b, c] (contiguous caches: c itself).
SPATTN_HD int64_t dec_table_entry(const DecodeParams& p, int64_t b, int64_t c) {
  if (!p.paged) return c;
  const int64_t off = b * p.table_sb + c * p.table_sc;
  return p.table64 ? static_cast<const int64_t*>(p.table)[off]
                   : int64_t(static_cast<const int32_t*>(p.table)[off]);
}
SPATTN_HD bool dec_page_ok(const DecodeParams& p, int64_t page) {
  return !p.paged || (page >= 0 && page < p.pages);
}
// The error key of a bad read of table[b, c] by kv head g: smaller is reported first, in the
// CPU's checking order (sequence, kv head, block).
SPATTN_HD unsigned long long dec_error_key(const DecodeParams& p, int64_t b, int64_t g, int64_t c) {
  return (kDecErrTable << kDecErrClassShift) | (unsigned long long)((b * p.hkv + g) * p.max_pages + c);
}
SPATTN_HD unsigned long long dec_error_class(unsigned long long key) {
  return key >> kDecErrClassShift;
}
SPATTN_HD int64_t dec_error_index(unsigned long long key) {
  return int64_t(key & ((1ull << kDecErrClassShift) - 1));
}

// The (b, g, c) of a table error key (dec_error_key).
SPATTN_HD void dec_error_where(const DecodeParams& p, unsigned long long key, int64_t* b,
                               int64_t* g, int64_t* c) {
  const int64_t k = dec_error_index(key), bg = k / p.max_pages;
  *c = k - bg * p.max_pages;
  *b = bg / p.hkv;
  *g = bg - *b * p.hkv;
}

// The whole error record of `key`: [0] key, [1] its value (the bad table entry, or the length
// as stored), [2] the sequence's planned length (what the finish kernel writes).
SPATTN_HD void dec_error_complete(const DecodeParams& p, unsigned long long key,
                                  unsigned long long* rec) {
  rec[0] = key;
  rec[1] = rec[2] = 0;
  const unsigned long long cls = dec_error_class(key);
  if (cls == kDecErrTable) {
    int64_t b, g, c;
    dec_error_where(p, key, &b, &g, &c);
    rec[1] = (unsigned long long)dec_table_entry(p, b, c);
    rec[2] = (unsigned long long)p.seqs[b].nk;
  } else if ((cls == kDecErrLength || cls == kDecErrPattern) && p.lens) {
    const int64_t b = dec_error_index(key);
    const int64_t n = p.lens64 ? static_cast<const int64_t*>(p.lens)[b * p.lens_s]
                               : int64_t(static_cast<const int32_t*>(p.lens)[b * p.lens_s]);
    rec[1] = rec[2] = (unsigned long long)n;
  }
}
// The persistent record of a deferred call (kDecStickyWords): the error record and what its
// message needs.
SPATTN_HD void dec_sticky_words(const DecodeParams& p, const unsigned long long* rec,
                                unsigned long long* w) {
  for (int x = 0; x < kDecErrorWords; ++x) w[x] = rec[x];
  w[3] = (unsigned long long)p.hkv;
  w[4] = (unsigned long long)p.max_pages;
  w[5] = (unsigned long long)p.pages;
  w[6] = (unsigned long long)p.capacity;
  w[7] = (unsigned long long)p.min_keys;
  w[8] = (unsigned long long)p.nq;
}

// Element offset of key x of block c (on `page`, dec_table_entry) of sequence b, kv head g.
SPATTN_HD int64_t dec_k_offset(const DecodeParams& p, int64_t b, int64_t page, int64_t x, int64_t g) {
  return p.paged ? page * p.k_sp + x * p.k_sn + g * p.k_sh
                 : b * p.k_sp + (page * p.bk + x) * p.k_sn + g * p.k_sh;
}
SPATTN_HD int64_t dec_v_offset(const DecodeParams& p, int64_t b, int64_t page, int64_t x, int64_t g) {
  return p.paged ? page * p.v_sp + x * p.v_sn + g * p.v_sh
                 : b * p.v_sp + (page * p.bk + x) * p.v_sn + g * p.v_sh;
}

// ---------------------------------------------------------------------------------------------
// Which keys a row keeps.

// Index of the first range t in [b, e) with hi[t] > c (ranges ascending).
SPATTN_HD int64_t dec_seek(const int32_t* hi, int64_t b, int64_t e, int64_t c) {
  while (b < e) {
    const int64_t mid = (b + e) / 2;
    if (hi[mid] <= c)
      b = mid + 1;
    else
      e = mid;
  }
  return b;
}

// Block c for query head h: 0 not visited, 1 full (every existing key kept), 2 partial.
SPATTN_HD int dec_block_status(const DecodeSeq& s, int64_t h, int64_t c) {
  const int64_t r = s.lheads == 1 ? 0 : h;
  const int64_t fe = s.full_end ? s.full_end[r] : s.full_ptr[r + 1];
  const int64_t f = dec_seek(s.full_hi, s.full_ptr[r], fe, c);
  if (f < fe && s.full_lo[f] <= c) return 1;
  const int64_t pe = s.part_end ? s.part_end[r] : s.part_ptr[r + 1];
  const int64_t t = dec_seek(s.part_hi, s.part_ptr[r], pe, c);
  if (t < pe && s.part_lo[t] <= c) return 2;
  return 0;
}

// The element rule of a partial block: called, not inlined, into the kernel (keeps() is long).
// A member function, so that the header's one definition links from every translation unit.
struct DecRule {
  static SPATTN_HD_CALL bool keeps_general(const Predicate& pred, int64_t h, int64_t i, int64_t j) {
    return keeps(pred, h, i, j);
  }
};

// Which keys of block c (offsets x in [0, bk) of keys c * bk + x) row (h, i) may keep, given the
// block's status for head h: those with *lo <= x <= *hi (empty: *lo > *hi), and when *general
// each of them must still pass DecRule::keeps_general (a partial block of a rule that is not one
// window). nk: the sequence's length (keys past it are never kept).
SPATTN_HD void dec_row_block(int64_t nk, const Predicate& pred, int status, int64_t h, int64_t i,
                             int64_t c, int64_t bk, int32_t* lo, int32_t* hi, bool* general) {
  *lo = 0;
  *hi = -1;
  *general = false;
  if (status == 0) return;
  const int64_t j0 = c * bk;
  int64_t a = 0, b = (nk - j0 < bk ? nk - j0 : bk) - 1;
  if (status == 2) {
    if (range_is_exact(pred, h)) {
      int64_t klo, khi;
      key_range(pred, h, i, &klo, &khi);
      a = klo - j0 > a ? klo - j0 : a;
      b = khi - j0 < b ? khi - j0 : b;
    } else {
      *general = true;
    }
  }
  if (a > b) return;
  *lo = int32_t(a);
  *hi = int32_t(b);
}

// Whether the row keeps key x of the block (dec_row_block's answer; j = c * bk + x).
SPATTN_HD bool dec_key_kept(int32_t lo, int32_t hi, bool general, const Predicate& pred, int64_t h,
                            int64_t i, int64_t x, int64_t j) {
  return x >= lo && x <= hi && (!general || DecRule::keeps_general(pred, h, i, j));
}

// The features each lane group covers: max(D, Dv) rounded up to 32, 64, 128 or 256 (0: more
// than kDecMaxDim). A lane group has dec_dim_max / kDecVec lanes; partial accumulators are
// dec_dim_max floats per row.
SPATTN_HD int64_t dec_dim_max(int64_t d, int64_t dv) {
  const int64_t m = d > dv ? d : dv;
  return m <= 32 ? 32 : m <= 64 ? 64 : m <= 128 ? 128 : m <= 256 ? 256 : 0;
}

// The score modifiers of query head h (forward_logic.hpp's ScoreMod).
SPATTN_HD ScoreMod dec_score_mod(const DecodeParams& p, int64_t h) {
  ScoreMod r;
  r.cap = p.softcap_log2;
  r.inv_cap = r.cap != 0.f ? 1.f / r.cap : 0.f;
  r.slope = p.alibi ? p.alibi[h * p.alibi_s] * 1.4426950408889634f : 0.f;
  return r;
}
SPATTN_HD float dec_rel(const DecodeParams& p, int64_t nk, int64_t i, int64_t j) {
  return float(i + nk - p.nq - j);
}

// ---------------------------------------------------------------------------------------------
// The partial state of one row (base 2): m (max score, -inf: none), l (sum 2^(s - m)), acc, and
// whether a NaN score was seen (the row's result is then NaN, as on the CPU).

// The slot of row rr of CTA (task, rg).
SPATTN_HD int64_t dec_slot(const DecodeParams& p, int64_t task, int64_t rg, int64_t rr) {
  return (task * p.rgroups + rg) * kDecRows + rr;
}

// What a row's partial becomes when it saw a NaN score: l NaN, m finite so the merge keeps it.
SPATTN_HD void dec_mark_nan(float* m, float* l) {
  *l = NAN;
  if (*m == neg_inf()) *m = 0.f;
}

// Merge of the splits of one row: M = max m_t, L = sum 2^(m_t - M) l_t; weight of split t is
// 2^(m_t - M) (0 for a split that kept nothing). Returns M; *L as above.
SPATTN_HD float dec_merge_max(const DecodeParams& p, int64_t t0, int64_t t1, int64_t rg, int64_t rr) {
  float M = neg_inf();
  for (int64_t t = t0; t < t1; ++t) M = fmax_(M, p.part_m[dec_slot(p, t, rg, rr)]);
  return M;
}
SPATTN_HD float dec_merge_weight(float m, float M) {
  return m == neg_inf() ? 0.f : exp2f(m - M);
}

// The sink of head h joins the denominator (base 2): returns the factor of the accumulated row
// (before 1 / L); a row that kept no key gets out 0, lse = sink. Mirrors sink_finish.
SPATTN_HD float dec_sink(const DecodeParams& p, int64_t h, float* M, float* L) {
  if (!p.sinks) return 1.f;
  const float s2 = p.sinks[h * p.sinks_s] * 1.4426950408889634f;
  if (s2 == neg_inf()) return 1.f;
  const float mf = fmax_(*M, s2);
  const float keep = *M == neg_inf() ? 0.f : exp2f(*M - mf);
  *L = *L * keep + exp2f(s2 - mf);
  *M = mf;
  return keep;
}
// out = acc * dec_inv(...); lse in natural units (NaN stays NaN, nothing kept: 0 and -inf).
SPATTN_HD float dec_inv(float keep, float L) { return L == 0.f ? 0.f : keep / L; }
SPATTN_HD float dec_lse(float M, float L) {
  return L == 0.f ? neg_inf() : (M + log2f(L)) * 0.6931471805599453f;
}

// ---------------------------------------------------------------------------------------------
// pool_keys: out[b, c, g, :] = mean of keys [c * block, min((c + 1) * block, nk)) of sequence
// b, kv head g (0 for blocks past nk). One CTA per (b, c); threads over (g, feature).
// The lengths: host lengths copied to the device (cache_len, int64 [B]), or cache_len as the
// caller gave it on the device (lens: int32 or int64, element stride lens_s), then checked
// here: a length outside [0, capacity] or past out's blocks * block is an error (the sequence
// is pooled as empty, or as far as out reaches), as is a bad table entry it reads. Errors go
// to the decode error record (kDecErrorWords words, the smallest key first: the error the CPU
// reports), completed by the error kernel and, for a deferred call, copied to `sticky`.
struct PoolParams {
  const void* k = nullptr;
  int64_t k_sp = 0, k_sn = 0, k_sh = 0, k_sd = 1;
  bool paged = false;
  int64_t page_size = 1, pages = 0;
  const void* table = nullptr;
  bool table64 = false;
  int64_t table_sb = 0, table_sc = 1, max_pages = 0;
  const int64_t* cache_len = nullptr;  // [B], device copy of host lengths (when lens is null)
  const void* lens = nullptr;          // cache_len on the device as given
  bool lens64 = false;
  int64_t lens_s = 1;
  int64_t capacity = 0;  // the largest valid length (checked for lens only)
  float* out = nullptr;
  int64_t o_sb = 0, o_sc = 0, o_sh = 0, o_sd = 1;
  int64_t b = 0, blocks = 0, hkv = 0, d = 0, block = 1;
  unsigned long long* error = nullptr;   // kDecErrorWords words, all ones: none
  unsigned long long* sticky = nullptr;  // deferred: the device's persistent record
};

// cache_len[b] as given.
SPATTN_HD int64_t pool_len_raw(const PoolParams& p, int64_t b) {
  if (!p.lens) return p.cache_len[b];
  return p.lens64 ? static_cast<const int64_t*>(p.lens)[b * p.lens_s]
                  : int64_t(static_cast<const int32_t*>(p.lens)[b * p.lens_s]);
}

// The keys sequence b is pooled over, and *key its length's error (UINT64_MAX: none): outside
// [0, capacity] (pooled as empty), then more keys than out's blocks hold (pooled as far as
// they reach: the grid has no more blocks).
SPATTN_HD int64_t pool_len(const PoolParams& p, int64_t b, unsigned long long* key) {
  const int64_t n = pool_len_raw(p, b);
  *key = ~0ull;
  if (!p.lens) return n;  // host lengths: checked by the planner
  if (n < 0 || n > p.capacity) {
    *key = (kDecErrLength << kDecErrClassShift) | (unsigned long long)b;
    return 0;
  }
  if (n > p.blocks * p.block) *key = (kDecErrBlocks << kDecErrClassShift) | (unsigned long long)b;
  return n;
}

// The error key of a bad entry table[b, c] (dec_error_key with one kv head).
SPATTN_HD unsigned long long pool_table_key(const PoolParams& p, int64_t b, int64_t c) {
  return (kDecErrTable << kDecErrClassShift) | (unsigned long long)(b * p.max_pages + c);
}

SPATTN_HD int64_t pool_table_entry(const PoolParams& p, int64_t b, int64_t c) {
  const int64_t off = b * p.table_sb + c * p.table_sc;
  return p.table64 ? static_cast<const int64_t*>(p.table)[off]
                   : int64_t(static_cast<const int32_t*>(p.table)[off]);
}

// Element offset of key j of sequence b, kv head g; *ok false for a bad table entry (*entry
// gets it). Contiguous caches: k_sp is the batch stride.
SPATTN_HD int64_t pool_key_offset(const PoolParams& p, int64_t b, int64_t j, int64_t g, bool* ok,
                                  int64_t* entry) {
  *ok = true;
  if (!p.paged) return b * p.k_sp + j * p.k_sn + g * p.k_sh;
  const int64_t c = j / p.page_size;
  const int64_t e = pool_table_entry(p, b, c);
  *entry = e;
  if (e < 0 || e >= p.pages) {
    *ok = false;
    return 0;
  }
  return e * p.k_sp + (j - c * p.page_size) * p.k_sn + g * p.k_sh;
}

// The whole record of error `key` (dec_error_complete's words) and, for a deferred call, the
// persistent words (dec_sticky_words' layout; raise_decode_error reads both).
SPATTN_HD void pool_error_complete(const PoolParams& p, unsigned long long key,
                                   unsigned long long* rec) {
  const int64_t index = dec_error_index(key);
  rec[0] = key;
  if (dec_error_class(key) == kDecErrTable) {
    const int64_t b = index / p.max_pages;
    rec[1] = (unsigned long long)pool_table_entry(p, b, index - b * p.max_pages);
    rec[2] = (unsigned long long)pool_len_raw(p, b);
  } else {
    rec[1] = rec[2] = (unsigned long long)pool_len_raw(p, index);
  }
}
SPATTN_HD void pool_sticky_words(const PoolParams& p, const unsigned long long* rec,
                                 unsigned long long* w) {
  for (int x = 0; x < kDecErrorWords; ++x) w[x] = rec[x];
  w[3] = 1;  // the table key's index counts one kv head
  w[4] = (unsigned long long)p.max_pages;
  w[5] = (unsigned long long)(p.paged ? p.pages : 0);
  w[6] = (unsigned long long)p.capacity;
  w[7] = (unsigned long long)p.blocks;
  w[8] = (unsigned long long)p.block;
}

// ---------------------------------------------------------------------------------------------
// Host side: the plan of one call, staged in one blob.

#if !defined(__CUDA_ARCH__)

// What the launcher knows of one sequence: its length and (when nk > 0) its compiled pattern's
// layout (one query block of Nq rows, key blocks of bk) and predicate (host pointers).
struct DecodeSeqIn {
  int64_t nk = 0;
  const BlockLayout* layout = nullptr;
  Predicate pred;
};


struct StagedDecode {
  std::vector<unsigned char> blob;
  size_t seqs = 0, uptr = 0, ulo = 0, uhi = 0, ubefore = 0, ublocks = 0, task_bg = 0,
         task_split = 0, bg_task0 = 0;
  std::vector<StagedRanges> seq_layout;     // per sequence (unused when nk == 0)
  std::vector<StagedPredicate> seq_pred;
  std::vector<int64_t> seq_nk, seq_lheads;
  int64_t ntasks = 0, rgroups = 0;
  int64_t total_keys = 0;  // keys the call visits (sum over bg), for benches and tests

  // Writes the DecodeSeq array and the predicates' data pointers into the blob for a copy at
  // `base` (the device allocation; in tests, the host blob itself).
  void relocate(void* base) {
    unsigned char* b = static_cast<unsigned char*>(base);
    for (size_t s = 0; s < seq_nk.size(); ++s) {
      DecodeSeq d;
      d.nk = seq_nk[s];
      d.lheads = seq_lheads[s];
      if (d.nk > 0) {
        seq_layout[s].bind(b, &d);
        seq_pred[s].bind(b, &d.pred);
        seq_pred[s].relocate(blob, base);
      }
      std::memcpy(blob.data() + seqs + s * sizeof(DecodeSeq), &d, sizeof d);
    }
  }
  // Points p's plan fields into the copy at `base`.
  void bind(void* base, DecodeParams* p) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    p->seqs = reinterpret_cast<const DecodeSeq*>(b + seqs);
    p->uptr = reinterpret_cast<const int64_t*>(b + uptr);
    p->ulo = reinterpret_cast<const int32_t*>(b + ulo);
    p->uhi = reinterpret_cast<const int32_t*>(b + uhi);
    p->ubefore = reinterpret_cast<const int64_t*>(b + ubefore);
    p->ublocks = reinterpret_cast<const int64_t*>(b + ublocks);
    p->task_bg = reinterpret_cast<const int32_t*>(b + task_bg);
    p->task_split = reinterpret_cast<const int32_t*>(b + task_split);
    p->bg_task0 = reinterpret_cast<const int32_t*>(b + bg_task0);
    p->ntasks = ntasks;
    p->rgroups = rgroups;
  }
};

// The plan of a call with seqs.size() sequences, hkv kv heads of `group` query heads, nq queries
// and key blocks of bk, for a device of `sms` SMs. Every bg gets at least one task (its rows
// are written even when it visits nothing: out 0, lse -inf or the sink).
inline StagedDecode stage_decode(const std::vector<DecodeSeqIn>& seqs, int64_t hkv, int64_t group,
                                 int64_t nq, int64_t bk, int64_t sms) {
  StagedDecode s;
  const int64_t B = int64_t(seqs.size()), hq = hkv * group;
  s.rgroups = dec_row_groups(group, nq);
  std::vector<int64_t> uptr(size_t(B * hkv + 1), 0), ubefore, ublocks(size_t(B * hkv), 0);
  std::vector<int32_t> ulo, uhi;
  for (int64_t b = 0; b < B; ++b) {
    const DecodeSeqIn& q = seqs[size_t(b)];
    const int64_t nkb = (q.nk + bk - 1) / bk;
    if (q.nk > 0) {
      const BlockLayout& L = *q.layout;
      if (L.nqb != 1 || L.bk != bk || L.nk != q.nk || (L.heads != 1 && L.heads != hq) ||
          (q.pred.heads != 1 && q.pred.heads != hq))
        throw ValueError("cuda decode: the layout of sequence " + std::to_string(b) +
                         " does not match the problem");
      if (nkb >= INT32_MAX) throw ValueError("cuda decode: too many key blocks for 32-bit indices");
    }
    for (int64_t g = 0; g < hkv; ++g) {
      const int64_t bg = b * hkv + g;
      int64_t before = 0;
      if (q.nk > 0)
        for (auto [lo, hi] : visited_block_union(*q.layout, g * group, group, nkb)) {
          ulo.push_back(lo);
          uhi.push_back(hi);
          ubefore.push_back(before);
          before += hi - lo;
          s.total_keys += std::min<int64_t>(int64_t(hi) * bk, q.nk) - int64_t(lo) * bk;
        }
      ublocks[size_t(bg)] = before;
      uptr[size_t(bg + 1)] = int64_t(ulo.size());
    }
  }
  // Splits: the CTAs of a bg are (splits x row groups).
  const int64_t target = std::max<int64_t>(1, sms) * kDecCtasPerSm;
  const int64_t cells = B * hkv * s.rgroups;
  std::vector<int32_t> task_bg, task_split, bg_task0(size_t(B * hkv + 1), 0);
  for (int64_t bg = 0; bg < B * hkv; ++bg) {
    const int64_t ns = dec_num_splits(ublocks[size_t(bg)], bk, cells, target);
    bg_task0[size_t(bg)] = int32_t(task_bg.size());
    for (int64_t x = 0; x < ns; ++x) {
      task_bg.push_back(int32_t(bg));
      task_split.push_back(int32_t(x));
    }
    if (int64_t(task_bg.size()) >= INT32_MAX / 2)
      throw ValueError("cuda decode: too many split-K tasks");
  }
  bg_task0[size_t(B * hkv)] = int32_t(task_bg.size());
  s.ntasks = int64_t(task_bg.size());

  BlobWriter w;
  s.seqs = w.put(nullptr, 0);
  w.bytes.resize(s.seqs + size_t(B) * sizeof(DecodeSeq));  // filled by relocate()
  s.seq_layout.resize(size_t(B));
  s.seq_pred.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b) {
    const DecodeSeqIn& q = seqs[size_t(b)];
    s.seq_nk.push_back(q.nk);
    s.seq_lheads.push_back(q.nk > 0 ? q.layout->heads : 1);
    if (q.nk == 0) continue;
    s.seq_layout[size_t(b)] = stage_ranges(w, *q.layout);
    s.seq_pred[size_t(b)] = stage_predicate(w, q.pred);
  }
  s.uptr = w.put(uptr.data(), uptr.size() * sizeof(int64_t));
  s.ulo = w.put(ulo.data(), ulo.size() * sizeof(int32_t));
  s.uhi = w.put(uhi.data(), uhi.size() * sizeof(int32_t));
  s.ubefore = w.put(ubefore.data(), ubefore.size() * sizeof(int64_t));
  s.ublocks = w.put(ublocks.data(), ublocks.size() * sizeof(int64_t));
  s.task_bg = w.put(task_bg.data(), task_bg.size() * sizeof(int32_t));
  s.task_split = w.put(task_split.data(), task_split.size() * sizeof(int32_t));
  s.bg_task0 = w.put(bg_task0.data(), bg_task0.size() * sizeof(int32_t));
  w.finish();
  s.blob = std::move(w.bytes);
  return s;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
