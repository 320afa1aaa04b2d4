// The backward's staged layout made on the device (issue #11 item 2): the forward's row layout,
// compiled by the device layout compiler (device_layout_logic.hpp) for the backward's tile, is
// TRANSPOSED by kernels into the column CSR the backward walks (BwdCols), and the backward's
// schedule is sorted from it; the sm90a dQ pass reads the row layout and its schedule as they
// are. One general mechanism for every pattern the device compiler takes: no per-kind column
// rules. Results are bit for bit what stage_backward / stage_backward90 upload from the host
// (tests/cpp/test_device_transpose.cpp emulates the kernels with this code on the host).
//
// The transposition, CSR -> CSC with ranges (backward_logic.hpp's transpose_layout, in
// parallel). Column c of layout head lh lists, per kind (full, partial), the maximal runs of
// consecutive query tiles a whose block (a, c) has that kind. A run of kind k starts at (a, c)
// where row a has kind k at c and row a - 1 has not, and ends (hi = a) where row a - 1 has kind
// k and row a has not. So one thread per sweep (lh, a), a = 0 .. nqb, merges the range lists of
// rows a - 1 and a and visits the columns of the elementary intervals where the two kinds
// differ: O(ranges of the row layout + ranges of the columns) in all, as on the host.
//   1. count: per (kind, column) the run starts (atomic adds);
//   2. scan the counts into the column CSR's full_ptr / part_ptr (cub);
//   3. fill: each start's query tile into lo, each end's into hi, at the column's offset plus an
//      atomic cursor (starts and ends apart), so in no particular order;
//   4. per column: sort its lo and its hi segments ascending. Runs of one kind in a column are
//      disjoint, so the i-th smallest start and the i-th smallest end are one run: the sorted
//      arrays are the host's ranges. The column's cost (2 per full visit, 3 per partial) too;
//   5. the schedule: entries g * nkb + c keyed by the summed cost of the columns of kv head g's
//      query heads, sorted descending and stable (cub), as make_bwd_schedule does.
// Capacities are bounds known on the host (no read-back, no host synchronisation): runs of one
// kind in a column are separated by a tile of another kind, so a column holds at most
// ceil(nqb / 2) runs of each kind; partial runs are also at most the partial blocks, which the
// leaves' block_range_bound bound per row. The full runs' bound is O(nkb * nqb / 2) per layout
// head: past the byte budget (about 1M tokens at 64 x 64 tiles) the plan refuses and the
// backward compiles on the host (cached once per pattern and sizes), as do patterns with a leaf
// without a device block rule.
#pragma once

#include <cstdint>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/device_layout_logic.hpp"
#include "spattn/hostdevice.hpp"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <string>
#include <vector>
#endif

namespace spattn::cuda {

// ---- parameters --------------------------------------------------------------------------------

struct DevTransposeParams {
  int64_t lheads = 1, nqb = 0, nkb = 0;
  // The row layout (input; the device layout compiler's output): rows lh * nqb + a.
  const int64_t* row_full_ptr = nullptr;
  const int64_t* row_part_ptr = nullptr;
  const int32_t* row_full_lo = nullptr;
  const int32_t* row_full_hi = nullptr;
  const int32_t* row_part_lo = nullptr;
  const int32_t* row_part_hi = nullptr;
  // The columns (output): CSR rows lh * nkb + c, ptr arrays cols() + 1, range arrays of
  // full_cap / part_cap entries.
  int64_t* full_ptr = nullptr;
  int64_t* part_ptr = nullptr;
  int32_t* full_lo = nullptr;
  int32_t* full_hi = nullptr;
  int32_t* part_lo = nullptr;
  int32_t* part_hi = nullptr;
  int64_t full_cap = 0, part_cap = 0;
  // Temporaries, zeroed before the count: run starts per (kind, column) [2 * cols], the fill
  // cursors [4 * cols] (full starts, full ends, partial starts, partial ends), column costs.
  int64_t* count = nullptr;
  uint32_t* cursor = nullptr;
  uint32_t* col_cost = nullptr;
  int32_t* overflow = nullptr;  // set when a capacity was exceeded (never, by the bounds)
  // The schedule's entries g * nkb + c, kv head g summing query heads g * group ...
  int64_t hkv = 1, group = 1;

  SPATTN_HD int64_t cols() const { return lheads * nkb; }
  SPATTN_HD int64_t sweeps() const { return lheads * (nqb + 1); }
  SPATTN_HD int64_t sched_len() const { return hkv * nkb; }
};

// Everything the launches need: the parameters and the schedule's buffers and sort storage.
struct DevTransposeLaunch {
  DevTransposeParams p;
  uint32_t* keys_in = nullptr;
  uint32_t* keys_out = nullptr;
  int32_t* vals_in = nullptr;
  int32_t* sched = nullptr;
  void* scan_temp = nullptr;
  size_t scan_temp_bytes = 0;
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
};

// ---- atomics (sequential on the host, where the tests emulate one thread after another) --------

SPATTN_HD uint32_t transpose_atomic_inc(uint32_t* p) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(reinterpret_cast<unsigned int*>(p), 1u);
#else
  return (*p)++;
#endif
}
SPATTN_HD void transpose_atomic_inc(int64_t* p) {
#if defined(__CUDA_ARCH__)
  atomicAdd(reinterpret_cast<unsigned long long*>(p), 1ull);
#else
  ++*p;
#endif
}

// ---- the sweep ----------------------------------------------------------------------------------

// Row a of layout head lh as one ascending list of segments (full and partial merged by lo; they
// never overlap). Rows outside [0, nqb) are empty.
struct RowSegs {
  const DevTransposeParams* p;
  int64_t f = 0, fe = 0, q = 0, qe = 0;
  bool done = true;
  int64_t lo = 0, hi = 0;
  int kind = 0;  // 0 full, 1 partial

  SPATTN_HD RowSegs(const DevTransposeParams& pp, int64_t lh, int64_t a) : p(&pp) {
    if (a >= 0 && a < pp.nqb) {
      const int64_t r = lh * pp.nqb + a;
      f = pp.row_full_ptr[r], fe = pp.row_full_ptr[r + 1];
      q = pp.row_part_ptr[r], qe = pp.row_part_ptr[r + 1];
    }
    next();
  }
  SPATTN_HD void next() {
    if (f >= fe && q >= qe) {
      done = true;
      return;
    }
    done = false;
    if (q >= qe || (f < fe && p->row_full_lo[f] < p->row_part_lo[q])) {
      lo = p->row_full_lo[f], hi = p->row_full_hi[f], kind = 0;
      ++f;
    } else {
      lo = p->row_part_lo[q], hi = p->row_part_hi[q], kind = 1;
      ++q;
    }
  }
};

// Sweep s = lh * (nqb + 1) + a: rows a - 1 and a side by side; calls
// emit(col0, x, y, closed, opened) for each elementary interval [x, y) of key tiles where the
// two rows' kinds differ (closed: the kind of row a - 1 there, opened: row a's; -1 for none),
// col0 = lh * nkb the head's first column. The host's transpose_layout sweeps the same way.
template <class Emit>
SPATTN_HD void transpose_sweep(const DevTransposeParams& p, int64_t s, Emit& emit) {
  const int64_t lh = s / (p.nqb + 1), a = s - lh * (p.nqb + 1);
  RowSegs P(p, lh, a - 1), C(p, lh, a);
  constexpr int64_t kEnd = INT64_MAX;
  int64_t x = 0;
  for (;;) {
    while (!P.done && P.hi <= x) P.next();
    while (!C.done && C.hi <= x) C.next();
    if (P.done && C.done) break;
    const int64_t pl = P.done ? kEnd : P.lo, cl = C.done ? kEnd : C.lo;
    if (x < pl && x < cl) {  // covered by neither row: jump to the next start
      x = pl < cl ? pl : cl;
      continue;
    }
    const int pk = (!P.done && pl <= x) ? P.kind : -1;
    const int ck = (!C.done && cl <= x) ? C.kind : -1;
    int64_t y = kEnd;
    if (pk >= 0) y = brange::imin(y, P.hi);
    else if (!P.done) y = brange::imin(y, pl);
    if (ck >= 0) y = brange::imin(y, C.hi);
    else if (!C.done) y = brange::imin(y, cl);
    if (pk != ck) emit(lh * p.nkb, x, y, pk, ck, a);
    x = y;
  }
}

// Kernel 1: sweep s counts the runs that start in row a, per (kind, column).
struct CountStarts {
  const DevTransposeParams* p;
  SPATTN_HD void operator()(int64_t col0, int64_t x, int64_t y, int, int opened, int64_t) {
    if (opened < 0) return;
    int64_t* count = p->count + opened * p->cols() + col0;
    for (int64_t c = x; c < y; ++c) transpose_atomic_inc(count + c);
  }
};
SPATTN_HD void transpose_count(const DevTransposeParams& p, int64_t s) {
  CountStarts e{&p};
  transpose_sweep(p, s, e);
}

// Kernel 3: sweep s writes row a as the lo of the runs it starts and the hi of those it ends.
struct FillRuns {
  const DevTransposeParams* p;
  bool overflow = false;
  SPATTN_HD void put(int kind, bool end, int64_t col, int64_t a) {
    const int64_t* ptr = kind == 0 ? p->full_ptr : p->part_ptr;
    int32_t* dst = kind == 0 ? (end ? p->full_hi : p->full_lo) : (end ? p->part_hi : p->part_lo);
    const int64_t cap = kind == 0 ? p->full_cap : p->part_cap;
    uint32_t* cur = p->cursor + (2 * kind + (end ? 1 : 0)) * p->cols();
    const int64_t at = ptr[col] + int64_t(transpose_atomic_inc(cur + col));
    if (at < ptr[col + 1] && at < cap)
      dst[at] = int32_t(a);
    else
      overflow = true;
  }
  SPATTN_HD void operator()(int64_t col0, int64_t x, int64_t y, int closed, int opened,
                            int64_t a) {
    for (int64_t c = x; c < y; ++c) {
      if (closed >= 0) put(closed, true, col0 + c, a);
      if (opened >= 0) put(opened, false, col0 + c, a);
    }
  }
};
SPATTN_HD void transpose_fill(const DevTransposeParams& p, int64_t s) {
  FillRuns e{&p};
  transpose_sweep(p, s, e);
  if (e.overflow) *p.overflow = 1;
}

// In-place ascending heapsort of a[0, n) (one thread; no memory beside the array).
SPATTN_HD void transpose_heapsort(int32_t* a, int64_t n) {
  auto sift = [a](int64_t root, int64_t end) {
    for (;;) {
      int64_t child = 2 * root + 1;
      if (child >= end) return;
      if (child + 1 < end && a[child + 1] > a[child]) ++child;
      if (a[root] >= a[child]) return;
      const int32_t t = a[root];
      a[root] = a[child];
      a[child] = t;
      root = child;
    }
  };
  for (int64_t i = n / 2 - 1; i >= 0; --i) sift(i, n);
  for (int64_t end = n - 1; end > 0; --end) {
    const int32_t t = a[0];
    a[0] = a[end];
    a[end] = t;
    sift(0, end);
  }
}

// Kernel 4: column col's runs in ascending order, and its cost (make_bwd_schedule's col_cost).
SPATTN_HD void transpose_column(const DevTransposeParams& p, int64_t col) {
  uint32_t cost = 0;
  for (int kind = 0; kind < 2; ++kind) {
    const int64_t* ptr = kind == 0 ? p.full_ptr : p.part_ptr;
    int32_t* lo = kind == 0 ? p.full_lo : p.part_lo;
    int32_t* hi = kind == 0 ? p.full_hi : p.part_hi;
    const int64_t b = ptr[col], n = ptr[col + 1] - b;
    if (n <= 0 || ptr[col + 1] > (kind == 0 ? p.full_cap : p.part_cap)) continue;
    transpose_heapsort(lo + b, n);
    transpose_heapsort(hi + b, n);
    int64_t blocks = 0;
    for (int64_t t = b; t < b + n; ++t) blocks += int64_t(hi[t]) - lo[t];
    cost += uint32_t((kind == 0 ? 2 : 3) * blocks);
  }
  p.col_cost[col] = cost;
}

// Kernel 5's key: entry e = g * nkb + c of the schedule costs the columns c of kv head g's query
// heads (the plan refuses problems where the sum could pass 32 bits).
SPATTN_HD uint32_t bwd_schedule_key(const DevTransposeParams& p, int64_t e) {
  const int64_t g = e / p.nkb, c = e - (e / p.nkb) * p.nkb;
  uint32_t k = 0;
  for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h)
    k += p.col_cost[(p.lheads == 1 ? 0 : h) * p.nkb + c];
  return k;
}

// ---- host: the plan ----------------------------------------------------------------------------

#if !defined(__CUDA_ARCH__)

// The plan of the backward's device compile: the row layout's plan (device_layout_logic.hpp,
// for the backward's tile) and, appended to its allocations, the columns and the backward
// schedule (persistent, with the row layout) and the transposition's temporaries.
struct DeviceBackwardPlan {
  DeviceLayoutPlan rows;
  StagedBackward staged;     // blob: the uploaded part (rows.staged.blob); offsets: the whole
  DevTransposeParams params;  // sizes and capacities; pointers bound by launch()
  size_t overflow = 0;
  size_t count = 0, cursor = 0, col_cost = 0, keys_in = 0, keys_out = 0, vals_in = 0;
  size_t scan_temp = 0, scan_temp_bytes = 0, sort_temp = 0, sort_temp_bytes = 0;
  size_t total = 0, temp_total = 0;  // bytes of the persistent and the temporary allocation

  // The transposition's launch with the allocations at `base` and `temp` (the row layout's
  // compile: rows.launch(base, temp)).
  DevTransposeLaunch launch(void* base, void* temp) const {
    unsigned char* b = static_cast<unsigned char*>(base);
    unsigned char* t = static_cast<unsigned char*>(temp);
    DevTransposeLaunch l;
    DevTransposeParams& p = l.p;
    p = params;
    const StagedRanges& R = rows.staged.layout;
    p.row_full_ptr = reinterpret_cast<const int64_t*>(b + R.full_ptr);
    p.row_part_ptr = reinterpret_cast<const int64_t*>(b + R.part_ptr);
    p.row_full_lo = reinterpret_cast<const int32_t*>(b + R.full_lo);
    p.row_full_hi = reinterpret_cast<const int32_t*>(b + R.full_hi);
    p.row_part_lo = reinterpret_cast<const int32_t*>(b + R.part_lo);
    p.row_part_hi = reinterpret_cast<const int32_t*>(b + R.part_hi);
    const StagedRanges& C = staged.cols;
    p.full_ptr = reinterpret_cast<int64_t*>(b + C.full_ptr);
    p.part_ptr = reinterpret_cast<int64_t*>(b + C.part_ptr);
    p.full_lo = reinterpret_cast<int32_t*>(b + C.full_lo);
    p.full_hi = reinterpret_cast<int32_t*>(b + C.full_hi);
    p.part_lo = reinterpret_cast<int32_t*>(b + C.part_lo);
    p.part_hi = reinterpret_cast<int32_t*>(b + C.part_hi);
    p.count = reinterpret_cast<int64_t*>(t + count);
    p.cursor = reinterpret_cast<uint32_t*>(t + cursor);
    p.col_cost = reinterpret_cast<uint32_t*>(t + col_cost);
    p.overflow = reinterpret_cast<int32_t*>(b + overflow);
    l.keys_in = reinterpret_cast<uint32_t*>(t + keys_in);
    l.keys_out = reinterpret_cast<uint32_t*>(t + keys_out);
    l.vals_in = reinterpret_cast<int32_t*>(t + vals_in);
    l.sched = reinterpret_cast<int32_t*>(b + staged.sched);
    l.scan_temp = t + scan_temp;
    l.scan_temp_bytes = scan_temp_bytes;
    l.sort_temp = t + sort_temp;
    l.sort_temp_bytes = sort_temp_bytes;
    return l;
  }
};

// Plans the backward's device compile of `pred` for an (nq, nk, hq, hkv) problem with bq x bk
// tiles (kBwdBlockM x kBwdBlockN, or the sm90a's 128 x 128 with `with_rows`: the dQ pass's row
// layout and forward schedule staged too) and range budget cap. The cub storage sizes come from
// the caller (0 in host tests): row_sort_bytes for the row schedule's sort of hq * nqb entries,
// col_sort_bytes for the backward schedule's (hkv * nkb, same key and value types), scan_bytes
// for an inclusive sum of lheads * nkb int64 counts. Returns false with *why when
// the device cannot do it: plan_device_layout's refusals, Hq not a multiple of Hkv (the host
// path raises the error), costs past 32 bits, or more than max_bytes in all.
inline bool plan_device_backward(const Predicate& pred, int64_t nq, int64_t nk, int64_t hq,
                                 int64_t hkv, int64_t bq, int64_t bk, int64_t cap,
                                 bool with_rows, size_t row_sort_bytes, size_t col_sort_bytes,
                                 size_t scan_bytes, size_t max_bytes, DeviceBackwardPlan* plan,
                                 std::string* why) {
  if (hkv < 1 || hq % hkv != 0) {
    *why = "Hq is not a multiple of Hkv";
    return false;
  }
  DeviceBackwardPlan& P = *plan;
  if (!plan_device_layout(pred, nq, nk, hq, bq, bk, cap, row_sort_bytes, max_bytes, &P.rows, why))
    return false;
  const DevLayoutParams& rp = P.rows.params;
  DevTransposeParams& p = P.params;
  p.lheads = rp.lheads, p.nqb = rp.nqb, p.nkb = rp.nkb, p.hkv = hkv, p.group = hq / hkv;
  if (3.0 * double(p.group) * double(p.nqb) >= 4294967295.0) {
    *why = "the backward schedule's costs would pass 32 bits";
    return false;
  }
  // Capacities: ceil(nqb / 2) runs of a kind per column; partial runs also at most the partial
  // blocks (per row: the leaves' partial-block bounds summed, at most nkb).
  const int64_t cols = p.cols();
  const double per_kind = double(cols) * double((p.nqb + 1) / 2);
  brange::Ctx x{nq, nk, bq, bk, nk - nq, p.nkb, cap, 0, 0, 0, 0};
  double partial_blocks = 0;
  for (int64_t h = 0; h < pred.heads; ++h) {
    int64_t ph = 0;
    for (int32_t k = pred.head_begin[h]; k < pred.head_end[h]; ++k) {
      const PredNode& n = pred.nodes[k];
      if (n.kind == PredKind::Or || n.kind == PredKind::And) continue;
      ph += std::min<int64_t>(leaf_block_bound(n, x).partial_blocks, p.nkb);
    }
    partial_blocks += double(p.nqb) * double(std::min<int64_t>(ph, p.nkb));
  }
  const double full_cap = per_kind, part_cap = std::min(per_kind, partial_blocks);
  const double bytes = double(P.rows.total) + double(P.rows.temp_total) +
                       (full_cap + part_cap) * 8.0 + double(cols + 1) * 16.0 +
                       double(p.sched_len()) * 16.0 + double(cols) * 36.0 + double(scan_bytes) +
                       double(col_sort_bytes) + 256.0;
  if (full_cap >= double(INT32_MAX) || part_cap >= double(INT32_MAX)) {
    *why = "too many column ranges for the kernels' 32-bit indices";
    return false;
  }
  if (bytes > double(max_bytes)) {
    *why = "the backward layout's buffers would take " + std::to_string(int64_t(bytes)) +
           " bytes (bound: " + std::to_string(int64_t(max_bytes)) + ")";
    return false;
  }
  p.full_cap = int64_t(full_cap);
  p.part_cap = int64_t(part_cap);

  // Persistent: after the row layout's allocation (offsets 16-byte aligned).
  size_t at = P.rows.total, tmp = P.rows.temp_total;
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
  StagedBackward& s = P.staged;
  s.lheads = p.lheads, s.nqb = p.nqb, s.nkb = p.nkb, s.bq = bq, s.bk = bk;
  s.pred = P.rows.staged.pred;
  s.blob = P.rows.staged.blob;
  s.cols.full_ptr = take(size_t(cols + 1) * sizeof(int64_t));
  s.cols.part_ptr = take(size_t(cols + 1) * sizeof(int64_t));
  s.cols.full_lo = take(size_t(p.full_cap) * sizeof(int32_t));
  s.cols.full_hi = take(size_t(p.full_cap) * sizeof(int32_t));
  s.cols.part_lo = take(size_t(p.part_cap) * sizeof(int32_t));
  s.cols.part_hi = take(size_t(p.part_cap) * sizeof(int32_t));
  s.sched_len = p.sched_len();
  s.sched = take(size_t(s.sched_len) * sizeof(int32_t));
  if (with_rows) {
    s.rows_staged = true;
    s.rows = P.rows.staged.layout;
    s.row_sched = P.rows.staged.sched;
    s.row_sched_len = P.rows.staged.sched_len;
  }
  P.overflow = P.rows.overflow;  // one flag for both compiles
  P.total = at;
  P.count = take_temp(size_t(2 * cols) * sizeof(int64_t));
  P.cursor = take_temp(size_t(4 * cols) * sizeof(uint32_t));
  P.col_cost = take_temp(size_t(cols) * sizeof(uint32_t));
  P.keys_in = take_temp(size_t(s.sched_len) * sizeof(uint32_t));
  P.keys_out = take_temp(size_t(s.sched_len) * sizeof(uint32_t));
  P.vals_in = take_temp(size_t(s.sched_len) * sizeof(int32_t));
  P.scan_temp_bytes = scan_bytes;
  P.scan_temp = take_temp(scan_bytes);
  P.sort_temp_bytes = col_sort_bytes;
  P.sort_temp = take_temp(col_sort_bytes);
  P.temp_total = tmp;
  return true;
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
