// The sm90a (Hopper) forward kernel: TMA loads, wgmma, warp specialisation, a persistent grid.
// A sibling of the sm80-style kernel (fwd/forward_kernel.cuh) sharing its logic, not its code:
// the layout walk, masks, schedule and online-softmax steps are forward_logic.hpp's SPATTN_HD
// functions; the ring, tile and persistent-grid arithmetic is hopper_logic.hpp's.
//
// CTA: 3 warpgroups (384 threads), one CTA per multiprocessor.
//   warpgroup 0, producer (setmaxnreg 24): one thread walks the CTA's work items and their
//     layout rows and issues TMA loads: Q (128 x D) once per item, then K and V of exactly the
//     key blocks the row lists (coordinate c * kBlockN along N: any block order works) into a
//     ring of kStages (K, V) buffers, each with a full (TMA transaction) and an empty
//     (consumer release) mbarrier.
//   warpgroups 1 and 2, consumers (setmaxnreg 240): query rows 0-63 and 64-127 of the tile.
//     Per key block n, with P(n) (the probabilities, input dtype) in registers: mask bits of
//     block n+1 (before its scores, so they never compete with the accumulators) ─ wait K(n+1)
//     ─ issue S(n+1) = Q K(n+1)^T (wgmma, both operands in shared memory) ─ wait V(n) ─ issue
//     O += P(n) V(n) (wgmma, P from registers) ─ wait for S(n+1), release K(n+1) ─ online
//     softmax of S(n+1) (base 2, -inf safe) while P(n) V(n) runs ─ wait, release V(n) ─
//     rescale O ─ P(n+1). The two warpgroups run unsynchronised on the same ring, so one's
//     softmax also overlaps the other's products.
//   Epilogue per item: O normalised, lse written (natural log; -inf and out 0 for rows that
//     see nothing), O converted into shared memory, fence.proxy.async, a named barrier of the
//     256 consumer threads, one TMA store of the tile (rows past Nq are clipped by the TMA
//     unit). D <= 128: O has a buffer of its own (free again once the previous store has read
//     it), and Q's buffer is released by every consumer warp right after its item's last
//     score product, so the next item's Q and first K/V load during this item's last P V and
//     epilogue. D = 256 (no room): O is staged in Q's buffer (each warpgroup overwrites only
//     its own Q rows) and Q is released once the store has read it.
//
// Full key blocks skip the mask unless they stick out past Nk (TMA zero-fills keys past Nk,
// the mask drops them); partial blocks use row_interval() (one window) or element_kept() ->
// keeps(), the one rule of predicate.hpp.
#pragma once

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/copy_traits_sm90.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cuda_runtime_api.h>

#include "spattn/cuda/forward_logic.hpp"
#include "spattn/cuda/hopper_logic.hpp"

namespace spattn::cuda::sm90a::fwd90 {

using namespace cute;

template <class T, int kD>
struct Traits90 {
  static_assert(hopper_head_dim(kD), "the sm90a forward kernel has head dims 64, 128, 256");
  static constexpr int kBlockM = kHopperBlockM;
  static constexpr int kBlockN = hopper_block_n(kD);
  static constexpr int kStages = hopper_stages(kD);
  static constexpr int kConsumerWGs = 2;
  static constexpr int kConsumerThreads = 128 * kConsumerWGs;
  static constexpr int kConsumerWarps = kConsumerThreads / 32;
  static constexpr int kThreads = 128 + kConsumerThreads;

  // Each consumer warpgroup owns 64 rows: the tiled MMAs stack two 64-row atoms along M.
  using AtomLayout = Layout<Shape<Int<kConsumerWGs>, _1, _1>>;
  using MmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kBlockN>, Int<kD>>>(), AtomLayout{}));
  using MmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<T, T, float, Shape<_64, Int<kD>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      AtomLayout{}));

  // Q, K, V rows of D contiguous elements in 128-byte swizzled atoms (8 rows x 64 elements),
  // the layout both TMA and wgmma read. V^T for the PV product is a view of V's buffer
  // ((d, n, stage) -> V(n, d, stage)), read by wgmma as an MN-major operand.
  using SmemAtom = GMMA::Layout_K_SW128_Atom<T>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kD>>{}));
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kD>, Int<kStages>>{}));
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{},
      make_ordered_layout(Shape<Int<kD>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  static constexpr uint32_t kQBytes = uint32_t(kBlockM * kD * sizeof(T));
  static constexpr uint32_t kKVBytes = uint32_t(kBlockN * kD * sizeof(T));

  static constexpr bool kSeparateO = hopper_separate_o(kD);
  struct Smem {
    cute::array_aligned<T, cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<T, kSeparateO ? cute::cosize_v<SmemLayoutQ> : 8, 1024> o;
    cute::array_aligned<T, cute::cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<T, cute::cosize_v<SmemLayoutKV>, 1024> v;
    uint64_t q_full, q_empty;
    uint64_t k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages];
  };
  static constexpr size_t kSmemBytes = sizeof(Smem);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one Hopper CTA");
  static_assert(kSmemBytes >= size_t(hopper_smem_bytes(kD, int(sizeof(T)))),
                "hopper_smem_bytes() counts every buffer");

  // Global tensors as TMA sees them: (n, d, head, batch), strides in elements.
  using GShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GTensorIn =
      decltype(make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), GShape{}, GStride{}));
  using GTensorOut =
      decltype(make_tensor(make_gmem_ptr(static_cast<T*>(nullptr)), GShape{}, GStride{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kD>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{},
                                       take<0, 2>(SmemLayoutKV{}),
                                       Shape<Int<kBlockN>, Int<kD>>{}, _1{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, GTensorOut{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kD>>{}, _1{}));
};

template <class T, int kD>
struct Params90 {
  FwdParams p;
  typename Traits90<T, kD>::TmaQ tma_q;
  typename Traits90<T, kD>::TmaKV tma_k;
  typename Traits90<T, kD>::TmaKV tma_v;
  typename Traits90<T, kD>::TmaO tma_o;
  int32_t nk_tma;  // Nk as the K/V descriptors know it (1 when Nk = 0: no block is loaded)
};

// The wgmma accumulator ((2 cols, 2 row halves, N / 8), MMA_M, MMA_N) seen as
// (rows, cols) = ((2 row halves, MMA_M), (2 cols, N / 8, MMA_N)).
template <class L>
__device__ __forceinline__ auto rows_cols90(L const& acc) {
  static_assert(decltype(rank(acc))::value == 3 && decltype(rank<0>(acc))::value == 3);
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

// The score accumulator as the register A operand of the PV wgmma (k = 16 per instruction):
// ((2, 2, N / 8), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, (N / 16, MMA_N)).
template <class L>
__device__ __forceinline__ auto acc_as_a90(L const& acc) {
  auto l = logical_divide(get<0>(acc), Shape<X, X, _2>{});  // (2, 2, (2, N / 16))
  return make_layout(make_layout(get<0>(l), get<1>(l), get<2, 0>(l)), get<1>(acc),
                     coalesce(make_layout(get<2, 1>(l), get<2>(acc))));
}

__device__ __forceinline__ float quad_max90(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum90(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// One warpgroup product acc (=|+=) A B over the k mode, issued and committed as one group;
// kWait >= 0 then waits until at most kWait groups are in flight, -1 returns at once (the
// caller waits later with warpgroup_wait and fences the accumulator then).
template <bool kZeroInit, int kWait, class Mma, class TA, class TB, class TC>
__device__ __forceinline__ void wg_gemm(Mma& mma, TA const& a, TB const& b, TC& c) {
  // A from registers (P) or from shared memory (GMMA descriptors, never fenced).
  constexpr bool kARegs =
      !std::is_same_v<typename TA::engine_type::iterator, GMMA::DescriptorIterator>;
  warpgroup_fence_operand(c);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(a));
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  if constexpr (kWait >= 0) {
    warpgroup_wait<kWait>();
    warpgroup_fence_operand(c);
    if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(a));
  }
}

// The 256 consumer threads' named barrier (id 1; 0 is __syncthreads).
__device__ __forceinline__ void consumers_sync(int threads) {
  asm volatile("bar.sync 1, %0;\n" ::"r"(threads) : "memory");
}

template <class T, int kD>
__device__ __forceinline__ void producer(const Params90<T, kD>& P,
                                         typename Traits90<T, kD>::Smem& S) {
  using Tr = Traits90<T, kD>;
  constexpr int kBlockM = Tr::kBlockM, kBlockN = Tr::kBlockN, kStages = Tr::kStages;
  const FwdParams& p = P.p;
  Tensor mQ = P.tma_q.get_tma_tensor(make_shape(int32_t(p.nq), int32_t(kD), int32_t(p.hq),
                                                int32_t(p.b)));
  Tensor mK = P.tma_k.get_tma_tensor(make_shape(P.nk_tma, int32_t(kD), int32_t(p.hkv),
                                                int32_t(p.b)));
  Tensor mV = P.tma_v.get_tma_tensor(make_shape(P.nk_tma, int32_t(kD), int32_t(p.hkv),
                                                int32_t(p.b)));
  Tensor sQ = make_tensor(make_smem_ptr(S.q.data()), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(S.k.data()), typename Tr::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(S.v.data()), typename Tr::SmemLayoutKV{});

  PipeState kv;
  uint32_t q_phase = 0;
  for (PersistentWork wk(blockIdx.x, gridDim.x, fwd_grid_size(p)); wk.valid(); wk.advance()) {
    const CtaWork w = cta_work(p, wk.item);
    const int64_t g = kv_head(p, w.h);
    Tensor gQ = local_tile(mQ(_, _, w.h, w.b), Shape<Int<kBlockM>, Int<kD>>{},
                           make_coord(w.a, _0{}));
    auto [tQgQ, tQsQ] = tma_partition(P.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                      group_modes<0, 2>(gQ));
    // Q's buffer is free once every consumer warp's last score product of the last item is
    // done (D <= 128), or once that item's O store has read it (D = 256: O staged in Q).
    wait_barrier(S.q_empty, q_phase ^ 1u);
    set_barrier_transaction_bytes(S.q_full, Tr::kQBytes);
    // L2 policy: a Q tile is read once, K and V blocks by every query tile of the head (and
    // of its GQA group) that lists them.
    copy(P.tma_q.with(S.q_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tQgQ, tQsQ);
    q_phase ^= 1u;

    // (bn, D, key block) views: key block c is rows [c * kBlockN, (c + 1) * kBlockN), wherever
    // it comes in the walk.
    Tensor gK = local_tile(mK(_, _, g, w.b), Shape<Int<kBlockN>, Int<kD>>{},
                           make_coord(_, _0{}));
    Tensor gV = local_tile(mV(_, _, g, w.b), Shape<Int<kBlockN>, Int<kD>>{},
                           make_coord(_, _0{}));
    auto [tKgK, tKsK] = tma_partition(P.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                      group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(P.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                      group_modes<0, 2>(gV));
    RowWalk walk(p, w.h, w.a);
    int64_t c = 0;
    bool partial = false;
    while (walk.next(p, &c, &partial)) {
      wait_barrier(S.k_empty[kv.stage], kv.producer_wait_parity());
      set_barrier_transaction_bytes(S.k_full[kv.stage], Tr::kKVBytes);
      copy(P.tma_k.with(S.k_full[kv.stage], 0, TMA::CacheHintSm90::EVICT_LAST), tKgK(_, c),
           tKsK(_, kv.stage));
      wait_barrier(S.v_empty[kv.stage], kv.producer_wait_parity());
      set_barrier_transaction_bytes(S.v_full[kv.stage], Tr::kKVBytes);
      copy(P.tma_v.with(S.v_full[kv.stage], 0, TMA::CacheHintSm90::EVICT_LAST), tVgV(_, c),
           tVsV(_, kv.stage));
      kv.advance(kStages);
    }
  }
}

template <class T, int kD>
__device__ __forceinline__ void consumer(const Params90<T, kD>& P,
                                         typename Traits90<T, kD>::Smem& S, int ctid) {
  using Tr = Traits90<T, kD>;
  constexpr int kBlockM = Tr::kBlockM, kBlockN = Tr::kBlockN, kStages = Tr::kStages;
  const FwdParams& p = P.p;
  const int lane = ctid % 32;

  Tensor sQ = make_tensor(make_smem_ptr(S.q.data()), typename Tr::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(S.k.data()), typename Tr::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(S.v.data()), typename Tr::SmemLayoutVt{});

  typename Tr::MmaQK mma_qk;
  typename Tr::MmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(ctid);
  auto thr_pv = mma_pv.get_thread_slice(ctid);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // descriptors (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
  Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kD>>{});

  // (row, col) of every score and output element this thread holds.
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), rows_cols90(tScS.layout()));
  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor tOcO_rc = make_tensor(tOcO.data(), rows_cols90(tOcO.layout()));
  constexpr int kRows = decltype(size<0>(tScS_rc))::value;
  constexpr int kCols = decltype(size<1>(tScS_rc))::value;
  static_assert(kRows * kCols <= 64, "one mask bit per score in a uint64_t");

  Tensor sO = make_tensor(make_smem_ptr(Tr::kSeparateO ? S.o.data() : S.q.data()),
                          typename Tr::SmemLayoutQ{});
  // stmatrix: 8 x 8 tiles of 16-bit values per instruction, into the swizzled rows.
  auto sts_o = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, T>{}, mma_pv);
  auto sts_o_thr = sts_o.get_thread_slice(ctid);
  Tensor tOsO = sts_o_thr.partition_D(sO);

  PipeState kv;
  uint32_t q_phase = 0;
  for (PersistentWork wk(blockIdx.x, gridDim.x, fwd_grid_size(p)); wk.valid(); wk.advance()) {
    const CtaWork w = cta_work(p, wk.item);
    const int64_t i0 = w.a * kBlockM;
    const int q_rows = tile_rows(p, w.a);
    const bool rule_exact = range_is_exact(p.pred, w.h);
    float row_m[kRows], row_l[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_m[r] = neg_inf();
      row_l[r] = 0.f;
    }
    clear(acc_o);
    wait_barrier(S.q_full, q_phase);
    q_phase ^= 1u;

    // Mask bits of a block (bit r * kCols + x), computed before its scores exist so that they
    // never compete with the accumulators for registers.
    auto block_mask = [&](int64_t c, bool partial) -> uint64_t {
      if (!block_needs_mask_n(p.nk, kBlockN, partial, c)) return ~uint64_t(0);
      const int64_t j0 = c * kBlockN;
      uint64_t keep = 0;
      if (mask_by_interval(partial, rule_exact)) {
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          int64_t lo, hi;
          row_interval(p, partial, w.h, i0 + get<0>(tScS_rc(r, 0)), &lo, &hi);
          lo -= j0;
          hi -= j0;
          CUTE_UNROLL
          for (int x = 0; x < kCols; ++x) {
            const int64_t jj = get<1>(tScS_rc(r, x));
            if (jj >= lo && jj <= hi) keep |= uint64_t(1) << (r * kCols + x);
          }
        }
      } else {
        // keeps() is a small interpreter: a rolled loop keeps it out of the accumulators'
        // registers.
#pragma unroll 1
        for (int e = 0; e < kRows * kCols; ++e) {
          const int r = e / kCols, x = e - (e / kCols) * kCols;
          if (element_kept(p, true, w.h, i0 + get<0>(tScS_rc(r, x)), j0 + get<1>(tScS_rc(r, x))))
            keep |= uint64_t(1) << e;
        }
      }
      return keep;
    };

    // Online softmax of one score tile, base 2: new row maxima, exponentials in place, row
    // sums; alpha[r] is the factor O must be rescaled by before this tile's P V is added (O
    // itself is not touched here: the previous block's P V may still be in flight).
    float alpha[kRows];
    auto softmax_step = [&](auto& acc, uint64_t keep, int64_t c) {
      Tensor s = make_tensor(acc.data(), rows_cols90(acc.layout()));
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        float mx = row_m[r];
        CUTE_UNROLL
        for (int x = 0; x < kCols; ++x) {
          s(r, x) = score_scaled(s(r, x), p.scale_log2, (keep >> (r * kCols + x)) & 1u);
          // Softcap / ALiBi: a kernel parameter, the same branch in every thread. Everything is
          // computed inside the branch: values kept live across the loop would cost registers
          // (this kernel has 168, and the plain path shares the allocation).
          if (p.mods)
            s(r, x) = modified_score(p, w.h, i0 + get<0>(tScS_rc(r, x)),
                                     c * kBlockN + get<1>(tScS_rc(r, x)), s(r, x), nullptr);
          mx = fmax_(mx, s(r, x));
        }
        mx = quad_max90(mx);
        alpha[r] = softmax_rescale(row_m[r], mx);
        const float ms = softmax_max_safe(mx);
        row_m[r] = mx;
        float sum = 0.f;
        CUTE_UNROLL
        for (int x = 0; x < kCols; ++x) {
          s(r, x) = softmax_p(s(r, x), ms);
          sum += s(r, x);
        }
        row_l[r] = row_l[r] * alpha[r] + sum;  // this thread's part of the row
      }
    };
    auto rescale_o = [&]() {
      Tensor o = make_tensor(acc_o.data(), rows_cols90(acc_o.layout()));
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int x = 0; x < size<1>(o); ++x) o(r, x) *= alpha[r];
      }
    };

    // P of the current block in the input dtype: the register A operand of O += P V, and the
    // one value carried from block to block (the score tile is new in every iteration, so
    // the next block's product never writes registers an instruction still reads).
    Tensor rP = make_tensor<T>(
        partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{}).layout());
    Tensor tOrP = make_tensor(rP.data(), acc_as_a90(rP.layout()));
    auto to_p = [&](auto const& acc) {
      CUTE_UNROLL
      for (int x = 0; x < size(acc); ++x) rP(x) = static_cast<T>(acc(x));
    };

    // Per block n, with P(n) in registers:
    //   issue S(n+1) = Q K(n+1)^T ─ issue O += P(n) V(n) ─ wait S(n+1), release K(n+1),
    //   softmax of S(n+1) while P(n) V(n) runs ─ wait, release V(n) ─ rescale O ─ P(n+1).
    // So one block's exponentials overlap the other block's products within the warpgroup,
    // besides the overlap between the two warpgroups.
    RowWalk walk(p, w.h, w.a);
    int64_t c = 0;
    bool partial = false;
    bool have = walk.next(p, &c, &partial);
    if (have) {
      Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      const uint64_t keep = block_mask(c, partial);
      wait_barrier(S.k_full[kv.stage], kv.consumer_wait_parity());
      wg_gemm<true, 0>(mma_qk, tSrQ, tSrK(_, _, _, kv.stage), acc_s);
      __syncwarp();
      if (lane == 0) arrive_barrier(S.k_empty[kv.stage]);
      softmax_step(acc_s, keep, c);  // O is still 0: no rescale
      to_p(acc_s);
    }
    // Every block but the last: its successor's S overlaps its P V (no branch inside the
    // loop, so the compiler can keep both products in flight).
    while (have && walk.next(p, &c, &partial)) {
      PipeState kv_next = kv;
      kv_next.advance(kStages);
      Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      const uint64_t keep_next = block_mask(c, partial);
      wait_barrier(S.k_full[kv_next.stage], kv_next.consumer_wait_parity());
      wg_gemm<true, -1>(mma_qk, tSrQ, tSrK(_, _, _, kv_next.stage), acc_s);
      wait_barrier(S.v_full[kv.stage], kv.consumer_wait_parity());
      wg_gemm<false, -1>(mma_pv, tOrP, tOrV(_, _, _, kv.stage), acc_o);
      warpgroup_wait<1>();  // S(n+1) done (groups complete in order); P V still runs
      warpgroup_fence_operand(acc_s);
      __syncwarp();
      if (lane == 0) arrive_barrier(S.k_empty[kv_next.stage]);
      softmax_step(acc_s, keep_next, c);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_o);
      warpgroup_fence_operand(rP);
      __syncwarp();
      if (lane == 0) arrive_barrier(S.v_empty[kv.stage]);
      rescale_o();
      to_p(acc_s);
      kv = kv_next;
    }
    if constexpr (Tr::kSeparateO) {
      // Every score product of this item is done: Q's buffer may take the next item's Q.
      __syncwarp();
      if (lane == 0) arrive_barrier(S.q_empty);
    }
    if (have) {  // the last block's P V
      wait_barrier(S.v_full[kv.stage], kv.consumer_wait_parity());
      wg_gemm<false, 0>(mma_pv, tOrP, tOrV(_, _, _, kv.stage), acc_o);
      __syncwarp();
      if (lane == 0) arrive_barrier(S.v_empty[kv.stage]);
      kv.advance(kStages);
    }

    // ---- epilogue
    Tensor o = make_tensor(acc_o.data(), rows_cols90(acc_o.layout()));
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float l = quad_sum90(row_l[r]);
      float m = row_m[r];
      const float keep_o = sink_finish(p, w.h, &m, &l);  // the sink joins the denominator
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
    if constexpr (Tr::kSeparateO) {
      // O's own buffer: free once the last item's store has read it.
      if (ctid == 0) tma_store_wait<0>();
      consumers_sync(Tr::kConsumerThreads);
    }
    // With O in Q's buffer, each warpgroup writes only its own rows of it: its last product
    // has completed (wg_gemm waits), and the other warpgroup never reads them.
    copy(sts_o, sts_o_thr.retile_S(rO), tOsO);
    tma_store_fence();  // the generic-proxy writes, visible to the TMA unit
    consumers_sync(Tr::kConsumerThreads);
    if (ctid == 0) {
      Tensor mO = P.tma_o.get_tma_tensor(make_shape(int32_t(p.nq), int32_t(kD), int32_t(p.hq),
                                                    int32_t(p.b)));
      Tensor gO = local_tile(mO(_, _, w.h, w.b), Shape<Int<kBlockM>, Int<kD>>{},
                             make_coord(w.a, _0{}));
      auto [tOgO, tOsO_t] = tma_partition(P.tma_o, _0{}, Layout<_1>{}, group_modes<0, 2>(sO),
                                          group_modes<0, 2>(gO));
      copy(P.tma_o, tOsO_t, tOgO);
      tma_store_arrive();
      if constexpr (!Tr::kSeparateO) {
        tma_store_wait<0>();  // shared memory read: Q's buffer may be refilled
        arrive_barrier(S.q_empty);
      }
    }
  }
  if (ctid == 0) tma_store_wait<0>();
}

template <class T, int kD>
__global__ void __launch_bounds__(Traits90<T, kD>::kThreads, 1)
    fwd90_kernel(const __grid_constant__ Params90<T, kD> P) {
  using Tr = Traits90<T, kD>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& S = *reinterpret_cast<typename Tr::Smem*>(smem_raw);
  const int tid = int(threadIdx.x);
  const int wg = tid / 128;

  if (tid == 0) {
    prefetch_tma_descriptor(P.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_v.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_o.get_tma_descriptor());
    initialize_barrier(S.q_full, 1);
    // Q is released by every consumer warp after its last score product (separate O), or by
    // the thread that stored O from Q's buffer.
    initialize_barrier(S.q_empty, Tr::kSeparateO ? Tr::kConsumerWarps : 1);
    for (int s = 0; s < Tr::kStages; ++s) {
      initialize_barrier(S.k_full[s], 1);
      initialize_barrier(S.v_full[s], 1);
      initialize_barrier(S.k_empty[s], Tr::kConsumerWarps);
      initialize_barrier(S.v_empty[s], Tr::kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    cutlass::arch::warpgroup_reg_dealloc<24>();
    if (tid == 0) producer<T, kD>(P, S);
  } else {
    cutlass::arch::warpgroup_reg_alloc<240>();
    consumer<T, kD>(P, S, tid - 128);
  }
}

// TMA wants every stride a multiple of 16 bytes; a dimension of extent 1 may have any stride
// in the tensor, so it gets one that satisfies the unit (never used to step).
inline int64_t tma_stride(int64_t stride, int64_t extent) { return extent > 1 ? stride : 8; }

// What cuTensorMapEncodeTiled accepts (the launcher repacks other tensors; checked again here
// because a refused descriptor would only be reported on stderr): a 16-byte aligned base and,
// for every dimension of extent > 1, a positive stride of a multiple of 16 bytes below 2^40.
template <class T>
bool tma_ok(const void* ptr, const int64_t (&strides)[3], const int64_t (&extents)[3]) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  for (int i = 0; i < 3; ++i) {
    const int64_t bytes = strides[i] * int64_t(sizeof(T));
    if (extents[i] > 1 && (bytes <= 0 || bytes % 16 != 0 || bytes >= (int64_t(1) << 40)))
      return false;
  }
  return true;
}

// Launches the persistent kernel on `stream`; p.d == p.dv == kD, pointers 16-byte aligned,
// strides of extent > 1 positive multiples of 8 elements (the launcher checks).
template <class T, int kD>
cudaError_t run90(const FwdParams& p, cudaStream_t stream) {
  using Tr = Traits90<T, kD>;
  const int64_t items = fwd_grid_size(p);
  if (items == 0) return cudaSuccess;
  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  const int64_t grid = persistent_grid(items, sms);

  if (!tma_ok<T>(p.q, {p.q_sn, p.q_sh, p.q_sb}, {p.nq, p.hq, p.b}) ||
      !tma_ok<T>(p.o, {p.o_sn, p.o_sh, p.o_sb}, {p.nq, p.hq, p.b}) ||
      (p.nk > 0 && (!tma_ok<T>(p.k, {p.k_sn, p.k_sh, p.k_sb}, {p.nk, p.hkv, p.b}) ||
                    !tma_ok<T>(p.v, {p.v_sn, p.v_sh, p.v_sb}, {p.nk, p.hkv, p.b}))))
    return cudaErrorInvalidValue;

  Params90<T, kD> P;
  P.p = p;
  P.nk_tma = int32_t(p.nk > 0 ? p.nk : 1);
  const T* kp = static_cast<const T*>(p.nk > 0 ? p.k : p.q);
  const T* vp = static_cast<const T*>(p.nk > 0 ? p.v : p.q);
  const int64_t kb = p.nk > 0 ? 1 : 0;  // with Nk = 0 the K/V descriptors point at q
  auto in = [](const T* ptr, int64_t n, int64_t h, int64_t b, int64_t sn, int64_t sh,
               int64_t sb) {
    return make_tensor(make_gmem_ptr(ptr),
                       make_shape(int32_t(n), int32_t(kD), int32_t(h), int32_t(b)),
                       make_stride(tma_stride(sn, n), _1{}, tma_stride(sh, h),
                                   tma_stride(sb, b)));
  };
  P.tma_q = make_tma_copy(SM90_TMA_LOAD{}, in(static_cast<const T*>(p.q), p.nq, p.hq, p.b,
                                              p.q_sn, p.q_sh, p.q_sb),
                          typename Tr::SmemLayoutQ{}, Shape<Int<Tr::kBlockM>, Int<kD>>{}, _1{});
  P.tma_k = make_tma_copy(SM90_TMA_LOAD{},
                          in(kp, P.nk_tma, p.hkv, p.b, kb ? p.k_sn : p.q_sn,
                             kb ? p.k_sh : p.q_sh, kb ? p.k_sb : p.q_sb),
                          take<0, 2>(typename Tr::SmemLayoutKV{}),
                          Shape<Int<Tr::kBlockN>, Int<kD>>{}, _1{});
  P.tma_v = make_tma_copy(SM90_TMA_LOAD{},
                          in(vp, P.nk_tma, p.hkv, p.b, kb ? p.v_sn : p.q_sn,
                             kb ? p.v_sh : p.q_sh, kb ? p.v_sb : p.q_sb),
                          take<0, 2>(typename Tr::SmemLayoutKV{}),
                          Shape<Int<Tr::kBlockN>, Int<kD>>{}, _1{});
  P.tma_o = make_tma_copy(
      SM90_TMA_STORE{},
      make_tensor(make_gmem_ptr(static_cast<T*>(p.o)),
                  make_shape(int32_t(p.nq), int32_t(kD), int32_t(p.hq), int32_t(p.b)),
                  make_stride(tma_stride(p.o_sn, p.nq), _1{}, tma_stride(p.o_sh, p.hq),
                              tma_stride(p.o_sb, p.b))),
      typename Tr::SmemLayoutQ{}, Shape<Int<Tr::kBlockM>, Int<kD>>{}, _1{});

  auto kernel = &fwd90_kernel<T, kD>;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           int(Tr::kSmemBytes));
  if (e != cudaSuccess) return e;
  kernel<<<dim3(unsigned(grid)), dim3(Tr::kThreads), Tr::kSmemBytes, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::sm90a::fwd90

#define SPATTN_FWD90_INSTANTIATE(T, D)                                                   \
  namespace spattn::cuda::sm90a::fwd90 {                                                 \
  template cudaError_t run90<T, D>(const FwdParams&, cudaStream_t);                      \
  }
