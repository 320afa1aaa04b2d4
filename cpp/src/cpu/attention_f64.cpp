// The float64 path of the CPU backend (attention_f64.hpp). Every row is computed exactly as the
// definition reads, in float64: scores s_j = scale * q . k_j over the kept keys, then the score
// modifiers (docs/score_modifiers.md: s_j = c tanh(s_j / c), then s_j -= slope_h |rel|), m = the
// maximum of the s_j and the sink logit, l = sum exp(s_j - m) + exp(sink_h - m), out = sum
// exp(s_j - m) v_j / l, lse = m + log l; a row that keeps no key gets out = 0 and lse = sink_h
// (-inf without sinks), as in every other path. The backward recomputes P_j = exp(s_j - lse)
// and uses delta = dO . O (float64 outputs: exact enough, and correct for a union part, whose
// rows do not hold every key), dS_j = P_j (dP_j - delta) times the softcap's derivative
// 1 - tanh^2; the sinks act there only through lse, and their own gradient is sink_grad_f64's.
#include "cpu/attention_f64.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/common.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

namespace {

// Row j of head h of batch element b of a [B, N, H, D] float64 tensor, through a page table
// when paged (decode caches: [pages, page_size, H, D], page = table[b, j / page_size]).
struct Rows64 {
  const double* base = nullptr;
  int64_t s[4] = {0, 0, 0, 0};
  const TensorView* table = nullptr;  // paged when set
  int64_t page_size = 0;

  static Rows64 of(const TensorView& t) {
    Rows64 r;
    r.base = t.ptr<const double>();
    for (int i = 0; i < 4; ++i) r.s[i] = t.strides[i];
    return r;
  }
  const double* row(int64_t b, int64_t j, int64_t h) const {
    if (!table) return base + b * s[0] + j * s[1] + h * s[2];
    const int64_t off = b * table->strides[0] + (j / page_size) * table->strides[1];
    const int64_t page = table->dtype.bits == 64 ? table->ptr<const int64_t>()[off]
                                                 : int64_t(table->ptr<const int32_t>()[off]);
    return base + page * s[0] + (j % page_size) * s[1] + h * s[2];
  }
};

double* out_row(const TensorView& t, int64_t b, int64_t i, int64_t h) {
  return t.ptr<double>() + b * t.strides[0] + i * t.strides[1] + h * t.strides[2];
}

double& lse_at(const TensorView& t, int64_t b, int64_t h, int64_t i) {
  return t.ptr<double>()[b * t.strides[0] + h * t.strides[1] + i * t.strides[2]];
}

// Calls f(j) for every key j that row i of head h keeps, in ascending order: the keys of layout
// row r's full blocks, and those of its partial blocks that keeps() accepts.
template <class F>
void for_each_kept(const BlockLayout& L, int64_t r, int64_t nk, const Predicate& pred, int64_t h,
                   int64_t i, F&& f) {
  int64_t t = L.full_ptr[size_t(r)], te = L.full_ptr[size_t(r + 1)];
  int64_t u = L.part_ptr[size_t(r)], ue = L.part_ptr[size_t(r + 1)];
  while (t < te || u < ue) {  // the two range lists merged by their first block
    const bool full = u >= ue || (t < te && L.full_lo[size_t(t)] < L.part_lo[size_t(u)]);
    const int64_t lo = full ? L.full_lo[size_t(t)] : L.part_lo[size_t(u)];
    const int64_t hi = full ? L.full_hi[size_t(t)] : L.part_hi[size_t(u)];
    (full ? t : u)++;
    const int64_t j1 = std::min(hi * L.bk, nk);
    for (int64_t j = std::max<int64_t>(lo, 0) * L.bk; j < j1; ++j)
      if (full || keeps(pred, h, i, j)) f(j);
  }
}

double dot(const double* a, int64_t sa, const double* b, int64_t sb, int64_t n) {
  double x = 0.0;
  for (int64_t d = 0; d < n; ++d) x += a[d * sa] * b[d * sb];
  return x;
}

// The score modifiers of one problem in float64 (backend::ScoreMods: float64 inputs carry
// float64 slopes and sinks), with ALiBi's rel of row i and key j = step (i - j) + base.
struct Mods64 {
  double cap = 0.0;  // 0: no softcap
  const double* slopes = nullptr;
  const double* sinks = nullptr;
  int64_t slope_stride = 1, sink_stride = 1, step = 1, base = 0;

  // The problem's own rel (base Nk - Nq) unless the planner shifted it (a residue class view).
  static Mods64 of(const backend::ScoreMods& m, int64_t nq, int64_t nk) {
    Mods64 r;
    r.cap = m.softcap64;
    r.slopes = m.alibi64;
    r.sinks = m.sinks64;
    r.slope_stride = m.alibi_stride;
    r.sink_stride = m.sinks_stride;
    r.step = m.rel_shifted ? m.rel_step : 1;
    r.base = m.rel_shifted ? m.rel_base : nk - nq;
    return r;
  }
  double sink(int64_t h) const { return sinks ? sinks[h * sink_stride] : -INFINITY; }
  // The modified score of the scaled score x; *dcap gets d(modified)/dx (the softcap's
  // derivative 1 - tanh^2; 1 without it).
  double apply(double x, int64_t h, int64_t i, int64_t j, double* dcap) const {
    *dcap = 1.0;
    if (cap != 0.0) {
      const double t = std::tanh(x / cap);
      x = cap * t;
      *dcap = 1.0 - t * t;
    }
    if (slopes) x -= slopes[h * slope_stride] * double(std::llabs(step * (i - j) + base));
    return x;
  }
};

// The kept keys of one row, their modified scores and the softcap's derivative at each
// (scratch reused across the rows of a task).
struct RowScores {
  std::vector<int64_t> j;
  std::vector<double> s, dcap;
};

// Fills rs with the kept keys of row i (query q) and their scores; returns their maximum.
double score_row(const BlockLayout& L, int64_t r, int64_t nk, const Predicate& pred, int64_t h,
                 int64_t i, const double* q, int64_t q_sd, const Rows64& K, int64_t b, int64_t g,
                 int64_t D, double scale, const Mods64& mods, RowScores* rs) {
  rs->j.clear();
  rs->s.clear();
  rs->dcap.clear();
  double m = -INFINITY;
  for_each_kept(L, r, nk, pred, h, i, [&](int64_t j) {
    double dcap;
    const double x = mods.apply(scale * dot(q, q_sd, K.row(b, j, g), K.s[3], D), h, i, j, &dcap);
    rs->j.push_back(j);
    rs->s.push_back(x);
    rs->dcap.push_back(dcap);
    m = std::max(m, x);
  });
  return m;
}

// out (stride o_sd) and the returned lse of one row from its scores (maximum m) and its sink
// logit (-inf: none), which adds to the denominator only.
double softmax_row(const RowScores& rs, double m, double sink, const Rows64& V, int64_t b,
                   int64_t g, int64_t Dv, double* out, int64_t o_sd, std::vector<double>* acc) {
  acc->assign(size_t(Dv), 0.0);
  m = std::max(m, sink);
  if (m == -INFINITY) {  // no key and no sink
    for (int64_t x = 0; x < Dv; ++x) out[x * o_sd] = 0.0;
    return -INFINITY;
  }
  double l = std::exp(sink - m);
  for (size_t t = 0; t < rs.j.size(); ++t) {
    const double p = std::exp(rs.s[t] - m);
    l += p;
    const double* v = V.row(b, rs.j[t], g);
    for (int64_t x = 0; x < Dv; ++x) (*acc)[size_t(x)] += p * v[x * V.s[3]];
  }
  for (int64_t x = 0; x < Dv; ++x) out[x * o_sd] = (*acc)[size_t(x)] / l;
  return m + std::log(l);
}

}  // namespace

void forward_f64(const ForwardArgs& a) {
  const BlockLayout& L = *a.layout;
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t nk = a.k.shape[1], hkv = a.k.shape[2], Dv = a.v.shape[3];
  if (B == 0 || nq == 0 || hkv == 0) return;
  const int64_t group = hq / hkv, nqb = (nq + L.bq - 1) / L.bq;
  const Rows64 Q = Rows64::of(a.q), K = Rows64::of(a.k), V = Rows64::of(a.v);
  const Predicate& pred = a.pred;
  const Mods64 mods = Mods64::of(a.mods, nq, nk);
  // Tasks (b, query block, head), heads fastest as in forward.cpp.
  parallel_for(B * nqb * hq, [&](int64_t task, int) {
    const int64_t h = task % hq, qb = (task / hq) % nqb, b = task / (hq * nqb);
    const int64_t g = h / group, r = L.row(h, qb);
    RowScores rs;
    std::vector<double> acc;
    for (int64_t i = qb * L.bq; i < std::min(nq, (qb + 1) * L.bq); ++i) {
      const double m = score_row(L, r, nk, pred, h, i, Q.row(b, i, h), Q.s[3], K, b, g, D,
                                 a.scale, mods, &rs);
      const double lse = softmax_row(rs, m, mods.sink(h), V, b, g, Dv, out_row(a.out, b, i, h),
                                     a.out.strides[3], &acc);
      if (a.lse.data) lse_at(a.lse, b, h, i) = lse;
    }
  });
}

// One task per (batch element, kv head): it owns the dq rows of the kv head's query heads and
// accumulates dK, dV of its keys privately, so nothing is shared and the sums run in one order
// whatever the thread count.
void backward_f64(const BackwardArgs& a) {
  const BlockLayout& L = *a.layout;
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t nk = a.k.shape[1], hkv = a.k.shape[2], Dv = a.v.shape[3];
  if (B == 0 || hkv == 0) return;
  const int64_t group = hq / hkv, nqb = (nq + L.bq - 1) / L.bq;
  const Rows64 Q = Rows64::of(a.q), K = Rows64::of(a.k), V = Rows64::of(a.v);
  const Rows64 O = Rows64::of(a.out), dO = Rows64::of(a.dout);
  const double scale = a.scale;
  const Predicate& pred = a.pred;
  const Mods64 mods = Mods64::of(a.mods, nq, nk);  // the sinks act through lse only
  parallel_for(B * hkv, [&](int64_t task, int) {
    const int64_t g = task % hkv, b = task / hkv;
    std::vector<double> dk(static_cast<size_t>(nk * D), 0.0), dv(static_cast<size_t>(nk * Dv), 0.0);
    std::vector<double> dq(static_cast<size_t>(D));
    RowScores rs;
    for (int64_t h = g * group; h < (g + 1) * group; ++h)
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int64_t r = L.row(h, qb);
        for (int64_t i = qb * L.bq; i < std::min(nq, (qb + 1) * L.bq); ++i) {
          const double* q = Q.row(b, i, h);
          const double* dout = dO.row(b, i, h);
          score_row(L, r, nk, pred, h, i, q, Q.s[3], K, b, g, D, scale, mods, &rs);
          const double lse = lse_at(a.lse, b, h, i);
          const double delta = dot(dout, dO.s[3], O.row(b, i, h), O.s[3], Dv);
          std::fill(dq.begin(), dq.end(), 0.0);
          for (size_t t = 0; t < rs.j.size(); ++t) {
            const int64_t j = rs.j[t];
            const double p = std::exp(rs.s[t] - lse);
            const double* k = K.row(b, j, g);
            const double* v = V.row(b, j, g);
            const double ds = p * (dot(dout, dO.s[3], v, V.s[3], Dv) - delta) * rs.dcap[t];
            double* dkj = dk.data() + j * D;
            double* dvj = dv.data() + j * Dv;
            for (int64_t x = 0; x < D; ++x) {
              dq[size_t(x)] += ds * k[x * K.s[3]];
              dkj[x] += ds * q[x * Q.s[3]];
            }
            for (int64_t x = 0; x < Dv; ++x) dvj[x] += p * dout[x * dO.s[3]];
          }
          double* dst = out_row(a.dq, b, i, h);
          for (int64_t x = 0; x < D; ++x) dst[x * a.dq.strides[3]] = scale * dq[size_t(x)];
        }
      }
    for (int64_t j = 0; j < nk; ++j) {
      double* dkr = out_row(a.dk, b, j, g);
      double* dvr = out_row(a.dv, b, j, g);
      for (int64_t x = 0; x < D; ++x) dkr[x * a.dk.strides[3]] = scale * dk[size_t(j * D + x)];
      for (int64_t x = 0; x < Dv; ++x) dvr[x * a.dv.strides[3]] = dv[size_t(j * Dv + x)];
    }
  });
}

void decode_f64(const DecodeArgs& a, const std::vector<DecodeSeqF64>& seqs) {
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t hkv = a.k.shape[2], Dv = a.v.shape[3], group = hq / hkv;
  Rows64 Q = Rows64::of(a.q), K = Rows64::of(a.k), V = Rows64::of(a.v);
  if (a.paged) {
    K.table = V.table = &a.table;
    K.page_size = V.page_size = a.k.shape[1];
  }
  // Tasks (sequence, query head): the rows of one head are few (Nq <= 64).
  parallel_for(B * hq, [&](int64_t task, int) {
    const int64_t h = task % hq, b = task / hq, g = h / group;
    const DecodeSeqF64& s = seqs[size_t(b)];
    const Mods64 mods = Mods64::of(a.mods, nq, s.nk);  // rel: the sequence's own
    RowScores rs;
    std::vector<double> acc;
    for (int64_t i = 0; i < nq; ++i) {
      double m = -INFINITY;
      rs.j.clear();
      rs.s.clear();
      if (s.nk > 0)
        m = score_row(*s.layout, s.layout->row(h, 0), s.nk, s.pred, h, i, Q.row(b, i, h), Q.s[3],
                      K, b, g, D, a.scale, mods, &rs);
      const double lse = softmax_row(rs, m, mods.sink(h), V, b, g, Dv, out_row(a.out, b, i, h),
                                     a.out.strides[3], &acc);
      if (a.lse.data) lse_at(a.lse, b, h, i) = lse;
    }
  });
}

void sink_grad_f64(const TensorView& dout, const TensorView& out, const TensorView& lse,
                   const backend::ScoreMods& mods, const TensorView& dsinks) {
  const int64_t B = out.shape[0], N = out.shape[1], H = out.shape[2], Dv = out.shape[3];
  const Rows64 O = Rows64::of(out), dO = Rows64::of(dout);
  // One task per head: its sum over (b, i) in one fixed order (deterministic).
  parallel_for(H, [&](int64_t h, int) {
    const double sink = mods.sinks64[h * mods.sinks_stride];
    double acc = 0.0;
    if (sink != -INFINITY)  // no sink: no gradient
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < N; ++i) {
          const double p = std::exp(sink - lse_at(lse, b, h, i));
          if (p != 0.0) acc -= p * dot(dO.row(b, i, h), dO.s[3], O.row(b, i, h), O.s[3], Dv);
        }
    dsinks.ptr<double>()[h * dsinks.strides[0]] = acc;
  });
}

void merge_f64(const MergeArgs& a) {
  const int64_t B = a.out.shape[0], N = a.out.shape[1], H = a.out.shape[2], Dv = a.out.shape[3];
  const int K = a.nparts;
  parallel_for(B * N, [&](int64_t task, int) {
    const int64_t b = task / N, i = task % N;
    std::vector<double> w(static_cast<size_t>(K));
    for (int64_t h = 0; h < H; ++h) {
      double m = -INFINITY;
      for (int k = 0; k < K; ++k) m = std::max(m, w[size_t(k)] = lse_at(a.lses[k], b, h, i));
      double total = 0.0;
      for (int k = 0; k < K; ++k) total += (w[size_t(k)] = m == -INFINITY ? 0.0 : std::exp(w[size_t(k)] - m));
      double* dst = out_row(a.out, b, i, h);
      for (int64_t x = 0; x < Dv; ++x) {
        double y = 0.0;
        for (int k = 0; k < K; ++k)
          if (w[size_t(k)] != 0.0)  // a part that saw nothing adds nothing (its row may be 0)
            y += w[size_t(k)] * out_row(a.outs[k], b, i, h)[x * a.outs[k].strides[3]];
        dst[x * a.out.strides[3]] = total == 0.0 ? 0.0 : y / total;
      }
      if (a.lse.data) lse_at(a.lse, b, h, i) = total == 0.0 ? -INFINITY : m + std::log(total);
    }
  });
}

void sum_f64(const TensorView& dst, const TensorView* srcs, int n) {
  const int64_t B = dst.shape[0], N = dst.shape[1], H = dst.shape[2], D = dst.shape[3];
  parallel_for(B * N, [&](int64_t task, int) {
    const int64_t b = task / N, i = task % N;
    for (int64_t h = 0; h < H; ++h) {
      double* d = out_row(dst, b, i, h);
      for (int64_t x = 0; x < D; ++x) {
        double y = 0.0;
        for (int k = 0; k < n; ++k) y += out_row(srcs[k], b, i, h)[x * srcs[k].strides[3]];
        d[x * dst.strides[3]] = y;
      }
    }
  });
}

}  // namespace spattn::cpu
