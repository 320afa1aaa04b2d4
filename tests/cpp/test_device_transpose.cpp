// The backward's staged layout made on the device (cuda/include/spattn/cuda/
// device_transpose_logic.hpp) emulated on the host: the row compile's kernels, then the
// transposition's (count per sweep, scan, fill per sweep, sort per column) and the backward
// schedule's stable sort, over the same SPATTN_HD code the CUDA kernels run. The sweeps run in a
// random order each pass, as the GPU's atomics may place them, so the per-column sort is what
// makes the order right. For many random patterns (windows, dilated, strided, fixed, global,
// sinks, prefix LM, documents, BigBird, BlockSparse; unions, intersections, PerHead), sizes
// (Nq != Nk, not multiples of the tile), GQA groups and both backward tiles (64 x 64 sm80-style;
// 128 x 128 sm90a with the row layout and forward schedule), the staged arrays must equal what
// stage_backward / stage_backward90 stage from the host layout, and no capacity may be exceeded.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "spattn/cuda/device_transpose_logic.hpp"
#include "spattn/cuda/hopper_bwd_logic.hpp"
#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"
#include "spattn/test_hooks.hpp"

#include "device_layout_emulation.hpp"

using namespace spattn;
using namespace spattn::cuda;
using namespace spattn_test;

static int failures = 0, passes = 0;

static void expect(bool ok, const std::string& what) {
  if (ok) {
    ++passes;
    return;
  }
  if (++failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

// A stable descending sort of entries 0..n-1 by key (what cub's radix sort gives).
template <class Key>
static void sort_schedule(int32_t* out, int64_t n, Key key) {
  std::vector<int32_t> s(static_cast<size_t>(n));
  std::iota(s.begin(), s.end(), 0);
  std::stable_sort(s.begin(), s.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
  std::copy(s.begin(), s.end(), out);
}

// The device compile on the host: plan, "upload", row kernels and schedule, then the
// transposition's kernels (sweeps in a shuffled order) and the backward schedule. Returns the
// memory (the staged form's offsets point into it) or an empty vector when the plan refuses.
static std::vector<unsigned char> emulate(const CompiledPattern& cp, int64_t hkv, int64_t bq,
                                          int64_t bk, bool with_rows, DeviceBackwardPlan* plan,
                                          bool* overflow, std::string* why) {
  const Predicate pred = cp.predicate();
  const int64_t nqb = (cp.nq() + bq - 1) / bq;
  const int64_t cap = spattn::detail::layout_row_budget(cp.heads() * nqb);
  if (!plan_device_backward(pred, cp.nq(), cp.nk(), cp.hq(), hkv, bq, bk, cap, with_rows, 0, 0,
                            0, size_t(1) << 30, plan, why))
    return {};
  std::vector<unsigned char> mem(plan->total + 16), temp(plan->temp_total + 16);
  unsigned char* base = mem.data();
  plan->staged.relocate_nodes(base);
  std::memcpy(base, plan->staged.blob.data(), plan->staged.blob.size());
  // The row layout and its schedule (device_layout.cu's launches).
  const DevLayoutLaunch rl = plan->rows.launch(base, temp.data());
  *rl.p.overflow = 0;
  run_layout_rows(rl.p);
  sort_schedule(rl.sched, rl.sched_len, [&](int32_t e) { return schedule_key(rl.p, e); });
  // The transposition (device_transpose.cu's launches); temporaries zeroed as the memsets do.
  const DevTransposeLaunch tl = plan->launch(base, temp.data());
  const DevTransposeParams& p = tl.p;
  const int64_t cols = p.cols();
  std::fill(p.count, p.count + 2 * cols, 0);
  std::fill(p.cursor, p.cursor + 4 * cols, 0u);
  std::vector<int64_t> order(size_t(p.sweeps()));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t s : order) transpose_count(p, s);                       // kernel 1
  p.full_ptr[0] = p.part_ptr[0] = 0;                                   // scan
  for (int64_t c = 0; c < cols; ++c) {
    p.full_ptr[c + 1] = p.full_ptr[c] + p.count[c];
    p.part_ptr[c + 1] = p.part_ptr[c] + p.count[cols + c];
  }
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t s : order) transpose_fill(p, s);                        // kernel 3
  for (int64_t c = 0; c < cols; ++c) transpose_column(p, c);           // kernel 4
  sort_schedule(tl.sched, p.sched_len(), [&](int32_t e) { return bwd_schedule_key(p, e); });
  *overflow = *p.overflow != 0;
  return mem;
}

// The six arrays of a CSR of `rows` rows as the kernels see them (up to the last offset).
static bool same_csr(const BwdCols& a, const BwdCols& b, int64_t rows) {
  if (!std::equal(a.full_ptr, a.full_ptr + rows + 1, b.full_ptr) ||
      !std::equal(a.part_ptr, a.part_ptr + rows + 1, b.part_ptr))
    return false;
  const int64_t nf = a.full_ptr[rows], np = a.part_ptr[rows];
  return std::equal(a.full_lo, a.full_lo + nf, b.full_lo) &&
         std::equal(a.full_hi, a.full_hi + nf, b.full_hi) &&
         std::equal(a.part_lo, a.part_lo + np, b.part_lo) &&
         std::equal(a.part_hi, a.part_hi + np, b.part_hi);
}
static BwdCols rows_of(const FwdParams& f) {
  BwdCols c;
  c.full_ptr = f.full_ptr, c.part_ptr = f.part_ptr, c.full_lo = f.full_lo;
  c.full_hi = f.full_hi, c.part_lo = f.part_lo, c.part_hi = f.part_hi;
  return c;
}

static void dump_column(const BwdCols& c, int64_t r, const char* who) {
  std::printf("  %s column %lld full:", who, (long long)r);
  for (int64_t t = c.full_ptr[r]; t < c.full_ptr[r + 1]; ++t)
    std::printf(" [%d,%d)", c.full_lo[t], c.full_hi[t]);
  std::printf(" part:");
  for (int64_t t = c.part_ptr[r]; t < c.part_ptr[r + 1]; ++t)
    std::printf(" [%d,%d)", c.part_lo[t], c.part_hi[t]);
  std::printf("\n");
}

static int compared = 0;

static void compare(const Pattern& pat, int64_t nq, int64_t nk, int64_t hq, int64_t hkv,
                    bool sm90a) {
  const int64_t bq = sm90a ? kHopperBwdBlockM : kBwdBlockM;
  const int64_t bk = sm90a ? kHopperBwdBlockN : kBwdBlockN;
  const std::string tag = pat.describe() + " nq=" + std::to_string(nq) + " nk=" +
                          std::to_string(nk) + " hq=" + std::to_string(hq) + " hkv=" +
                          std::to_string(hkv) + (sm90a ? " sm90a" : " sm80");
  const CompiledPattern cp = pat.compile(nq, nk, hq);
  const Predicate pred = cp.predicate();
  // What the host path uploads.
  StagedBackward hs = sm90a ? stage_backward90(cp.layout(bq, bk), pred, nq, nk, hq, hkv)
                            : stage_backward(cp.layout(bq, bk), pred, nq, nk, hq, hkv);
  hs.relocate_nodes(hs.blob.data());
  BwdParams H;
  hs.bind(hs.blob.data(), &H);
  // What the device makes.
  DeviceBackwardPlan plan;
  bool overflow = false;
  std::string why;
  std::vector<unsigned char> mem = emulate(cp, hkv, bq, bk, sm90a, &plan, &overflow, &why);
  if (mem.empty()) {
    expect(false, "refused: " + why + ": " + tag);
    return;
  }
  ++compared;
  BwdParams D;
  plan.staged.bind(mem.data(), &D);
  expect(!overflow, "capacity exceeded: " + tag);
  expect(D.cols.lheads == H.cols.lheads && D.cols.nqb == H.cols.nqb && D.cols.nkb == H.cols.nkb &&
             D.sched_len == H.sched_len && D.nq_pad == H.nq_pad,
         "sizes differ: " + tag);
  if (D.cols.nkb != H.cols.nkb || D.cols.lheads != H.cols.lheads) return;
  const int64_t cols = H.cols.lheads * H.cols.nkb;
  const bool same = same_csr(H.cols, D.cols, cols);
  expect(same, "columns differ: " + tag);
  if (!same && failures <= 3)
    for (int64_t r = 0; r < cols; ++r) {
      BwdCols h1 = H.cols, d1 = D.cols;
      if (!same_csr(h1, d1, r + 1) || h1.full_ptr[r + 1] != d1.full_ptr[r + 1]) {
        dump_column(H.cols, r, "host");
        dump_column(D.cols, r, "dev ");
        break;
      }
    }
  expect(std::equal(H.sched, H.sched + H.sched_len, D.sched), "schedule differs: " + tag);
  if (sm90a) {
    const int64_t rows = H.f.lheads * H.f.nqb;
    expect(D.f.lheads == H.f.lheads && D.f.nqb == H.f.nqb && D.f.nkb == H.f.nkb &&
               D.f.sched_len == H.f.sched_len,
           "row sizes differ: " + tag);
    expect(same_csr(rows_of(H.f), rows_of(D.f), rows), "row layout differs: " + tag);
    expect(std::equal(H.f.sched, H.f.sched + H.f.sched_len, D.f.sched),
           "row schedule differs: " + tag);
  }
}

int main() {
  // Named cases: issue #11's structured patterns at sizes that are not multiples of the tiles.
  const std::vector<Pattern> named = {
      Pattern::causal(),
      Pattern::dense(),
      Pattern::sliding_window(255, 0),
      Pattern::sliding_window(100, 37),
      Pattern::dilated(8, 8, 3),
      Pattern::strided(64, true),
      Pattern::strided(7, false),
      Pattern::fixed(64, 8, true),
      Pattern::global({0, 1, 2, 300, 301, 640}),
      Pattern::sink(4),
      Pattern::bigbird(64, 3, 1, 2, 7),
      prefix_lm(100),
      Pattern::union_of({Pattern::sliding_window(127, 0), Pattern::sink(4)}),
      Pattern::union_of({Pattern::strided(128, true), Pattern::fixed(128, 8, true)}),
      Pattern::intersection_of({Pattern::causal(), Pattern::dilated(kUnbounded, kUnbounded, 4)}),
  };
  for (const Pattern& p : named)
    for (bool sm90a : {false, true})
      for (int64_t n : {1, 63, 700, 1000}) {
        const int64_t nk = n < 700 ? 700 : n;
        compare(p, n, nk, 2, 1, sm90a);            // Nq <= Nk, MQA
        compare(p, nk + 37 * n % 300, nk, 4, 2, sm90a);  // Nq >= Nk, GQA
      }
  compare(Pattern::per_head({Pattern::causal(), Pattern::sliding_window(64, 64),
                             Pattern::union_of({Pattern::strided(33, true), Pattern::sink(9)}),
                             Pattern::global({3, 77})}),
          777, 900, 4, 2, false);
  // Rows alternating between every key tile and none: columns with many runs each (the
  // capacity's worst case, ceil(nqb / 2) full runs per column).
  {
    BlockMask m;
    m.bq = 64, m.bk = 64, m.nbq = 16, m.nbk = 12;
    for (int64_t a = 0; a < m.nbq; ++a)
      for (int64_t c = 0; c < m.nbk; ++c) m.bits.push_back(a % 2 == 0);
    compare(Pattern::block_sparse(m), 1024, 768, 1, 1, false);
    compare(Pattern::block_sparse(m), 1000, 768, 2, 1, false);
  }
  // No keys, no queries.
  compare(Pattern::causal(), 100, 0, 2, 2, false);
  compare(Pattern::union_of({Pattern::sink(3), Pattern::strided(4, false)}), 300, 0, 1, 1, true);

  // Random problems: every kind, unions, intersections, PerHead, GQA groups, both tiles.
  for (int it = 0; it < 1200; ++it) {
    const int64_t nk = rnd(1, 1200);
    const int64_t nq = rnd(0, 3) == 0 ? nk : rnd(1, 1200);
    const int64_t hq = rnd(1, 4);
    int64_t hkv = rnd(1, hq);
    while (hq % hkv) --hkv;
    compare(random_pattern(nq, nk, hq, 0), nq, nk, hq, hkv, rnd(0, 1) == 1);
  }
  // Longer columns (a few thousand queries): many runs per column.
  for (int it = 0; it < 60; ++it) {
    const int64_t nk = rnd(1000, 4000);
    const int64_t nq = rnd(0, 1) ? nk : rnd(1000, 6000);
    const int64_t hq = rnd(1, 2);
    compare(random_pattern(nq, nk, hq, 1), nq, nk, hq, 1, rnd(0, 1) == 1);
  }
  // Tiny range budgets: the periodic leaves' over-budget paths (whole partial spans).
  for (int64_t budget : {0, 40}) {
    spattn::detail::set_layout_budget(budget, 1);
    for (int it = 0; it < 150; ++it) {
      const int64_t nk = rnd(1, 1500), nq = rnd(1, 1500);
      compare(random_pattern(nq, nk, 1, 0), nq, nk, 1, 1, rnd(0, 1) == 1);
    }
  }
  spattn::detail::set_layout_budget(int64_t(1) << 21, 64);

  // Refusals keep the host path: a leaf without a device block rule; Hq not a multiple of Hkv
  // (the host path raises); buffers past the bound.
  {
    const CompiledPattern cp =
        Pattern::union_of({log_sparse(4), Pattern::sink(3)}).compile(128, 128, 1);
    DeviceBackwardPlan plan;
    std::string why;
    expect(!plan_device_backward(cp.predicate(), 128, 128, 1, 1, 64, 64, 64, false, 0, 0, 0,
                                 size_t(1) << 30, &plan, &why) &&
               !why.empty(),
           "LogSparse is refused with a reason");
    const CompiledPattern c3 = Pattern::causal().compile(300, 300, 3);
    expect(!plan_device_backward(c3.predicate(), 300, 300, 3, 2, 64, 64, 64, false, 0, 0, 0,
                                 size_t(1) << 30, &plan, &why),
           "Hq=3, Hkv=2 is refused");
    const int64_t n = int64_t(1) << 20;
    const CompiledPattern big = Pattern::sliding_window(4095, 0).compile(n, n, 1);
    const bool ok64 = plan_device_backward(big.predicate(), n, n, 1, 1, 64, 64, 64, false, 0, 0,
                                           0, size_t(1) << 30, &plan, &why);
    expect(!ok64 && why.find("bytes") != std::string::npos,
           "1M tokens at 64 x 64 tiles: past the bound, refused: " + why);
    const bool ok128 = plan_device_backward(big.predicate(), n, n, 1, 1, 128, 128, 64, true, 0, 0,
                                            0, size_t(1) << 30, &plan, &why);
    std::printf("1M-token window(4095): 64x64 %s; 128x128 %s (%zu bytes kept, %zu temporary)\n",
                ok64 ? "device" : "host", ok128 ? "device" : "host", ok128 ? plan.total : 0,
                ok128 ? plan.temp_total : 0);
  }

  std::printf("test_device_transpose: %d problems compared, %d checks passed, %d failed\n",
              compared, passes, failures);
  return failures ? 1 : 0;
}
