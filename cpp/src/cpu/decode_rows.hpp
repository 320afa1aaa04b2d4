// The decode kernel: one split-K chunk of one (sequence, kv head) against the G query heads
// and nq queries that read it. Each K and V row is loaded (and converted to float32) once and
// serves all G * nq rows; scores are kept in base-2 units with an online softmax per row.
// ISA-namespaced: included by decode_isa_*.cpp after simd.hpp (see simd.hpp for the rules).
#pragma once

#include "cpu/simd.hpp"

namespace spattn::cpu::SPATTN_ISA {

namespace dec {

// dst[0..n) = src[0..n) (element stride, dtype), dst[n..np) = 0.
SP_INLINE void row_to_float(const void* src, int dtype, int64_t stride, int n, int np,
                            float* dst) {
  int i = 0;
  if (dtype == kF32) {
    const float* s = static_cast<const float*>(src);
    if (stride == 1)
      for (; i + W <= n; i += W) store(dst + i, load(s + i));
    for (; i < n; ++i) dst[i] = s[i * stride];
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    const bool half = dtype == kF16;
    if (stride == 1)
      for (; i + W <= n; i += W) {
        vh h;
        __builtin_memcpy(&h, s + i, sizeof h);
        store(dst + i, half ? h2f_v(h) : bf2f_v(h));
      }
    for (; i < n; ++i) dst[i] = half ? h2f(s[i * stride]) : bf2f(s[i * stride]);
  }
  for (; i < np; ++i) dst[i] = 0.f;
}

// The sum of v's lanes, as a tree (a serial sum was a chain of W dependent adds per score).
SP_INLINE float hsum(vf v) {
#if SPATTN_VEC_BYTES == 64
  typedef float h8 __attribute__((vector_size(32)));
  const h8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#elif SPATTN_VEC_BYTES == 32
  const vf a = v;
#endif
#if SPATTN_VEC_BYTES >= 32
  typedef float h4 __attribute__((vector_size(16)));
  const h4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
#else
  float r = 0.f;
  for (int k = 0; k < W; ++k) r += v[k];
  return r;
#endif
}

// n is a multiple of W (rows are zero-padded to Dp).
SP_INLINE float dot(const float* a, const float* b, int64_t n) {
  vf s0{}, s1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 = fma(load(a + i), load(b + i), s0);
    s1 = fma(load(a + i + W), load(b + i + W), s1);
  }
  for (; i < n; i += W) s0 = fma(load(a + i), load(b + i), s0);
  return hsum(s0 + s1);
}

// acc[0..Dvp) += sum_j p[j] * vt[j * Dvp + :] for j < n.
SP_INLINE void accumulate(float* acc, const float* p, const float* vt, int n, int64_t Dvp) {
  int64_t d = 0;
  for (; d + 4 * W <= Dvp; d += 4 * W) {
    vf a0 = load(acc + d), a1 = load(acc + d + W), a2 = load(acc + d + 2 * W),
       a3 = load(acc + d + 3 * W);
    for (int j = 0; j < n; ++j) {
      const vf pj = splat(p[j]);
      const float* v = vt + j * Dvp + d;
      a0 = fma(pj, load(v), a0);
      a1 = fma(pj, load(v + W), a1);
      a2 = fma(pj, load(v + 2 * W), a2);
      a3 = fma(pj, load(v + 3 * W), a3);
    }
    store(acc + d, a0);
    store(acc + d + W, a1);
    store(acc + d + 2 * W, a2);
    store(acc + d + 3 * W, a3);
  }
  for (; d < Dvp; d += W) {
    vf a0 = load(acc + d);
    for (int j = 0; j < n; ++j) a0 = fma(splat(p[j]), load(vt + j * Dvp + d), a0);
    store(acc + d, a0);
  }
}

// Index of the first range t in [b, e) with hi[t] > c (ranges ascending).
SP_INLINE int64_t seek(const int32_t* hi, int64_t b, int64_t e, int64_t c) {
  while (b < e) {
    const int64_t mid = (b + e) / 2;
    if (hi[mid] <= c)
      b = mid + 1;
    else
      e = mid;
  }
  return b;
}

// A score with the chunk's modifiers (softcap, then ALiBi), base-2 units.
SP_INLINE float modified(const DecodeChunk& c, int64_t hh, int64_t i, int64_t j, float x) {
  if (c.softcap2 != 0.f) x = c.softcap2 * __builtin_tanhf(x / c.softcap2);
  if (c.alibi2) {
    const int64_t rel = i + c.nk - c.nq - j;
    x -= c.alibi2[hh] * float(rel < 0 ? -rel : rel);
  }
  return x;
}

}  // namespace dec

inline void decode_chunk(const DecodeChunk& c, float* ws) {
  using namespace dec;
  constexpr int KT = kDecodeTile;
  const int64_t R = c.G * c.nq, Dp = c.Dp, Dvp = c.Dvp;
  const int es = c.dtype == kF32 ? 4 : 2;
  float* qf = ws;              // [R, Dp] scaled queries
  float* s = qf + R * Dp;      // [KT] scores / probabilities of one row
  float* kt = s + KT;          // [KT, Dp]
  float* vt = kt + KT * Dp;    // [KT, Dvp]
  int64_t* cur = reinterpret_cast<int64_t*>(vt + KT * Dvp);  // [2G] range cursors per head
  uint8_t* st = reinterpret_cast<uint8_t*>(cur + 2 * c.G);    // [G] block status per head

  for (int64_t hh = 0; hh < c.G; ++hh)
    for (int64_t i = 0; i < c.nq; ++i) {
      float* row = qf + (hh * c.nq + i) * Dp;
      row_to_float(static_cast<const char*>(c.q) + (i * c.q_si + hh * c.q_sh) * es, c.dtype,
                   c.q_sd, int(c.D), int(Dp), row);
      for (int64_t d = 0; d < Dp; d += W) store(row + d, load(row + d) * c.scale2);
    }
  for (int64_t r = 0; r < R; ++r) {
    c.m[r] = -__builtin_inff();
    c.l[r] = 0.f;
    for (int64_t d = 0; d < Dvp; ++d) c.acc[r * Dvp + d] = 0.f;
  }
  if (c.nranges == 0) return;
  auto lrow = [&](int64_t hh) { return c.lheads == 1 ? 0 : c.h0 + hh; };
  const int64_t first = c.blo[0];
  for (int64_t hh = 0; hh < c.G; ++hh) {
    const int64_t r = lrow(hh);
    cur[2 * hh] = seek(c.full_hi, c.full_ptr[r], c.full_ptr[r + 1], first);
    cur[2 * hh + 1] = seek(c.part_hi, c.part_ptr[r], c.part_ptr[r + 1], first);
  }

  for (int64_t t = 0; t < c.nranges; ++t)
    for (int64_t cb = c.blo[t]; cb < c.bhi[t]; ++cb) {
      // Status of block cb for each head: 0 not visited, 1 full, 2 partial.
      bool any = false;
      for (int64_t hh = 0; hh < c.G; ++hh) {
        const int64_t r = lrow(hh);
        int64_t& f = cur[2 * hh];
        int64_t& p = cur[2 * hh + 1];
        while (f < c.full_ptr[r + 1] && c.full_hi[f] <= cb) ++f;
        while (p < c.part_ptr[r + 1] && c.part_hi[p] <= cb) ++p;
        uint8_t x = 0;
        if (f < c.full_ptr[r + 1] && c.full_lo[f] <= cb)
          x = 1;
        else if (p < c.part_ptr[r + 1] && c.part_lo[p] <= cb)
          x = 2;
        st[hh] = x;
        any = any || x != 0;
      }
      if (!any) continue;
      int64_t page = cb;
      if (c.table)
        page = c.table64 ? static_cast<const int64_t*>(c.table)[cb * c.table_s]
                         : int64_t(static_cast<const int32_t*>(c.table)[cb * c.table_s]);
      const char* kb = static_cast<const char*>(c.k) + page * c.k_sp * es;
      const char* vb = static_cast<const char*>(c.v) + page * c.v_sp * es;
      const int64_t j0 = cb * c.bk, jend = j0 + c.bk < c.nk ? j0 + c.bk : c.nk;
      for (int64_t js = j0; js < jend; js += KT) {
        const int n = int(jend - js < KT ? jend - js : KT);
        // The rows of the next tile, fetched while this one is computed: rows of one kv head
        // lie Hkv * D elements apart, too far apart for the hardware prefetchers.
        const char *pk = nullptr, *pv = nullptr;
        int pn = 0;
        if (js + KT < jend) {
          pk = kb + (js + KT - j0) * c.k_sr * es;
          pv = vb + (js + KT - j0) * c.v_sr * es;
          pn = int(jend - js - KT < KT ? jend - js - KT : KT);
        } else {
          int64_t nb = cb + 1;
          if (nb >= c.bhi[t]) nb = t + 1 < c.nranges ? c.blo[t + 1] : -1;
          if (nb >= 0) {
            int64_t np = nb;
            if (c.table)
              np = c.table64 ? static_cast<const int64_t*>(c.table)[nb * c.table_s]
                             : int64_t(static_cast<const int32_t*>(c.table)[nb * c.table_s]);
            pk = static_cast<const char*>(c.k) + np * c.k_sp * es;
            pv = static_cast<const char*>(c.v) + np * c.v_sp * es;
            const int64_t left = c.nk - nb * c.bk;
            pn = int(left < KT ? left : KT);
            if (pn > c.bk) pn = int(c.bk);
          }
        }
        const int64_t kbytes = c.k_sd == 1 ? c.D * es : 0, vbytes = c.v_sd == 1 ? c.Dv * es : 0;
        for (int jj = 0; jj < n; ++jj) {
          const int64_t t_in = js - j0 + jj;
          if (jj < pn) {
            const char* a = pk + jj * c.k_sr * es;
            for (int64_t o = 0; o < kbytes; o += 64) __builtin_prefetch(a + o, 0, 3);
            const char* b = pv + jj * c.v_sr * es;
            for (int64_t o = 0; o < vbytes; o += 64) __builtin_prefetch(b + o, 0, 3);
          }
          row_to_float(kb + t_in * c.k_sr * es, c.dtype, c.k_sd, int(c.D), int(Dp), kt + jj * Dp);
          row_to_float(vb + t_in * c.v_sr * es, c.dtype, c.v_sd, int(c.Dv), int(Dvp),
                       vt + jj * Dvp);
        }
        for (int64_t hh = 0; hh < c.G; ++hh) {
          if (st[hh] == 0) continue;
          const int64_t h = c.h0 + hh;
          const bool exact = st[hh] == 2 && range_is_exact(c.pred, h);
          for (int64_t i = 0; i < c.nq; ++i) {
            const int64_t r = hh * c.nq + i;
            const float* qr = qf + r * Dp;
            int64_t lo = js, hi = js + n - 1;  // keys kept by the row (exact windows)
            if (exact) {
              key_range(c.pred, h, i, &lo, &hi);
              if (lo < js) lo = js;
              if (hi > js + n - 1) hi = js + n - 1;
              if (lo > hi) continue;
            }
            float mt = -__builtin_inff();
            bool nan = false;
            for (int jj = 0; jj < KT; ++jj) {
              const int64_t j = js + jj;
              float x = -__builtin_inff();
              if (jj < n && j >= lo && j <= hi &&
                  (st[hh] == 1 || exact || keeps(c.pred, h, i, j)))
                x = modified(c, hh, i, j, dot(qr, kt + jj * Dp, Dp));
              s[jj] = x;
              mt = x > mt ? x : mt;
              nan |= x != x;
            }
            if (nan) {  // a NaN score: the row's result is NaN (README, NaN and Inf)
              c.l[r] = __builtin_nanf("");
              if (c.m[r] == -__builtin_inff()) c.m[r] = 0.f;  // so that the merge keeps it
              continue;
            }
            if (mt == -__builtin_inff()) continue;
            const float mo = c.m[r];
            const float mn = mo > mt ? mo : mt;
            float* acc = c.acc + r * Dvp;
            if (mn > mo) {
              const float alpha = mo == -__builtin_inff() ? 0.f : __builtin_exp2f(mo - mn);
              c.l[r] *= alpha;
              for (int64_t d = 0; d < Dvp; d += W) store(acc + d, load(acc + d) * alpha);
              c.m[r] = mn;
            }
            vf sum{};
            const vf mv = splat(mn);
            for (int jj = 0; jj < KT; jj += W) {
              const vf p = exp2v(load(s + jj) - mv);
              store(s + jj, p);
              sum += p;
            }
            float tot = 0.f;
            for (int k = 0; k < W; ++k) tot += sum[k];
            c.l[r] += tot;
            accumulate(acc, s, vt, n, Dvp);
          }
        }
      }
    }
}

inline void decode_finish(const DecodeFinish& f, float* ws) {
  const int es = f.dtype == kF32 ? 4 : 2;
  const float ninf = -__builtin_inff();
  for (int64_t hh = 0; hh < f.G; ++hh)
    for (int64_t i = 0; i < f.nq; ++i) {
      const int64_t r = hh * f.nq + i;
      float M = ninf;
      for (int64_t t = 0; t < f.nparts; ++t) M = f.m[t][r] > M ? f.m[t][r] : M;
      float L = 0.f;
      for (int64_t d = 0; d < f.Dvp; ++d) ws[d] = 0.f;
      if (M != ninf)
        for (int64_t t = 0; t < f.nparts; ++t) {
          if (f.m[t][r] == ninf) continue;
          const float w = __builtin_exp2f(f.m[t][r] - M);
          L += w * f.l[t][r];
          const float* a = f.acc[t] + r * f.Dvp;
          for (int64_t d = 0; d < f.Dvp; d += W) store(ws + d, fma(splat(w), load(a + d), load(ws + d)));
        }
      float keep = 1.f;  // what the accumulated row is multiplied by before 1 / L
      if (f.sink2 && f.sink2[hh] != ninf) {
        const float s = f.sink2[hh], Mf = M > s ? M : s;
        keep = M == ninf ? 0.f : __builtin_exp2f(M - Mf);
        L = L * keep + __builtin_exp2f(s - Mf);
        M = Mf;
      }
      const float inv = L == 0.f ? 0.f : keep / L;  // NaN (a NaN score) stays NaN
      char* o = static_cast<char*>(f.out) + (i * f.out_si + hh * f.out_sh) * es;
      for (int64_t d = 0; d < f.Dv; ++d) {
        const float x = ws[d] * inv;
        if (f.dtype == kF32)
          reinterpret_cast<float*>(o)[d * f.out_sd] = x;
        else
          reinterpret_cast<uint16_t*>(o)[d * f.out_sd] = f.dtype == kF16 ? f2h(x) : f2bf(x);
      }
      if (f.lse)
        f.lse[hh * f.lse_sh + i * f.lse_si] =
            L == 0.f ? ninf : (M + __builtin_log2f(L)) * 0.6931471805599453f;
    }
}

// acc[0..np) += the n rows rows[0..n) (each d elements of one dtype, element stride `stride`),
// converted to float32; np is d rounded up to a multiple of 16 (acc's padding stays 0).
inline void sum_rows(const void* const* rows, int64_t n, int dtype, int64_t stride, int d,
                     int np, float* acc, float* tmp) {
  for (int64_t j = 0; j < n; ++j) {
    dec::row_to_float(rows[j], dtype, stride, d, np, tmp);
    for (int i = 0; i < np; i += W) store(acc + i, load(acc + i) + load(tmp + i));
  }
}

// Sparse rows (decode_kernel_api.hpp's SparseRows): each row's scores over its own key list,
// its softmax, then P V with the output row in registers. The key rows are scattered (far
// apart for long reaches): the next row's are prefetched while this one computes.
inline void sparse_rows(const SparseRows& c, float* ws) {
  const int es = c.dtype == kF32 ? 4 : 2;
  const float ninf = -__builtin_inff();
  const int64_t Dp = c.Dp, Dvp = c.Dvp;
  float* qf = ws;              // [Dp] the scaled query
  float* kf = qf + Dp;         // [Dp] a converted key row
  float* vt = kf + Dp;         // [Dvp] a converted value row (only when not read in place)
  float* acc = vt + Dvp;       // [Dvp]
  float* s = acc + Dvp;        // [keys of a row, rounded up to W]
  const bool k_direct = c.dtype == kF32 && c.k_sd == 1 && c.D == Dp;
  const bool v_direct = c.dtype == kF32 && c.v_sd == 1 && c.Dv == Dvp;
  const vf vscale = splat(c.scale2);
  const int64_t kbytes = (c.k_sd == 1 ? c.D : 1) * es, vbytes = (c.v_sd == 1 ? c.Dv : 1) * es;
  auto krow = [&](int64_t j) { return static_cast<const char*>(c.k) + j * c.k_sj * es; };
  auto vrow = [&](int64_t j) { return static_cast<const char*>(c.v) + j * c.v_sj * es; };
  auto prefetch_row = [&](int64_t r) {
    for (int64_t t = c.ptr[r]; t < c.ptr[r + 1]; ++t) {
      for (int64_t o = 0; o < kbytes; o += 64) __builtin_prefetch(krow(c.keys[t]) + o, 0, 3);
      for (int64_t o = 0; o < vbytes; o += 64) __builtin_prefetch(vrow(c.keys[t]) + o, 0, 3);
    }
  };
  if (c.n > 0) prefetch_row(0);
  for (int64_t r = 0; r < c.n; ++r) {
    if (r + 1 < c.n) prefetch_row(r + 1);
    const int64_t i = c.i0 + r;
    const int64_t* keys = c.keys + c.ptr[r];
    const int64_t n = c.ptr[r + 1] - c.ptr[r];
    dec::row_to_float(static_cast<const char*>(c.q) + r * c.q_si * es, c.dtype, c.q_sd,
                      int(c.D), int(Dp), qf);
    for (int64_t d = 0; d < Dp; d += W) store(qf + d, load(qf + d) * vscale);
    // S
    for (int64_t t = 0; t < n; ++t) {
      const float* kr = kf;
      if (k_direct)
        kr = reinterpret_cast<const float*>(krow(keys[t]));
      else
        dec::row_to_float(krow(keys[t]), c.dtype, c.k_sd, int(c.D), int(Dp), kf);
      float x = dec::dot(qf, kr, Dp);
      if (c.softcap2 != 0.f) x = c.softcap2 * __builtin_tanhf(x / c.softcap2);
      if (c.alibi2 != 0.f) {
        const int64_t rel = c.rel_step * (i - keys[t]) + c.rel_base;
        x -= c.alibi2 * float(rel < 0 ? -rel : rel);
      }
      s[t] = x;
    }
    // softmax: m the row's maximum (a NaN score leaves it alone and comes out NaN, as in the
    // tiles), P = 2^(s - m) in place, l = sum P
    const int64_t np = (n + W - 1) / W * W;
    for (int64_t t = n; t < np; ++t) s[t] = ninf;
    vf vm = splat(ninf);
    for (int64_t t = 0; t < np; t += W) vm = vmax(vm, load(s + t));
    float m = ninf;
    for (int k = 0; k < W; ++k) m = vm[k] > m ? vm[k] : m;
    const vf mu = splat(m == ninf ? 0.f : m);
    vf vl{};
    for (int64_t t = 0; t < np; t += W) {
      const vf p = exp2v(load(s + t) - mu);
      store(s + t, p);
      vl += p;
    }
    float l = dec::hsum(vl);
    // O = P V, four vectors of the row at a time in registers, in two sets (even and odd
    // keys) so that consecutive keys' FMAs do not wait on each other
    for (int64_t d0 = 0; d0 < Dvp; d0 += 4 * W) {
      const int nv = int(min_<int64_t>(4, (Dvp - d0) / W));
      vf o[2][4] = {};
      for (int64_t t = 0; t < n; ++t) {
        const float* vr = vt;
        if (v_direct)
          vr = reinterpret_cast<const float*>(vrow(keys[t])) + d0;
        else  // this chunk of the row, converted
          dec::row_to_float(vrow(keys[t]) + d0 * c.v_sd * es, c.dtype, c.v_sd,
                            int(min_<int64_t>(4 * W, c.Dv - d0)), nv * W, vt);
        const vf p = splat(s[t]);
        vf* a = o[t & 1];
        a[0] = fma(p, load(vr), a[0]);
        if (nv > 1) a[1] = fma(p, load(vr + W), a[1]);
        if (nv > 2) a[2] = fma(p, load(vr + 2 * W), a[2]);
        if (nv > 3) a[3] = fma(p, load(vr + 3 * W), a[3]);
      }
      for (int u = 0; u < nv; ++u) store(acc + d0 + u * W, o[0][u] + o[1][u]);
    }
    // The row's end, as the tile kernels' finish_row: the sink joins the denominator.
    float keep = 1.f;
    if (c.sink && c.sink2 != ninf) {
      const float mf = m > c.sink2 ? m : c.sink2;
      keep = m == ninf ? 0.f : __builtin_exp2f(m - mf);
      l = l * keep + __builtin_exp2f(c.sink2 - mf);
      m = mf;
    }
    const float inv = l == 0.f ? 0.f : keep / l;
    char* o = static_cast<char*>(c.out) + r * c.out_si * es;
    for (int64_t d = 0; d < c.Dv; ++d) {
      const float x = acc[d] * inv;
      if (c.dtype == kF32)
        reinterpret_cast<float*>(o)[d * c.out_sd] = x;
      else
        reinterpret_cast<uint16_t*>(o)[d * c.out_sd] = c.dtype == kF16 ? f2h(x) : f2bf(x);
    }
    if (c.lse) c.lse[r * c.lse_si] = l == 0.f ? ninf : (m + __builtin_log2f(l)) * 0.6931471805599453f;
  }
}

// The backward of sparse rows (decode_kernel_api.hpp's SparseRowsBwd), row by row: P and dP
// over the row's keys, dS = P (dP - delta) (times the softcap's derivative), then dq from dS K
// and dS q, P dO added to the keys' dK and dV rows.
inline void sparse_rows_bwd(const SparseRowsBwd& c, float* ws) {
  const SparseRows& f = c.f;
  const int es = f.dtype == kF32 ? 4 : 2;
  const float ninf = -__builtin_inff();
  constexpr float kLog2e = 1.4426950408889634f;
  const int64_t Dp = f.Dp, Dvp = f.Dvp;
  int64_t kmax = 0;
  for (int64_t r = 0; r < f.n; ++r) kmax = max_(kmax, f.ptr[r + 1] - f.ptr[r]);
  const int64_t kn = (kmax + 15) & ~int64_t(15);
  float* qraw = ws;          // [Dp] q as it is (dK += dS q)
  float* qf = qraw + Dp;     // [Dp] q * scale * log2 e
  float* kf = qf + Dp;       // [Dp]
  float* dq = kf + Dp;       // [Dp]
  float* dof = dq + Dp;      // [Dvp]
  float* vt = dof + Dvp;     // [Dvp]
  float* ot = vt + Dvp;      // [Dvp]
  float* p = ot + Dvp;       // [kn] P, then reused
  float* dp = p + kn;        // [kn] dP, then dS
  float* dcap = dp + kn;     // [kn] the softcap's derivative
  const bool k_direct = f.dtype == kF32 && f.k_sd == 1 && f.D == Dp;
  const bool v_direct = f.dtype == kF32 && f.v_sd == 1 && f.Dv == Dvp;
  auto krow = [&](int64_t j) { return static_cast<const char*>(f.k) + j * f.k_sj * es; };
  auto vrow = [&](int64_t j) { return static_cast<const char*>(f.v) + j * f.v_sj * es; };
  const vf vscale = splat(f.scale2);
  for (int64_t r = 0; r < f.n; ++r) {
    const int64_t i = f.i0 + r;
    const int64_t* keys = f.keys + f.ptr[r];
    const int64_t n = f.ptr[r + 1] - f.ptr[r];
    const float lse = c.lse[r * c.lse_si];
    for (int64_t d = 0; d < Dp; d += W) store(dq + d, vf{});
    if (n > 0 && lse != ninf) {  // a row that saw no key (lse -inf) has P = 0: no gradient
      const float lse2 = lse * kLog2e;
      dec::row_to_float(static_cast<const char*>(f.q) + r * f.q_si * es, f.dtype, f.q_sd,
                        int(f.D), int(Dp), qraw);
      for (int64_t d = 0; d < Dp; d += W) store(qf + d, load(qraw + d) * vscale);
      dec::row_to_float(static_cast<const char*>(c.dout) + r * c.dout_si * es, f.dtype,
                        c.dout_sd, int(f.Dv), int(Dvp), dof);
      for (int64_t t = 0; t < n; ++t) {
        const float* kr = kf;
        if (k_direct)
          kr = reinterpret_cast<const float*>(krow(keys[t]));
        else
          dec::row_to_float(krow(keys[t]), f.dtype, f.k_sd, int(f.D), int(Dp), kf);
        float x = dec::dot(qf, kr, Dp), dc = 1.f;
        if (f.softcap2 != 0.f) {
          const float th = __builtin_tanhf(x / f.softcap2);
          x = f.softcap2 * th;
          dc = 1.f - th * th;
        }
        if (f.alibi2 != 0.f) {
          const int64_t rel = f.rel_step * (i - keys[t]) + f.rel_base;
          x -= f.alibi2 * float(rel < 0 ? -rel : rel);
        }
        p[t] = __builtin_exp2f(x - lse2);
        dcap[t] = dc;
        const float* vr = vt;
        if (v_direct)
          vr = reinterpret_cast<const float*>(vrow(keys[t]));
        else
          dec::row_to_float(vrow(keys[t]), f.dtype, f.v_sd, int(f.Dv), int(Dvp), vt);
        dp[t] = dec::dot(dof, vr, Dvp);
      }
      float delta = 0.f;
      if (c.exact_delta) {
        for (int64_t t = 0; t < n; ++t) delta += p[t] * dp[t];
      } else {
        dec::row_to_float(static_cast<const char*>(c.o) + r * c.o_si * es, f.dtype, c.o_sd,
                          int(f.Dv), int(Dvp), ot);
        delta = dec::dot(dof, ot, Dvp);
      }
      for (int64_t t = 0; t < n; ++t) {
        const float ds = p[t] * (dp[t] - delta) * dcap[t];
        const int64_t j = keys[t];
        const float* kr = kf;
        if (k_direct)
          kr = reinterpret_cast<const float*>(krow(j));
        else
          dec::row_to_float(krow(j), f.dtype, f.k_sd, int(f.D), int(Dp), kf);
        const vf vds = splat(ds), vp = splat(p[t]);
        float* dk = c.dk_acc + j * Dp;
        float* dv = c.dv_acc + j * Dvp;
        for (int64_t d = 0; d < Dp; d += W) {
          store(dq + d, fma(vds, load(kr + d), load(dq + d)));
          store(dk + d, fma(vds, load(qraw + d), load(dk + d)));
        }
        for (int64_t d = 0; d < Dvp; d += W) store(dv + d, fma(vp, load(dof + d), load(dv + d)));
      }
    }
    char* o = static_cast<char*>(c.dq) + r * c.dq_si * es;
    for (int64_t d = 0; d < f.D; ++d) {
      const float x = dq[d] * c.scale;
      if (f.dtype == kF32)
        reinterpret_cast<float*>(o)[d * c.dq_sd] = x;
      else
        reinterpret_cast<uint16_t*>(o)[d * c.dq_sd] = f.dtype == kF16 ? f2h(x) : f2bf(x);
    }
  }
}

}  // namespace spattn::cpu::SPATTN_ISA

#define SPATTN_DEFINE_DECODE_KERNELS(getter, label)              \
  namespace spattn::cpu {                                        \
  const DecodeKernels* getter() {                                \
    static const DecodeKernels t{label, SPATTN_ISA::decode_chunk, SPATTN_ISA::decode_finish, \
                                 SPATTN_ISA::sum_rows, SPATTN_ISA::sparse_rows,             \
                                 SPATTN_ISA::sparse_rows_bwd};                              \
    return &t;                                                   \
  }                                                              \
  }
