// TopKBlocks' selection on the GPU, its logic on the host. The kernels
// (cuda/src/kernels/topk_select.cu) are built from the SPATTN_HD functions of
// spattn/cuda/topk_logic.hpp; this test runs the same functions in a scalar emulation of the
// kernels' loop structure:
//
//   pool_kernel     per (block, head): topk_pool_rows, rows summed in order with topk_add, then
//                   topk_mul by topk_pool_scale
//   choose_kernel   per (head, query block): topk_fixed_bit for every bit; when topk_scored, a
//                   half-warp per candidate (lane t: topk_dot_lane, then topk_dot_finish over the
//                   16 lanes), 4 radix passes (histogram of topk_digit over the keys matching the
//                   prefix, topk_find_bucket), keys below the threshold in, ties at it to the
//                   lowest indices in order
//   count / scan / write kernels   topk_layout_row per layout row, prefix sums, the tail copied
//                   and the chosen leaves pointed at the mask, as on the device
//
// and compares: the mask bit for bit with the CPU's select::choose (random sizes that are not
// multiples of the blocks, Nq != Nk both ways, causal and not, GQA, k from 0 past the candidate
// count, many ties, NaN inputs); and each layout (forward rows at 128 x 64, backward columns at
// 64 x 64, rows and columns at 128 x 128 as the sm90a backward walks them), bound through
// StagedForward / StagedBackward as the kernels' launchers bind them, element by element with
// the concrete pattern's mask (select::concrete(...).mask()) using the kernels' own rule (full
// tiles: every existing pair; partial: keeps() of the composed predicate). A sabotaged
// emulation (ties to the highest index) must be caught.
//
// What this cannot check: shuffles, shared memory, atomics, the device's float arithmetic.
// Those need a GPU (tests/python/test_cuda_topk.py).
#include <spattn/cuda/topk_logic.hpp>
#include <spattn/spattn.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "select/topk.hpp"
#include "topk_emulation.hpp"

using namespace spattn;
using namespace spattn::cuda;
using topk_emu::emulate_choose;
using topk_emu::emulate_pool;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    if (failures < 20) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

struct Case {
  int64_t nq, nk, hq, hkv, d, k, bq, bk;
  bool causal;
  Pattern always;  // invalid: none
  std::string name;
};

// q [nq, hq, d] / k [nk, hkv, d] float32 rows as select::Rows.
select::Rows rows_of(const std::vector<float>& x, int64_t n, int64_t h, int64_t d) {
  select::Rows r;
  r.base = reinterpret_cast<const char*>(x.data());
  r.n = n, r.heads = h, r.d = d;
  r.s_row = h * d, r.s_head = d, r.s_dim = 1;
  r.dtype = DType::Float32;
  return r;
}

// The layout kernels on the host: region bytes of one batch element (8-byte aligned storage).
struct Region {
  std::vector<uint64_t> words;
  unsigned char* bytes() { return reinterpret_cast<unsigned char*>(words.data()); }
};

bool emulate_layout(const TopkLayoutParams& p, Region& region) {
  unsigned char* base = region.bytes();
  std::vector<int32_t> counts(size_t(2 * p.rows));
  for (int64_t r = 0; r < p.rows; ++r) {
    int64_t h, o;
    topk_row_of(p, r, &h, &o);
    int32_t n[2] = {0, 0};
    topk_layout_row(p.g, p.mask, p.always, p.tm, p.tn, p.by_cols, h, o,
                    [&](int kind, int64_t, int64_t) { ++n[kind]; });
    counts[size_t(2 * r)] = n[0];
    counts[size_t(2 * r + 1)] = n[1];
  }
  int64_t* full_ptr = reinterpret_cast<int64_t*>(base + p.full_ptr);
  int64_t* part_ptr = reinterpret_cast<int64_t*>(base + p.part_ptr);
  full_ptr[0] = part_ptr[0] = 0;
  for (int64_t r = 0; r < p.rows; ++r) {
    full_ptr[r + 1] = full_ptr[r] + counts[size_t(2 * r)];
    part_ptr[r + 1] = part_ptr[r] + counts[size_t(2 * r + 1)];
  }
  const bool fits = full_ptr[p.rows] <= p.cap && part_ptr[p.rows] <= p.cap;
  if (!fits) return false;
  if (p.copy_tail) {
    std::memcpy(base + p.region_tail, p.tail_src, p.tail_bytes);
    PredNode* nodes = reinterpret_cast<PredNode*>(base + p.nodes_at);
    for (int64_t x = 0; x < p.chosen_count; ++x) nodes[p.chosen[x]].data = p.mask;
  }
  int32_t* lo[2] = {reinterpret_cast<int32_t*>(base + p.full_lo),
                    reinterpret_cast<int32_t*>(base + p.part_lo)};
  int32_t* hi[2] = {reinterpret_cast<int32_t*>(base + p.full_hi),
                    reinterpret_cast<int32_t*>(base + p.part_hi)};
  for (int64_t r = 0; r < p.rows; ++r) {
    int64_t h, o;
    topk_row_of(p, r, &h, &o);
    int64_t at[2] = {full_ptr[r], part_ptr[r]};
    topk_layout_row(p.g, p.mask, p.always, p.tm, p.tn, p.by_cols, h, o,
                    [&](int kind, int64_t l, int64_t e) {
                      lo[kind][at[kind]] = int32_t(l);
                      hi[kind][at[kind]] = int32_t(e);
                      ++at[kind];
                    });
  }
  return true;
}

bool is_permutation_of_rows(const int32_t* s, int64_t n) {
  std::vector<uint8_t> seen(size_t(n), 0);
  for (int64_t x = 0; x < n; ++x) {
    if (s[x] < 0 || s[x] >= n || seen[size_t(s[x])]) return false;
    seen[size_t(s[x])] = 1;
  }
  return true;
}

// Checks one tile configuration: the kernels' view of the layout against the concrete mask.
void check_layouts(const Case& cs, const TopkGeom& g,
                   const std::vector<uint8_t>& mask, const std::vector<uint8_t>& want,
                   int64_t tm, int64_t tn, bool rows, bool cols) {
  const std::string where = cs.name + " tile " + std::to_string(tm) + "x" + std::to_string(tn);
  const Pattern always = cs.always.valid() ? cs.always : Pattern::sink(0);
  const auto acp = always.compiled(g.nq, g.nk, g.hq);
  const auto ccp = Pattern::causal().compiled(g.nq, g.nk, g.hq);
  const Predicate cp = ccp->predicate();
  const Predicate ap = acp->predicate();
  const TopkPredicate pred =
      topk_predicate(g, cs.always.valid() ? &ap : nullptr, cp.nodes[cp.head_begin[0]]);
  TopkStaging st = stage_topk(g, tm, tn, rows, cols, acp->layout_for(tm, tn), pred);
  st.pred.relocate(st.blob, st.blob.data());  // the template "uploaded" where it is
  Region region;
  region.words.assign(st.region_bytes / 8 + 1, 0);
  bool copied = false;
  for (int l = 0; l < 2; ++l) {
    if (!st.want[l]) continue;
    TopkLayoutParams lp = st.layout_params(g, l, st.blob.data());
    lp.b = 1;
    lp.mask = mask.data();
    lp.copy_tail = !copied;
    copied = true;
    check(emulate_layout(lp, region), where + ": layout " + std::to_string(l) +
                                          " exceeds its capacity");
  }
  const int64_t nqt = st.nqt, nkt = st.nkt;
  auto elem = [&](int64_t h, int64_t i, int64_t j) {
    return want[size_t((h * g.nq + i) * g.nk + j)] != 0;
  };
  // state[h][a][c] as a walk sees it: 0 unlisted, 1 partial, 2 full; listed twice is an error.
  auto verify = [&](const std::vector<int>& state, const Predicate& p, const char* what) {
    int64_t bad = 0;
    for (int64_t h = 0; h < g.hq; ++h)
      for (int64_t i = 0; i < g.nq; ++i)
        for (int64_t j = 0; j < g.nk; ++j) {
          const int s = state[size_t((h * nqt + i / tm) * nkt + j / tn)];
          const bool got = s == 2 || (s == 1 && keeps(p, h, i, j));
          if (s < 0 || got != elem(h, i, j)) ++bad;
        }
    check(bad == 0, where + ": " + what + " disagrees with the concrete mask on " +
                        std::to_string(bad) + " pairs");
  };
  unsigned char* base = region.bytes();
  if (rows) {
    const StagedForward sf = st.forward();
    FwdParams fp;
    fp.nq = g.nq, fp.nk = g.nk, fp.hq = g.hq;
    sf.bind(base, &fp);
    check(fp.lheads == g.hq && fp.nqb == nqt && fp.nkb == nkt, where + ": forward sizes");
    check(fp.sched_len == g.hq * nqt && is_permutation_of_rows(fp.sched, fp.sched_len),
          where + ": forward schedule");
    std::vector<int> state(size_t(g.hq * nqt * nkt), 0);
    for (int64_t h = 0; h < g.hq; ++h)
      for (int64_t a = 0; a < nqt; ++a) {
        RangeWalk<FwdParams> w(fp, layout_row(fp, h, a));
        int64_t c, last = -1;
        bool partial;
        while (w.next(fp, &c, &partial)) {
          int& s = state[size_t((h * nqt + a) * nkt + c)];
          s = (s != 0 || c <= last || c >= nkt) ? -1 : (partial ? 1 : 2);
          last = c;
        }
      }
    verify(state, fp.pred, "the forward rows");
  }
  if (cols) {
    const StagedBackward sb = st.backward();
    BwdParams bp;
    bp.f.nq = g.nq, bp.f.nk = g.nk, bp.f.hq = g.hq, bp.f.hkv = g.hkv, bp.f.group = g.hq / g.hkv;
    sb.bind(base, &bp);
    check(bp.cols.lheads == g.hq && bp.cols.nkb == nkt && bp.nq_pad == nqt * tm,
          where + ": backward sizes");
    check(bp.sched_len == g.hkv * nkt && is_permutation_of_rows(bp.sched, bp.sched_len),
          where + ": backward schedule");
    std::vector<int> state(size_t(g.hq * nqt * nkt), 0);
    for (int64_t gk = 0; gk < g.hkv; ++gk)
      for (int64_t c = 0; c < nkt; ++c) {
        ColumnWalk w(bp, gk, c);
        BwdVisit v;
        while (w.next(bp, &v)) {
          int& s = state[size_t((v.h * nqt + v.a) * nkt + c)];
          s = (s != 0 || v.a >= nqt) ? -1 : (v.partial ? 1 : 2);
        }
      }
    verify(state, bp.f.pred, "the backward columns");
    if (rows) {
      check(bp.f.sched_len == g.hq * nqt && is_permutation_of_rows(bp.f.sched, bp.f.sched_len),
            where + ": the sm90a dQ schedule");
      std::vector<int> rstate(size_t(g.hq * nqt * nkt), 0);
      for (int64_t h = 0; h < g.hq; ++h)
        for (int64_t a = 0; a < nqt; ++a) {
          RangeWalk<FwdParams> w(bp.f, layout_row(bp.f, h, a));
          int64_t c;
          bool partial;
          while (w.next(bp.f, &c, &partial)) {
            int& s = rstate[size_t((h * nqt + a) * nkt + c)];
            s = s != 0 ? -1 : (partial ? 1 : 2);
          }
        }
      verify(rstate, bp.f.pred, "the sm90a dQ rows");
    }
  }
}

// Returns whether the emulated mask equals the CPU's.
bool run_case(const Case& cs, std::mt19937_64& rng, int values, bool sabotage) {
  const int64_t qn = cs.nq * cs.hq * cs.d, kn = cs.nk * cs.hkv * cs.d;
  std::vector<float> q(static_cast<size_t>(qn)), k(static_cast<size_t>(kn));
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> small(-1, 1);
  auto fill = [&](std::vector<float>& x) {
    for (float& v : x) v = values == 0 ? normal(rng) : float(small(rng));  // 1: many ties
    if (values == 2 && !x.empty()) x[size_t(rng() % x.size())] = NAN;
  };
  fill(q);
  fill(k);
  const Pattern topk = Pattern::topk_blocks(cs.k, cs.bq, cs.bk, cs.causal, cs.always);
  const BlockMask cpu = select::choose(topk, rows_of(q, cs.nq, cs.hq, cs.d),
                                       rows_of(k, cs.nk, cs.hkv, cs.d));
  const TopkGeom g = topk_geom(cs.nq, cs.nk, cs.hq, cs.hkv, cs.d, cs.k, cs.bq, cs.bk, cs.causal);
  check(g.nqb == cpu.nbq && g.nkb == cpu.nbk, cs.name + ": block counts");
  const std::vector<float> qm = emulate_pool(q, cs.nq, cs.hq, cs.d, cs.bq, g.nqb);
  const std::vector<float> km = emulate_pool(k, cs.nk, cs.hkv, cs.d, cs.bk, g.kmax);
  const std::vector<uint8_t> mask = emulate_choose(g, qm, km, sabotage);
  const bool same = mask == cpu.bits;
  if (sabotage) return same;
  check(same, cs.name + ": the emulated choice differs from select::choose");
  const std::vector<uint8_t> want =
      select::concrete(topk, cpu).mask(cs.nq, cs.nk, cs.hq);
  check_layouts(cs, g, mask, want, 128, 64, true, false);   // sm80-style forward
  check_layouts(cs, g, mask, want, 64, 64, false, true);    // sm80-style backward
  check_layouts(cs, g, mask, want, 128, 128, true, true);   // sm90a backward (dQ rows too)
  check_layouts(cs, g, mask, want, 16, 32, true, true);     // tiles smaller than blocks
  return same;
}

}  // namespace

int main() {
  std::mt19937_64 rng(20261129);
  auto pick = [&](std::initializer_list<int64_t> v) {
    return *(v.begin() + int64_t(rng() % v.size()));
  };
  int cases = 0, sabotage_caught = 0, tie_cases = 0;
  for (int it = 0; it < 160; ++it) {
    Case cs;
    cs.nq = 1 + int64_t(rng() % 300);
    cs.nk = rng() % 4 == 0 ? cs.nq : 1 + int64_t(rng() % 300);
    cs.hkv = pick({1, 2});
    cs.hq = cs.hkv * pick({1, 2, 3});
    cs.d = pick({1, 7, 16, 20, 33, 64});
    cs.k = pick({0, 1, 2, 3, 5, 1000});
    cs.bq = pick({8, 16, 24, 64, 100, 256});
    cs.bk = pick({8, 16, 24, 64, 100});
    cs.causal = rng() % 3 != 0;
    switch (rng() % 5) {
      case 0: cs.always = Pattern(); break;
      case 1: cs.always = Pattern::sink(3); break;
      case 2: cs.always = Pattern::sliding_window(20, 0); break;
      case 3:
        cs.always = Pattern::union_of({Pattern::sink(2), Pattern::sliding_window(5, 5)});
        break;
      default: {
        std::vector<Pattern> heads;
        for (int64_t h = 0; h < cs.hq; ++h)
          heads.push_back(h % 2 ? Pattern::sliding_window(30, 0) : Pattern::sink(int64_t(h + 1)));
        cs.always = Pattern::per_head(heads);
      }
    }
    const int values = it % 3;  // 0 normal, 1 ties, 2 ties and a NaN
    cs.name = "case " + std::to_string(it) + " (nq=" + std::to_string(cs.nq) + " nk=" +
              std::to_string(cs.nk) + " hq=" + std::to_string(cs.hq) + " hkv=" +
              std::to_string(cs.hkv) + " d=" + std::to_string(cs.d) + " k=" +
              std::to_string(cs.k) + " bq=" + std::to_string(cs.bq) + " bk=" +
              std::to_string(cs.bk) + (cs.causal ? " causal" : "") + " values=" +
              std::to_string(values) + ")";
    std::mt19937_64 data_rng(rng());
    std::mt19937_64 again = data_rng;
    run_case(cs, data_rng, values, false);
    ++cases;
    if (values != 0) {
      ++tie_cases;
      if (!run_case(cs, again, values, true)) ++sabotage_caught;
    }
  }
  check(sabotage_caught > 0, "ties sent to the highest index were never caught");
  std::printf("%d cases (%d with ties; the sabotaged tie rule differed in %d): %s\n", cases,
              tie_cases, sabotage_caught, failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
