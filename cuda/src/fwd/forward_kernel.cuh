// The CUDA forward kernel: FlashAttention-2 style, in CuTe, for sm_80 and later (compiled
// unchanged for sm_90a as the first Hopper version; a wgmma/TMA kernel is the follow-up).
//
// One CTA computes one (batch, query head, query tile of kBlockM = 128 rows), in the order of
// the schedule (longest layout rows first, see forward_logic.hpp). It walks its layout row's
// key blocks (kBlockN = fwd_block_n(D) keys each: 64, and 32 above D = 128) in ascending
// order: full blocks with no mask at all, partial blocks (and the block that sticks out past
// Nk) through element_kept(), which asks the pattern's one keeps() rule. Per block:
//
//   wait K(c) ─ issue V(c) ─ S = Q K(c)^T (mma.sync, operands by ldmatrix) ─ mask? ─ scale
//   wait V(c) ─ issue K(next) ─ online softmax (rows in registers, quad shuffles) ─ O += P V(c)
//
// so the V load overlaps the first product and the next K load overlaps the softmax and the
// second product, with one shared-memory buffer each for Q, K and V (FA2's schedule). Global to
// shared copies are 16-byte cp.async; rows past Nq / Nk are zero-filled in shared memory (never
// read from global memory) and masked or not stored. The epilogue normalises O, stages it
// through shared memory (reusing Q's buffer) for 16-byte row stores, and writes lse (natural
// log) for rows < Nq. A row that sees no key gets out 0 and lse -inf.
//
// Score modifiers (FwdParams::m): the kMods instantiation applies softcap and ALiBi to every
// kept score after scaling (apply_mod, forward_logic.hpp) and adds the sink to each row's
// denominator in the epilogue (sink_finish: a row with no key gets out 0, lse = sink); the
// plain instantiation has none of that code.
//
// Requirements checked by the host launcher: q, k, v, out 16-byte aligned with row, head and
// batch strides multiples of 8 elements and unit last stride (otherwise it repacks), D == Dv ==
// the instantiation's head dim.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/copy_traits_sm80.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm80.hpp>

#include <cuda_runtime_api.h>

#include "common/tile_ops.cuh"
#include "spattn/cuda/forward_logic.hpp"

#ifndef SPATTN_CUDA_ARCH_NS
#error "SPATTN_CUDA_ARCH_NS must name the architecture namespace (set by cuda/CMakeLists.txt)"
#endif

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::fwd {

using namespace cute;
using tileops::acc_as_a;
using tileops::gemm_rs;
using tileops::gemm_ss;
using tileops::load_rows;
using tileops::quad_max;
using tileops::quad_sum;
using tileops::rows_cols;

template <class T, int kD, bool kMods = false>
struct Traits {
  static_assert(kD % 32 == 0 && kD <= 256, "head dims: multiples of 32 up to 256");
  static constexpr int kBlockM = kFwdBlockM;
  static constexpr int kBlockN = fwd_block_n(kD);  // the layout's key tile (forward_tile())
  // 4 warps own 32 query rows each at D <= 64 (D = 32 with the score modifiers); 8 warps (16
  // rows each) otherwise, which keeps the output accumulator at kD / 2 registers per thread:
  // with 4 warps D = 128 needed 255 registers and spilled 246 bytes (sm_80; 154 compiled for
  // sm_90a), now 210-232 and none; D = 64 with the modifiers spilled 74 bytes. A minimum of 1
  // CTA per SM in the launch bounds: without it ptxas, compiling for sm_90a, capped the
  // 256-thread instantiations at 128 registers and spilled up to 2 KB (D = 256).
  static constexpr int kWarps = kD <= 32 || (kD <= 64 && !kMods) ? 4 : 8;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kBlockM % (16 * kWarps) == 0, "each warp owns whole 16-row MMA tiles");
  // Above D = 128 the ldmatrix addresses of every k step (swizzled: not one base plus
  // constants) are recomputed per key block from an opaque thread index: the compiler would
  // otherwise hoist them out of the walk and hold dozens of them beside the 128 accumulator
  // registers (with them, D = 256 spilled 12 to 44 bytes even with 32-key steps). Up to
  // D = 128 there is room, and those kernels keep their measured code.
  static constexpr bool kFreshAddresses = kD > 128;

  using MmaOp = std::conditional_t<std::is_same_v<T, cute::bfloat16_t>,
                                   SM80_16x8x16_F32BF16BF16F32_TN, SM80_16x8x16_F32F16F16F32_TN>;
  // Warps along M; N tile 16 so that one ldmatrix.x4 feeds two n8 MMAs of B.
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;

  // Shared memory: rows of kD elements, swizzled in 8-row x kBlockK atoms so that ldmatrix and
  // the 16-byte cp.async stores are bank-conflict free.
  static constexpr int kBlockK = kD % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleBits = kBlockK == 64 ? 3 : 2;
  using SmemAtom = decltype(composition(
      Swizzle<kSwizzleBits, 3, 3>{},
      Layout<Shape<_8, Int<kBlockK>>, Stride<Int<kBlockK>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kD>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kD>>{}));
  // V^T (kD x kBlockN) as a view of V's buffer: (d, n) -> V(n, d).
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kD>, Int<kBlockN>>{}, GenRowMajor{})));
  static constexpr int kSmemQ = kBlockM * kD;
  static constexpr int kSmemKV = kBlockN * kD;
  static constexpr size_t kSmemBytes = size_t(kSmemQ + 2 * kSmemKV) * sizeof(T);

  // Global <-> shared: 16 bytes (8 elements) per thread and copy, threads along a row first.
  static constexpr int kRowThreads = kBlockK / 8;
  using GmemThreads = Layout<Shape<Int<kThreads / kRowThreads>, Int<kRowThreads>>,
                             Stride<Int<kRowThreads>, _1>>;
  using GmemLoad = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, T>{}, GmemThreads{},
      Layout<Shape<_1, _8>>{}));
  using GmemStore = decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, T>{},
                                             GmemThreads{}, Layout<Shape<_1, _8>>{}));
  using LdsmA = Copy_Atom<SM75_U32x4_LDSM_N, T>;   // Q
  using LdsmB = Copy_Atom<SM75_U32x4_LDSM_N, T>;   // K
  using LdsmBt = Copy_Atom<SM75_U16x8_LDSM_T, T>;  // V^T
  using StsC = Copy_Atom<UniversalCopy<cute::uint32_t>, T>;  // O registers -> shared
};

// kMods: the score modifiers (softcap / ALiBi on the scores, sinks in the epilogue) are
// compiled in; the plain instantiation is the kernel without them, register for register.
template <class T, int kD, bool kMods>
__global__ void __launch_bounds__(Traits<T, kD, kMods>::kThreads, 1)
    forward_kernel(const __grid_constant__ FwdParams p) {
  using Tr = Traits<T, kD, kMods>;
  constexpr int kBlockM = Tr::kBlockM;
  constexpr int kBlockN = Tr::kBlockN;
  extern __shared__ __align__(128) unsigned char smem_raw[];

  const int tid = threadIdx.x;
  const CtaWork w = cta_work(p, int64_t(blockIdx.x));
  const int64_t g = kv_head(p, w.h);
  const int64_t i0 = w.a * kBlockM;
  const int q_rows = tile_rows(p, w.a);

  // ---- tensors
  const T* q_base = static_cast<const T*>(p.q) + q_offset(p, w.b, i0, w.h);
  const T* k_base = static_cast<const T*>(p.k) + k_offset(p, w.b, 0, g);
  const T* v_base = static_cast<const T*>(p.v) + v_offset(p, w.b, 0, g);
  Tensor gQ = make_tensor(make_gmem_ptr(q_base), Shape<Int<kBlockM>, Int<kD>>{},
                          make_stride(p.q_sn, _1{}));
  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem_raw)),
                          typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(sQ.data() + Int<Tr::kSmemQ>{}, typename Tr::SmemLayoutKV{});
  Tensor sV = make_tensor(sK.data() + Int<Tr::kSmemKV>{}, typename Tr::SmemLayoutKV{});
  Tensor sVt = make_tensor(sV.data(), typename Tr::SmemLayoutVt{});

  typename Tr::GmemLoad gload;
  auto gload_thr = gload.get_thread_slice(tid);
  Tensor tQsQ = gload_thr.partition_D(sQ);
  Tensor tKsK = gload_thr.partition_D(sK);
  Tensor tVsV = gload_thr.partition_D(sV);
  Tensor tQcQ = gload_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor tKcK = gload_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kD>>{}));

  auto load_k = [&](int64_t c) {
    Tensor gK = make_tensor(make_gmem_ptr(k_base + c * kBlockN * p.k_sn),
                            Shape<Int<kBlockN>, Int<kD>>{}, make_stride(p.k_sn, _1{}));
    load_rows(gload, gload_thr.partition_S(gK), tKsK, tKcK, block_keys(p, c, kBlockN));
  };
  auto load_v = [&](int64_t c) {
    Tensor gV = make_tensor(make_gmem_ptr(v_base + c * kBlockN * p.v_sn),
                            Shape<Int<kBlockN>, Int<kD>>{}, make_stride(p.v_sn, _1{}));
    load_rows(gload, gload_thr.partition_S(gV), tVsV, tKcK, block_keys(p, c, kBlockN));
  };

  typename Tr::TiledMma mma;
  auto thr_mma = mma.get_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_mma.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVt);  // (MMA, MMA_N = D / 8, MMA_K)
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kD>>{});
  clear(acc_o);

  // ldmatrix partitions are made per block from block_tid() (see kFreshAddresses).
  auto ldsm_q = make_tiled_copy_A(typename Tr::LdsmA{}, mma);
  auto ldsm_k = make_tiled_copy_B(typename Tr::LdsmB{}, mma);
  auto ldsm_v = make_tiled_copy_B(typename Tr::LdsmBt{}, mma);
  auto block_tid = [&]() { return Tr::kFreshAddresses ? tileops::opaque(tid) : tid; };

  // (row, col) of every score this thread holds, in the rows x cols view.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), rows_cols(tScS.layout()));
  constexpr int kRows = decltype(size<0>(tScS_rc))::value;  // rows this thread holds
  constexpr int kCols = decltype(size<1>(tScS_rc))::value;  // score columns per row
  static_assert(kRows * kCols <= 64, "one mask bit per score in a uint64_t");
  // The narrowest word that holds them (32 bits with 32-key steps: 16 bits per thread).
  using KeepBits = std::conditional_t<(kRows * kCols <= 32), uint32_t, uint64_t>;
  const bool rule_exact = range_is_exact(p.pred, w.h);
  const ScoreMod smod = kMods ? score_mod(p, w.h) : ScoreMod{};

  float row_m[kRows], row_l[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    row_m[r] = neg_inf();
    row_l[r] = 0.f;
  }

  // ---- prologue: Q and the first K
  load_rows(gload, gload_thr.partition_S(gQ), tQsQ, tQcQ, q_rows);
  RowWalk walk(p, w.h, w.a);
  int64_t c = 0;
  bool partial = false;
  bool have = walk.next(p, &c, &partial);
  if (have) load_k(c);
  cp_async_fence();

  // ---- the walk
  while (have) {
    // The block's mask, one bit per score this thread holds (bit r * kCols + x), computed
    // before the scores exist so that its registers do not compete with the accumulator.
    const bool masked = block_needs_mask(p, partial, c, kBlockN);
    KeepBits keep = ~KeepBits(0);
    if (masked) {
      const int64_t j0 = c * kBlockN;
      keep = 0;
      if (mask_by_interval(partial, rule_exact)) {
        // One key interval per row: compares only.
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          int64_t lo, hi;
          row_interval(p, partial, w.h, i0 + get<0>(tScS_rc(r, 0)), &lo, &hi);
          lo -= j0;
          hi -= j0;
          CUTE_UNROLL
          for (int x = 0; x < kCols; ++x) {
            const int64_t jj = get<1>(tScS_rc(r, x));
            if (jj >= lo && jj <= hi) keep |= KeepBits(1) << (r * kCols + x);
          }
        }
      } else {
        // The pattern's rule per element, in a rolled loop (keeps() is a small interpreter:
        // unrolled 64 times it would crowd out the accumulators).
#pragma unroll 1
        for (int e = 0; e < kRows * kCols; ++e) {
          const int r = e / kCols, x = e - (e / kCols) * kCols;
          if (element_kept(p, true, w.h, i0 + get<0>(tScS_rc(r, x)), j0 + get<1>(tScS_rc(r, x))))
            keep |= KeepBits(1) << e;
        }
      }
    }

    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cp_async_wait<0>();
    __syncthreads();  // K(c) (and Q) landed; every thread is done with V of the last block
    load_v(c);
    cp_async_fence();
    {
      const int t = block_tid();
      auto lq = ldsm_q.get_thread_slice(t);
      auto lk = ldsm_k.get_thread_slice(t);
      gemm_ss(mma, acc_s, tSrQ, tSrK, lq.partition_S(sQ), lk.partition_S(sK), ldsm_q, ldsm_k, lq, lk);
    }

    Tensor s = make_tensor(acc_s.data(), rows_cols(acc_s.layout()));
    int64_t c_next = 0;
    bool partial_next = false;
    const bool have_next = walk.next(p, &c_next, &partial_next);
    cp_async_wait<0>();
    __syncthreads();  // V(c) landed; every thread is done reading K(c)
    if (have_next) load_k(c_next);
    cp_async_fence();

    // Online softmax on the scores (base 2, scaled), rescaling O by each row's change of max.
    Tensor o = make_tensor(acc_o.data(), rows_cols(acc_o.layout()));
    const float rel0 = kMods ? rel_of(p, i0, c * kBlockN) : 0.f;  // ALiBi's rel at (i0, j0)
    const float rel_step = float(p.m.rel_step);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float mx = row_m[r];
      CUTE_UNROLL
      for (int x = 0; x < kCols; ++x) {
        s(r, x) = score_scaled(s(r, x), p.scale_log2, (keep >> (r * kCols + x)) & 1u);
        if (kMods && p.mods)  // softcap / ALiBi: the same branch in every thread
          s(r, x) = apply_mod(smod, s(r, x),
                              rel0 + rel_step * float(get<0>(tScS_rc(r, x)) - get<1>(tScS_rc(r, x))),
                              nullptr);
        mx = fmax_(mx, s(r, x));
      }
      mx = quad_max(mx);
      const float alpha = softmax_rescale(row_m[r], mx);
      const float ms = softmax_max_safe(mx);
      row_m[r] = mx;
      float sum = 0.f;
      CUTE_UNROLL
      for (int x = 0; x < kCols; ++x) {
        s(r, x) = softmax_p(s(r, x), ms);
        sum += s(r, x);
      }
      row_l[r] = row_l[r] * alpha + sum;  // this thread's part of the row; summed at the end
      CUTE_UNROLL
      for (int x = 0; x < size<1>(o); ++x) o(r, x) *= alpha;
    }

    // P in the input precision, as the A operand of O += P V.
    Tensor rP = make_tensor<T>(acc_s.layout());
    CUTE_UNROLL
    for (int x = 0; x < size(acc_s); ++x) rP(x) = static_cast<T>(acc_s(x));
    Tensor tOrP = make_tensor(rP.data(), acc_as_a(rP.layout()));
    {
      auto lv = ldsm_v.get_thread_slice(block_tid());
      gemm_rs(mma, acc_o, tOrP, tOrVt, lv.partition_S(sVt), ldsm_v, lv);
    }

    c = c_next;
    partial = partial_next;
    have = have_next;
  }

  // ---- epilogue: normalise, stage O through shared memory, store rows < Nq, lse
  cp_async_wait<0>();
  __syncthreads();  // no copy in flight and no thread still reads Q, K or V
  Tensor o = make_tensor(acc_o.data(), rows_cols(acc_o.layout()));
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor tOcO_rc = make_tensor(tOcO.data(), rows_cols(tOcO.layout()));
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    float l = quad_sum(row_l[r]);
    float m = row_m[r];
    const float keep_o = kMods ? sink_finish(p, w.h, &m, &l) : 1.f;  // the sink joins the denominator
    const float inv = softmax_inv_l(l) * keep_o;
    CUTE_UNROLL
    for (int x = 0; x < size<1>(o); ++x) o(r, x) *= inv;
    const int row = get<0>(tOcO_rc(r, 0));
    if (p.lse != nullptr && get<1>(tOcO_rc(r, 0)) == 0 && row < q_rows)
      p.lse[lse_offset(p, w.b, w.h, i0 + row)] = softmax_lse(m, l);
  }
  Tensor rO = make_tensor<T>(acc_o.layout());
  CUTE_UNROLL
  for (int x = 0; x < size(acc_o); ++x) rO(x) = static_cast<T>(acc_o(x));

  Tensor sO = make_tensor(sQ.data(), typename Tr::SmemLayoutQ{});
  auto sts_o = make_tiled_copy_C(typename Tr::StsC{}, mma);
  auto sts_o_thr = sts_o.get_thread_slice(tid);
  copy(sts_o, sts_o_thr.retile_S(rO), sts_o_thr.partition_D(sO));
  __syncthreads();

  T* o_base = static_cast<T*>(p.o) + o_offset(p, w.b, i0, w.h);
  Tensor gO = make_tensor(make_gmem_ptr(o_base), Shape<Int<kBlockM>, Int<kD>>{},
                          make_stride(p.o_sn, _1{}));
  typename Tr::GmemStore gstore;
  auto gstore_thr = gstore.get_thread_slice(tid);
  Tensor tOsO = gstore_thr.partition_S(sO);
  Tensor tOgO = gstore_thr.partition_D(gO);
  Tensor tOcOg = gstore_thr.partition_D(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  CUTE_UNROLL
  for (int m = 0; m < size<1>(tOgO); ++m) {
    if (get<0>(tOcOg(0, m, 0)) < q_rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(tOgO); ++k) copy(gstore, tOsO(_, m, k), tOgO(_, m, k));
    }
  }
}

// Launches one instantiation (with its own thread count: kWarps depends on kMods).
template <class T, int kD, bool kMods>
cudaError_t launch(const FwdParams& p, int64_t ctas, cudaStream_t stream) {
  using Tr = Traits<T, kD, kMods>;
  auto kernel = &forward_kernel<T, kD, kMods>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(Tr::kSmemBytes));
  if (e != cudaSuccess) return e;
  kernel<<<dim3(unsigned(ctas)), dim3(Tr::kThreads), Tr::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// Launches the kernel for one (dtype, head dim) on `stream`; p.d == p.dv == kD.
template <class T, int kD>
cudaError_t run(const FwdParams& p, cudaStream_t stream) {
  const int64_t ctas = fwd_grid_size(p);
  if (ctas == 0) return cudaSuccess;
  if (ctas > int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  return p.mods || p.m.sinks ? launch<T, kD, true>(p, ctas, stream)
                             : launch<T, kD, false>(p, ctas, stream);
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::fwd

// One translation unit per (dtype, head dim, architecture) instantiates this (generated by
// cuda/CMakeLists.txt from fwd_instance.cu.in).
#define SPATTN_FWD_INSTANTIATE(T, D)                                                        \
  namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::fwd {                                        \
  template cudaError_t run<T, D>(const FwdParams&, cudaStream_t);                           \
  }
