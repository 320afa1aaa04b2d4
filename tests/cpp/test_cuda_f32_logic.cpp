// The float32 CUDA kernels (cuda/src/f32/) on the host: their tiling (spattn/cuda/f32_logic.hpp)
// and a thread-level emulation of both kernels.
//
// Mappings: every score / output element of a tile is owned by exactly one thread; the threads
// of a row group are consecutive lanes of one warp (the xor shuffles stay inside the group); the
// shared-memory regions do not overlap, fit in 163 KB, and the dense V tile is 16-byte aligned.
//
// Emulation: 256 "threads", phase by phase between the kernels' barriers, each with its own
// registers, running what the kernels run: the same mappings, the same outer_products() over a
// shared-memory array laid out at the same offsets (filled with NaN first, so a read of a slot
// no thread wrote poisons the result), the same walks (RowWalk / ColumnWalk), masks
// (block_needs_mask, row_interval / element_kept), softmax steps, modifiers and sinks, on
// parameters from the launchers' own staging (stage_forward / stage_backward). The row-group
// shuffles are emulated as reductions over the group's lanes. Outputs are compared with a
// float64 reference from Pattern::mask() at the suite's float32 tolerance (2e-5 relative);
// sabotaged runs (no row-group max, dK from P instead of dS) must fail it.
//
// What this cannot check: CUDA itself (float4 loads, __ldg, atomics, the barriers' placement);
// tests/python/test_cuda_float32.py does on a GPU.
#include <spattn/cuda/backward.hpp>
#include <spattn/cuda/backward_logic.hpp>
#include <spattn/cuda/f32_logic.hpp>
#include <spattn/cuda/forward_logic.hpp>
#include <spattn/spattn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
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

enum class Sabotage { None, LocalMax, DkFromP };

// ---------------------------------------------------------------------------------------------
// Mappings and shared memory.

void test_mappings() {
  {  // forward scores (128 x 64) and outputs (128 x D)
    std::vector<int> seen(size_t(kFwdBlockM) * kFwdBlockN, 0);
    bool group_ok = true;
    for (int t = 0; t < kF32Threads; ++t)
      for (int i = 0; i < kF32FwdRows; ++i) {
        for (int j = 0; j < kF32FwdCols; ++j) ++seen[size_t(f32_fwd_row(t, i) * kFwdBlockN + f32_fwd_col(t, j))];
        // the lanes holding this row: t ^ 1, t ^ 2, t ^ 4 (and their combinations) only
        for (int o = 1; o < kF32FwdLanes; o <<= 1)
          group_ok = group_ok && f32_fwd_row(t ^ o, i) == f32_fwd_row(t, i) && (t ^ o) / 32 == t / 32;
      }
    check(std::all_of(seen.begin(), seen.end(), [](int x) { return x == 1; }),
          "forward: each score of the 128 x 64 tile owned by one thread");
    check(group_ok, "forward: a row's 8 lanes are an xor group inside one warp");
    for (int d : {32, 64, 96, 128}) {
      std::vector<int> o(size_t(kFwdBlockM) * d, 0);
      for (int t = 0; t < kF32Threads; ++t)
        for (int i = 0; i < kF32FwdRows; ++i)
          for (int j = 0; j < d / kF32FwdLanes; ++j) ++o[size_t(f32_fwd_row(t, i) * d + f32_fwd_col(t, j))];
      check(std::all_of(o.begin(), o.end(), [](int x) { return x == 1; }),
            "forward: each output element owned by one thread, D=" + std::to_string(d));
    }
  }
  {  // backward scores (64 x 64), dK / dV / dQ tiles (64 x D)
    std::vector<int> seen(size_t(kBwdBlockM) * kBwdBlockN, 0);
    for (int t = 0; t < kF32Threads; ++t)
      for (int i = 0; i < kF32BwdRows; ++i)
        for (int j = 0; j < kF32BwdCols; ++j) ++seen[size_t(f32_bwd_row(t, i) * kBwdBlockN + f32_bwd_col(t, j))];
    check(std::all_of(seen.begin(), seen.end(), [](int x) { return x == 1; }),
          "backward: each score of the 64 x 64 tile owned by one thread");
    for (int d : {32, 64, 96, 128}) {
      std::vector<int> o(size_t(kBwdBlockN) * d, 0);
      for (int t = 0; t < kF32Threads; ++t)
        for (int i = 0; i < kF32BwdRows; ++i)
          for (int j = 0; j < d / kF32BwdLanes; ++j) ++o[size_t(f32_bwd_row(t, i) * d + f32_bwd_col(t, j))];
      check(std::all_of(o.begin(), o.end(), [](int x) { return x == 1; }),
            "backward: each dK / dV / dQ element owned by one thread, D=" + std::to_string(d));
    }
  }
  for (int d : {32, 64, 96, 128}) {
    const std::string tag = " D=" + std::to_string(d);
    check(f32_head_dim_ok(d), "head dim buildable" + tag);
    check(f32_fwd_off_k(d) >= int64_t(kFwdBlockM) * f32_stride(d) &&
              f32_fwd_off_v(d) - f32_fwd_off_k(d) >= int64_t(kFwdBlockN) * f32_stride(d) &&
              f32_fwd_off_p(d) - f32_fwd_off_v(d) >= int64_t(kFwdBlockN) * d,
          "forward shared-memory regions do not overlap" + tag);
    check(f32_fwd_off_v(d) % 4 == 0, "forward V tile 16-byte aligned (float4 stores)" + tag);
    check(f32_fwd_smem_bytes(d) <= kF32MaxSmem && f32_bwd_smem_bytes(d) <= kF32MaxSmem,
          "shared memory fits 163 KB" + tag);
    check(f32_bwd_off_ds(d) - f32_bwd_off_p(d) >= int64_t(kBwdBlockM) * f32_stride(kBwdBlockN),
          "backward P and dS do not overlap" + tag);
    std::vector<int> piece(size_t(kFwdBlockM) * d, 0);
    for (int x = 0; x < kFwdBlockM * d / 4; ++x)
      for (int e = 0; e < 4; ++e) ++piece[size_t(f32_piece_row(x, d) * d + f32_piece_col(x, d) + e)];
    check(std::all_of(piece.begin(), piece.end(), [](int x) { return x == 1; }),
          "tile loads cover each element once" + tag);
  }
  check(!f32_head_dim_ok(256) && !f32_head_dim_ok(40), "D=256 (shared memory) and D=40 refused");
}

// ---------------------------------------------------------------------------------------------
// Problems: compact float tensors [B, N, H, D], the float64 reference.

struct Case {
  std::string name;
  Pattern pattern;
  int64_t b, nq, nk, hq, hkv;
  float scale;
  float softcap;                     // 0: none
  std::vector<float> slopes, sinks;  // empty: none
};

struct Tensor4 {
  int64_t s[4];
  std::vector<float> x;
  Tensor4(int64_t b, int64_t n, int64_t h, int64_t d) : s{b, n, h, d}, x(size_t(b * n * h * d), 0.f) {}
  int64_t sb() const { return s[1] * s[2] * s[3]; }
  int64_t sn() const { return s[2] * s[3]; }
  int64_t sh() const { return s[3]; }
  float& at(int64_t b, int64_t n, int64_t h, int64_t d) {
    return x[size_t(b * sb() + n * sn() + h * sh() + d)];
  }
  void randomize(std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, 1.f);
    for (float& v : x) v = nd(rng);
  }
};

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

Reference reference(const Case& cs, Tensor4& q, Tensor4& k, Tensor4& v, Tensor4& dout) {
  const int64_t B = cs.b, Nq = cs.nq, Nk = cs.nk, Hq = cs.hq, D = q.s[3], group = cs.hq / cs.hkv;
  const std::vector<uint8_t> mask = cs.pattern.mask(Nq, Nk, Hq);
  Reference r;
  r.out.assign(q.x.size(), 0.0);
  r.dq.assign(q.x.size(), 0.0);
  r.dk.assign(k.x.size(), 0.0);
  r.dv.assign(v.x.size(), 0.0);
  r.lse.assign(size_t(B * Hq * Nq), 0.0);
  std::vector<double> s(static_cast<size_t>(Nk)), pr(s.size()), dcap(s.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i) {
        const int64_t g = h / group;
        double mx = -INFINITY;
        for (int64_t j = 0; j < Nk; ++j) {
          s[size_t(j)] = -INFINITY;
          dcap[size_t(j)] = 1.0;
          if (!mask[size_t((h * Nq + i) * Nk + j)]) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += double(q.at(b, i, h, d)) * double(k.at(b, j, g, d));
          double x = dot * cs.scale;
          if (cs.softcap != 0.f) {
            const double t = std::tanh(x / cs.softcap);
            x = cs.softcap * t;
            dcap[size_t(j)] = 1.0 - t * t;
          }
          if (!cs.slopes.empty()) x -= cs.slopes[size_t(h)] * std::fabs(double(i - j + Nk - Nq));
          s[size_t(j)] = x;
          mx = std::max(mx, x);
        }
        const double sink = cs.sinks.empty() ? -INFINITY : double(cs.sinks[size_t(h)]);
        mx = std::max(mx, sink);
        double l = sink == -INFINITY ? 0.0 : std::exp(sink - mx);
        for (int64_t j = 0; j < Nk; ++j) l += s[size_t(j)] == -INFINITY ? 0.0 : std::exp(s[size_t(j)] - mx);
        const double lse = l == 0.0 ? -INFINITY : mx + std::log(l);
        r.lse[size_t((b * Hq + h) * Nq + i)] = lse;
        double delta = 0.0;
        for (int64_t j = 0; j < Nk; ++j) {
          pr[size_t(j)] = s[size_t(j)] == -INFINITY ? 0.0 : std::exp(s[size_t(j)] - lse);
          for (int64_t d = 0; d < D; ++d)
            r.out[size_t(b * q.sb() + i * q.sn() + h * q.sh() + d)] += pr[size_t(j)] * v.at(b, j, g, d);
        }
        for (int64_t d = 0; d < D; ++d)
          delta += double(dout.at(b, i, h, d)) * r.out[size_t(b * q.sb() + i * q.sn() + h * q.sh() + d)];
        for (int64_t j = 0; j < Nk; ++j) {
          if (pr[size_t(j)] == 0.0) continue;
          double dp = 0.0;
          for (int64_t d = 0; d < D; ++d) dp += double(dout.at(b, i, h, d)) * v.at(b, j, g, d);
          const double ds = pr[size_t(j)] * (dp - delta) * dcap[size_t(j)] * cs.scale;
          for (int64_t d = 0; d < D; ++d) {
            r.dq[size_t(b * q.sb() + i * q.sn() + h * q.sh() + d)] += ds * k.at(b, j, g, d);
            r.dk[size_t(b * k.sb() + j * k.sn() + g * k.sh() + d)] += ds * q.at(b, i, h, d);
            r.dv[size_t(b * v.sb() + j * v.sn() + g * v.sh() + d)] += pr[size_t(j)] * dout.at(b, i, h, d);
          }
        }
      }
  return r;
}

// A rows x d tile into "shared memory" at row stride `stride`, as load_tile / load_tile_dense
// do it: float4 pieces, rows >= valid zero-filled.
void load_tile(std::vector<float>& sm, int64_t off, int stride, const float* src, int64_t row_stride,
               int rows, int d, int valid) {
  for (int x = 0; x < rows * d / 4; ++x) {
    const int r = f32_piece_row(x, d), c = f32_piece_col(x, d);
    for (int e = 0; e < 4; ++e) sm[size_t(off + r * stride + c + e)] = r < valid ? src[r * row_stride + c + e] : 0.f;
  }
}

// ---------------------------------------------------------------------------------------------
// The forward kernel, thread by thread (f32/forward_f32.cuh).

template <int kD>
void emulate_forward(const FwdParams& p, Sabotage sab) {
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN, R = kF32FwdRows, C = kF32FwdCols;
  constexpr int OC = kD / kF32FwdLanes, kS = f32_stride(kD), kSP = f32_stride(BN), T = kF32Threads;
  std::vector<float> sm;
  struct Regs {
    int row[R], q_at[R], p_at[R], k_at[C], col[C], o_col[OC];
    float acc_o[R][OC], row_m[R], row_l[R], s[R][C], mx[R];
    uint32_t keep;
  };
  std::vector<Regs> th(T);
  for (int64_t cta = 0; cta < fwd_grid_size(p); ++cta) {
    sm.assign(size_t(f32_fwd_smem_bytes(kD) / 4), NAN);
    const CtaWork w = cta_work(p, cta);
    const int64_t g = kv_head(p, w.h), i0 = w.a * BM;
    const int q_rows = tile_rows(p, w.a);
    const float* q_base = static_cast<const float*>(p.q) + q_offset(p, w.b, i0, w.h);
    const float* k_base = static_cast<const float*>(p.k) + k_offset(p, w.b, 0, g);
    const float* v_base = static_cast<const float*>(p.v) + v_offset(p, w.b, 0, g);
    for (int t = 0; t < T; ++t) {
      Regs& r = th[size_t(t)];
      for (int i = 0; i < R; ++i) {
        r.row[i] = f32_fwd_row(t, i);
        r.q_at[i] = r.row[i] * kS;
        r.p_at[i] = r.row[i] * kSP;
        r.row_m[i] = neg_inf();
        r.row_l[i] = 0.f;
        for (int j = 0; j < OC; ++j) r.acc_o[i][j] = 0.f;
      }
      for (int j = 0; j < C; ++j) r.col[j] = f32_fwd_col(t, j), r.k_at[j] = r.col[j] * kS;
      for (int j = 0; j < OC; ++j) r.o_col[j] = f32_fwd_col(t, j);
    }
    const bool rule_exact = range_is_exact(p.pred, w.h);
    const ScoreMod smod = score_mod(p, w.h);
    load_tile(sm, 0, kS, q_base, p.q_sn, BM, kD, q_rows);
    RowWalk walk(p, w.h, w.a);
    int64_t c = 0;
    bool partial = false;
    while (walk.next(p, &c, &partial)) {
      const int64_t j0 = c * BN;
      load_tile(sm, f32_fwd_off_k(kD), kS, k_base + j0 * p.k_sn, p.k_sn, BN, kD, block_keys(p, c, BN));
      load_tile(sm, f32_fwd_off_v(kD), kD, v_base + j0 * p.v_sn, p.v_sn, BN, kD, block_keys(p, c, BN));
      for (int t = 0; t < T; ++t) {  // mask bits, S, the row maxima of this thread
        Regs& r = th[size_t(t)];
        r.keep = ~uint32_t(0);
        if (block_needs_mask(p, partial, c, BN)) {
          r.keep = 0;
          if (mask_by_interval(partial, rule_exact)) {
            for (int i = 0; i < R; ++i) {
              int64_t lo, hi;
              row_interval(p, partial, w.h, i0 + r.row[i], &lo, &hi);
              for (int j = 0; j < C; ++j)
                if (j0 + r.col[j] >= lo && j0 + r.col[j] <= hi) r.keep |= uint32_t(1) << (i * C + j);
            }
          } else {
            for (int e = 0; e < R * C; ++e)
              if (element_kept(p, true, w.h, i0 + f32_fwd_row(t, e / C), j0 + f32_fwd_col(t, e % C)))
                r.keep |= uint32_t(1) << e;
          }
        }
        for (int i = 0; i < R; ++i)
          for (int j = 0; j < C; ++j) r.s[i][j] = 0.f;
        outer_products<R, C, kD>(r.s, sm.data(), r.q_at, 1, sm.data() + f32_fwd_off_k(kD), 1, r.k_at);
        const float rel0 = rel_of(p, i0, j0), rel_step = float(p.m.rel_step);
        for (int i = 0; i < R; ++i) {
          r.mx[i] = r.row_m[i];
          for (int j = 0; j < C; ++j) {
            r.s[i][j] = score_scaled(r.s[i][j], p.scale_log2, (r.keep >> (i * C + j)) & 1u);
            if (p.mods) r.s[i][j] = apply_mod(smod, r.s[i][j], rel0 + rel_step * float(r.row[i] - r.col[j]), nullptr);
            r.mx[i] = fmax_(r.mx[i], r.s[i][j]);
          }
        }
      }
      if (sab != Sabotage::LocalMax)  // group_max: every lane of the xor group gets the max
        for (int t0 = 0; t0 < T; t0 += kF32FwdLanes)
          for (int i = 0; i < R; ++i) {
            float m = neg_inf();
            for (int t = t0; t < t0 + kF32FwdLanes; ++t) m = fmax_(m, th[size_t(t)].mx[i]);
            for (int t = t0; t < t0 + kF32FwdLanes; ++t) th[size_t(t)].mx[i] = m;
          }
      for (int t = 0; t < T; ++t) {  // softmax, P to shared memory
        Regs& r = th[size_t(t)];
        for (int i = 0; i < R; ++i) {
          const float alpha = softmax_rescale(r.row_m[i], r.mx[i]);
          const float ms = softmax_max_safe(r.mx[i]);
          r.row_m[i] = r.mx[i];
          float sum = 0.f;
          for (int j = 0; j < C; ++j) {
            const float pr = softmax_p(r.s[i][j], ms);
            sum += pr;
            sm[size_t(f32_fwd_off_p(kD) + r.p_at[i] + r.col[j])] = pr;
          }
          r.row_l[i] = r.row_l[i] * alpha + sum;
          for (int j = 0; j < OC; ++j) r.acc_o[i][j] *= alpha;
        }
      }
      for (int t = 0; t < T; ++t) {  // O += P V
        Regs& r = th[size_t(t)];
        outer_products<R, OC, BN>(r.acc_o, sm.data() + f32_fwd_off_p(kD), r.p_at, 1,
                                  sm.data() + f32_fwd_off_v(kD), kD, r.o_col);
      }
    }
    for (int t0 = 0; t0 < T; t0 += kF32FwdLanes)  // group_sum of l, the epilogue
      for (int i = 0; i < R; ++i) {
        float l = 0.f;
        for (int t = t0; t < t0 + kF32FwdLanes; ++t) l += th[size_t(t)].row_l[i];
        for (int t = t0; t < t0 + kF32FwdLanes; ++t) {
          Regs& r = th[size_t(t)];
          float m = r.row_m[i], ll = l;
          const float keep_o = sink_finish(p, w.h, &m, &ll);
          const float inv = softmax_inv_l(ll) * keep_o;
          if (r.row[i] >= q_rows) continue;
          float* o_row = static_cast<float*>(p.o) + o_offset(p, w.b, i0, w.h) + r.row[i] * p.o_sn;
          for (int j = 0; j < OC; ++j) o_row[r.o_col[j]] = r.acc_o[i][j] * inv;
          if (p.lse != nullptr && t % kF32FwdLanes == 0)
            p.lse[lse_offset(p, w.b, w.h, i0 + r.row[i])] = softmax_lse(m, ll);
        }
      }
  }
}

// ---------------------------------------------------------------------------------------------
// The backward: preprocess and dq conversion as kernels/backward.cu computes them (per row),
// the main kernel thread by thread (f32/backward_f32.cuh).

template <int kD>
void emulate_backward(const BwdParams& p, Sabotage sab) {
  constexpr int BM = kBwdBlockM, BN = kBwdBlockN, R = kF32BwdRows, C = kF32BwdCols;
  constexpr int DC = kD / kF32BwdLanes, kS = f32_stride(kD), kSP = f32_stride(BN), T = kF32Threads;
  const FwdParams& f = p.f;
  for (int64_t b = 0; b < f.b; ++b)  // preprocess
    for (int64_t h = 0; h < f.hq; ++h)
      for (int64_t i = 0; i < p.nq_pad; ++i) {
        const bool real = i < f.nq;
        float acc = 0.f;
        if (real)
          for (int64_t x = 0; x < f.dv; ++x)
            acc += static_cast<const float*>(f.o)[o_offset(f, b, i, h) + x * p.o_sd] *
                   static_cast<const float*>(p.dout)[do_offset(p, b, i, h) + x];
        p.delta[stat_offset(p, b, h, i)] = real ? acc : 0.f;
        p.lse2[stat_offset(p, b, h, i)] = real ? bwd_lse2(f.lse[lse_offset(f, b, h, i)]) : INFINITY;
      }
  std::vector<float> sm;
  struct Regs {
    int row[R], col[C], dcol[DC], t_row[R], t_col[C], sp_row[R];
    float acc_dk[R][DC], acc_dv[R][DC];
  };
  std::vector<Regs> th(T);
  const int64_t off_v = f32_bwd_tile(kD), off_q = 2 * f32_bwd_tile(kD), off_do = 3 * f32_bwd_tile(kD);
  const int64_t off_p = f32_bwd_off_p(kD), off_ds = f32_bwd_off_ds(kD);
  for (int64_t cta = 0; cta < bwd_grid_size(p); ++cta) {
    sm.assign(size_t(f32_bwd_smem_bytes(kD) / 4), NAN);
    const BwdWork w = bwd_cta_work(p, cta);
    const int64_t j0 = w.c * BN;
    const int n_keys = bwd_block_keys(p, w.c);
    for (int t = 0; t < T; ++t) {
      Regs& r = th[size_t(t)];
      for (int i = 0; i < R; ++i) {
        r.row[i] = f32_bwd_row(t, i);
        r.t_row[i] = r.row[i] * kS;
        r.sp_row[i] = r.row[i] * kSP;
        for (int j = 0; j < DC; ++j) r.acc_dk[i][j] = r.acc_dv[i][j] = 0.f;
      }
      for (int j = 0; j < C; ++j) r.col[j] = f32_bwd_col(t, j), r.t_col[j] = r.col[j] * kS;
      for (int j = 0; j < DC; ++j) r.dcol[j] = f32_bwd_col(t, j);
    }
    load_tile(sm, 0, kS, static_cast<const float*>(f.k) + k_offset(f, w.b, j0, w.g), f.k_sn, BN, kD, n_keys);
    load_tile(sm, off_v, kS, static_cast<const float*>(f.v) + v_offset(f, w.b, j0, w.g), f.v_sn, BN, kD, n_keys);
    ColumnWalk walk(p, w.g, w.c);
    BwdVisit v{0, 0, false};
    while (walk.next(p, &v)) {
      const int64_t i0 = v.a * BM;
      const int q_rows = bwd_tile_rows(p, v.a);
      load_tile(sm, off_q, kS, static_cast<const float*>(f.q) + q_offset(f, w.b, i0, v.h), f.q_sn, BM, kD, q_rows);
      load_tile(sm, off_do, kS, static_cast<const float*>(p.dout) + do_offset(p, w.b, i0, v.h), p.do_sn, BM, kD, q_rows);
      for (int t = 0; t < T; ++t) {  // mask, P, dP, dS
        Regs& r = th[size_t(t)];
        uint32_t keep = ~uint32_t(0);
        if (block_needs_mask_n(f.nk, BN, v.partial, w.c)) {
          keep = 0;
          if (mask_by_interval(v.partial, range_is_exact(f.pred, v.h))) {
            for (int i = 0; i < R; ++i) {
              int64_t lo, hi;
              row_interval(f, v.partial, v.h, i0 + r.row[i], &lo, &hi);
              for (int j = 0; j < C; ++j)
                if (j0 + r.col[j] >= lo && j0 + r.col[j] <= hi) keep |= uint32_t(1) << (i * C + j);
            }
          } else {
            for (int e = 0; e < R * C; ++e)
              if (element_kept(f, true, v.h, i0 + f32_bwd_row(t, e / C), j0 + f32_bwd_col(t, e % C)))
                keep |= uint32_t(1) << e;
          }
        }
        float lse2[R], delta[R];
        for (int i = 0; i < R; ++i) {
          lse2[i] = p.lse2[stat_offset(p, w.b, v.h, i0) + r.row[i]];
          delta[i] = p.delta[stat_offset(p, w.b, v.h, i0) + r.row[i]];
        }
        float pr[R][C] = {}, dp[R][C] = {};
        outer_products<R, C, kD>(pr, sm.data() + off_q, r.t_row, 1, sm.data(), 1, r.t_col);
        const ScoreMod smod = score_mod(f, v.h);
        const float rel0 = rel_of(f, i0, j0), rel_step = float(f.m.rel_step);
        for (int i = 0; i < R; ++i)
          for (int j = 0; j < C; ++j) {
            const bool kept = (keep >> (i * C + j)) & 1u;
            if (!f.mods) {
              pr[i][j] = bwd_prob(pr[i][j], f.scale_log2, lse2[i], kept);
              sm[size_t(off_p + r.sp_row[i] + r.col[j])] = pr[i][j];
            } else {
              float dcap;
              const float s2 = apply_mod(smod, score_scaled(pr[i][j], f.scale_log2, kept),
                                         rel0 + rel_step * float(r.row[i] - r.col[j]), &dcap);
              const float pv = fast_exp2(s2 - lse2[i]);
              sm[size_t(off_p + r.sp_row[i] + r.col[j])] = pv;
              pr[i][j] = pv * dcap;
            }
          }
        outer_products<R, C, kD>(dp, sm.data() + off_do, r.t_row, 1, sm.data() + off_v, 1, r.t_col);
        for (int i = 0; i < R; ++i)
          for (int j = 0; j < C; ++j) sm[size_t(off_ds + r.sp_row[i] + r.col[j])] = bwd_ds(pr[i][j], dp[i][j], delta[i]);
      }
      for (int t = 0; t < T; ++t) {  // dV, dK, dQ
        Regs& r = th[size_t(t)];
        outer_products<R, DC, BM>(r.acc_dv, sm.data() + off_p, r.row, kSP, sm.data() + off_do, kS, r.dcol);
        outer_products<R, DC, BM>(r.acc_dk, sm.data() + (sab == Sabotage::DkFromP ? off_p : off_ds), r.row,
                                  kSP, sm.data() + off_q, kS, r.dcol);
        float acc_dq[R][DC] = {};
        outer_products<R, DC, BN>(acc_dq, sm.data() + off_ds, r.sp_row, 1, sm.data(), kS, r.dcol);
        float* dq = p.dq_accum + dqacc_offset(p, w.b, v.h, i0);
        for (int i = 0; i < R; ++i)
          for (int j = 0; j < DC; ++j) dq[r.row[i] * kD + r.dcol[j]] += acc_dq[i][j];
      }
    }
    float* dk = static_cast<float*>(p.dk) + dk_offset(p, w.b, j0, w.g);
    float* dv = static_cast<float*>(p.dv) + dv_offset(p, w.b, j0, w.g);
    for (int t = 0; t < T; ++t) {
      const Regs& r = th[size_t(t)];
      for (int i = 0; i < R; ++i) {
        if (r.row[i] >= n_keys) continue;
        for (int j = 0; j < DC; ++j) {
          dk[r.row[i] * p.dk_sn + r.dcol[j]] = r.acc_dk[i][j] * f.scale;
          dv[r.row[i] * p.dv_sn + r.dcol[j]] = r.acc_dv[i][j];
        }
      }
    }
  }
  for (int64_t b = 0; b < f.b; ++b)  // dq conversion
    for (int64_t h = 0; h < f.hq; ++h)
      for (int64_t i = 0; i < f.nq; ++i)
        for (int64_t x = 0; x < f.d; ++x)
          static_cast<float*>(p.dq)[dq_offset(p, b, i, h) + x * p.dq_sd] =
              p.dq_accum[dqacc_offset(p, b, h, i) + x] * f.scale;
}

// ---------------------------------------------------------------------------------------------

double max_err(const std::vector<float>& a, const std::vector<double>& ref, double* mag) {
  double e = 0.0, m = 0.0;
  for (size_t x = 0; x < a.size(); ++x) {
    e = std::max(e, std::isfinite(a[x]) ? std::fabs(double(a[x]) - ref[x]) : INFINITY);
    m = std::max(m, std::fabs(ref[x]));
  }
  *mag = m;
  return e;
}

// Runs a case through staging and both emulations; true when every output is within the
// float32 tolerance of the reference.
template <int kD>
bool run_case(const Case& cs, Sabotage sab, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t B = cs.b, Nq = cs.nq, Nk = cs.nk, Hq = cs.hq, Hkv = cs.hkv;
  Tensor4 q(B, Nq, Hq, kD), k(B, Nk, Hkv, kD), v(B, Nk, Hkv, kD), dout(B, Nq, Hq, kD);
  q.randomize(rng), k.randomize(rng), v.randomize(rng), dout.randomize(rng);
  Tensor4 out(B, Nq, Hq, kD), dq(B, Nq, Hq, kD), dk(B, Nk, Hkv, kD), dv(B, Nk, Hkv, kD);
  std::fill(out.x.begin(), out.x.end(), NAN);  // every element must be written
  std::fill(dk.x.begin(), dk.x.end(), NAN);
  std::fill(dv.x.begin(), dv.x.end(), NAN);
  std::vector<float> lse(size_t(B * Hq * Nq), NAN);
  const Reference ref = reference(cs, q, k, v, dout);
  const CompiledPattern cp = cs.pattern.compile(Nq, Nk, Hq);

  StagedForward sf = stage_forward(cp.layout(kFwdBlockM, kFwdBlockN), cp.predicate(), Nq, Nk, Hq);
  sf.relocate_nodes(sf.blob.data());
  FwdParams p;
  sf.bind(sf.blob.data(), &p);
  p.q = q.x.data(), p.k = k.x.data(), p.v = v.x.data(), p.o = out.x.data(), p.lse = lse.data();
  p.q_sb = q.sb(), p.q_sn = q.sn(), p.q_sh = q.sh();
  p.k_sb = k.sb(), p.k_sn = k.sn(), p.k_sh = k.sh();
  p.v_sb = v.sb(), p.v_sn = v.sn(), p.v_sh = v.sh();
  p.o_sb = out.sb(), p.o_sn = out.sn(), p.o_sh = out.sh();
  p.lse_sb = Hq * Nq, p.lse_sh = Nq, p.lse_sn = 1;
  p.b = B, p.nq = Nq, p.nk = Nk, p.hq = Hq, p.hkv = Hkv, p.d = kD, p.dv = kD;
  p.group = Hq / Hkv;
  p.scale = cs.scale;
  p.scale_log2 = cs.scale * 1.4426950408889634f;
  p.m.softcap_log2 = cs.softcap * 1.4426950408889634f;
  p.m.alibi = cs.slopes.empty() ? nullptr : cs.slopes.data();
  p.m.sinks = cs.sinks.empty() ? nullptr : cs.sinks.data();
  p.m.rel_base = Nk - Nq;
  p.mods = cs.softcap != 0.f || !cs.slopes.empty();
  emulate_forward<kD>(p, sab);

  StagedBackward sb = stage_backward(cp.layout(kBwdBlockM, kBwdBlockN), cp.predicate(), Nq, Nk, Hq, Hkv);
  sb.relocate_nodes(sb.blob.data());
  BwdParams bp;
  bp.f = p;  // the forward problem; bind() adds the transposed layout and schedule
  sb.bind(sb.blob.data(), &bp);
  bp.f.m.sinks = nullptr;        // the lse holds them
  bp.o_sd = 1;
  bp.dout = dout.x.data();
  bp.do_sb = dout.sb(), bp.do_sn = dout.sn(), bp.do_sh = dout.sh();
  bp.dq = dq.x.data();
  bp.dq_sb = dq.sb(), bp.dq_sn = dq.sn(), bp.dq_sh = dq.sh(), bp.dq_sd = 1;
  bp.dk = dk.x.data();
  bp.dk_sb = k.sb(), bp.dk_sn = k.sn(), bp.dk_sh = k.sh();
  bp.dv = dv.x.data();
  bp.dv_sb = v.sb(), bp.dv_sn = v.sn(), bp.dv_sh = v.sh();
  std::vector<float> acc(size_t(B * Hq * bp.nq_pad * kD), 0.f), lse2(size_t(B * Hq * bp.nq_pad)),
      delta(lse2.size());
  bp.dq_accum = acc.data(), bp.lse2 = lse2.data(), bp.delta = delta.data();
  emulate_backward<kD>(bp, sab);

  bool ok = true;
  auto expect = [&](const char* what, const std::vector<float>& got, const std::vector<double>& want) {
    double mag;
    const double e = max_err(got, want, &mag);
    const bool good = e <= 2e-5 * std::max(mag, 1.0);
    if (!good && sab == Sabotage::None)
      std::fprintf(stderr, "  %s D=%d %s: max error %.3g (max |ref| %.3g)\n", cs.name.c_str(), kD, what, e, mag);
    ok = ok && good;
  };
  expect("out", out.x, ref.out);
  bool lse_ok = true;
  for (size_t x = 0; x < lse.size(); ++x)
    lse_ok = lse_ok && (std::isinf(ref.lse[x]) ? lse[x] == -INFINITY
                                              : std::fabs(lse[x] - ref.lse[x]) <= 1e-4 * std::max(1.0, std::fabs(ref.lse[x])));
  ok = ok && lse_ok;
  expect("dq", dq.x, ref.dq);
  expect("dk", dk.x, ref.dk);
  expect("dv", dv.x, ref.dv);
  return ok;
}

}  // namespace

int main() {
  test_mappings();
  std::vector<Pattern> mixed;
  for (int64_t h = 0; h < 4; ++h)
    mixed.push_back(h % 2 ? Pattern::sliding_window(40, 0)
                          : Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}));
  const std::vector<Case> cases = {
      {"causal 300x300 GQA 4/2 B2", Pattern::causal(), 2, 300, 300, 4, 2, 0.25f, 0.f, {}, {}},
      {"window(20,5) Nq 333 > Nk 150 (empty rows)", Pattern::sliding_window(20, 5), 1, 333, 150, 2, 2, 0.3f, 0.f, {}, {}},
      {"dense 130x70 MQA 3/1", Pattern::dense(), 1, 130, 70, 3, 1, 0.2f, 0.f, {}, {}},
      {"sink(5) | window(70,3) (keeps() path)",
       Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}), 1, 261, 261, 2, 1, 0.3f, 0.f, {}, {}},
      {"per-head mix GQA 4/2", Pattern::per_head(mixed), 1, 190, 260, 4, 2, 0.3f, 0.f, {}, {}},
      {"dilated(10,0,3)", Pattern::dilated(10, 0, 3), 1, 200, 200, 1, 1, 0.3f, 0.f, {}, {}},
      {"causal odd 97x1025, negative scale", Pattern::causal(), 1, 97, 1025, 1, 1, -0.35f, 0.f, {}, {}},
      {"causal + softcap", Pattern::causal(), 1, 200, 260, 2, 1, 0.9f, 1.5f, {}, {}},
      {"window(40,3) + alibi GQA", Pattern::sliding_window(40, 3), 2, 150, 190, 4, 2, 0.3f, 0.f,
       {0.5f, 0.25f, 0.125f, 0.0625f}, {}},
      {"window(20,5) + sinks (empty rows)", Pattern::sliding_window(20, 5), 1, 333, 150, 2, 2, 0.3f, 0.f,
       {}, {0.7f, -1.2f}},
  };
  int n = 0;
  for (const Case& cs : cases) {
    check(run_case<32>(cs, Sabotage::None, 100 + n), cs.name + " D=32: float32 forward + backward");
    ++n;
  }
  check(run_case<64>(cases[0], Sabotage::None, 7), cases[0].name + " D=64");
  check(run_case<64>(cases[3], Sabotage::None, 8), cases[3].name + " D=64");
  check(run_case<128>(cases[2], Sabotage::None, 10), cases[2].name + " D=128 (the reduced build's)");
  check(run_case<128>(cases[7], Sabotage::None, 11), cases[7].name + " D=128");
  // Sabotage: the comparison catches a missing row-group reduction and a wrong dK operand.
  check(!run_case<32>(cases[0], Sabotage::LocalMax, 9), "sabotage (no row-group max) detected");
  check(!run_case<32>(cases[0], Sabotage::DkFromP, 9), "sabotage (dK from P) detected");
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_cuda_f32_logic: all checks passed (%d cases)\n", n + 6);
  return 0;
}
