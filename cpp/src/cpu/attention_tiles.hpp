// The forward and backward work of one query tile (64 rows of one head), written once over the
// vector type of simd.hpp and compiled per instruction set by isa_*.cpp.
//
// Scores are computed transposed, S^T[key][query] = K * Q^T: the K block is the broadcast
// operand (read in place when it is float32 with unit stride), the packed Q^T tile is the
// vector operand, and the softmax over keys runs down the columns with plain vertical vector
// ops (no horizontal reductions). Scores are in base 2 (Q is pre-scaled by scale * log2 e).
#pragma once

#include "cpu/gemm_tile.hpp"
#include "cpu/merge_rows.hpp"
#include "cpu/pack.hpp"

namespace spattn::cpu::SPATTN_ISA {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = __builtin_inff();
constexpr float kLazy = 8.f;  // log2 units

// Carves 64-byte aligned pieces out of a thread's scratch (or, with base null, only counts).
struct Carve {
  float* base;
  int64_t n = 0;
  float* take(int64_t count) {
    float* r = base ? base + n : nullptr;
    n += (count + 15) & ~int64_t(15);
    return r;
  }
};

// Iterates a layout row's full and partial key blocks together, in ascending order (the row
// stores ranges [lo, hi) of blocks; see layout.hpp).
struct BlockWalk {
  static constexpr int64_t kDone = INT64_MAX;
  const int32_t *flo, *fhi, *plo, *phi;
  int64_t ft, fe, pt, pe;  // current / end range of each kind
  int64_t fc, pc;          // next block of each kind (kDone: none left)
  BlockWalk(const Problem& p, int64_t h, int64_t a) {
    const int64_t r = (p.lheads == 1 ? 0 : h) * p.nqb + a;
    flo = p.full_lo;
    fhi = p.full_hi;
    plo = p.part_lo;
    phi = p.part_hi;
    ft = p.full_ptr[r];
    fe = p.full_ptr[r + 1];
    pt = p.part_ptr[r];
    pe = p.part_ptr[r + 1];
    fc = ft < fe ? flo[ft] : kDone;
    pc = pt < pe ? plo[pt] : kDone;
  }
  bool next(int64_t* c, bool* partial) {
    if (fc == kDone && pc == kDone) return false;
    if (fc < pc) {
      *c = fc;
      *partial = false;
      if (++fc >= fhi[ft]) fc = ++ft < fe ? flo[ft] : kDone;
    } else {
      *c = pc;
      *partial = true;
      if (++pc >= phi[pt]) pc = ++pt < pe ? plo[pt] : kDone;
    }
    return true;
  }
};

// Prefetches the K and V rows of the block after the walk's current one (none: nothing).
inline void prefetch_next(const Problem& p, const BlockWalk& walk, int64_t b, int64_t g) {
  BlockWalk ahead = walk;
  int64_t c;
  bool partial;
  if (!ahead.next(&c, &partial)) return;
  const int es = p.dtype == kF32 ? 4 : 2;
  const int64_t j0 = c * kTile;
  const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
  prefetch_rows(p.k, es, b, j0, nk, g, int(p.D));
  prefetch_rows(p.v, es, b, j0, nk, g, int(p.Dv));
}

// Row q's key interval of a window partial block at j0, clipped to [-1, 64] (empty when
// rlo > rhi); padding columns mq <= q < ncol keep every key.
inline void window_ranges(int mq, int ncol, int64_t j0, const int64_t* lo, const int64_t* hi,
                          int32_t* rlo, int32_t* rhi) {
  for (int q = 0; q < ncol; ++q) {
    if (q < mq) {
      rlo[q] = int32_t(max_<int64_t>(-1, min_<int64_t>(kTile, lo[q] - j0)));
      rhi[q] = int32_t(max_<int64_t>(-1, min_<int64_t>(kTile, hi[q] - j0)));
    } else {
      rlo[q] = 0;
      rhi[q] = kTile;
    }
  }
}

// What of a window partial block needs computing, from its row intervals: for key k, the
// 16-query groups [glo[k], ghi[k]) some of whose rows keep k (S^T = K Q^T); for query q < mq,
// the keys [klo[q], khi[q]) it keeps (O += P V). Everything else is masked: its score is set
// to -inf by apply_mask and its P is 0.
//
// Also, for each 16-query group g, the keys [gk0[g], gk1[g]) some row of it keeps (clipped to
// nk; empty when none): the softmax of that group runs over them only.
inline void block_work(int mq, int ncol, int nk, const int32_t* rlo, const int32_t* rhi,
                       int32_t* glo, int32_t* ghi, int32_t* klo, int32_t* khi, int32_t* gk0,
                       int32_t* gk1) {
  int32_t gmin[kTile / 16], gmax[kTile / 16];
  const int ng = ncol / 16;
  for (int g = 0; g < ng; ++g) {
    int32_t a = kTile, b = -1;
    for (int q = g * 16; q < g * 16 + 16; ++q)
      if (rlo[q] <= rhi[q]) a = min_(a, rlo[q]), b = max_(b, rhi[q]);
    gmin[g] = a;
    gmax[g] = b;
    gk0[g] = min_(max_(a, 0), nk);
    gk1[g] = max_(gk0[g], min_(b, nk - 1) + 1);
  }
  for (int k = 0; k < nk; ++k) {
    int g0 = 0, g1 = 0;
    for (int g = 0; g < ng; ++g)
      if (gmin[g] <= k && k <= gmax[g]) {
        if (g1 == 0) g0 = g;
        g1 = g + 1;
      }
    glo[k] = g0;
    ghi[k] = g1;
  }
  for (int q = 0; q < mq; ++q) {
    klo[q] = min_(max_(rlo[q], 0), nk);  // (rlo may be 64: a row whose keys lie beyond)
    khi[q] = max_(klo[q], min_(rhi[q], nk - 1) + 1);
  }
}

// Each row's kept keys of a partial block as one interval (window_ranges' form), when the
// rule can say: always for windows (from the rows' intervals lo/hi), else through
// Problem::range_fn (grid rules on blocks inside one key line). False: mask per element.
inline bool block_ranges(const Problem& p, int64_t h, int64_t i0, int mq, int ncol, int64_t j0,
                         int nk, const int64_t* lo, const int64_t* hi, int32_t* rlo, int32_t* rhi) {
  if (p.window) {
    window_ranges(mq, ncol, j0, lo, hi, rlo, rhi);
    return true;
  }
  return p.range_fn != nullptr && p.range_fn(p.mask_ctx, h, i0, mq, ncol, j0, nk, rlo, rhi);
}

// Sets masked scores of a partial block to `masked` (-inf unless the caller scales after):
// st[k * 64 + q], k < nk, q < ncol. ranged: rlo/rhi hold block_ranges().
// With gk0/gk1 (ranged only), only the keys [gk0[g], gk1[g]) of each 16-query group g are
// masked: the softmax reads no others (block_work).
inline void apply_mask(const Problem& p, bool ranged, int64_t h, int64_t i0, int mq, int ncol,
                       int64_t j0, int nk, const int32_t* rlo, const int32_t* rhi, uint8_t* mbuf,
                       float* st, float masked = -kInf, const int32_t* gk0 = nullptr,
                       const int32_t* gk1 = nullptr) {
  if (ranged) {
    for (int c = 0; c < ncol; c += W) {
      const vi vlo = loadi(rlo + c), vhi = loadi(rhi + c);
      const int kb = gk0 ? gk0[c / 16] : 0, ke = gk1 ? gk1[c / 16] : nk;
      for (int k = kb; k < ke; ++k) {
        const vi kk = splati(k);
        float* s = st + k * kTile;
        const vi bad = (kk < vlo) | (kk > vhi);
        store(s + c, bad ? splat(masked) : load(s + c));
      }
    }
  } else {
    p.mask_fn(p.mask_ctx, h, i0, mq, j0, nk, mbuf);
    for (int k = 0; k < nk; ++k)
      for (int q = 0; q < mq; ++q)
        if (!mbuf[k * kTile + q]) st[k * kTile + q] = masked;
  }
}

// ---------------------------------------------------------------------------------------------
// Score modifiers (Problem::mods): softcap, then ALiBi, on a block of scores in base-2 units.

SP_INLINE vf vabs(vf x) { return (vf)((vu)x & 0x7fffffffu); }

// 1 / x: vrcp14ps and one Newton step on AVX-512 (relative error ~1e-9 before rounding),
// else a division.
SP_INLINE vf recip(vf x) {
#if SPATTN_VEC_BYTES == 64
  const vf r = (vf)_mm512_rcp14_ps((__m512)x);
  return r * fma(-x, r, splat(2.f));
#else
  return splat(1.f) / x;
#endif
}

// st[k * 64 + q] = mod(prescale * st[k * 64 + q]) for k < nk, q < ncol, of head h, rows i0 + q,
// keys j0 + k. Runs before apply_mask, so masked scores still come out -inf. With dcap (softcap
// only), also writes the softcap's derivative 1 - tanh^2 for the backward's chain rule.
//
// softcap: c tanh(x / c) = sign(x) c (1 - e) / (1 + e) with e = exp(-2 |x| / c) (no overflow for
// any x); 1 - tanh^2 = 4 e / (1 + e)^2. ALiBi: x - slope |rel|, rel = rel_step (i - j) + rel_base.
//
// kFast (the bfloat16 forward, whose probabilities are rounded to bfloat16 right after): e from a
// degree-4 polynomial (relative error 3e-6) and 1 / (1 + e) from vrcp14ps alone (6e-5): the
// score's error stays below 1e-4 of its size, a few percent of a bfloat16 step of P.
template <bool kCap, bool kAlibi, bool kFast = false>
inline void modify_block(const Problem& p, int64_t h, int64_t i0, int ncol, int64_t j0, int nk,
                         float* st, float prescale, float* dcap) {
  const vf vpre = splat(prescale);
  const float c2 = p.softcap2;
  const vf vc = splat(c2), vk = splat(kCap ? -2.f * kLog2e / c2 : 0.f);
  const vf vslope = splat(kAlibi ? -p.alibi2[h] : 0.f);
  // rel of (row i0 + q, key j0 + k): exact in float while |rel| < 2^24.
  const float step = float(p.rel_step);
  const float r00 = float(p.rel_step * (i0 - j0) + p.rel_base);
  vf lane{};
  for (int i = 0; i < W; ++i) lane[i] = float(i) * step;
  const vf vstep = splat(step * float(W));
  for (int k = 0; k < nk; ++k) {
    float* s = st + k * kTile;
    float* dc = dcap ? dcap + k * kTile : nullptr;
    vf rel = splat(r00 - step * float(k)) + lane;
    for (int q = 0; q < ncol; q += W) {
      vf x = load(s + q) * vpre;
      if (kCap) {
        vf e, r;
#if SPATTN_VEC_BYTES == 64
        if (kFast) {
          // 2^y for y <= 0: y = n + f, f in [-1/2, 1/2]; below -125: 0.
          const vf y = vabs(x) * vk;
          const __m512 n = _mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          const vf f = y - (vf)n;
          vf pe = splat(9.6003953e-03f);
          pe = fma(pe, f, splat(5.5916894e-02f));
          pe = fma(pe, f, splat(2.4023719e-01f));
          pe = fma(pe, f, splat(6.9312197e-01f));
          pe = fma(pe, f, splat(1.f));
          const __mmask16 keep = _mm512_cmp_ps_mask((__m512)y, _mm512_set1_ps(-125.f), _CMP_NLT_UQ);
          e = (vf)_mm512_maskz_scalef_ps(keep, (__m512)pe, n);
          r = (vf)_mm512_rcp14_ps((__m512)(splat(1.f) + e));
        } else
#endif
        {
          e = exp2v(vabs(x) * vk);
          r = recip(splat(1.f) + e);
        }
        const vf ct = fma(-vc, e, vc) * r;                               // c tanh |x / c|
        x = (vf)((vu)ct | ((vu)x & 0x80000000u));                        // with x's sign
        if (dcap) store(dc + q, splat(4.f) * e * r * r);
      }
      if (kAlibi) {
        x = fma(vslope, vabs(rel), x);
        rel += vstep;
      }
      store(s + q, x);
    }
  }
}

template <bool kFast = false>
inline void modify_scores(const Problem& p, int64_t h, int64_t i0, int ncol, int64_t j0, int nk,
                          float* st, float prescale, float* dcap) {
  const bool cap = p.softcap2 != 0.f, alibi = p.alibi2 != nullptr && p.alibi2[h] != 0.f;
  if (cap && alibi) modify_block<true, true, kFast>(p, h, i0, ncol, j0, nk, st, prescale, dcap);
  else if (cap) modify_block<true, false, kFast>(p, h, i0, ncol, j0, nk, st, prescale, dcap);
  else if (alibi) modify_block<false, true>(p, h, i0, ncol, j0, nk, st, prescale, nullptr);
  else if (prescale != 1.f) modify_block<false, false>(p, h, i0, ncol, j0, nk, st, prescale, nullptr);
}

// dP^T - delta becomes (dP^T - delta) * (1 - tanh^2) + delta, so that the unchanged
// dS = P (dP - delta) is the softcap's chain rule (dcap from modify_scores).
inline void fold_softcap(int nk, int ncol, const float* dcap, const float* delta, float* dpt) {
  for (int k = 0; k < nk; ++k)
    for (int q = 0; q < ncol; q += W) {
      const vf dl = load(delta + q);
      store(dpt + k * kTile + q, fma(load(dpt + k * kTile + q) - dl, load(dcap + k * kTile + q), dl));
    }
}

// The end of a forward row: with m its reference maximum and l its sum (base 2), the sink of
// head h (if any) joins l; *mul is what O's accumulated row is multiplied by, *lse the row's
// natural-log logsumexp (-inf when l stays 0).
SP_INLINE void finish_row(const Problem& p, int64_t h, float m, float l, float* mul, float* lse) {
  float scale_o = 1.f;
  if (p.sink2 && p.sink2[h] != -kInf) {
    const float s = p.sink2[h];
    const float mf = max_(m, s);
    scale_o = m == -kInf ? 0.f : __builtin_exp2f(m - mf);
    l = l * scale_o + __builtin_exp2f(s - mf);
    m = mf;
  }
  *mul = l == 0.f ? 0.f : scale_o / l;
  *lse = l == 0.f ? -kInf : (m + __builtin_log2f(l)) * kLn2;
}

// C = A B^T-style score products (A rows in place, unit stride along k; B = a packed [K][64]
// panel), K split into chunks of kc so that each chunk's B rows stay in L1d (kc from
// cpu_blocking()); the first chunk writes C, the others add to it.
inline void gemm_chunked(int M, int N, int K, int kc, const float* A, int64_t sam,
                         const float* B, int64_t ldb, float* C, int64_t ldc) {
  if (kc >= K) return gemm<false>(M, N, K, A, sam, 1, B, ldb, C, ldc);
  for (int k0 = 0; k0 < K; k0 += kc) {
    const int kk = min_(kc, K - k0);
    if (k0 == 0) gemm<false>(M, N, kk, A, sam, 1, B, ldb, C, ldc);
    else gemm<true>(M, N, kk, A + k0, sam, 1, B + k0 * ldb, ldb, C, ldc);
  }
}

inline void gemm_cols_chunked(int M, int K, int kc, const float* A, int64_t sam, const float* B,
                              int64_t ldb, float* C, int64_t ldc, const int32_t* glo,
                              const int32_t* ghi) {
  if (kc >= K) return gemm_cols<false>(M, K, A, sam, 1, B, ldb, C, ldc, glo, ghi);
  for (int k0 = 0; k0 < K; k0 += kc) {
    const int kk = min_(kc, K - k0);
    if (k0 == 0) gemm_cols<false>(M, kk, A, sam, 1, B, ldb, C, ldc, glo, ghi);
    else gemm_cols<true>(M, kk, A + k0, sam, 1, B + k0 * ldb, ldb, C, ldc, glo, ghi);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

struct FwdBufs {
  float *qt, *o, *st, *kp, *vp, *m, *l, *alpha, *tmp;
  int32_t *rlo, *rhi, *glo, *ghi, *klo, *khi, *gk0, *gk1;
  uint8_t* mask;
  int64_t total;
};

inline FwdBufs fwd_bufs(const Problem& p, float* base) {
  Carve c{base};
  FwdBufs b;
  b.qt = c.take(p.D * kTile);
  b.o = c.take(kTile * p.Dvp);
  b.st = c.take(kTile * kTile);
  b.kp = c.take(kTile * p.Dp);
  b.vp = c.take(kTile * p.Dvp);
  b.m = c.take(kTile);
  b.l = c.take(kTile);
  b.alpha = c.take(kTile);
  b.tmp = c.take(max_(p.Dp, p.Dvp));
  b.rlo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.rhi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.glo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.ghi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.klo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.khi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.gk0 = reinterpret_cast<int32_t*>(c.take(kTile / 16));
  b.gk1 = reinterpret_cast<int32_t*>(c.take(kTile / 16));
  b.mask = reinterpret_cast<uint8_t*>(c.take(kTile * kTile / 4));
  b.total = c.n;
  return b;
}

inline int64_t fwd_ws_floats(const Problem& p) { return fwd_bufs(p, nullptr).total; }

// Online softmax of one block's scores S^T (nk keys x ncol queries in w.st) down the columns;
// st becomes P^T and the rows of O (mq of them) are rescaled when their reference maximum moves.
// The reference maximum m only moves when a score exceeds it by more than kLazy (P stays
// <= 2^kLazy, far from overflow), so O is rescaled rarely; the result is exact either way since
// O and l share m. With gk0/gk1, a 16-query group g's softmax runs over the keys
// [gk0[g], gk1[g]) only (those some row of it keeps); its P is 0 elsewhere (written, since
// O += P V may read across groups within one micro tile), unless zero_rest is false (the
// caller's P V reads each row only inside its group's span).
inline void online_softmax(const FwdBufs& w, int ncol, int nk, int mq, int Dvp, const int32_t* gk0,
                           const int32_t* gk1, bool first, bool zero_rest = true) {
  bool rescale = false;
  for (int q = 0; q < ncol; q += W) {
    const int kb = gk0 ? gk0[q / 16] : 0, ke = gk1 ? gk1[q / 16] : nk;
    const vf m_old = load(w.m + q);
    vf mx = splat(-kInf);
    for (int k = kb; k < ke; ++k) mx = vmax(mx, load(w.st + k * kTile + q));
    const vf m_new = mx > m_old + splat(kLazy) ? mx : m_old;
    const vf mu = m_new == splat(-kInf) ? vf{} : m_new;  // no key yet: exp2(-inf) = 0
    const vf alpha = exp2v(m_old - mu);
    vf sum{};
    if (zero_rest) {
      for (int k = 0; k < kb; ++k) store(w.st + k * kTile + q, vf{});
      for (int k = ke; k < nk; ++k) store(w.st + k * kTile + q, vf{});
    }
    for (int k = kb; k < ke; ++k) {
      const vf e = exp2v(load(w.st + k * kTile + q) - mu);
      store(w.st + k * kTile + q, e);
      sum += e;
    }
    store(w.l + q, load(w.l + q) * alpha + sum);
    store(w.m + q, m_new);
    store(w.alpha + q, alpha);
    for (int i = 0; i < W; ++i) rescale |= alpha[i] != 1.f;
  }
  if (rescale && !first) {
    for (int q = 0; q < mq; ++q) {
      const float al = w.alpha[q];
      if (al == 1.f) continue;
      float* o = w.o + q * Dvp;
      for (int d = 0; d < Dvp; d += W) store(o + d, load(o + d) * al);
    }
  }
}

inline void fwd_tile(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                     const int64_t* hi, float* ws) {
  const FwdBufs w = fwd_bufs(p, ws);
  const int64_t i0 = a * kTile;
  const int mq = int(min_<int64_t>(kTile, p.Nq - i0));
  const int ncol = (mq + 15) & ~15;
  const int D = int(p.D), Dv = int(p.Dv), Dp = int(p.Dp), Dvp = int(p.Dvp);
  const int64_t g = h / p.group;
  const bool k_direct = p.dtype == kF32 && p.k.s[3] == 1;
  const bool v_direct = p.dtype == kF32 && p.v.s[3] == 1 && Dv == Dvp;

  BlockWalk walk(p, h, a);
  prefetch_next(p, walk, b, g);
  pack_rows_t(p.q, p.dtype, b, i0, mq, ncol, h, D, p.scale2, w.tmp, w.qt);
  for (int i = 0; i < mq * Dvp; ++i) w.o[i] = 0.f;
  for (int q = 0; q < kTile; ++q) {
    w.m[q] = -kInf;
    w.l[q] = 0.f;
  }

  int64_t c;
  bool partial, first = true;
  while (walk.next(&c, &partial)) {
    prefetch_next(p, walk, b, g);
    const int64_t j0 = c * kTile;
    const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
    // S^T = K Q^T
    const float* ka = k_direct ? reinterpret_cast<const float*>(at(p.k, 4, b, j0, g)) : w.kp;
    const int64_t lda = k_direct ? p.k.s[1] : Dp;
    if (!k_direct) pack_rows(p.k, p.dtype, b, j0, nk, g, D, Dp, 1.f, w.kp);
    // A partial block whose rows keep intervals computes only the scores and terms they keep.
    const bool ranged = partial && block_ranges(p, h, i0, mq, ncol, j0, nk, lo, hi, w.rlo, w.rhi);
    if (ranged) {
      block_work(mq, ncol, nk, w.rlo, w.rhi, w.glo, w.ghi, w.klo, w.khi, w.gk0, w.gk1);
      gemm_cols_chunked(nk, D, int(p.kc), ka, lda, w.qt, kTile, w.st, kTile, w.glo, w.ghi);
    } else {
      gemm_chunked(nk, ncol, D, int(p.kc), ka, lda, w.qt, kTile, w.st, kTile);
    }
    if (p.mods) modify_scores(p, h, i0, ncol, j0, nk, w.st, 1.f, nullptr);
    if (partial)
      apply_mask(p, ranged, h, i0, mq, ncol, j0, nk, w.rlo, w.rhi, w.mask, w.st, -kInf,
                 ranged ? w.gk0 : nullptr, ranged ? w.gk1 : nullptr);

    online_softmax(w, ncol, nk, mq, Dvp, ranged ? w.gk0 : nullptr, ranged ? w.gk1 : nullptr, first);
    first = false;
    // O += P V
    const float* vb = v_direct ? reinterpret_cast<const float*>(at(p.v, 4, b, j0, g)) : w.vp;
    const int64_t ldb = v_direct ? p.v.s[1] : Dvp;
    if (!v_direct) pack_rows(p.v, p.dtype, b, j0, nk, g, Dv, Dvp, 1.f, w.vp);
    if (ranged)
      gemm_krange<true>(mq, Dvp, w.st, 1, kTile, vb, ldb, w.o, Dvp, w.klo, w.khi);
    else
      gemm<true>(mq, Dvp, nk, w.st, 1, kTile, vb, ldb, w.o, Dvp);
  }

  const int es = p.dtype == kF32 ? 4 : 2;
  for (int q = 0; q < mq; ++q) {
    float mul, lse;
    finish_row(p, h, w.m[q], w.l[q], &mul, &lse);
    store_row(at_mut(p.o, es, b, i0 + q, h), p.dtype, p.o.s[3], Dv, w.o + q * Dvp, mul);
    if (p.lse) p.lse[b * p.lse_s[0] + h * p.lse_s[1] + (i0 + q) * p.lse_s[2]] = lse;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: P = exp2(S - lse2), dP^T = V dO^T, dS = P (dP - delta),
// dV += P^T dO, dK += dS^T Q (scale applied at the end), dQ += dS K (times scale).

struct BwdBufs {
  float *qt, *qn, *don, *dot, *dq, *kp, *vp, *st, *dpt, *dcap, *delta, *lse2, *tmp;
  int32_t *rlo, *rhi;
  uint8_t* mask;
  int64_t total;
};

inline BwdBufs bwd_bufs(const Problem& p, float* base) {
  Carve c{base};
  BwdBufs b;
  b.qt = c.take(p.D * kTile);
  b.qn = c.take(kTile * p.Dp);
  b.don = c.take(kTile * p.Dvp);
  b.dot = c.take(p.Dv * kTile);
  b.dq = c.take(kTile * p.Dp);
  b.kp = c.take(kTile * p.Dp);
  b.vp = c.take(kTile * p.Dvp);
  b.st = c.take(kTile * kTile);
  b.dpt = c.take(kTile * kTile);
  b.dcap = c.take(p.softcap2 != 0.f ? kTile * kTile : 0);  // softcap's derivative
  b.delta = c.take(kTile);
  b.lse2 = c.take(kTile);
  b.tmp = c.take(max_(p.Dp, p.Dvp));
  b.rlo = reinterpret_cast<int32_t*>(c.take(kTile));
  b.rhi = reinterpret_cast<int32_t*>(c.take(kTile));
  b.mask = reinterpret_cast<uint8_t*>(c.take(kTile * kTile / 4));
  b.total = c.n;
  return b;
}

inline int64_t bwd_ws_floats(const Problem& p) { return bwd_bufs(p, nullptr).total; }

// The backward's first two products for key block c of the tile (rows i0.., mq of them):
// S^T (masked on partial blocks) into w.st and dP^T into w.dpt. Returns K's rows (read in place
// for float32 with unit stride, else packed into w.kp) and their stride, for dQ += dS K.
struct BwdBlock {
  const float* kb;
  int64_t ldk;
  int nk;
};
inline BwdBlock bwd_scores(const Problem& p, const BwdBufs& w, int64_t b, int64_t h, int64_t i0,
                           int mq, int ncol, int64_t c, bool partial, const int64_t* lo,
                           const int64_t* hi) {
  const int D = int(p.D), Dv = int(p.Dv), Dp = int(p.Dp), Dvp = int(p.Dvp);
  const int64_t g = h / p.group, j0 = c * kTile;
  const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
  const bool k_direct = p.dtype == kF32 && p.k.s[3] == 1 && D == Dp;
  const bool v_direct = p.dtype == kF32 && p.v.s[3] == 1;
  const float* kb = k_direct ? reinterpret_cast<const float*>(at(p.k, 4, b, j0, g)) : w.kp;
  const int64_t ldk = k_direct ? p.k.s[1] : Dp;
  if (!k_direct) pack_rows(p.k, p.dtype, b, j0, nk, g, D, Dp, 1.f, w.kp);
  const float* vb = v_direct ? reinterpret_cast<const float*>(at(p.v, 4, b, j0, g)) : w.vp;
  const int64_t ldv = v_direct ? p.v.s[1] : Dvp;
  if (!v_direct) pack_rows(p.v, p.dtype, b, j0, nk, g, Dv, Dvp, 1.f, w.vp);

  gemm_chunked(nk, ncol, D, int(p.kc), kb, ldk, w.qt, kTile, w.st, kTile);  // S^T
  if (p.mods) modify_scores(p, h, i0, ncol, j0, nk, w.st, 1.f, w.dcap);
  if (partial) {
    const bool ranged = block_ranges(p, h, i0, mq, ncol, j0, nk, lo, hi, w.rlo, w.rhi);
    apply_mask(p, ranged, h, i0, mq, ncol, j0, nk, w.rlo, w.rhi, w.mask, w.st);
  }
  gemm_chunked(nk, ncol, Dv, int(p.kc), vb, ldv, w.dot, kTile, w.dpt, kTile);  // dP^T
  return {kb, ldk, nk};
}

// delta_i = rowsum(dO_i * O_i) from `out` is exact only if out is: rounded to float16/bfloat16
// it can lose every digit when a row's values nearly cancel (dS = P (dP - delta) then carries the
// error). For low-precision inputs delta is recomputed as sum_j P_ij dP_ij, in float32, with one
// more pass over the row's blocks (two of the backward's five products again).
inline void exact_delta(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                        const int64_t* hi, const BwdBufs& w, int mq, int ncol) {
  for (int q = 0; q < ncol; ++q) w.delta[q] = 0.f;
  BlockWalk walk(p, h, a);
  int64_t c;
  bool partial;
  while (walk.next(&c, &partial)) {
    const BwdBlock blk = bwd_scores(p, w, b, h, a * kTile, mq, ncol, c, partial, lo, hi);
    for (int k = 0; k < blk.nk; ++k)
      for (int q = 0; q < ncol; q += W) {
        const vf pr = exp2v(load(w.st + k * kTile + q) - load(w.lse2 + q));
        store(w.delta + q, fma(pr, load(w.dpt + k * kTile + q), load(w.delta + q)));
      }
  }
}

inline void bwd_tile(const Problem& p, int64_t b, int64_t h, int64_t a, const int64_t* lo,
                     const int64_t* hi, float* dk_acc, float* dv_acc, int64_t kb_lo, float* ws) {
  const BwdBufs w = bwd_bufs(p, ws);
  const int64_t i0 = a * kTile;
  const int mq = int(min_<int64_t>(kTile, p.Nq - i0));
  const int ncol = (mq + 15) & ~15;
  const int D = int(p.D), Dv = int(p.Dv), Dp = int(p.Dp), Dvp = int(p.Dvp);
  const int es = p.dtype == kF32 ? 4 : 2;

  pack_rows(p.q, p.dtype, b, i0, mq, h, D, Dp, 1.f, w.qn);
  pack_rows(p.dout, p.dtype, b, i0, mq, h, Dv, Dvp, 1.f, w.don);
  for (int d = 0; d < D; ++d) {
    for (int q = 0; q < mq; ++q) w.qt[d * kTile + q] = w.qn[q * Dp + d] * p.scale2;
    for (int q = mq; q < ncol; ++q) w.qt[d * kTile + q] = 0.f;
  }
  for (int d = 0; d < Dv; ++d) {
    for (int q = 0; q < mq; ++q) w.dot[d * kTile + q] = w.don[q * Dvp + d];
    for (int q = mq; q < ncol; ++q) w.dot[d * kTile + q] = 0.f;
  }
  for (int q = 0; q < ncol; ++q) {
    w.delta[q] = 0.f;
    w.lse2[q] = kInf;  // P = 0 for padding columns and rows that see no key
    if (q >= mq) continue;
    load_row(at(p.o, es, b, i0 + q, h), p.dtype, p.o.s[3], Dv, 1.f, w.tmp);
    float s = 0.f;
    for (int d = 0; d < Dv; ++d) s += w.don[q * Dvp + d] * w.tmp[d];
    w.delta[q] = s;
    const float l = p.lse[b * p.lse_s[0] + h * p.lse_s[1] + (i0 + q) * p.lse_s[2]];
    if (l != -kInf) w.lse2[q] = l * kLog2e;
  }
  if (p.exact_delta) exact_delta(p, b, h, a, lo, hi, w, mq, ncol);
  for (int i = 0; i < mq * Dp; ++i) w.dq[i] = 0.f;

  BlockWalk walk(p, h, a);
  int64_t c;
  bool partial;
  while (walk.next(&c, &partial)) {
    const BwdBlock blk = bwd_scores(p, w, b, h, i0, mq, ncol, c, partial, lo, hi);
    const int nk = blk.nk;
    if (p.softcap2 != 0.f) fold_softcap(nk, ncol, w.dcap, w.delta, w.dpt);
    for (int k = 0; k < nk; ++k) {
      float* s = w.st + k * kTile;
      float* dp = w.dpt + k * kTile;
      for (int q = 0; q < ncol; q += W) {
        const vf pr = exp2v(load(s + q) - load(w.lse2 + q));
        store(s + q, pr);
        store(dp + q, pr * (load(dp + q) - load(w.delta + q)));  // dS^T
      }
    }
    float* dvb = dv_acc + (c - kb_lo) * kTile * Dvp;
    float* dkb = dk_acc + (c - kb_lo) * kTile * Dp;
    gemm<true>(nk, Dvp, mq, w.st, kTile, 1, w.don, Dvp, dvb, Dvp);   // dV += P^T dO
    gemm<true>(nk, Dp, mq, w.dpt, kTile, 1, w.qn, Dp, dkb, Dp);      // dK += dS^T Q
    gemm<true>(mq, Dp, nk, w.dpt, 1, kTile, blk.kb, blk.ldk, w.dq, Dp);  // dQ += dS K
  }
  for (int q = 0; q < mq; ++q)
    store_row(at_mut(p.dq, es, b, i0 + q, h), p.dtype, p.dq.s[3], D, w.dq + q * Dp, p.scale);
}

inline void bwd_store(const Problem& p, int64_t b, int64_t g, int64_t c,
                      const float* const* dk_src, const float* const* dv_src, int nsrc) {
  const int64_t j0 = c * kTile;
  const int nk = int(min_<int64_t>(kTile, p.Nk - j0));
  const int es = p.dtype == kF32 ? 4 : 2;
  constexpr int kChunk = 256;
  alignas(64) float acc[kChunk];
  for (int pass = 0; pass < 2; ++pass) {
    const T4& t = pass == 0 ? p.dk : p.dv;
    const float* const* src = pass == 0 ? dk_src : dv_src;
    const int cols = int(pass == 0 ? p.D : p.Dv);
    const int ld = int(pass == 0 ? p.Dp : p.Dvp);
    const float mul = pass == 0 ? p.scale : 1.f;
    for (int k = 0; k < nk; ++k) {
      char* row = at_mut(t, es, b, j0 + k, g);
      for (int d0 = 0; d0 < cols; d0 += kChunk) {
        const int n = min_(kChunk, ld - d0);  // a multiple of 16
        for (int d = 0; d < n; d += W) {
          vf s{};
          for (int i = 0; i < nsrc; ++i) s += load(src[i] + k * ld + d0 + d);
          store(acc + d, s);
        }
        store_row(row + d0 * t.s[3] * es, p.dtype, t.s[3], min_(kChunk, cols - d0), acc, mul);
      }
    }
  }
}

}  // namespace spattn::cpu::SPATTN_ISA

#include "cpu/attention_grid.hpp"

// The table of one ISA translation unit.
#define SPATTN_DEFINE_KERNEL_TABLE(getter, label)                                           \
  namespace spattn::cpu {                                                                   \
  const KernelTable* getter() {                                                             \
    static const KernelTable t{label,                 SPATTN_ISA::fwd_ws_floats,            \
                               SPATTN_ISA::bwd_ws_floats, SPATTN_ISA::fwd_tile,             \
                               SPATTN_ISA::bwd_tile,  SPATTN_ISA::bwd_store,                \
                               SPATTN_ISA::fwd_grid_ws_floats,                              \
                               SPATTN_ISA::fwd_grid_tile,                                   \
                               SPATTN_ISA::weighted_sum_row};                               \
    return &t;                                                                              \
  }                                                                                         \
  }
