// The CUDA backward's index, mask and scheduling logic, on the host. The kernels
// (cuda/src/bwd/backward_kernel.cuh, cuda/src/kernels/backward.cu) are built from the SPATTN_HD
// functions of spattn/cuda/backward_logic.hpp (and the forward's element rule); this test runs
// the same functions in a scalar emulation of the kernels' loop structure:
//
//   preprocess: per row (b, h, i) of [B, Hq, nq_pad]: delta = rowsum(dout * out), lse2 =
//     bwd_lse2(lse); padding rows: 0 and +inf
//   main: for every CTA: bwd_cta_work -> (b, g, c); load K, V (keys >= Nk zero-filled)
//     ColumnWalk over the query heads of g's group and the column's query tiles: load Q, dO
//       (rows >= Nq zero-filled), the mask bits as the kernel computes them, S = Q K^T,
//       P = bwd_prob, dP = dO V^T, dS = bwd_ds; dV += P^T dO; dK += dS^T Q; dq_accum += dS K
//     epilogue: dK * scale and dV stored for keys < Nk at dk_offset / dv_offset
//   convert: dq = scale * dq_accum at dq_offset
//
// on parameters produced by the launcher's own staging (stage_backward: transposed layout,
// schedule, predicate relocated to the host blob, bind), and compares dq, dk, dv with a float64
// reference backward built from Pattern::mask(). Patterns: causal, windows, per-head
// block-sparse, sink | window (the keeps() path), per-head mixes, global, BigBird, dilated,
// Nq != Nk both ways with empty rows, GQA / MQA, odd sizes, strided views, a negative scale.
// It also checks the transposed layout itself (every (query tile, key tile) pair of the
// forward layout exactly once, full / partial preserved, maximal ranges, O(ranges) cost on a
// 1M-token causal layout) and the CTA -> work mapping. The sabotage cases show that the
// comparison catches a missing partial mask, an unguarded empty row (NaN), GQA heads skipped,
// delta dropped, dK left unscaled, full/partial swapped in the transposition and a dropped visit.
//
// What this cannot check: the CuTe fragment layouts, ldmatrix(.trans) / cp.async / mma.sync,
// the shared-memory pipeline and its barriers, the atomics. Those need a GPU
// (tests/python/test_cuda_backward.py).
#include <spattn/cuda/backward.hpp>
#include <spattn/cuda/backward_logic.hpp>
#include <spattn/spattn.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

using namespace spattn;
using spattn::cuda::BwdParams;
using spattn::cuda::FwdParams;
using spattn::cuda::kBwdBlockM;
using spattn::cuda::kBwdBlockN;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

enum class Sabotage {
  None,
  NoPartialMask,    // partial blocks computed unmasked
  NoLseGuard,       // lse2 = lse * log2 e even for empty rows, masked scores -inf: NaN
  FirstHeadOnly,    // the CTA walks only the first query head of its GQA group
  NoDelta,          // dS = P dP
  NoDkScale,        // dK not multiplied by the softmax scale
  AllFull,          // the transposition marks every block full (so no mask)
  DropLastVisit,    // the last visit of every CTA is skipped
};

// A [B, N, H, D] float tensor stored [B, H, N, D+3] (permuted, 3 spare elements per row).
struct Strided {
  int64_t shape[4];
  int64_t strides[4];
  std::vector<float> data;
  Strided(int64_t b, int64_t n, int64_t h, int64_t d, std::mt19937& rng, bool random) {
    shape[0] = b, shape[1] = n, shape[2] = h, shape[3] = d;
    const int64_t row = d + 3;
    strides[3] = 1;
    strides[1] = row;
    strides[2] = row * n;
    strides[0] = row * n * h;
    data.assign(size_t(b * h * n * row + 1), NAN);
    std::normal_distribution<float> nd(0.f, 1.f);
    if (random)
      for (int64_t x = 0; x < b; ++x)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t y = 0; y < h; ++y)
            for (int64_t z = 0; z < d; ++z) at(x, i, y, z) = nd(rng);
  }
  float& at(int64_t b, int64_t n, int64_t h, int64_t d) {
    return data[size_t(b * strides[0] + n * strides[1] + h * strides[2] + d * strides[3])];
  }
  const float* ptr() const { return data.data(); }
  float* ptr() { return data.data(); }
};

struct Visit {
  int64_t b, g, c, h, a;
  bool partial;
};

// The three kernels' loop structure, scalar, float32, through p's host pointers.
void emulate(const BwdParams& p, Sabotage sab, std::vector<Visit>* visits) {
  using namespace spattn::cuda;
  const FwdParams& f = p.f;
  const int D = int(f.d), Dv = int(f.dv);
  const float* q = static_cast<const float*>(f.q);
  const float* k = static_cast<const float*>(f.k);
  const float* v = static_cast<const float*>(f.v);
  const float* o = static_cast<const float*>(f.o);
  const float* dout = static_cast<const float*>(p.dout);

  // ---- preprocess (rows of [B, Hq, nq_pad] in the kernel's decomposition)
  for (int64_t row = 0; row < f.b * f.hq * p.nq_pad; ++row) {
    const int64_t i = row % p.nq_pad, bh = row / p.nq_pad;
    const int64_t h = bh % f.hq, b = bh / f.hq;
    const bool real = i < f.nq;
    float acc = 0.f;
    if (real)
      for (int64_t x = 0; x < Dv; ++x)
        acc += o[o_offset(f, b, i, h) + x * p.o_sd] * dout[do_offset(p, b, i, h) + x];
    check(row == stat_offset(p, b, h, i), "preprocess row == stat_offset");
    p.delta[row] = real ? (sab == Sabotage::NoDelta ? 0.f : acc) : 0.f;
    // lse is read for real rows only, as the kernel does (padding rows lie past its end).
    const float l = real ? f.lse[lse_offset(f, b, h, i)] : 0.f;
    p.lse2[row] = real ? (sab == Sabotage::NoLseGuard ? l * 1.4426950408889634f : bwd_lse2(l))
                       : INFINITY;
  }

  // ---- main kernel
  const int BM = kBwdBlockM, BN = kBwdBlockN;
  std::vector<float> K(size_t(BN) * D), V(size_t(BN) * Dv), Q(size_t(BM) * D), dO(size_t(BM) * Dv);
  std::vector<float> P(size_t(BM) * BN), dS(size_t(BM) * BN), dK(size_t(BN) * D), dVa(size_t(BN) * Dv);
  std::vector<uint8_t> keep(size_t(BM) * BN);
  for (int64_t cta = 0; cta < bwd_grid_size(p); ++cta) {
    const BwdWork w = bwd_cta_work(p, cta);
    const int64_t j0 = w.c * BN;
    const int n_keys = bwd_block_keys(p, w.c);
    for (int x = 0; x < BN; ++x) {
      for (int d = 0; d < D; ++d) K[size_t(x * D + d)] = x < n_keys ? k[k_offset(f, w.b, j0 + x, w.g) + d] : 0.f;
      for (int d = 0; d < Dv; ++d) V[size_t(x * Dv + d)] = x < n_keys ? v[v_offset(f, w.b, j0 + x, w.g) + d] : 0.f;
    }
    std::fill(dK.begin(), dK.end(), 0.f);
    std::fill(dVa.begin(), dVa.end(), 0.f);

    ColumnWalk walk(p, w.g, w.c);
    std::vector<BwdVisit> list;
    BwdVisit vi;
    while (walk.next(p, &vi)) {
      if (sab == Sabotage::FirstHeadOnly && vi.h != w.g * f.group) continue;
      list.push_back(vi);
    }
    if (sab == Sabotage::DropLastVisit && !list.empty()) list.pop_back();
    for (const BwdVisit& t : list) {
      if (visits) visits->push_back({w.b, w.g, w.c, t.h, t.a, t.partial});
      const int64_t i0 = t.a * BM;
      const int rows = bwd_tile_rows(p, t.a);
      for (int r = 0; r < BM; ++r) {
        for (int d = 0; d < D; ++d) Q[size_t(r * D + d)] = r < rows ? q[q_offset(f, w.b, i0 + r, t.h) + d] : 0.f;
        for (int d = 0; d < Dv; ++d) dO[size_t(r * Dv + d)] = r < rows ? dout[do_offset(p, w.b, i0 + r, t.h) + d] : 0.f;
      }
      // The mask, as the kernel builds it.
      bool masked = block_needs_mask_n(f.nk, BN, t.partial, w.c);
      if (sab == Sabotage::NoPartialMask && t.partial) masked = false;
      const bool by_interval = mask_by_interval(t.partial, range_is_exact(f.pred, t.h));
      for (int r = 0; r < BM; ++r) {
        int64_t lo = 0, hi = -1;
        if (masked && by_interval) row_interval(f, t.partial, t.h, i0 + r, &lo, &hi);
        for (int x = 0; x < BN; ++x)
          keep[size_t(r * BN + x)] =
              !masked || (by_interval ? (j0 + x >= lo && j0 + x <= hi)
                                      : element_kept(f, true, t.h, i0 + r, j0 + x));
      }
      const int64_t st = stat_offset(p, w.b, t.h, i0);
      for (int r = 0; r < BM; ++r) {
        const float l2 = p.lse2[st + r], dl = p.delta[st + r];
        for (int x = 0; x < BN; ++x) {
          float s = 0.f, dp = 0.f;
          for (int d = 0; d < D; ++d) s += Q[size_t(r * D + d)] * K[size_t(x * D + d)];
          for (int d = 0; d < Dv; ++d) dp += dO[size_t(r * Dv + d)] * V[size_t(x * Dv + d)];
          // NoLseGuard: masked scores as -inf, exponentiated against lse * log2 e (FA2's way
          // without the guard): -inf - -inf on rows that see nothing.
          const float pr = sab == Sabotage::NoLseGuard
                               ? fast_exp2(score_scaled(s, f.scale_log2, keep[size_t(r * BN + x)]) - l2)
                               : bwd_prob(s, f.scale_log2, l2, keep[size_t(r * BN + x)]);
          P[size_t(r * BN + x)] = pr;
          dS[size_t(r * BN + x)] = bwd_ds(pr, dp, dl);
          if (f.mods) {  // softcap / ALiBi, as the kernel's branch: dS = P (dP - delta) dcap
            float dcap;
            const float s2 = modified_score(f, t.h, i0 + r, j0 + x,
                                            score_scaled(s, f.scale_log2, keep[size_t(r * BN + x)]), &dcap);
            const float pm = fast_exp2(s2 - l2);
            P[size_t(r * BN + x)] = pm;
            dS[size_t(r * BN + x)] = bwd_ds(pm * dcap, dp, dl);
          }
        }
      }
      for (int x = 0; x < BN; ++x) {
        for (int d = 0; d < Dv; ++d) {
          float acc = 0.f;
          for (int r = 0; r < BM; ++r) acc += P[size_t(r * BN + x)] * dO[size_t(r * Dv + d)];
          dVa[size_t(x * Dv + d)] += acc;
        }
        for (int d = 0; d < D; ++d) {
          float acc = 0.f;
          for (int r = 0; r < BM; ++r) acc += dS[size_t(r * BN + x)] * Q[size_t(r * D + d)];
          dK[size_t(x * D + d)] += acc;
        }
      }
      float* dqa = p.dq_accum + dqacc_offset(p, w.b, t.h, i0);  // whole padded tile
      for (int r = 0; r < BM; ++r)
        for (int d = 0; d < D; ++d) {
          float acc = 0.f;
          for (int x = 0; x < BN; ++x) acc += dS[size_t(r * BN + x)] * K[size_t(x * D + d)];
          dqa[r * D + d] += acc;
        }
    }
    float* dk = static_cast<float*>(p.dk);
    float* dv = static_cast<float*>(p.dv);
    const float ks = sab == Sabotage::NoDkScale ? 1.f : f.scale;
    for (int x = 0; x < n_keys; ++x) {
      for (int d = 0; d < D; ++d) dk[dk_offset(p, w.b, j0 + x, w.g) + d] = dK[size_t(x * D + d)] * ks;
      for (int d = 0; d < Dv; ++d) dv[dv_offset(p, w.b, j0 + x, w.g) + d] = dVa[size_t(x * Dv + d)];
    }
  }

  // ---- dq conversion (rows of [B, Hq, Nq])
  float* dq = static_cast<float*>(p.dq);
  for (int64_t row = 0; row < f.b * f.hq * f.nq; ++row) {
    const int64_t i = row % f.nq, bh = row / f.nq;
    const int64_t h = bh % f.hq, b = bh / f.hq;
    for (int64_t x = 0; x < D; ++x)
      dq[dq_offset(p, b, i, h) + x * p.dq_sd] = p.dq_accum[dqacc_offset(p, b, h, i) + x] * f.scale;
  }
}

// Expanded blocks of a layout: (head, row, col) -> partial?
std::map<std::tuple<int64_t, int64_t, int64_t>, bool> expand(const BlockLayout& L) {
  std::map<std::tuple<int64_t, int64_t, int64_t>, bool> m;
  for (int64_t h = 0; h < L.heads; ++h)
    for (int64_t a = 0; a < L.nqb; ++a) {
      const int64_t r = h * L.nqb + a;
      for (int kind = 0; kind < 2; ++kind) {
        const auto& ptr = kind ? L.part_ptr : L.full_ptr;
        const auto& lo = kind ? L.part_lo : L.full_lo;
        const auto& hi = kind ? L.part_hi : L.full_hi;
        for (int64_t t = ptr[size_t(r)]; t < ptr[size_t(r + 1)]; ++t)
          for (int32_t c = lo[size_t(t)]; c < hi[size_t(t)]; ++c) {
            const bool fresh = m.emplace(std::make_tuple(h, a, int64_t(c)), kind == 1).second;
            check(fresh, "expand: a block listed twice");
          }
      }
    }
  return m;
}

// The transposition: well formed (sorted, disjoint, in range, maximal ranges) and the exact
// transpose of L's (head, query tile, key tile, kind) set.
void check_transpose(const BlockLayout& L, const std::string& tag) {
  const BlockLayout T = cuda::transpose_layout(L);
  check(T.heads == L.heads && T.nqb == L.nkb && T.nkb == L.nqb && T.nq == L.nk && T.nk == L.nq &&
            T.bq == L.bk && T.bk == L.bq,
        tag + ": transposed sizes");
  const int64_t rows = T.heads * T.nqb;
  check(int64_t(T.full_ptr.size()) == rows + 1 && int64_t(T.part_ptr.size()) == rows + 1 &&
            T.full_ptr.back() == int64_t(T.full_lo.size()) &&
            T.part_ptr.back() == int64_t(T.part_lo.size()),
        tag + ": transposed CSR shape");
  bool sorted = true, maximal = true;
  for (int kind = 0; kind < 2; ++kind) {
    const auto& ptr = kind ? T.part_ptr : T.full_ptr;
    const auto& lo = kind ? T.part_lo : T.full_lo;
    const auto& hi = kind ? T.part_hi : T.full_hi;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = ptr[size_t(r)]; t < ptr[size_t(r + 1)]; ++t) {
        sorted = sorted && lo[size_t(t)] < hi[size_t(t)] && lo[size_t(t)] >= 0 && hi[size_t(t)] <= T.nkb;
        if (t > ptr[size_t(r)]) {
          sorted = sorted && hi[size_t(t - 1)] <= lo[size_t(t)];
          maximal = maximal && hi[size_t(t - 1)] < lo[size_t(t)];  // adjacent ranges would merge
        }
      }
  }
  check(sorted, tag + ": transposed ranges sorted, non-empty, in range, disjoint");
  check(maximal, tag + ": transposed ranges maximal");
  const auto fwd = expand(L), bwd = expand(T);  // expand() also checks no pair twice
  bool same = fwd.size() == bwd.size();
  for (const auto& e : fwd) {
    const auto it = bwd.find(std::make_tuple(std::get<0>(e.first), std::get<2>(e.first), std::get<1>(e.first)));
    same = same && it != bwd.end() && it->second == e.second;
  }
  check(same, tag + ": every (query tile, key tile) pair of the layout exactly once, kind kept");
}

struct Case {
  std::string name;
  Pattern pattern;
  int64_t b, nq, nk, hq, hkv, d;
  float scale;
  // Score modifiers (empty: none): softcap (0: none), ALiBi slopes and sinks, one per head.
  float softcap = 0.f;
  std::vector<float> slopes, sinks;
};

double run_case(const Case& cs, Sabotage sab, uint32_t seed, bool verbose_checks) {
  std::mt19937 rng(seed);
  const int64_t B = cs.b, Nq = cs.nq, Nk = cs.nk, Hq = cs.hq, Hkv = cs.hkv, D = cs.d;
  Strided q(B, Nq, Hq, D, rng, true), k(B, Nk, Hkv, D, rng, true), v(B, Nk, Hkv, D, rng, true);
  Strided dout(B, Nq, Hq, D, rng, true);
  Strided out(B, Nq, Hq, D, rng, false);
  Strided dq(B, Nq, Hq, D, rng, false), dk(B, Nk, Hkv, D, rng, false), dv(B, Nk, Hkv, D, rng, false);
  const float kPoison = 12345.f;
  dq.data.back() = dk.data.back() = dv.data.back() = kPoison;
  std::vector<float> lse(size_t(B * Hq * Nq));

  const std::vector<uint8_t> mask = cs.pattern.mask(Nq, Nk, Hq);
  auto kept = [&](int64_t h, int64_t i, int64_t j) { return mask[size_t((h * Nq + i) * Nk + j)] != 0; };
  const int64_t group = Hq / Hkv;

  // float64 reference: forward (out, lse given to the kernels in float32) and gradients.
  std::vector<double> rdq(size_t(B * Nq * Hq * D), 0.0), rdk(size_t(B * Nk * Hkv * D), 0.0),
      rdv(size_t(B * Nk * Hkv * D), 0.0);
  std::vector<int8_t> empty_row(size_t(B * Hq * Nq), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / group;
      for (int64_t i = 0; i < Nq; ++i) {
        std::vector<double> s(size_t(Nk), -INFINITY), pr(size_t(Nk), 0.0), dcap(size_t(Nk), 1.0);
        double mx = -INFINITY;
        for (int64_t j = 0; j < Nk; ++j) {
          if (!kept(h, i, j)) continue;
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += double(q.at(b, i, h, d)) * k.at(b, j, g, d);
          s[size_t(j)] = acc * cs.scale;
          if (cs.softcap != 0.f) {  // the modifiers' definitions (spattn/options.hpp)
            const double t = std::tanh(s[size_t(j)] / cs.softcap);
            s[size_t(j)] = cs.softcap * t;
            dcap[size_t(j)] = 1 - t * t;
          }
          if (!cs.slopes.empty()) s[size_t(j)] -= cs.slopes[size_t(h)] * double(std::llabs(i + Nk - Nq - j));
          mx = std::max(mx, s[size_t(j)]);
        }
        const double sink = cs.sinks.empty() ? -INFINITY : double(cs.sinks[size_t(h)]);
        mx = std::max(mx, sink);
        if (mx == -INFINITY) {
          empty_row[size_t((b * Hq + h) * Nq + i)] = 1;
          lse[size_t((b * Hq + h) * Nq + i)] = -INFINITY;
          for (int64_t d = 0; d < D; ++d) out.at(b, i, h, d) = 0.f;
          continue;
        }
        double l = std::exp(sink - mx);
        for (int64_t j = 0; j < Nk; ++j) l += std::exp(s[size_t(j)] - mx);
        lse[size_t((b * Hq + h) * Nq + i)] = float(mx + std::log(l));
        for (int64_t j = 0; j < Nk; ++j) pr[size_t(j)] = std::exp(s[size_t(j)] - mx) / l;
        std::vector<double> o(size_t(D), 0.0);
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t j = 0; j < Nk; ++j) o[size_t(d)] += pr[size_t(j)] * v.at(b, j, g, d);
          out.at(b, i, h, d) = float(o[size_t(d)]);
        }
        double delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += o[size_t(d)] * dout.at(b, i, h, d);
        for (int64_t j = 0; j < Nk; ++j) {
          if (pr[size_t(j)] == 0.0) continue;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += double(dout.at(b, i, h, d)) * v.at(b, j, g, d);
          const double ds = pr[size_t(j)] * (dp - delta) * dcap[size_t(j)];
          for (int64_t d = 0; d < D; ++d) {
            rdq[size_t(((b * Nq + i) * Hq + h) * D + d)] += cs.scale * ds * k.at(b, j, g, d);
            rdk[size_t(((b * Nk + j) * Hkv + g) * D + d)] += cs.scale * ds * q.at(b, i, h, d);
            rdv[size_t(((b * Nk + j) * Hkv + g) * D + d)] += pr[size_t(j)] * dout.at(b, i, h, d);
          }
        }
      }
    }

  // Staging exactly as the launcher does it, the "device" being the host blob.
  const CompiledPattern cp = cs.pattern.compile(Nq, Nk, Hq);
  const cuda::BackwardTile tile = cuda::backward_tile(D, D);
  check(tile.bq == kBwdBlockM && tile.bk == kBwdBlockN, "backward_tile() is the kernel's tile");
  BlockLayout layout = cp.layout(tile.bq, tile.bk);
  if (sab == Sabotage::AllFull) {  // every partial block relabelled full (as a broken transpose would)
    BlockLayout all = layout;
    all.full_ptr.assign(size_t(layout.rows() + 1), 0);
    all.full_lo.clear();
    all.full_hi.clear();
    for (int64_t r = 0; r < layout.rows(); ++r) {
      std::vector<std::pair<int32_t, int32_t>> rr;
      for (int64_t t = layout.full_ptr[size_t(r)]; t < layout.full_ptr[size_t(r + 1)]; ++t)
        rr.push_back({layout.full_lo[size_t(t)], layout.full_hi[size_t(t)]});
      for (int64_t t = layout.part_ptr[size_t(r)]; t < layout.part_ptr[size_t(r + 1)]; ++t)
        rr.push_back({layout.part_lo[size_t(t)], layout.part_hi[size_t(t)]});
      std::sort(rr.begin(), rr.end());
      for (const auto& x : rr) {
        if (!all.full_lo.empty() && all.full_hi.back() == x.first &&
            int64_t(all.full_lo.size()) > all.full_ptr[size_t(r)])
          all.full_hi.back() = x.second;
        else {
          all.full_lo.push_back(x.first);
          all.full_hi.push_back(x.second);
        }
      }
      all.full_ptr[size_t(r + 1)] = int64_t(all.full_lo.size());
    }
    all.part_ptr.assign(size_t(layout.rows() + 1), 0);
    all.part_lo.clear();
    all.part_hi.clear();
    layout = all;
  }
  const Predicate pred = cp.predicate();
  cuda::StagedBackward st = cuda::stage_backward(layout, pred, Nq, Nk, Hq, Hkv);
  st.relocate_nodes(st.blob.data());
  BwdParams p;
  st.bind(st.blob.data(), &p);
  const int64_t nq_pad = p.nq_pad;
  check(nq_pad == layout.nqb * kBwdBlockM, "nq_pad covers whole query tiles");
  std::vector<float> dq_accum(size_t(B * Hq * nq_pad * D), 0.f), lse2(size_t(B * Hq * nq_pad), NAN),
      delta(size_t(B * Hq * nq_pad), NAN);
  FwdParams& f = p.f;
  f.q = q.ptr();
  f.k = k.ptr();
  f.v = v.ptr();
  f.o = out.ptr();
  f.lse = lse.data();
  f.q_sb = q.strides[0], f.q_sn = q.strides[1], f.q_sh = q.strides[2];
  f.k_sb = k.strides[0], f.k_sn = k.strides[1], f.k_sh = k.strides[2];
  f.v_sb = v.strides[0], f.v_sn = v.strides[1], f.v_sh = v.strides[2];
  f.o_sb = out.strides[0], f.o_sn = out.strides[1], f.o_sh = out.strides[2];
  p.o_sd = out.strides[3];
  f.lse_sb = Hq * Nq, f.lse_sh = Nq, f.lse_sn = 1;
  f.b = B, f.nq = Nq, f.nk = Nk, f.hq = Hq, f.hkv = Hkv, f.d = D, f.dv = D;
  f.group = group;
  f.scale = cs.scale;
  f.scale_log2 = cs.scale * 1.4426950408889634f;
  f.m.softcap_log2 = cs.softcap * 1.4426950408889634f;
  f.m.alibi = cs.slopes.empty() ? nullptr : cs.slopes.data();
  f.m.rel_base = Nk - Nq;
  f.mods = cs.softcap != 0.f || !cs.slopes.empty();  // sinks: only through lse
  p.dout = dout.ptr();
  p.do_sb = dout.strides[0], p.do_sn = dout.strides[1], p.do_sh = dout.strides[2];
  p.dq = dq.ptr();
  p.dq_sb = dq.strides[0], p.dq_sn = dq.strides[1], p.dq_sh = dq.strides[2], p.dq_sd = dq.strides[3];
  p.dk = dk.ptr();
  p.dk_sb = dk.strides[0], p.dk_sn = dk.strides[1], p.dk_sh = dk.strides[2];
  p.dv = dv.ptr();
  p.dv_sb = dv.strides[0], p.dv_sn = dv.strides[1], p.dv_sh = dv.strides[2];
  p.dq_accum = dq_accum.data();
  p.lse2 = lse2.data();
  p.delta = delta.data();

  std::vector<Visit> visits;
  emulate(p, sab, &visits);

  const std::string tag = cs.name;
  if (verbose_checks) {
    check_transpose(layout, tag);
    // The relocated predicate is the pattern's rule.
    bool same = true;
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i)
        for (int64_t j = 0; j < Nk; ++j) same = same && keeps(p.f.pred, h, i, j) == kept(h, i, j);
    check(same, tag + ": the staged (relocated) predicate equals Pattern::mask()");

    // CTA -> work: every (b, g, c) exactly once; schedule longest first.
    std::set<std::tuple<int64_t, int64_t, int64_t>> ctas;
    for (int64_t x = 0; x < cuda::bwd_grid_size(p); ++x) {
      const cuda::BwdWork w = cuda::bwd_cta_work(p, x);
      check(w.b >= 0 && w.b < B && w.g >= 0 && w.g < Hkv && w.c >= 0 && w.c < layout.nkb,
            tag + ": bwd_cta_work in range");
      ctas.insert({w.b, w.g, w.c});
    }
    check(int64_t(ctas.size()) == B * Hkv * layout.nkb && cuda::bwd_grid_size(p) == B * Hkv * layout.nkb,
          tag + ": every (batch, kv head, key tile) exactly once");
    const BlockLayout T = cuda::transpose_layout(layout);
    auto cost = [&](int64_t s) {
      const int64_t g = s / layout.nkb, c = s % layout.nkb;
      int64_t n = 0;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const int64_t r = (T.heads == 1 ? 0 : h) * layout.nkb + c;
        for (int64_t t = T.full_ptr[size_t(r)]; t < T.full_ptr[size_t(r + 1)]; ++t) n += 2 * (T.full_hi[size_t(t)] - T.full_lo[size_t(t)]);
        for (int64_t t = T.part_ptr[size_t(r)]; t < T.part_ptr[size_t(r + 1)]; ++t) n += 3 * (T.part_hi[size_t(t)] - T.part_lo[size_t(t)]);
      }
      return n;
    };
    bool sorted = true;
    for (int64_t s = 1; s < p.sched_len; ++s) sorted = sorted && cost(p.sched[s - 1]) >= cost(p.sched[s]);
    check(sorted, tag + ": schedule longest columns first");

    // Visits: every (b, h, a, c) of the layout exactly once, by the CTA of h's kv head, with
    // its kind; ascending query tiles per (CTA, head).
    const auto blocks = expand(layout);
    std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, int> seen;
    bool right_cta = true, kind_ok = true, asc = true;
    for (size_t x = 0; x < visits.size(); ++x) {
      const Visit& vi = visits[x];
      right_cta = right_cta && vi.h / group == vi.g;
      ++seen[{vi.b, vi.h, vi.a, vi.c}];
      const auto it = blocks.find(std::make_tuple(layout.heads == 1 ? 0 : vi.h, vi.a, vi.c));
      kind_ok = kind_ok && it != blocks.end() && it->second == vi.partial;
      if (x > 0 && visits[x - 1].b == vi.b && visits[x - 1].c == vi.c && visits[x - 1].h == vi.h &&
          visits[x - 1].g == vi.g)
        asc = asc && visits[x - 1].a < vi.a;
    }
    bool once = int64_t(seen.size()) == B * int64_t(layout.heads == 1 ? Hq : 1) * int64_t(blocks.size());
    for (const auto& e : seen) once = once && e.second == 1;
    check(right_cta, tag + ": each visit belongs to the CTA of its kv head (GQA)");
    check(kind_ok, tag + ": each visit has its layout block's kind (full / partial)");
    check(once, tag + ": every (batch, head, query tile, key tile) block visited exactly once");
    check(asc, tag + ": query tiles ascending within a head's column");
    // Workspace padding as the kernel expects.
    bool pad = true;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = Nq; i < nq_pad; ++i)
          pad = pad && lse2[size_t(cuda::stat_offset(p, b, h, i))] == INFINITY &&
                delta[size_t(cuda::stat_offset(p, b, h, i))] == 0.f;
    check(pad, tag + ": padding rows: lse2 +inf, delta 0");
    check(dq.data.back() == kPoison && dk.data.back() == kPoison && dv.data.back() == kPoison,
          tag + ": nothing written past the end");
    bool gaps = true;  // the 3 spare elements after each row stay NaN
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Nq; ++i)
          for (int64_t d = D; d < D + 3; ++d) gaps = gaps && std::isnan(dq.at(b, i, h, d));
    check(gaps, tag + ": nothing written between rows of dq");
  }

  // Compare, relative to the largest reference magnitude of each gradient.
  double err = 0.0;
  bool finite = true, empty_zero = true;
  auto cmp = [&](Strided& got, const std::vector<double>& ref, int64_t n, int64_t h) {
    double mag = 1.0, e = 0.0;
    for (double x : ref) mag = std::max(mag, std::fabs(x));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t y = 0; y < h; ++y)
          for (int64_t d = 0; d < D; ++d) {
            const float g = got.at(b, i, y, d);
            if (!std::isfinite(g)) finite = false;
            e = std::max(e, std::fabs(double(g) - ref[size_t(((b * n + i) * h + y) * D + d)]));
          }
    return e / mag;
  };
  err = std::max(err, cmp(dq, rdq, Nq, Hq));
  err = std::max(err, cmp(dk, rdk, Nk, Hkv));
  err = std::max(err, cmp(dv, rdv, Nk, Hkv));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i)
        if (empty_row[size_t((b * Hq + h) * Nq + i)])
          for (int64_t d = 0; d < D; ++d) empty_zero = empty_zero && dq.at(b, i, h, d) == 0.f;
  if (sab == Sabotage::None) {
    check(finite, tag + ": every dq, dk, dv element written, finite (no NaN)");
    check(empty_zero, tag + ": rows that see no key: dq exactly 0");
  }
  if (!finite) return INFINITY;
  return err;
}

BlockMask random_block_mask(int64_t heads, int64_t nq, int64_t nk, int64_t bq, int64_t bk, double keep,
                            uint32_t seed) {
  BlockMask m;
  m.heads = heads;
  m.bq = bq;
  m.bk = bk;
  m.nbq = (nq + bq - 1) / bq;
  m.nbk = (nk + bk - 1) / bk;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  m.bits.resize(size_t(heads * m.nbq * m.nbk));
  for (auto& x : m.bits) x = u(rng) < keep ? 1 : 0;
  return m;
}

void test_transpose_layouts() {
  struct L {
    const char* name;
    Pattern p;
    int64_t nq, nk, heads, bq, bk;
  };
  std::vector<Pattern> mixed;
  for (int h = 0; h < 3; ++h)
    mixed.push_back(h == 1 ? Pattern::sliding_window(100, 0) : Pattern::block_sparse(random_block_mask(1, 700, 500, 50, 70, 0.3, 3 + h)));
  const std::vector<L> ls = {
      {"causal 1000", Pattern::causal(), 1000, 1000, 1, 64, 64},
      {"causal 1000 x 3000 (64x128)", Pattern::causal(), 1000, 3000, 1, 64, 128},
      {"window(300,40)", Pattern::sliding_window(300, 40), 2000, 1700, 1, 64, 64},
      {"dense 333x777", Pattern::dense(), 333, 777, 1, 64, 64},
      {"blocksparse per head 20%", Pattern::block_sparse(random_block_mask(4, 900, 1100, 64, 64, 0.2, 11)), 900, 1100, 4, 64, 64},
      {"blocksparse 32x48 per head", Pattern::block_sparse(random_block_mask(2, 700, 800, 32, 48, 0.3, 12)), 700, 800, 2, 64, 64},
      {"sink|window", Pattern::union_of({Pattern::sink(7), Pattern::sliding_window(200, 0)}), 1500, 1500, 1, 64, 64},
      {"per-head mix", Pattern::per_head(mixed), 700, 500, 3, 64, 64},
      {"bigbird", Pattern::bigbird(64, 3, 1, 2, 9), 1200, 1200, 2, 64, 64},
      {"dilated(20,0,7)", Pattern::dilated(20, 0, 7), 900, 900, 1, 64, 64},
      {"window empty rows (Nq > Nk)", Pattern::sliding_window(30, 0), 900, 200, 1, 64, 64},
  };
  for (const L& l : ls) {
    const BlockLayout lay = l.p.compile(l.nq, l.nk, l.heads).layout(l.bq, l.bk);
    check_transpose(lay, std::string("transpose ") + l.name);
  }
  // Empty problems.
  check_transpose(Pattern::causal().compile(0, 100, 1).layout(64, 64), "transpose Nq = 0");
  check_transpose(Pattern::causal().compile(100, 0, 1).layout(64, 64), "transpose Nk = 0");

  // O(ranges): a 1M-token causal layout (16384 x 16384 tiles, 134M blocks) transposes into
  // columns of at most 2 ranges each, fast.
  const int64_t n = int64_t(1) << 20;
  const BlockLayout big = Pattern::causal().compile(n, n, 1).layout(64, 64);
  const auto t0 = std::chrono::steady_clock::now();
  const BlockLayout bt = cuda::transpose_layout(big);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("transpose of a 1M-token causal layout (%lld tile rows): %.1f ms, %zu + %zu ranges\n",
              static_cast<long long>(big.nqb), ms, bt.full_lo.size(), bt.part_lo.size());
  bool small = true, right = true;
  for (int64_t c = 0; c < bt.nqb; ++c) {
    small = small && bt.full_ptr[size_t(c + 1)] - bt.full_ptr[size_t(c)] <= 1 &&
            bt.part_ptr[size_t(c + 1)] - bt.part_ptr[size_t(c)] == 1;
    right = right && bt.part_lo[size_t(c)] == c && bt.part_hi[size_t(c)] == c + 1;
    if (bt.full_ptr[size_t(c + 1)] > bt.full_ptr[size_t(c)])
      right = right && bt.full_lo[size_t(bt.full_ptr[size_t(c)])] == c + 1 &&
              bt.full_hi[size_t(bt.full_ptr[size_t(c)])] == bt.nkb;
  }
  check(small && right, "1M causal: column c = partial [c, c+1) + full [c+1, end)");
  check(ms < 2000.0, "1M causal transposition in O(ranges) time");
}

void test_small_helpers() {
  using namespace spattn::cuda;
  check(bwd_lse2(-INFINITY) == INFINITY, "bwd_lse2: a row that sees nothing -> +inf");
  check(std::fabs(bwd_lse2(2.f) - 2.f * 1.4426950408889634f) < 1e-6f, "bwd_lse2: lse * log2 e");
  check(bwd_prob(3.f, 0.5f, INFINITY, true) == 0.f && bwd_prob(-INFINITY, 0.5f, INFINITY, true) == 0.f,
        "bwd_prob: empty rows give 0, never NaN");
  check(bwd_prob(100.f, 0.5f, 1.f, false) == 0.f, "bwd_prob: masked pair -> 0");
  check(fast_exp2(score_scaled(1.f, 0.5f, false) - bwd_lse2(-INFINITY)) == 0.f,
        "a masked score (-inf) against an empty row's lse2 is 0, not NaN");
  check(std::fabs(bwd_prob(2.f, 0.5f, 1.f, true) - 1.f) < 1e-6f, "bwd_prob: exp2(s * scale_log2 - lse2)");
  check(bwd_ds(0.f, 5.f, 2.f) == 0.f && bwd_ds(0.5f, 3.f, 1.f) == 1.f, "bwd_ds = p (dp - delta)");
  BwdParams p;
  p.f.nq = 200;
  p.f.nk = 130;
  check(bwd_tile_rows(p, 0) == 64 && bwd_tile_rows(p, 3) == 8 && bwd_tile_rows(p, 4) == 0,
        "bwd_tile_rows");
  check(bwd_block_keys(p, 1) == 64 && bwd_block_keys(p, 2) == 2 && bwd_block_keys(p, 3) == 0,
        "bwd_block_keys");
  check(!block_needs_mask_n(130, 64, false, 1) && block_needs_mask_n(130, 64, false, 2) &&
            block_needs_mask_n(130, 64, true, 0),
        "block_needs_mask_n: full blocks only at the Nk tail");
  p.f.b = 2;
  p.f.hq = 3;
  p.nq_pad = 256;
  p.f.d = 64;
  check(stat_offset(p, 1, 2, 5) == (1 * 3 + 2) * 256 + 5 && dqacc_offset(p, 1, 2, 5) == ((1 * 3 + 2) * 256 + 5) * 64,
        "workspace offsets [B, Hq, nq_pad(, D)]");

  // Staging refuses a layout for another tile and a bad GQA split.
  const CompiledPattern cp = Pattern::causal().compile(300, 300, 2);
  bool threw = false;
  try {
    (void)stage_backward(cp.layout(128, 64), cp.predicate(), 300, 300, 2, 1);
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "stage_backward refuses the forward's 128x64 layout");
  threw = false;
  try {
    (void)stage_backward(cp.layout(64, 64), cp.predicate(), 300, 300, 2, 3);
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "stage_backward refuses Hq % Hkv != 0");
}

void test_launcher_without_gpu() {
  check(cuda::supports_backward(DType::Float32, 128, 128) == (SPATTN_WITH_CUDA != 0),
        "supports_backward: float32 D=128 (the SIMT kernel) is in every CUDA build");
  check(!cuda::supports_backward(DType::Float64, 64, 64), "supports_backward: no float64 kernel");
  check(!cuda::supports_backward(DType::BFloat16, 128, 64), "supports_backward: D != Dv refused");
  check(cuda::supports_backward(DType::BFloat16, 128, 128) == (SPATTN_WITH_CUDA != 0),
        "supports_backward: bfloat16 D=128 is in every CUDA build (reduced included)");
  check((cuda::backward_kernels().find("bfloat16:") != std::string::npos) == (SPATTN_WITH_CUDA != 0),
        "backward_kernels() lists the compiled set");
  std::vector<uint16_t> buf(8 * 128 * 128, 0);
  std::vector<float> l(128, 0.f);
  const CompiledPattern cp = Pattern::causal().compile(128, 128, 1);
  const cuda::BackwardTile t = cuda::backward_tile(128, 128);
  const BlockLayout layout = cp.layout(t.bq, t.bk);
  cuda::BackwardProblem bp;
  bp.dtype = DType::BFloat16;
  bp.dout = buf.data();
  bp.q = bp.k = bp.v = bp.out = buf.data() + 128 * 128;
  bp.lse = l.data();
  bp.dq = buf.data() + 2 * 128 * 128;
  bp.dk = buf.data() + 3 * 128 * 128;
  bp.dv = buf.data() + 4 * 128 * 128;
  bp.b = 1, bp.nq = bp.nk = 128, bp.hq = bp.hkv = 1, bp.d = bp.dv_dim = 128;
  const int64_t s[4] = {128 * 128, 128, 128, 1};
  for (int i = 0; i < 4; ++i)
    bp.dout_strides[i] = bp.q_strides[i] = bp.k_strides[i] = bp.v_strides[i] = bp.out_strides[i] =
        bp.dq_strides[i] = bp.dk_strides[i] = bp.dv_strides[i] = s[i];
  bp.lse_strides[0] = 128, bp.lse_strides[1] = 128, bp.lse_strides[2] = 1;
  bp.scale = 0.1f;
  const cuda::StagedBackward st = cuda::stage_backward(layout, cp.predicate(), 128, 128, 1, 1);
  bp.staged = &st;
  bp.staged_dev = st.blob.data();
  std::string msg;
  try {
    cuda::attention_backward(bp);
  } catch (const RuntimeError& e) {
    msg = e.what();
  }
  std::printf("attention_backward on host memory: %s\n", msg.c_str());
  check(!msg.empty(), "attention_backward on host pointers (no GPU here) throws RuntimeError");
}

}  // namespace

int main() {
  test_small_helpers();
  test_launcher_without_gpu();
  test_transpose_layouts();

  std::vector<Pattern> mixed;
  for (int64_t h = 0; h < 4; ++h)
    mixed.push_back(h % 2 ? Pattern::sliding_window(40, 0)
                          : Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}));
  const std::vector<Case> cases = {
      {"causal 300x300 GQA 4/2 B2", Pattern::causal(), 2, 300, 300, 4, 2, 16, 0.25f},
      {"window(99,0) Nq 200 < Nk 333", Pattern::sliding_window(99, 0), 1, 200, 333, 2, 1, 8, 0.3f},
      {"window(20,5) Nq 333 > Nk 150 (empty rows)", Pattern::sliding_window(20, 5), 1, 333, 150, 2, 2, 8, 0.3f},
      {"dense 130x70 MQA 3/1", Pattern::dense(), 1, 130, 70, 3, 1, 8, 0.2f},
      {"blocksparse 32x32 per head 10%", Pattern::block_sparse(random_block_mask(3, 257, 385, 32, 32, 0.1, 7)),
       1, 257, 385, 3, 1, 8, 0.3f},
      {"blocksparse 128x128 per head 30%", Pattern::block_sparse(random_block_mask(2, 384, 512, 128, 128, 0.3, 9)),
       1, 384, 512, 2, 2, 8, 0.3f},
      {"sink(5) | window(70,3) (keeps() path)",
       Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}), 2, 261, 261, 2, 1, 8, 0.3f},
      {"per-head mix GQA 4/2", Pattern::per_head(mixed), 1, 190, 260, 4, 2, 8, 0.3f},
      {"global tokens", Pattern::global({0, 17, 200}), 1, 150, 230, 1, 1, 8, 0.3f},
      {"bigbird", Pattern::bigbird(32, 3, 1, 2, 5), 1, 300, 300, 2, 1, 8, 0.3f},
      {"dilated(10,0,3)", Pattern::dilated(10, 0, 3), 1, 200, 200, 1, 1, 8, 0.3f},
      {"causal odd 97x1025, negative scale", Pattern::causal(), 1, 97, 1025, 1, 1, 8, -0.35f},
      // score modifiers: the softcap's chain rule, ALiBi, sinks through lse
      {"causal + softcap", Pattern::causal(), 1, 200, 260, 2, 1, 8, 0.9f, 1.5f},
      {"window(40,3) + alibi GQA", Pattern::sliding_window(40, 3), 2, 150, 190, 4, 2, 8, 0.3f, 0.f,
       {0.5f, 0.25f, 0.125f, 0.0625f}},
      {"window(20,5) + sinks (empty rows)", Pattern::sliding_window(20, 5), 1, 333, 150, 2, 2, 8, 0.3f, 0.f,
       {}, {0.7f, -1.2f}},
      {"sink(5)|window(70,3) + all three", Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}),
       1, 261, 261, 2, 1, 8, 0.5f, 2.f, {0.1f, 0.3f}, {0.2f, -INFINITY}},
  };
  const double tol = 2e-5;
  uint32_t seed = 1;
  for (const Case& cs : cases) {
    const double err = run_case(cs, Sabotage::None, seed++, true);
    std::printf("%-45s max |err| / max |ref| = %.2e\n", cs.name.c_str(), err);
    check(err < tol, cs.name + ": dq, dk, dv match the float64 reference");
  }

  struct Bad {
    const char* what;
    Sabotage sab;
    Case cs;
  };
  const std::vector<Bad> bad = {
      {"partial blocks left unmasked", Sabotage::NoPartialMask,
       {"causal", Pattern::causal(), 1, 200, 200, 1, 1, 8, 0.3f}},
      {"empty rows without the lse guard", Sabotage::NoLseGuard,
       {"window empty rows", Pattern::sliding_window(20, 0), 1, 300, 150, 1, 1, 8, 0.3f}},
      {"GQA: only the first head of each group", Sabotage::FirstHeadOnly,
       {"causal GQA", Pattern::causal(), 1, 200, 200, 4, 2, 8, 0.3f}},
      {"delta dropped", Sabotage::NoDelta, {"window", Pattern::sliding_window(99, 0), 1, 200, 333, 1, 1, 8, 0.3f}},
      {"dK not scaled", Sabotage::NoDkScale, {"dense", Pattern::dense(), 1, 130, 130, 1, 1, 8, 0.3f}},
      {"partial blocks relabelled full", Sabotage::AllFull,
       {"sink|window", Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}), 1, 261, 261, 1, 1, 8, 0.3f}},
      {"last visit dropped", Sabotage::DropLastVisit, {"dense", Pattern::dense(), 1, 130, 130, 1, 1, 8, 0.3f}},
  };
  for (const Bad& b : bad) {
    const double err = run_case(b.cs, b.sab, seed++, false);
    std::printf("sabotage: %-45s error = %.2e (must be large)\n", b.what, err);
    check(!(err < tol), std::string("the test catches: ") + b.what);
  }

  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  else std::printf("all checks passed\n");
  return failures == 0 ? 0 : 1;
}
