// The sm90a backward's host-testable logic (cuda/src/sm90a/bwd90_kernel.cuh), on the host:
//
// 1. Staging (stage_backward90): one layout compiled for 128 x 128 tiles gives the transposed
//    columns (dK/dV) and the rows with the forward's schedule (dQ); both persistent grids cover
//    every work item once; the columns' visits and the rows' blocks are each exactly the layout's
//    blocks with their kinds.
// 2. Masks: fragment_keep_bits over the 256 consumer threads' wgmma accumulator fragments
//    (CuTe's m64nN C layout: row 16 warp + lane / 4 + 8 r, column 8 (x / 2) + 2 (lane % 4) +
//    x % 2, a second warpgroup 64 rows below), in both orientations (queries as rows: dQ;
//    queries as columns: dK/dV, in parts of hopper_bwd_kv_sub(D) queries), union exactly the
//    pattern's kept pairs of the tile (Pattern::mask()), for windows, causal, Nq != Nk, unions
//    with globals and sinks, block-sparse, BigBird, dilated.
// 3. A scalar emulation of both kernels' loops (walks, parts, masks, zero-filled rows past Nq
//    and keys past Nk, lse2 +inf padding, bwd_prob / bwd_ds, dK scaled once, dQ scaled once)
//    against a float64 reference backward: every gradient element written exactly once (no
//    accumulation across CTAs: deterministic by construction) and equal to the reference.
// 4. Shared memory of each instantiation fits a Hopper CTA; tiles and head dims.
// 5. dQ by TMA reduce-add (hopper_dq_tma_logic.hpp, SPATTN_CUDA_DQ=tma): the emulated dK/dV
//    kernel also adds each part's dS K into an fp32 accumulator through the box and the
//    accumulator view the kernel's TMA descriptor uses (hopper_dq_tma_box,
//    hopper_dq_accum_view); the boxes of a visit tile its query tile exactly, every box lies
//    in the accumulator and addresses what dqacc_offset() (the conversion kernel) reads; the
//    converted dq equals the float64 reference. The smem budget with and without aliasing.
//
// What this cannot check: TMA, wgmma, fragment layouts in hardware, the mbarrier rings on the
// device (their protocol is the forward's, model-checked in test_cuda_hopper_logic.cpp). Those
// need a GPU: tests/python/test_cuda_sm90_backward.py.
#include <spattn/cuda/backward.hpp>
#include <spattn/cuda/backward_logic.hpp>
#include <spattn/cuda/hopper_bwd_logic.hpp>
#include <spattn/cuda/hopper_dq_tma_logic.hpp>
#include <spattn/cuda/hopper_logic.hpp>
#include <spattn/spattn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

using namespace spattn;
using namespace spattn::cuda;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// The wgmma accumulator coordinates of consumer thread t (0..255) for a (128, n) tile, as
// rows_cols90 views them: register row r in {0, 1}, register column x in [0, n / 4).
int acc_row(int t, int r) { return 64 * (t / 128) + 16 * ((t % 128) / 32) + (t % 32) / 4 + 8 * r; }
int acc_col(int t, int x) { return 8 * (x / 2) + 2 * (t % 4) + x % 2; }

// The kept pairs of one masked block by the kernel's rule, over all 256 threads' fragments:
// kept[row * n + col] for tile rows x n columns. kQueryCols: rows are keys (dK/dV's S^T).
template <int kCols, bool kQueryCols>
void block_keeps(const FwdParams& p, bool partial, int64_t h, int64_t q0, int64_t k0,
                 std::vector<int>& kept) {
  constexpr int n = 4 * kCols;
  kept.assign(size_t(128 * n), 0);
  const bool rule_exact = range_is_exact(p.pred, h);
  for (int t = 0; t < 256; ++t) {
    auto row_of = [t](int r) { return int64_t(acc_row(t, r)); };
    auto col_of = [t](int x) { return int64_t(acc_col(t, x)); };
    const uint32_t bits =
        fragment_keep_bits<2, kCols, kQueryCols>(p, partial, rule_exact, h, q0, k0, row_of, col_of);
    for (int r = 0; r < 2; ++r)
      for (int x = 0; x < kCols; ++x)
        kept[size_t(acc_row(t, r) * n + acc_col(t, x))] += (bits >> (r * kCols + x)) & 1u;
  }
}

struct Case {
  std::string name;
  Pattern pat;
  int64_t b, nq, nk, hq, hkv;
};

std::vector<Case> cases() {
  BlockMask m;
  m.heads = 2;
  m.bq = m.bk = 32;
  m.nbq = (300 + 31) / 32;
  m.nbk = (450 + 31) / 32;
  std::mt19937 rng(7);
  m.bits.resize(size_t(m.heads * m.nbq * m.nbk));
  for (auto& x : m.bits) x = (rng() % 10) < 2 ? 1 : 0;
  return {
      {"window", Pattern::sliding_window(100, 100), 1, 300, 300, 2, 2},
      {"causal Nq<Nk GQA", Pattern::causal(), 2, 200, 333, 4, 2},
      {"causal Nq>Nk", Pattern::causal(), 1, 333, 200, 2, 1},
      {"global|sink+window", Pattern::union_of({Pattern::global({0, 3, 250}), Pattern::sink(5),
                                                  Pattern::sliding_window(40, 0)}),
       1, 300, 300, 2, 1},
      {"blocksparse 32 per head", Pattern::block_sparse(m), 1, 300, 450, 2, 2},
      {"bigbird", Pattern::bigbird(64, 3, 1, 2, 5), 1, 384, 384, 2, 2},
      {"dilated", Pattern::dilated(64, 0, 2), 1, 260, 260, 1, 1},
      {"window, rows that see nothing", Pattern::sliding_window(0, 0), 1, 150, 40, 1, 1},
  };
}

// Staged layout bound to a host "device" (the blob itself).
struct Staged {
  StagedBackward st;
  BwdParams p;
  BlockLayout L;
};

Staged stage(const Case& cs, const CompiledPattern& cp) {
  Staged s;
  s.L = cp.layout(kHopperBwdBlockM, kHopperBwdBlockN);
  s.st = stage_backward90(s.L, cp.predicate(), cs.nq, cs.nk, cs.hq, cs.hkv);
  s.st.relocate_nodes(s.st.blob.data());
  s.st.bind(s.st.blob.data(), &s.p);
  FwdParams& f = s.p.f;
  f.b = cs.b, f.nq = cs.nq, f.nk = cs.nk, f.hq = cs.hq, f.hkv = cs.hkv;
  f.group = cs.hq / cs.hkv;
  return s;
}

void test_staging(const Case& cs) {
  const CompiledPattern cp = cs.pat.compile(cs.nq, cs.nk, cs.hq);
  Staged s = stage(cs, cp);
  const BwdParams& p = s.p;
  const BlockLayout& L = s.L;
  check(s.st.rows_staged && s.st.bq == 128 && s.st.bk == 128, cs.name + ": staged for 128x128");
  check(p.nq_pad == hopper_bwd_nq_pad(cs.nq) && p.nq_pad % 128 == 0, cs.name + ": nq_pad");
  // The layout's blocks per (layout head, a, c) with kind.
  std::map<std::tuple<int64_t, int64_t, int64_t>, bool> blocks;
  for (int64_t r = 0; r < L.rows(); ++r) {
    for (int64_t t = L.full_ptr[size_t(r)]; t < L.full_ptr[size_t(r + 1)]; ++t)
      for (int32_t c = L.full_lo[size_t(t)]; c < L.full_hi[size_t(t)]; ++c)
        blocks[{r / L.nqb, r % L.nqb, c}] = false;
    for (int64_t t = L.part_ptr[size_t(r)]; t < L.part_ptr[size_t(r + 1)]; ++t)
      for (int32_t c = L.part_lo[size_t(t)]; c < L.part_hi[size_t(t)]; ++c)
        blocks[{r / L.nqb, r % L.nqb, c}] = true;
  }
  const int64_t lh_count = L.heads == 1 ? cs.hq : 1;  // visits per layout block per batch
  for (int64_t sms : {1, 5, 132}) {
    // dK/dV: items once; visits = the layout's blocks with their kinds, per batch and head.
    std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, int> seen;
    std::vector<int> items(size_t(hopper_bwd_kv_items(p)), 0);
    bool kinds = true;
    const int64_t grid = persistent_grid(hopper_bwd_kv_items(p), sms);
    for (int64_t cta = 0; cta < grid; ++cta)
      for (PersistentWork wk(cta, grid, hopper_bwd_kv_items(p)); wk.valid(); wk.advance()) {
        ++items[size_t(wk.item)];
        const BwdWork w = bwd_cta_work(p, wk.item);
        ColumnWalk walk(p, w.g, w.c);
        BwdVisit v;
        while (walk.next(p, &v)) {
          ++seen[{w.b, v.h, v.a, w.c}];
          const auto it = blocks.find({L.heads == 1 ? 0 : v.h, v.a, w.c});
          kinds = kinds && it != blocks.end() && it->second == v.partial;
        }
      }
    bool once = std::all_of(items.begin(), items.end(), [](int x) { return x == 1; }) &&
                int64_t(items.size()) == cs.b * cs.hkv * L.nkb;
    for (const auto& e : seen) once = once && e.second == 1;
    check(once && kinds && int64_t(seen.size()) == cs.b * lh_count * int64_t(blocks.size()),
          cs.name + ": dK/dV grid (" + std::to_string(sms) +
              " SMs) visits every layout block once with its kind");
    // dQ: items once; blocks = the layout's.
    std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, int> seen_q;
    std::vector<int> qitems(size_t(hopper_bwd_q_items(p)), 0);
    bool qkinds = true;
    const int64_t qgrid = persistent_grid(hopper_bwd_q_items(p), sms);
    for (int64_t cta = 0; cta < qgrid; ++cta)
      for (PersistentWork wk(cta, qgrid, hopper_bwd_q_items(p)); wk.valid(); wk.advance()) {
        ++qitems[size_t(wk.item)];
        const CtaWork w = cta_work(p.f, wk.item);
        RowWalk walk(p.f, w.h, w.a);
        int64_t c;
        bool partial;
        while (walk.next(p.f, &c, &partial)) {
          ++seen_q[{w.b, w.h, w.a, c}];
          const auto it = blocks.find({L.heads == 1 ? 0 : w.h, w.a, c});
          qkinds = qkinds && it != blocks.end() && it->second == partial;
        }
      }
    bool qonce = std::all_of(qitems.begin(), qitems.end(), [](int x) { return x == 1; }) &&
                 int64_t(qitems.size()) == cs.b * cs.hq * L.nqb;
    for (const auto& e : seen_q) qonce = qonce && e.second == 1;
    check(qonce && qkinds && int64_t(seen_q.size()) == cs.b * lh_count * int64_t(blocks.size()),
          cs.name + ": dQ grid (" + std::to_string(sms) +
              " SMs) walks every layout block once with its kind");
  }
}

// Masks of both orientations against Pattern::mask() for every block of the layout.
template <int kSubKV>
void test_masks(const Case& cs) {
  const CompiledPattern cp = cs.pat.compile(cs.nq, cs.nk, cs.hq);
  Staged s = stage(cs, cp);
  const FwdParams& f = s.p.f;
  const std::vector<uint8_t> ref = cs.pat.mask(cs.nq, cs.nk, cs.hq);
  std::vector<uint8_t> got_q(ref.size(), 0), got_kv(ref.size(), 0);
  bool bad = false;
  std::vector<int> kept;
  for (int64_t h = 0; h < cs.hq; ++h)
    for (int64_t a = 0; a < s.L.nqb; ++a) {
      RowWalk walk(f, h, a);
      int64_t c;
      bool partial;
      while (walk.next(f, &c, &partial)) {
        const bool masked = hopper_bwd_needs_mask(f.nk, partial, c);
        // dQ: rows = queries, two halves of 64 keys.
        for (int half = 0; half < 2; ++half) {
          const int64_t j0 = c * 128 + half * 64;
          if (masked) block_keeps<16, false>(f, partial, h, a * 128, j0, kept);
          for (int r = 0; r < 128; ++r)
            for (int x = 0; x < 64; ++x) {
              const int64_t i = a * 128 + r, j = j0 + x;
              const int k = masked ? kept[size_t(r * 64 + x)] : 1;
              bad = bad || k > 1;
              if (i < cs.nq && j < cs.nk && k) got_q[size_t((h * cs.nq + i) * cs.nk + j)] += 1;
              bad = bad || (k && j >= cs.nk);  // keys past Nk never count
            }
        }
        // dK/dV: rows = keys, parts of kSubKV queries.
        for (int part = 0; part < 128 / kSubKV; ++part) {
          const int64_t i0 = a * 128 + part * kSubKV;
          if (masked) block_keeps<kSubKV / 4, true>(f, partial, h, i0, c * 128, kept);
          for (int r = 0; r < 128; ++r)
            for (int x = 0; x < kSubKV; ++x) {
              const int64_t i = i0 + x, j = c * 128 + r;
              const int k = masked ? kept[size_t(r * kSubKV + x)] : 1;
              bad = bad || k > 1;
              if (i < cs.nq && j < cs.nk && k) got_kv[size_t((h * cs.nq + i) * cs.nk + j)] += 1;
              bad = bad || (k && j >= cs.nk);
            }
        }
      }
    }
  check(!bad && got_q == ref, cs.name + ": dQ kernel's walk and fragment masks keep exactly Pattern::mask()");
  check(!bad && got_kv == ref, cs.name + ": dK/dV kernel's walk and fragment masks (parts of " +
                                   std::to_string(kSubKV) + ") keep exactly Pattern::mask()");
}

// Scalar emulation of the two kernels vs a float64 reference backward.
void test_emulation(const Case& cs, int d, uint32_t seed) {
  const int64_t B = cs.b, Nq = cs.nq, Nk = cs.nk, Hq = cs.hq, Hkv = cs.hkv, group = Hq / Hkv;
  const float scale = 0.7f / std::sqrt(float(d));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto rnd = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& y : x) y = nd(rng);
    return x;
  };
  // [B, N, H, D] compact.
  std::vector<float> q = rnd(B * Nq * Hq * d), k = rnd(B * Nk * Hkv * d), v = rnd(B * Nk * Hkv * d),
                     dout = rnd(B * Nq * Hq * d);
  auto Q = [&](int64_t b, int64_t i, int64_t h, int x) { return q[size_t(((b * Nq + i) * Hq + h) * d + x)]; };
  auto K = [&](int64_t b, int64_t j, int64_t g, int x) { return k[size_t(((b * Nk + j) * Hkv + g) * d + x)]; };
  auto V = [&](int64_t b, int64_t j, int64_t g, int x) { return v[size_t(((b * Nk + j) * Hkv + g) * d + x)]; };
  auto DO = [&](int64_t b, int64_t i, int64_t h, int x) { return dout[size_t(((b * Nq + i) * Hq + h) * d + x)]; };
  const std::vector<uint8_t> mask = cs.pat.mask(Nq, Nk, Hq);
  auto kept = [&](int64_t h, int64_t i, int64_t j) { return mask[size_t((h * Nq + i) * Nk + j)] != 0; };

  // float64 reference: lse, out, delta, gradients.
  std::vector<double> lse(size_t(B * Hq * Nq)), delta(size_t(B * Hq * Nq));
  std::vector<double> rdq(q.size(), 0.0), rdk(k.size(), 0.0), rdv(v.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i) {
        const int64_t g = h / group;
        std::vector<double> s(size_t(Nk), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < Nk; ++j)
          if (kept(h, i, j)) {
            double acc = 0;
            for (int x = 0; x < d; ++x) acc += double(Q(b, i, h, x)) * K(b, j, g, x);
            s[size_t(j)] = acc * scale;
            mx = std::max(mx, s[size_t(j)]);
          }
        double l = 0;
        for (int64_t j = 0; j < Nk; ++j) if (kept(h, i, j)) l += std::exp(s[size_t(j)] - mx);
        const double ls = l > 0 ? mx + std::log(l) : -INFINITY;
        lse[size_t((b * Hq + h) * Nq + i)] = ls;
        std::vector<double> pr(size_t(Nk), 0.0), o(size_t(d), 0.0);
        for (int64_t j = 0; j < Nk; ++j)
          if (kept(h, i, j)) {
            pr[size_t(j)] = std::exp(s[size_t(j)] - ls);
            for (int x = 0; x < d; ++x) o[size_t(x)] += pr[size_t(j)] * V(b, j, g, x);
          }
        double dl = 0;
        for (int x = 0; x < d; ++x) dl += o[size_t(x)] * DO(b, i, h, x);
        delta[size_t((b * Hq + h) * Nq + i)] = dl;
        for (int64_t j = 0; j < Nk; ++j) {
          if (!kept(h, i, j)) continue;
          double dp = 0;
          for (int x = 0; x < d; ++x) dp += double(DO(b, i, h, x)) * V(b, j, g, x);
          const double ds = pr[size_t(j)] * (dp - dl);
          for (int x = 0; x < d; ++x) {
            rdq[size_t(((b * Nq + i) * Hq + h) * d + x)] += scale * ds * K(b, j, g, x);
            rdk[size_t(((b * Nk + j) * Hkv + g) * d + x)] += scale * ds * Q(b, i, h, x);
            rdv[size_t(((b * Nk + j) * Hkv + g) * d + x)] += pr[size_t(j)] * DO(b, i, h, x);
          }
        }
      }

  const CompiledPattern cp = cs.pat.compile(Nq, Nk, Hq);
  Staged s = stage(cs, cp);
  BwdParams& p = s.p;
  FwdParams& f = p.f;
  f.scale = scale;
  f.scale_log2 = scale * 1.4426950408889634f;
  // Preprocess as the kernel: lse2 and delta for nq_pad rows, padding +inf / 0.
  std::vector<float> lse2(size_t(B * Hq * p.nq_pad)), dl(size_t(B * Hq * p.nq_pad));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < p.nq_pad; ++i) {
        const bool real = i < Nq;
        lse2[size_t(stat_offset(p, b, h, i))] =
            real ? bwd_lse2(float(lse[size_t((b * Hq + h) * Nq + i)])) : INFINITY;
        dl[size_t(stat_offset(p, b, h, i))] = real ? float(delta[size_t((b * Hq + h) * Nq + i)]) : 0.f;
      }
  // TMA zero-fills rows past the tensor.
  auto q_at = [&](int64_t b, int64_t i, int64_t h, int x) { return i < Nq ? Q(b, i, h, x) : 0.f; };
  auto do_at = [&](int64_t b, int64_t i, int64_t h, int x) { return i < Nq ? DO(b, i, h, x) : 0.f; };
  auto k_at = [&](int64_t b, int64_t j, int64_t g, int x) { return j < Nk ? K(b, j, g, x) : 0.f; };
  auto v_at = [&](int64_t b, int64_t j, int64_t g, int x) { return j < Nk ? V(b, j, g, x) : 0.f; };

  std::vector<float> gdq(q.size(), NAN), gdk(k.size(), NAN), gdv(v.size(), NAN);
  std::vector<int> wq(q.size() / size_t(d), 0), wk(k.size() / size_t(d), 0);
  const int sub = hopper_bwd_kv_sub(d);
  std::vector<int> keep;
  // dQ by reduce-add (HopperDq::Tma): the fp32 accumulator the dK/dV kernel adds into, through
  // the TMA view of it (element (row, y, h, b) at the dot product of coordinates and strides).
  f.d = f.dv = d;
  const DqAccumView av = hopper_dq_accum_view(p);
  std::vector<float> acc(size_t(B * Hq * p.nq_pad * d), 0.f);
  bool boxes_ok = av.shape[0] == p.nq_pad && av.shape[1] == d && av.shape[2] == Hq && av.shape[3] == B;
  const int rows = hopper_dq_tma_rows(d);
  // dK / dV kernel.
  for (int64_t item = 0; item < hopper_bwd_kv_items(p); ++item) {
    const BwdWork w = bwd_cta_work(p, item);
    std::vector<float> adk(size_t(128 * d), 0.f), adv(size_t(128 * d), 0.f);
    const bool tail = hopper_bwd_needs_mask(Nk, false, w.c);
    ColumnWalk walk(p, w.g, w.c);
    BwdVisit vi;
    while (walk.next(p, &vi)) {
      const bool masked = vi.partial || tail;
      for (int part = 0; part < 128 / sub; ++part) {
        const int64_t i0 = vi.a * 128 + part * sub;
        const DqBox box = hopper_dq_tma_box(vi, w.b, part, d);
        // The parts' boxes tile the visit's query tile, inside the accumulator, at the offset
        // the conversion kernel reads.
        boxes_ok = boxes_ok && rows == sub && box.row == i0 && box.tile * rows == box.row &&
                   box.row + rows <= p.nq_pad && box.h == vi.h && box.b == w.b &&
                   box.row * av.stride[0] + box.h * av.stride[2] + box.b * av.stride[3] ==
                       dqacc_offset(p, w.b, vi.h, i0);
        if (masked) {
          if (sub == 64) block_keeps<16, true>(f, vi.partial, vi.h, i0, w.c * 128, keep);
          else block_keeps<8, true>(f, vi.partial, vi.h, i0, w.c * 128, keep);
        }
        for (int r = 0; r < 128; ++r) {
          const int64_t j = w.c * 128 + r;
          for (int x = 0; x < sub; ++x) {
            const int64_t i = i0 + x;
            const bool kp = masked ? keep[size_t(r * sub + x)] != 0 : true;
            float st = 0.f, dp = 0.f;
            for (int y = 0; y < d; ++y) {
              st += k_at(w.b, j, w.g, y) * q_at(w.b, i, vi.h, y);
              dp += v_at(w.b, j, w.g, y) * do_at(w.b, i, vi.h, y);
            }
            const float pp = bwd_prob(st, f.scale_log2, lse2[size_t(stat_offset(p, w.b, vi.h, i))], kp);
            const float ds = bwd_ds(pp, dp, dl[size_t(stat_offset(p, w.b, vi.h, i))]);
            for (int y = 0; y < d; ++y) {
              adv[size_t(r * d + y)] += pp * do_at(w.b, i, vi.h, y);
              adk[size_t(r * d + y)] += ds * q_at(w.b, i, vi.h, y);
              // Row x of the box, column y: dS (query i, key j) K (key j).
              acc[size_t((box.row + x) * av.stride[0] + y * av.stride[1] + box.h * av.stride[2] +
                         box.b * av.stride[3])] += ds * k_at(w.b, j, w.g, y);
            }
          }
        }
      }
    }
    for (int r = 0; r < 128; ++r) {  // the TMA store clips keys past Nk
      const int64_t j = w.c * 128 + r;
      if (j >= Nk) continue;
      ++wk[size_t((w.b * Nk + j) * Hkv + w.g)];
      for (int y = 0; y < d; ++y) {
        gdk[size_t(((w.b * Nk + j) * Hkv + w.g) * d + y)] = adk[size_t(r * d + y)] * scale;
        gdv[size_t(((w.b * Nk + j) * Hkv + w.g) * d + y)] = adv[size_t(r * d + y)];
      }
    }
  }
  // dQ kernel.
  for (int64_t item = 0; item < hopper_bwd_q_items(p); ++item) {
    const CtaWork w = cta_work(f, item);
    const int64_t g = kv_head(f, w.h);
    std::vector<float> adq(size_t(128 * d), 0.f);
    RowWalk walk(f, w.h, w.a);
    int64_t c;
    bool partial;
    while (walk.next(f, &c, &partial)) {
      const bool masked = hopper_bwd_needs_mask(Nk, partial, c);
      for (int half = 0; half < 2; ++half) {
        const int64_t j0 = c * 128 + half * 64;
        if (masked) block_keeps<16, false>(f, partial, w.h, w.a * 128, j0, keep);
        for (int r = 0; r < 128; ++r) {
          const int64_t i = w.a * 128 + r;
          for (int x = 0; x < 64; ++x) {
            const int64_t j = j0 + x;
            const bool kp = masked ? keep[size_t(r * 64 + x)] != 0 : true;
            float st = 0.f, dp = 0.f;
            for (int y = 0; y < d; ++y) {
              st += q_at(w.b, i, w.h, y) * k_at(w.b, j, g, y);
              dp += do_at(w.b, i, w.h, y) * v_at(w.b, j, g, y);
            }
            const float pp = bwd_prob(st, f.scale_log2, lse2[size_t(stat_offset(p, w.b, w.h, i))], kp);
            const float ds = bwd_ds(pp, dp, dl[size_t(stat_offset(p, w.b, w.h, i))]);
            for (int y = 0; y < d; ++y) adq[size_t(r * d + y)] += ds * k_at(w.b, j, g, y);
          }
        }
      }
    }
    for (int r = 0; r < 128; ++r) {  // the TMA store clips rows past Nq
      const int64_t i = w.a * 128 + r;
      if (i >= Nq) continue;
      ++wq[size_t((w.b * Nq + i) * Hq + w.h)];
      for (int y = 0; y < d; ++y) gdq[size_t(((w.b * Nq + i) * Hq + w.h) * d + y)] = adq[size_t(r * d + y)] * scale;
    }
  }
  // The conversion kernel (kernels/backward.cu bwd_convert_dq): dq = scale * dq_accum.
  std::vector<float> tdq(q.size(), NAN);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i)
        for (int y = 0; y < d; ++y)
          tdq[size_t(((b * Nq + i) * Hq + h) * d + y)] = acc[size_t(dqacc_offset(p, b, h, i) + y)] * scale;
  check(boxes_ok, cs.name + ", D=" + std::to_string(d) + ": reduce-add boxes tile the visits' query tiles in the accumulator");
  const bool once = std::all_of(wq.begin(), wq.end(), [](int x) { return x == 1; }) &&
                    std::all_of(wk.begin(), wk.end(), [](int x) { return x == 1; });
  check(once, cs.name + ", D=" + std::to_string(d) + ": every dq, dk, dv row written exactly once");
  auto err = [](const std::vector<float>& got, const std::vector<double>& ref) {
    double mag = 1e-30, e = 0;
    for (double x : ref) mag = std::max(mag, std::fabs(x));
    for (size_t x = 0; x < ref.size(); ++x) {
      if (!std::isfinite(got[x])) return double(INFINITY);
      e = std::max(e, std::fabs(double(got[x]) - ref[x]));
    }
    return e / std::max(mag, 1.0);
  };
  const double e = std::max({err(gdq, rdq), err(gdk, rdk), err(gdv, rdv)});
  check(e < 2e-4, cs.name + ", D=" + std::to_string(d) + ": emulated sm90a backward vs float64 (max rel error " +
                      std::to_string(e) + ")");
  const double et = err(tdq, rdq);
  check(et < 2e-4, cs.name + ", D=" + std::to_string(d) +
                       ": emulated reduce-add dQ vs float64 (max rel error " + std::to_string(et) + ")");
}

void test_sizes() {
  for (int d : {64, 128}) {
    check(hopper_bwd_head_dim(d), "sm90a backward head dim " + std::to_string(d));
    for (bool kv : {true, false})
      check(hopper_bwd_smem_bytes(d, 2, kv) + 1024 <= 227 * 1024,
            "sm90a backward shared memory fits, D=" + std::to_string(d));
    check(128 % hopper_bwd_kv_sub(d) == 0 && hopper_bwd_kv_sub(d) % 16 == 0,
          "dK/dV parts divide the tile and the wgmma k step");
  }
  // dQ by reduce-add: one 64-row box per part, D split between the two warpgroups; the dK/dV
  // kernel's shared memory with the dS and staging tiles fits, sharing their bytes at D = 128
  // only (the sizes the kernel's static_asserts compare with sizeof).
  for (int d : {64, 128})
    for (int es : {2}) {
      const std::string at = "D=" + std::to_string(d);
      check(hopper_dq_tma_rows(d) == 64 && 2 * hopper_dq_tma_cols(d) == d &&
                hopper_dq_tma_cols(d) % 8 == 0,
            "reduce-add box and column split, " + at);
      check(hopper_dq_tma_smem_bytes(d, es) + kHopperSmemSlack <= kHopperSmemLimit,
            "reduce-add dK/dV kernel's shared memory fits, " + at);
      check(hopper_dq_tma_aliased(d, es) == (d == 128), "staging tile aliases dS at D=128 only, " + at);
      check(hopper_dq_tma_ds_bytes(d, es) == 128 * 64 * es && hopper_dq_tma_stage_bytes(d) == 64 * d * 4,
            "dS and staging tile bytes, " + at);
    }
  check(!hopper_bwd_head_dim(256) && !hopper_bwd_head_dim(32) && !hopper_bwd_head_dim(96),
        "other head dims stay on the sm80-style backward");
  check(hopper_bwd_nq_pad(0) == 0 && hopper_bwd_nq_pad(1) == 128 && hopper_bwd_nq_pad(256) == 256,
        "nq_pad rounds to whole 128-row tiles");
  // Without a device (or without the opt-in) the sm80-style tile; it is not deterministic.
  const BackwardTile t = backward_tile(128, 128, -1, DType::BFloat16);
  check(t.bq == kBwdBlockM && t.bk == kBwdBlockN && !backward_tile_deterministic(t),
        "backward_tile without a device: the sm80-style tile, not deterministic");
  check(backward_tile_deterministic({kHopperBwdBlockM, kHopperBwdBlockN}),
        "the sm90a tile is the deterministic one");
  // The sm80 tile is refused where the sm90a tile is expected.
  const CompiledPattern cp = Pattern::causal().compile(300, 300, 1);
  bool threw = false;
  try {
    (void)stage_backward90(cp.layout(kBwdBlockM, kBwdBlockN), cp.predicate(), 300, 300, 1, 1);
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "stage_backward90 refuses a 64x64 layout");
}

}  // namespace

int main() {
  test_sizes();
  uint32_t seed = 11;
  for (const Case& cs : cases()) {
    test_staging(cs);
    test_masks<64>(cs);
    test_masks<32>(cs);
    for (int d : {64, 128}) test_emulation(cs, d, seed++);
  }
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("test_cuda_hopper_bwd_logic: all passed\n");
  return 0;
}
