// Decode over a KV cache (spattn/cuda/decode_logic.hpp has the plan and every index rule):
//
//   decode_kernel   one CTA per (split, row group) of a (sequence, kv head): kDecWarps warps,
//                   each cut into lane groups of KL = DMAX / 8 lanes; a lane group takes
//                   kDecUnroll consecutive keys of the split per step, each lane loading 8
//                   features (one 16-byte load; two for float32) of each K and V row, so a K/V row is read once
//                   for the kDecRows query rows of the CTA. Scores are reduced over the KL
//                   lanes with shuffles; each lane group keeps an online softmax per row; the
//                   groups are merged through shared memory into the CTA's partial (m, l, acc).
//   finish_kernel   one warp per (b, h, i) row: merges the row's splits exactly (logsumexp),
//                   adds the sink, writes out and lse; block 0 also completes the error record
//                   (the bad table entry or length; decode_logic.hpp) and, for a deferred
//                   call, copies it into the device's persistent record if that is empty.
//   (The device plan's kernels are in decode_plan.cu.)
//   pool_kernel     pool_keys: the mean key of each block of keys, float32.
//
// Bandwidth-bound: no tensor cores (a decode step has at most kDecRows rows per CTA).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/convert.cuh"
#include "arch_api.hpp"
#include "spattn/cuda/decode_logic.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kThreads = kDecWarps * 32;
// CTAs per SM the register budget is capped for: a bandwidth-bound kernel needs many loads in
// flight (ptxas must still report no spills).
constexpr int kDecMinCtas = 2;

template <class T>
__device__ __forceinline__ T from_f32(float x) { return T(x); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// kDecVec features of one row in registers: one 16-byte word for 2-byte types, two for float32.
template <class T>
struct Pack {
  static constexpr int kWords = int(kDecVec * sizeof(T) / 16);
  uint4 w[kWords];
};

// 8 features of one row starting at feature d0 (n features exist): 16-byte loads when the row
// allows them (vec: 16-byte aligned rows, d0 a multiple of 8), else element by element (zero
// past n).
template <class T>
__device__ __forceinline__ Pack<T> load8(const T* row, int64_t sd, int d0, int n, bool vec) {
  Pack<T> r;
#pragma unroll
  for (int x = 0; x < Pack<T>::kWords; ++x) r.w[x] = make_uint4(0, 0, 0, 0);
  if (d0 >= n) return r;
  if (vec) {
#pragma unroll
    for (int x = 0; x < Pack<T>::kWords; ++x)
      r.w[x] = __ldg(reinterpret_cast<const uint4*>(row + d0) + x);
    return r;
  }
  T* e = reinterpret_cast<T*>(r.w);
#pragma unroll
  for (int x = 0; x < kDecVec; ++x)
    if (d0 + x < n) e[x] = row[(d0 + x) * sd];
  return r;
}

template <class T>
__device__ __forceinline__ void unpack8(const Pack<T>& r, float* f) {
  const T* e = reinterpret_cast<const T*>(r.w);
#pragma unroll
  for (int x = 0; x < kDecVec; ++x) f[x] = to_f32(e[x]);
}

template <class T, int KL>
__global__ void __launch_bounds__(kThreads, kDecMinCtas) decode_kernel(const DecodeParams p) {
  constexpr int GPW = 32 / KL;            // lane groups per warp
  constexpr int SLOTS = kDecWarps * GPW;  // lane groups per CTA
  constexpr int DMAX = KL * kDecVec;
  constexpr int U = kDecUnroll;
  constexpr int kLanesPer128 = int(128 / (kDecVec * sizeof(T)));  // lanes per 128 bytes of a row
  __shared__ float sm_m[SLOTS][kDecRows];
  __shared__ float sm_l[SLOTS][kDecRows];
  __shared__ float sm_acc[SLOTS][kDecRows][DMAX];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int grp = lane / KL, sub = lane % KL, slot = warp * GPW + grp, d0 = sub * kDecVec;
  const int64_t task = blockIdx.x, rg = blockIdx.y;
  int64_t bg, split, ns;
  dec_task(p, task, &bg, &split, &ns);
  if (split >= ns) return;  // device plan: a split this bg's length does not need (whole CTA)
  const int64_t b = bg / p.hkv, g = bg - b * p.hkv;
  const DecodeSeq& seq = p.seqs[b];  // read where used (global memory, cached): few registers
  const Predicate& pred = seq.pred;
  const int64_t nk = seq.nk;
  int64_t pos0, pos1;
  dec_split(p.ublocks[bg], ns, split, &pos0, &pos1);
  const int64_t R = dec_rows(p);
  const bool mods = p.softcap_log2 != 0.f || p.alibi != nullptr;

  int32_t rh[kDecRows], ri[kDecRows];  // query head (-1: no such row) and query of each row
  float q[kDecRows][kDecVec], acc[kDecRows][kDecVec], m[kDecRows], l[kDecRows];
  bool nan[kDecRows];
  float slope[kDecRows];  // ALiBi slope of each row's head (base 2; 0: none)
  const ScoreMod mod0 = dec_score_mod(p, 0);  // softcap, the same for every head
#pragma unroll
  for (int rr = 0; rr < kDecRows; ++rr) {
    const int64_t r = rg * kDecRows + rr;
    int64_t h, i;
    dec_row(p, g, r < R ? r : 0, &h, &i);
    rh[rr] = r < R ? int32_t(h) : -1;  // no such row: never kept, never stored
    ri[rr] = int32_t(i);
    const T* qr = static_cast<const T*>(p.q) + b * p.q_sb + ri[rr] * p.q_sn +
                  (rh[rr] < 0 ? 0 : rh[rr]) * p.q_sh;
#pragma unroll
    for (int x = 0; x < kDecVec; ++x) {
      const int d = d0 + x;
      q[rr][x] = rh[rr] >= 0 && d < p.d ? to_f32(qr[d * p.q_sd]) * p.scale_log2 : 0.f;
      acc[rr][x] = 0.f;
    }
    m[rr] = neg_inf();
    l[rr] = 0.f;
    nan[rr] = false;
    slope[rr] = dec_score_mod(p, rh[rr] < 0 ? 0 : rh[rr]).slope;
  }

  const T* kbase = static_cast<const T*>(p.k);
  const T* vbase = static_cast<const T*>(p.v);
  const int64_t nkeys = (pos1 - pos0) * p.bk;
  int64_t cur_pos = -1, cur_c = 0, cur_page = 0;
  int32_t klo[kDecRows], khi[kDecRows];  // the keys of the current block each row may keep
  unsigned general = 0;                   // bit rr: row rr's keys must each pass keeps()
#pragma unroll
  for (int rr = 0; rr < kDecRows; ++rr) klo[rr] = 0, khi[rr] = -1;
  // The trip count is the warp's (its first group's keys), so that every lane of the warp
  // reaches the shuffles below; a group whose keys run past the split masks them.
  for (int64_t wbase = int64_t(warp) * GPW * U; wbase < nkeys; wbase += int64_t(SLOTS) * U) {
    const int64_t base = wbase + int64_t(grp) * U;
    // Load phase: U consecutive keys of this lane group (their blocks' rules on the way).
    Pack<T> kr[U], vr[U];
    unsigned keep = 0;  // bit u * kDecRows + rr: row rr keeps key u
    float rel0[U];  // nk - nq - j of each key: rel = i + rel0 (ALiBi; exact below 2^24)
    int64_t pos = pos0 + base / p.bk, x = base - (pos - pos0) * p.bk;
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int wd = 0; wd < Pack<T>::kWords; ++wd) kr[u].w[wd] = vr[u].w[wd] = make_uint4(0, 0, 0, 0);
      rel0[u] = 0.f;
      if (base + u < nkeys) {
        if (pos != cur_pos) {
          cur_pos = pos;
          cur_c = dec_block_at(p, bg, pos);
          cur_page = dec_table_entry(p, b, cur_c);
          const bool ok = dec_page_ok(p, cur_page);
          if (!ok && sub == 0) atomicMin(p.error, dec_error_key(p, b, g, cur_c));
          general = 0;
#pragma unroll
          for (int rr = 0; rr < kDecRows; ++rr) {
            const int st = ok && rh[rr] >= 0 ? dec_block_status(seq, rh[rr], cur_c) : 0;
            bool gen;
            dec_row_block(nk, pred, st, rh[rr], ri[rr], cur_c, p.bk, &klo[rr], &khi[rr], &gen);
            general |= unsigned(gen) << rr;
          }
        }
        const int64_t j = cur_c * p.bk + x;
        rel0[u] = float(nk - p.nq - j);
#pragma unroll
        for (int rr = 0; rr < kDecRows; ++rr)
          if (dec_key_kept(klo[rr], khi[rr], (general >> rr) & 1u, pred, rh[rr], ri[rr], x, j))
            keep |= 1u << (u * kDecRows + rr);
        if ((keep >> (u * kDecRows)) & ((1u << kDecRows) - 1)) {
          const T* krow = kbase + dec_k_offset(p, b, cur_page, x, g);
          const T* vrow = vbase + dec_v_offset(p, b, cur_page, x, g);
          kr[u] = load8(krow, p.k_sd, d0, int(p.d), p.vec_k);
          vr[u] = load8(vrow, p.v_sd, d0, int(p.dv), p.vec_v);
          // The group's key of the next step, when it lies in the same block (page) and exists:
          // into L2 now, so that more of the cache is in flight than the registers hold. One
          // lane per 128 bytes of the row.
          const int64_t ahead = int64_t(SLOTS) * U;
          if (u == 0 && p.vec_k && p.vec_v && sub % kLanesPer128 == 0 && x + ahead < p.bk && j + ahead < nk) {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(krow + ahead * p.k_sn + d0));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(vrow + ahead * p.v_sn + d0));
          }
        }
      }
      if (++x == p.bk) {
        x = 0;
        ++pos;
      }
    }
    // Compute phase, the same in every lane of the warp (shuffles need all lanes).
    float s[U][kDecRows];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[kDecVec];
      unpack8<T>(kr[u], kf);
#pragma unroll
      for (int rr = 0; rr < kDecRows; ++rr) {
        float t = 0.f;
#pragma unroll
        for (int e = 0; e < kDecVec; ++e) t = fmaf(q[rr][e], kf[e], t);
#pragma unroll
        for (int off = KL / 2; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
        const bool kept = (keep >> (u * kDecRows + rr)) & 1u;
        if (kept && mods) {
          ScoreMod mr = mod0;
          mr.slope = slope[rr];
          t = apply_mod(mr, t, float(ri[rr]) + rel0[u], nullptr);
        }
        s[u][rr] = kept ? t : neg_inf();
      }
    }
    if (keep == 0) continue;
#pragma unroll
    for (int rr = 0; rr < kDecRows; ++rr) {
      float mt = neg_inf();
      bool has_nan = false;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        has_nan = has_nan || s[u][rr] != s[u][rr];
        mt = fmax_(mt, s[u][rr]);
      }
      // A NaN score makes the row NaN (as on the CPU): its state stops changing here, so that
      // m stays finite or -inf and the merges keep the NaN in l.
      if (has_nan) nan[rr] = true;
      if (nan[rr] || mt == neg_inf()) continue;
      const float mn = fmax_(m[rr], mt);
      const float alpha = softmax_rescale(m[rr], mn);
      m[rr] = mn;
      float pu[U], sum = 0.f;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        pu[u] = softmax_p(s[u][rr], mn);
        sum += pu[u];
      }
      l[rr] = l[rr] * alpha + sum;
#pragma unroll
      for (int e = 0; e < kDecVec; ++e) acc[rr][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float vf[kDecVec];
        unpack8<T>(vr[u], vf);
#pragma unroll
        for (int e = 0; e < kDecVec; ++e) acc[rr][e] = fmaf(pu[u], vf[e], acc[rr][e]);
      }
    }
  }

  // Merge the lane groups: each writes its state, then the threads combine per (row, feature).
#pragma unroll
  for (int rr = 0; rr < kDecRows; ++rr) {
    float mm = m[rr], ll = l[rr];
    if (nan[rr]) dec_mark_nan(&mm, &ll);
    if (sub == 0) {
      sm_m[slot][rr] = mm;
      sm_l[slot][rr] = ll;
    }
#pragma unroll
    for (int e = 0; e < kDecVec; ++e) sm_acc[slot][rr][d0 + e] = acc[rr][e];
  }
  __syncthreads();
  for (int w = threadIdx.x; w < kDecRows * DMAX; w += kThreads) {
    const int rr = w / DMAX, d = w - rr * DMAX;
    float M = neg_inf();
    for (int t = 0; t < SLOTS; ++t) M = fmax_(M, sm_m[t][rr]);
    float L = 0.f, a = 0.f;
    for (int t = 0; t < SLOTS; ++t) {
      const float wt = dec_merge_weight(sm_m[t][rr], M);
      L += wt * sm_l[t][rr];
      a += wt * sm_acc[t][rr][d];
    }
    const int64_t slot_out = dec_slot(p, task, rg, rr);
    p.part_acc[slot_out * p.dvp + d] = a;
    if (d == 0) {
      p.part_m[slot_out] = M;
      p.part_l[slot_out] = L;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(256) finish_kernel(const DecodeParams p) {
  if (blockIdx.x == 0 && threadIdx.x == 0 && p.error[0] != ~0ull) {
    unsigned long long rec[kDecErrorWords];
    dec_error_complete(p, p.error[0], rec);
    for (int x = 1; x < kDecErrorWords; ++x) p.error[x] = rec[x];
    // A deferred call: the first error of any call claims the persistent record.
    if (p.sticky && atomicCAS(p.sticky, ~0ull, rec[0]) == ~0ull) {
      unsigned long long w[kDecStickyWords];
      dec_sticky_words(p, rec, w);
      for (int x = 1; x < kDecStickyWords; ++x) p.sticky[x] = w[x];
      __threadfence_system();
    }
  }
  const int lane = threadIdx.x & 31;
  const int64_t rows = p.b * p.hq * p.nq;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; w < rows; w += warps) {
    const int64_t i = w % p.nq, h = (w / p.nq) % p.hq, b = w / (p.nq * p.hq);
    const int64_t g = h / p.group, r = (h - g * p.group) * p.nq + i;
    const int64_t rg = r / kDecRows, rr = r - rg * kDecRows, bg = b * p.hkv + g;
    int64_t t0, t1;
    dec_bg_tasks(p, bg, &t0, &t1);
    float M = dec_merge_max(p, t0, t1, rg, rr);
    float L = 0.f;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t sl = dec_slot(p, t, rg, rr);
      L += dec_merge_weight(p.part_m[sl], M) * p.part_l[sl];
    }
    const float M0 = M;  // the partials' weights are relative to it; the sink moves M
    const float keep = dec_sink(p, h, &M, &L);
    const float inv = dec_inv(keep, L);
    T* o = static_cast<T*>(p.out) + b * p.o_sb + i * p.o_sn + h * p.o_sh;
    for (int64_t d = lane; d < p.dv; d += 32) {
      float a = 0.f;
      if (M0 != neg_inf())
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t sl = dec_slot(p, t, rg, rr);
          a += dec_merge_weight(p.part_m[sl], M0) * p.part_acc[sl * p.dvp + d];
        }
      o[d * p.o_sd] = from_f32<T>(a * inv);
    }
    if (lane == 0 && p.lse) p.lse[b * p.lse_sb + h * p.lse_sh + i * p.lse_sn] = dec_lse(M, L);
  }
}

template <class T>
__global__ void __launch_bounds__(256) pool_kernel(const PoolParams p) {
  const int64_t b = blockIdx.y, c = blockIdx.x;
  unsigned long long len_key;
  const int64_t nk = pool_len(p, b, &len_key);
  if (c == 0 && threadIdx.x == 0 && len_key != ~0ull) atomicMin(p.error, len_key);
  if (c >= p.blocks) return;  // an out of no blocks: the grid's one column checks the lengths
  const int64_t j0 = c * p.block, j1 = j0 + p.block < nk ? j0 + p.block : nk;
  const float inv = j1 > j0 ? 1.f / float(j1 - j0) : 0.f;
  const T* k = static_cast<const T*>(p.k);
  for (int64_t w = threadIdx.x; w < p.hkv * p.d; w += blockDim.x) {
    const int64_t g = w / p.d, d = w - g * p.d;
    float a = 0.f;
    for (int64_t j = j0; j < j1; ++j) {
      bool ok;
      int64_t entry = 0;
      const int64_t off = pool_key_offset(p, b, j, g, &ok, &entry);
      if (!ok) {
        atomicMin(p.error, pool_table_key(p, b, j / p.page_size));
        continue;
      }
      a += to_f32(k[off + d * p.k_sd]);
    }
    p.out[b * p.o_sb + c * p.o_sc + g * p.o_sh + d * p.o_sd] = a * inv;
  }
}

// Completes pool_keys' error record (its value and length words) and, for a deferred call,
// claims the device's persistent record with it if that is still empty (finish_kernel's rule).
__global__ void pool_error_kernel(const PoolParams p) {
  if (p.error[0] == ~0ull) return;
  unsigned long long rec[kDecErrorWords];
  pool_error_complete(p, p.error[0], rec);
  for (int x = 1; x < kDecErrorWords; ++x) p.error[x] = rec[x];
  if (p.sticky && atomicCAS(p.sticky, ~0ull, rec[0]) == ~0ull) {
    unsigned long long w[kDecStickyWords];
    pool_sticky_words(p, rec, w);
    for (int x = 1; x < kDecStickyWords; ++x) p.sticky[x] = w[x];
    __threadfence_system();
  }
}

template <class T>
cudaError_t launch_decode(const DecodeParams& p, cudaStream_t stream) {
  const int64_t dmax = dec_dim_max(p.d, p.dv);
  const dim3 grid(unsigned(p.ntasks), unsigned(p.rgroups));
  if (dmax == 32)
    decode_kernel<T, 4><<<grid, kThreads, 0, stream>>>(p);
  else if (dmax == 64)
    decode_kernel<T, 8><<<grid, kThreads, 0, stream>>>(p);
  else if (dmax == 128)
    decode_kernel<T, 16><<<grid, kThreads, 0, stream>>>(p);
  else
    decode_kernel<T, 32><<<grid, kThreads, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t rows = p.b * p.hq * p.nq;
  const int64_t blocks = (rows + 7) / 8;
  finish_kernel<T><<<unsigned(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t decode(const DecodeParams& p, KernelDType dtype, cudaStream_t stream) {
  const int64_t dmax = dec_dim_max(p.d, p.dv);
  if (dmax == 0 || p.ntasks <= 0 || p.rgroups <= 0 || p.ntasks >= (int64_t(1) << 31) ||
      p.rgroups > 65535 || p.dvp != dmax)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case KernelDType::Float32: return launch_decode<float>(p, stream);
    case KernelDType::Float16: return launch_decode<__half>(p, stream);
    case KernelDType::BFloat16: return launch_decode<__nv_bfloat16>(p, stream);
    default: return cudaErrorNotSupported;
  }
}

cudaError_t pool_keys(const PoolParams& p, KernelDType dtype, cudaStream_t stream) {
  if (p.b <= 0 || (p.blocks <= 0 && !p.lens)) return cudaSuccess;
  if (p.b > 65535 || p.blocks >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(p.blocks > 0 ? p.blocks : 1), unsigned(p.b));
  switch (dtype) {
    case KernelDType::Float32: pool_kernel<float><<<grid, 256, 0, stream>>>(p); break;
    case KernelDType::Float16: pool_kernel<__half><<<grid, 256, 0, stream>>>(p); break;
    case KernelDType::BFloat16: pool_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p); break;
    default: return cudaErrorNotSupported;
  }
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || (!p.paged && !p.lens)) return e;  // nothing can go wrong
  pool_error_kernel<<<1, 1, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
