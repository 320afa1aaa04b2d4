// The sm90a (Hopper) backward kernels: TMA loads, wgmma, warp specialisation, persistent grids,
// no atomics. Siblings of the sm80-style backward (bwd/backward_kernel.cuh) sharing its logic:
// the transposed layout and its walk (ColumnWalk), the per-element math (bwd_prob, bwd_ds), the
// preprocess (delta = rowsum(dO * O), lse2); the forward's row walk, schedule and element rule;
// hopper_bwd_logic.hpp's tile and mask bits. Building blocks are the sm90a forward's
// (fwd90_kernel.cuh): the wgmma issue helper, accumulator views, TMA descriptors, PipeState
// rings of full / empty mbarriers, PersistentWork.
//
// Both kernels: 3 warpgroups (384 threads), one CTA per multiprocessor; warpgroup 0 produces
// (one thread issues TMA; setmaxnreg 24), warpgroups 1 and 2 consume (setmaxnreg 240). One
// layout compiled for 128 x 128 tiles; the other dimension of each product is taken in halves
// of 64 (kHopperBwdHalf) so that the score tiles fit beside the accumulators.
//
// dK/dV kernel (key-major). Work item: (batch, kv head g, key tile c). K and V of the tile are
// loaded once (TMA); consumer warpgroup w owns keys [64 w, 64 w + 64). The producer walks the
// transposed layout's column (every query head h of g's group, query tiles in ascending order)
// and loads per visit Q and dO (128 x D, TMA) and lse2, delta (512 bytes each, bulk copies)
// into a ring. Per visit and part (hopper_bwd_kv_sub(D) = 64 queries),
// per warpgroup:
//   S^T = K Q^T, dP^T = V dO^T            (wgmma, both operands in shared memory)
//   P^T = exp2(S^T scale_log2 - lse2)     (masked: 0)
//   dS^T = P^T (dP^T - delta)
//   dV += P^T dO, dK += dS^T Q            (wgmma, P^T / dS^T from registers, dO^T / Q^T as
//                                          MN-major views of the ring buffers)
// Epilogue: dK *= scale, dK and dV into the K and V buffers (each warpgroup its own rows,
// stmatrix), one TMA store each (keys past Nk clipped by the TMA unit), then K/V are released.
//
// dQ kernel (query-major), the forward's structure. Work item: (batch, query head h, query tile
// a) in the forward's schedule. Q, dO, lse2, delta loaded once per item; K and V of exactly the
// blocks the layout row lists into a ring; warpgroup w owns rows [64 w, 64 w + 64). Per block and
// half (64 keys): S = Q K^T, dP = dO V^T, P, dS as above, dQ += dS K (K^T an MN-major view).
// Epilogue: dQ *= scale into Q's buffer (own rows), one TMA store, Q released.
//
// dQ by TMA reduce-add instead (HopperDq::Tma, SPATTN_CUDA_DQ=tma; hopper_dq_tma_logic.hpp):
// the dK/dV kernel instantiated with kTmaDq also forms, per visit and part, dQ_part = dS K
// (64 queries x D, fp32) and adds it into the [B, Hq, nq_pad, D] accumulator with one TMA
// reduce-add; the dQ kernel does not run, a conversion kernel writes dq = scale * accumulator.
// Per part, once dV += P^T dO and dK += dS^T Q are complete:
//   the thread that issued the previous part's reduce-add waits for its reads of the staging
//     tile (cp.async.bulk.wait_group.read 0), ahead of the next barrier;
//   dS^T -> the dS tile (stmatrix; each warpgroup its 64 key rows), fence.proxy.async (wgmma
//     reads shared memory through the async proxy), barrier: both warpgroups' rows are there;
//   dQ_part = dS K (wgmma, dS as an MN-major view of the dS tile, K^T one of K's buffer; the
//     warpgroups split D, since each needs all 128 keys);
//   acc -> the fp32 staging tile, fence.proxy.async (the TMA unit reads it through the async
//     proxy), barrier, one thread issues cp.reduce.async.bulk.tensor (add) and commits it as a
//     bulk group.
// At D = 128 the staging tile shares the dS tile's bytes (hopper_dq_tma_aliased: both would
// not fit in 227 KB beside the rings): then also a barrier after the wait (before the dS
// writes) and one between the dQ products' reads of dS and the staging writes.
//
// Masks: a block needs one when partial or sticking out past Nk (hopper_bwd_needs_mask); then
// fragment_keep_bits (row_interval per query, or element_kept -> keeps(): the rule of
// predicate.hpp, one definition for CPU, sm80 and sm90a). Query rows past Nq need none (TMA
// zero-fills Q and dO, lse2 is +inf there: P = 0, dS = 0).
//
// Score modifiers (softcap, ALiBi, sinks) are not applied here yet: they belong where P^T and P
// are formed from the raw scores (see "score -> P" below), and in dS (softcap's derivative).
#pragma once

#include <cute/arch/copy_sm90_tma.hpp>

#include "sm90a/fwd90_kernel.cuh"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/hopper_bwd_logic.hpp"
#include "spattn/cuda/hopper_dq_tma_logic.hpp"

namespace spattn::cuda::sm90a::bwd90 {

using namespace cute;
using fwd90::acc_as_a90;
using fwd90::consumers_sync;
using fwd90::rows_cols90;
using fwd90::wg_gemm;

template <class T, int kD>
struct Traits {
  static_assert(hopper_bwd_head_dim(kD), "the sm90a backward kernels have head dims 64, 128");
  static constexpr int kTile = kHopperBwdBlockM;  // 128 rows of Q, dO, K, V per TMA box
  static_assert(kHopperBwdBlockM == kHopperBwdBlockN, "one tile shape for every operand");
  // Columns of the S / dP tiles per product: 64 (kHopperBwdHalf) in the dQ kernel, and
  // hopper_bwd_kv_sub(D) (also 64) in the dK/dV kernel.
  static constexpr int kHalf = kHopperBwdHalf;
  static constexpr int kSubKV = hopper_bwd_kv_sub(kD);
  static constexpr int kStages = hopper_bwd_stages(kD);
  static constexpr int kConsumerThreads = 256;
  static constexpr int kConsumerWarps = 8;
  static constexpr int kThreads = 128 + kConsumerThreads;

  // Two 64-row atoms along M, one per consumer warpgroup.
  using AtomLayout = Layout<Shape<_2, _1, _1>>;
  // S, dP (and S^T, dP^T): (128 rows, 64 cols) over k = D, both operands in shared memory.
  using MmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kHalf>, Int<kD>>>(), AtomLayout{}));
  // dV, dK, dQ: (128 rows, D) over k = 64, A (P^T, dS^T, dS) from registers, B an MN-major view.
  using MmaAcc = decltype(make_tiled_mma(
      GMMA::rs_op_selector<T, T, float, Shape<_64, Int<kD>, Int<kHalf>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      AtomLayout{}));
  // The dK/dV kernel's pair: S^T, dP^T of (128 keys, kSubKV queries); dK, dV over k = kSubKV.
  using MmaSdPKV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<kSubKV>, Int<kD>>>(), AtomLayout{}));
  using MmaAccKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<T, T, float, Shape<_64, Int<kD>, Int<kSubKV>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      AtomLayout{}));

  // Every tile is 128 rows of D contiguous elements in 128-byte swizzled atoms (TMA and wgmma
  // read the same layout). *T: the transposed view ((d, row) -> tile(row, d)), read by wgmma as
  // an MN-major operand.
  using SmemAtom = GMMA::Layout_K_SW128_Atom<T>;
  using LayoutTile = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTile>, Int<kD>>{}));
  using LayoutTileT = decltype(composition(
      LayoutTile{}, make_ordered_layout(Shape<Int<kD>, Int<kTile>>{}, Step<_2, _1>{})));
  using LayoutRing =
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTile>, Int<kD>, Int<kStages>>{}));
  using LayoutRingT = decltype(composition(
      LayoutRing{},
      make_ordered_layout(Shape<Int<kD>, Int<kTile>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  static constexpr uint32_t kTileBytes = uint32_t(kTile * kD * sizeof(T));
  static constexpr uint32_t kStatBytes = uint32_t(kHopperBwdStatBytes);

  // dK/dV kernel: K, V resident; (Q, dO, lse2, delta) ring.
  struct SmemKV {
    cute::array_aligned<T, cute::cosize_v<LayoutTile>, 1024> k;
    cute::array_aligned<T, cute::cosize_v<LayoutTile>, 1024> v;
    cute::array_aligned<T, cute::cosize_v<LayoutRing>, 1024> q;
    cute::array_aligned<T, cute::cosize_v<LayoutRing>, 1024> dout;
    cute::array_aligned<float, kTile * kStages, 128> lse2;
    cute::array_aligned<float, kTile * kStages, 128> delta;
    uint64_t kv_full, kv_empty;
    uint64_t q_full[kStages], q_empty[kStages];
  };
  // dQ kernel: Q, dO, lse2, delta resident; (K, V) ring.
  struct SmemQ {
    cute::array_aligned<T, cute::cosize_v<LayoutTile>, 1024> q;
    cute::array_aligned<T, cute::cosize_v<LayoutTile>, 1024> dout;
    cute::array_aligned<T, cute::cosize_v<LayoutRing>, 1024> k;
    cute::array_aligned<T, cute::cosize_v<LayoutRing>, 1024> v;
    cute::array_aligned<float, kTile, 128> lse2;
    cute::array_aligned<float, kTile, 128> delta;
    uint64_t q_full, q_empty;
    uint64_t kv_full[kStages], kv_empty[kStages];
  };
  static_assert(sizeof(SmemKV) <= 227 * 1024 && sizeof(SmemQ) <= 227 * 1024,
                "shared memory of one Hopper CTA");
  static_assert(sizeof(SmemKV) >= size_t(hopper_bwd_smem_bytes(kD, int(sizeof(T)), true)) &&
                    sizeof(SmemQ) >= size_t(hopper_bwd_smem_bytes(kD, int(sizeof(T)), false)),
                "hopper_bwd_smem_bytes() counts every buffer");

  // dQ by TMA reduce-add (dK/dV kernel with kTmaDq): dS tile (128 keys x kDqRows queries, the
  // input dtype, K-major like every tile: written by stmatrix from the dS^T accumulators) and
  // its transposed view (queries, keys) read by wgmma as an MN-major A; dQ_part = dS K with the
  // two consumer warpgroups side by side along D; the fp32 staging tile (kDqRows x D, 128-byte
  // swizzled: the accumulator stores spread over the banks) that the reduce-add reads.
  static constexpr int kDqRows = hopper_dq_tma_rows(kD);
  static constexpr bool kDqAliased = hopper_dq_tma_aliased(kD, int(sizeof(T)));
  using MmaDQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<T, T, float, Shape<_64, Int<hopper_dq_tma_cols(kD)>, Int<kTile>>,
                           GMMA::Major::MN, GMMA::Major::MN>(),
      Layout<Shape<_1, _2, _1>>{}));
  static_assert(kDqRows == 64, "one wgmma M atom of queries per reduce-add box");
  using LayoutDS = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTile>, Int<kDqRows>>{}));
  using LayoutDSt = decltype(composition(
      LayoutDS{}, make_ordered_layout(Shape<Int<kDqRows>, Int<kTile>>{}, Step<_2, _1>{})));
  using LayoutDQStage =
      decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float>{}, Shape<Int<kDqRows>, Int<kD>>{}));
  static constexpr int kDsBytes = int(cute::cosize_v<LayoutDS> * sizeof(T));
  static constexpr int kStageBytes = int(cute::cosize_v<LayoutDQStage> * sizeof(float));
  static_assert(kDsBytes == hopper_dq_tma_ds_bytes(kD, int(sizeof(T))) &&
                    kStageBytes == hopper_dq_tma_stage_bytes(kD) && kDsBytes % 1024 == 0,
                "hopper_dq_tma_logic.hpp counts the dS and staging tiles");
  static constexpr int kStageAt = kDqAliased ? 0 : kDsBytes;  // byte offset in SmemKVTma::dq
  static constexpr int kDqBytes =
      kDqAliased ? (kDsBytes > kStageBytes ? kDsBytes : kStageBytes) : kDsBytes + kStageBytes;
  struct SmemKVTma {
    SmemKV kv;
    cute::array_aligned<unsigned char, kDqBytes, 1024> dq;
  };
  static_assert(sizeof(SmemKVTma) <= size_t(kHopperSmemLimit) &&
                    sizeof(SmemKVTma) >= size_t(hopper_dq_tma_smem_bytes(kD, int(sizeof(T)))),
                "the reduce-add dK/dV kernel's shared memory fits and is counted");

  // Global tensors as TMA sees them: (n, d, head, batch), strides in elements.
  using GShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GIn =
      decltype(make_tensor(make_gmem_ptr(static_cast<T const*>(nullptr)), GShape{}, GStride{}));
  using GOut = decltype(make_tensor(make_gmem_ptr(static_cast<T*>(nullptr)), GShape{}, GStride{}));
  using TmaLoad = decltype(make_tma_copy(SM90_TMA_LOAD{}, GIn{}, LayoutTile{},
                                         Shape<Int<kTile>, Int<kD>>{}, _1{}));
  using TmaStore = decltype(make_tma_copy(SM90_TMA_STORE{}, GOut{}, LayoutTile{},
                                          Shape<Int<kTile>, Int<kD>>{}, _1{}));
  using GAcc =
      decltype(make_tensor(make_gmem_ptr(static_cast<float*>(nullptr)), GShape{}, GStride{}));
  using TmaReduce = decltype(make_tma_copy(SM90_TMA_REDUCE_ADD{}, GAcc{}, LayoutDQStage{},
                                           Shape<Int<kDqRows>, Int<kD>>{}, _1{}));
};

template <class T, int kD>
struct Params {
  BwdParams p;
  typename Traits<T, kD>::TmaLoad tma_q, tma_do, tma_k, tma_v;
  typename Traits<T, kD>::TmaStore tma_dq, tma_dk, tma_dv;
  // The fp32 dQ accumulator (HopperDq::Tma only; default-constructed and unused otherwise).
  typename Traits<T, kD>::TmaReduce tma_dq_acc;
  // Nq, Nk and the head counts as the descriptors know them (an empty side's descriptors point
  // at the other side's tensors, extent 1, and are never used); nq_pad rows of the accumulator.
  int32_t nq_tma, nk_tma, hq_tma, hkv_tma, nq_pad_tma;
};

// An 8-byte shared-memory store: CuTe applies the swizzle to the address as an integer, so a
// plain store through the swizzled pointer comes out generic (ST.E) instead of STS.
__device__ __forceinline__ void st_shared_f2(const float2* ptr, float2 v) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(cute::cast_smem_ptr_to_uint(ptr)),
               "f"(v.x), "f"(v.y)
               : "memory");
}

// Thread (row, col) -> register (r, x) helpers for fragment_keep_bits: the identity tensor of
// the accumulator, viewed (rows, cols) as the wgmma C layout.
template <class Ident>
struct RowOf {
  Ident id;
  __device__ __forceinline__ int64_t operator()(int r) const { return get<0>(id(r, 0)); }
};
template <class Ident>
struct ColOf {
  Ident id;
  __device__ __forceinline__ int64_t operator()(int x) const { return get<1>(id(0, x)); }
};

// ---------------------------------------------------------------------------------------------
// dK / dV (key-major)

template <class T, int kD>
__device__ __forceinline__ void kv_producer(const Params<T, kD>& P,
                                            typename Traits<T, kD>::SmemKV& S) {
  using Tr = Traits<T, kD>;
  constexpr int kTile = Tr::kTile, kStages = Tr::kStages;
  const BwdParams& p = P.p;
  const FwdParams& f = p.f;
  Tensor mQ = P.tma_q.get_tma_tensor(make_shape(P.nq_tma, int32_t(kD), P.hq_tma, int32_t(f.b)));
  Tensor mDO = P.tma_do.get_tma_tensor(make_shape(P.nq_tma, int32_t(kD), P.hq_tma, int32_t(f.b)));
  Tensor mK = P.tma_k.get_tma_tensor(make_shape(P.nk_tma, int32_t(kD), P.hkv_tma, int32_t(f.b)));
  Tensor mV = P.tma_v.get_tma_tensor(make_shape(P.nk_tma, int32_t(kD), P.hkv_tma, int32_t(f.b)));
  Tensor sK = make_tensor(make_smem_ptr(S.k.data()), typename Tr::LayoutTile{});
  Tensor sV = make_tensor(make_smem_ptr(S.v.data()), typename Tr::LayoutTile{});
  Tensor sQ = make_tensor(make_smem_ptr(S.q.data()), typename Tr::LayoutRing{});
  Tensor sDO = make_tensor(make_smem_ptr(S.dout.data()), typename Tr::LayoutRing{});

  PipeState ring;
  uint32_t kv_phase = 0;
  for (PersistentWork wk(blockIdx.x, gridDim.x, hopper_bwd_kv_items(p)); wk.valid();
       wk.advance()) {
    const BwdWork w = bwd_cta_work(p, wk.item);
    Tensor gK = local_tile(mK(_, _, w.g, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.c, _0{}));
    Tensor gV = local_tile(mV(_, _, w.g, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.c, _0{}));
    auto [tKgK, tKsK] = tma_partition(P.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                      group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(P.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                      group_modes<0, 2>(gV));
    // K and V are free once the previous item's dK / dV stores have read them.
    wait_barrier(S.kv_empty, kv_phase ^ 1u);
    kv_phase ^= 1u;
    set_barrier_transaction_bytes(S.kv_full, 2 * Tr::kTileBytes);
    copy(P.tma_k.with(S.kv_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tKgK, tKsK);
    copy(P.tma_v.with(S.kv_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tVgV, tVsV);

    ColumnWalk walk(p, w.g, w.c);
    BwdVisit v;
    while (walk.next(p, &v)) {
      // (128, D, query tiles) views of head v.h; Q and dO tiles are read by every key tile
      // that the query tile visits: keep them in L2.
      Tensor gQ = local_tile(mQ(_, _, v.h, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(_, _0{}));
      Tensor gDO = local_tile(mDO(_, _, v.h, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(_, _0{}));
      auto [tQgQ, tQsQ] = tma_partition(P.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                        group_modes<0, 2>(gQ));
      auto [tOgO, tOsO] = tma_partition(P.tma_do, _0{}, Layout<_1>{}, group_modes<0, 2>(sDO),
                                        group_modes<0, 2>(gDO));
      wait_barrier(S.q_empty[ring.stage], ring.producer_wait_parity());
      set_barrier_transaction_bytes(S.q_full[ring.stage], 2 * Tr::kTileBytes + 2 * Tr::kStatBytes);
      copy(P.tma_q.with(S.q_full[ring.stage], 0, TMA::CacheHintSm90::EVICT_LAST), tQgQ(_, v.a),
           tQsQ(_, ring.stage));
      copy(P.tma_do.with(S.q_full[ring.stage], 0, TMA::CacheHintSm90::EVICT_LAST), tOgO(_, v.a),
           tOsO(_, ring.stage));
      const int64_t st = stat_offset(p, w.b, v.h, v.a * kTile);
      SM90_BULK_COPY_G2S::copy(p.lse2 + st, &S.q_full[ring.stage],
                               S.lse2.data() + ring.stage * kTile, int32_t(Tr::kStatBytes));
      SM90_BULK_COPY_G2S::copy(p.delta + st, &S.q_full[ring.stage],
                               S.delta.data() + ring.stage * kTile, int32_t(Tr::kStatBytes));
      ring.advance(kStages);
    }
  }
}

// kTmaDq: also dQ_part = dS K per part, reduce-added from SmemKVTma::dq (the dS and staging
// tiles; S is then that struct's first member) into the fp32 accumulator (see the top of this
// file for the order of events).
template <class T, int kD, bool kTmaDq>
__device__ __forceinline__ void kv_consumer(const Params<T, kD>& P,
                                            typename Traits<T, kD>::SmemKV& S, int ctid) {
  using Tr = Traits<T, kD>;
  constexpr int kTile = Tr::kTile, kHalf = Tr::kSubKV, kStages = Tr::kStages;
  constexpr int kParts = kTile / kHalf;
  const BwdParams& p = P.p;
  const FwdParams& f = p.f;
  const int lane = ctid % 32;

  Tensor sK = make_tensor(make_smem_ptr(S.k.data()), typename Tr::LayoutTile{});
  Tensor sV = make_tensor(make_smem_ptr(S.v.data()), typename Tr::LayoutTile{});
  // Query parts of the ring: (kHalf, D, parts, 1, stage) and transposed (D, kHalf, 1, parts,
  // stage).
  Tensor sQh = flat_divide(make_tensor(make_smem_ptr(S.q.data()), typename Tr::LayoutRing{}),
                           Shape<Int<kHalf>, Int<kD>>{});
  Tensor sDOh = flat_divide(make_tensor(make_smem_ptr(S.dout.data()), typename Tr::LayoutRing{}),
                            Shape<Int<kHalf>, Int<kD>>{});
  Tensor sQth = flat_divide(make_tensor(make_smem_ptr(S.q.data()), typename Tr::LayoutRingT{}),
                            Shape<Int<kD>, Int<kHalf>>{});
  Tensor sDOth = flat_divide(
      make_tensor(make_smem_ptr(S.dout.data()), typename Tr::LayoutRingT{}),
      Shape<Int<kD>, Int<kHalf>>{});

  typename Tr::MmaSdPKV mma_sdp;
  typename Tr::MmaAccKV mma_acc;
  auto thr_sdp = mma_sdp.get_thread_slice(ctid);
  auto thr_acc = mma_acc.get_thread_slice(ctid);
  Tensor tSrQ = thr_sdp.partition_fragment_B(sQh);    // (MMA, MMA_N, MMA_K, parts, 1, stage)
  Tensor tSrDO = thr_sdp.partition_fragment_B(sDOh);
  Tensor tArQt = thr_acc.partition_fragment_B(sQth);  // (MMA, MMA_N, MMA_K, 1, parts, stage)
  Tensor tArDOt = thr_acc.partition_fragment_B(sDOth);
  Tensor acc_dk = partition_fragment_C(mma_acc, Shape<Int<kTile>, Int<kD>>{});
  Tensor acc_dv = partition_fragment_C(mma_acc, Shape<Int<kTile>, Int<kD>>{});

  // (key row, query col) of every S^T value this thread holds.
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kTile>, Int<kHalf>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), rows_cols90(tScS.layout()));
  constexpr int kRows = decltype(size<0>(tScS_rc))::value;
  constexpr int kCols = decltype(size<1>(tScS_rc))::value;
  using Ident = decltype(tScS_rc);
  const RowOf<Ident> row_of{tScS_rc};
  const ColOf<Ident> col_of{tScS_rc};

  // P^T and dS^T in the input dtype: the register A operands of dV += P^T dO, dK += dS^T Q.
  using LayoutS = decltype(partition_fragment_C(mma_sdp, Shape<Int<kTile>, Int<kHalf>>{}).layout());
  Tensor rP = make_tensor<T>(LayoutS{});
  Tensor rDS = make_tensor<T>(LayoutS{});
  Tensor tArP = make_tensor(rP.data(), acc_as_a90(rP.layout()));
  Tensor tArDS = make_tensor(rDS.data(), acc_as_a90(rDS.layout()));

  auto sts = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, T>{}, mma_acc);
  auto sts_thr = sts.get_thread_slice(ctid);

  // dQ by reduce-add: dS^T accumulators -> dS tile (stmatrix, the S^T tiles' own C layout);
  // dQ_part accumulators -> staging tile.
  typename Tr::MmaDQ mma_dq;
  auto sts_ds = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, T>{}, mma_sdp);
  // The tiles' addresses are made where used, from the shared-memory base passed through an
  // opaque copy (and, for the staging writes, the thread index): hoisted out of the loops, the
  // per-thread stmatrix, staging and descriptor addresses stayed live across them and were
  // spilled (nvcc 13.0, D = 128: 216 bytes, then 44; none now).
  auto& SD = reinterpret_cast<typename Tr::SmemKVTma&>(S);

  PipeState ring;
  uint32_t kv_phase = 0;
  for (PersistentWork wk(blockIdx.x, gridDim.x, hopper_bwd_kv_items(p)); wk.valid();
       wk.advance()) {
    // The item's coordinates in 32 bits (TMA coordinates are): as 64-bit values, live across
    // the whole item, ptxas spilled them (nvcc 13.0, D = 128).
    const BwdWork w64 = bwd_cta_work(p, wk.item);
    const struct {
      int32_t b, g, c;
    } w = {int32_t(w64.b), int32_t(w64.g), int32_t(w64.c)};
    const int64_t j0 = int64_t(w.c) * kTile;
    const bool tail = hopper_bwd_needs_mask(f.nk, false, w.c);
    clear(acc_dk);
    clear(acc_dv);
    wait_barrier(S.kv_full, kv_phase);
    kv_phase ^= 1u;

    ColumnWalk walk(p, w.g, w.c);
    BwdVisit v;
    while (walk.next(p, &v)) {
      const bool masked = v.partial || tail;
      const bool rule_exact = masked && range_is_exact(f.pred, v.h);
      wait_barrier(S.q_full[ring.stage], ring.consumer_wait_parity());
      const float* lse2 = S.lse2.data() + ring.stage * kTile;
      const float* delta = S.delta.data() + ring.stage * kTile;
#pragma unroll 1
      for (int half = 0; half < kParts; ++half) {
        const int64_t i0 = v.a * kTile + half * kHalf;
        const uint32_t keep =
            masked ? fragment_keep_bits<kRows, kCols, true>(f, v.partial, rule_exact, v.h, i0,
                                                            j0, row_of, col_of)
                   : ~uint32_t(0);
        Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kTile>, Int<kHalf>>{});
        Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kTile>, Int<kHalf>>{});
        // K's and V's descriptors (MMA, MMA_M, MMA_K) from an opaque base, made here: hoisted
        // out of the loops (constant buffers) they took 32 registers and were spilled (nvcc
        // 13.0, D = 128); remaking them is a few integer instructions per product.
        T* k_base = S.k.data();
        T* v_base = S.v.data();
        asm volatile("" : "+l"(k_base), "+l"(v_base));
        Tensor tSrK = thr_sdp.partition_fragment_A(make_tensor(make_smem_ptr(k_base), typename Tr::LayoutTile{}));
        Tensor tSrV = thr_sdp.partition_fragment_A(make_tensor(make_smem_ptr(v_base), typename Tr::LayoutTile{}));
        wg_gemm<true, -1>(mma_sdp, tSrK, tSrQ(_, _, _, half, 0, ring.stage), acc_s);
        wg_gemm<true, -1>(mma_sdp, tSrV, tSrDO(_, _, _, half, 0, ring.stage), acc_dp);
        warpgroup_wait<1>();
        warpgroup_fence_operand(acc_s);
        // score -> P (score modifiers go here)
        Tensor s = make_tensor(acc_s.data(), rows_cols90(acc_s.layout()));
        CUTE_UNROLL
        for (int x = 0; x < kCols; ++x) {
          const float l2 = lse2[half * kHalf + col_of(x)];
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r)
            s(r, x) = bwd_prob(s(r, x), f.scale_log2, l2, (keep >> (r * kCols + x)) & 1u);
        }
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_dp);
        Tensor dp = make_tensor(acc_dp.data(), rows_cols90(acc_dp.layout()));
        CUTE_UNROLL
        for (int x = 0; x < kCols; ++x) {
          const float dl = delta[half * kHalf + col_of(x)];
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r) dp(r, x) = bwd_ds(s(r, x), dp(r, x), dl);
        }
        CUTE_UNROLL
        for (int x = 0; x < size(acc_s); ++x) {
          rP(x) = static_cast<T>(acc_s(x));
          rDS(x) = static_cast<T>(acc_dp(x));
        }
        wg_gemm<false, -1>(mma_acc, tArP, tArDOt(_, _, _, 0, half, ring.stage), acc_dv);
        wg_gemm<false, -1>(mma_acc, tArDS, tArQt(_, _, _, 0, half, ring.stage), acc_dk);
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_dv);
        warpgroup_fence_operand(acc_dk);
        warpgroup_fence_operand(rP);
        warpgroup_fence_operand(rDS);
        if constexpr (kTmaDq) {
          // After dV and dK are complete: stmatrix may not read dS^T's registers while a wgmma
          // reads them, and P^T's registers are free before dQ_part's accumulators and
          // descriptors are live (done beside the dV / dK products, ptxas spilled).
          // The previous part's reduce-add must have read the staging tile before this part
          // writes it (and, aliased, before dS is written): its issuing thread waits here,
          // behind this part's S, dP, softmax, dV and dK, ahead of a barrier every consumer
          // passes before those writes. Not aliased, the previous part's dQ products (the only
          // readers of the dS tile) completed before its staging barrier.
          if (ctid == 0) tma_store_wait<0>();
          if constexpr (Tr::kDqAliased) consumers_sync(Tr::kConsumerThreads);
          T* dsw = reinterpret_cast<T*>(SD.dq.data());
          asm volatile("" : "+l"(dsw));
          auto sts_ds_thr = sts_ds.get_thread_slice(ctid);
          copy(sts_ds, sts_ds_thr.retile_S(rDS),
               sts_ds_thr.partition_D(make_tensor(make_smem_ptr(dsw), typename Tr::LayoutDS{})));
          // stmatrix writes through the generic proxy, wgmma reads through the async one.
          cutlass::arch::fence_view_async_shared();
          // Both warpgroups' dS rows are written (and, not aliased, the staging tile is free).
          consumers_sync(Tr::kConsumerThreads);
          Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<Tr::kDqRows>, Int<kD>>{});
          // Descriptors from opaque bases, made per product (as K's and V's above).
          T* dsb = reinterpret_cast<T*>(SD.dq.data());
          T* kb = S.k.data();
          asm volatile("" : "+l"(dsb), "+l"(kb));
          auto thr_dq = mma_dq.get_thread_slice(ctid);
          Tensor tQrDS =
              thr_dq.partition_fragment_A(make_tensor(make_smem_ptr(dsb), typename Tr::LayoutDSt{}));
          Tensor tQrKt =
              thr_dq.partition_fragment_B(make_tensor(make_smem_ptr(kb), typename Tr::LayoutTileT{}));
          wg_gemm<true, 0>(mma_dq, tQrDS, tQrKt, acc_dq);
          // Aliased: both warpgroups' products have read dS before either overwrites it.
          if constexpr (Tr::kDqAliased) consumers_sync(Tr::kConsumerThreads);
          // Pairs of adjacent columns as 8-byte shared stores (the swizzle moves 16-byte
          // chunks), addresses made here from the thread index passed opaquely.
          int t = ctid;
          asm volatile("" : "+r"(t));
          Tensor sStage = make_tensor(make_smem_ptr(reinterpret_cast<float*>(SD.dq.data() + Tr::kStageAt)),
                                      typename Tr::LayoutDQStage{});
          Tensor tDQsStage = recast<float2>(mma_dq.get_thread_slice(t).partition_C(sStage));
          Tensor tDQrDQ = recast<float2>(acc_dq);
          CUTE_UNROLL
          for (int x = 0; x < size(tDQrDQ); ++x) st_shared_f2(&tDQsStage(x), tDQrDQ(x));
          // Generic-proxy writes that the TMA unit (async proxy) reads next.
          cutlass::arch::fence_view_async_shared();
          consumers_sync(Tr::kConsumerThreads);
          if (ctid == 0) {
            const DqBox box = hopper_dq_tma_box(v, w.b, half, kD);
            Tensor mAcc = P.tma_dq_acc.get_tma_tensor(
                make_shape(P.nq_pad_tma, int32_t(kD), P.hq_tma, int32_t(f.b)));
            Tensor gAcc = local_tile(mAcc(_, _, box.h, box.b), Shape<Int<Tr::kDqRows>, Int<kD>>{},
                                     make_coord(box.tile, _0{}));
            auto [tAg, tAs] = tma_partition(P.tma_dq_acc, _0{}, Layout<_1>{},
                                            group_modes<0, 2>(sStage), group_modes<0, 2>(gAcc));
            copy(P.tma_dq_acc, tAs, tAg);
            tma_store_arrive();  // one bulk group per part; waited before the next writes
          }
        }
      }
      __syncwarp();
      if (lane == 0) arrive_barrier(S.q_empty[ring.stage]);
      ring.advance(kStages);
    }

    // ---- epilogue: dK = scale * sum dS^T Q, dV; each warpgroup writes its own 64 rows of the
    // K and V buffers (its products, which alone read those rows, are complete).
    Tensor rDK = make_tensor<T>(acc_dk.layout());
    Tensor rDV = make_tensor<T>(acc_dv.layout());
    CUTE_UNROLL
    for (int x = 0; x < size(acc_dk); ++x) {
      rDK(x) = static_cast<T>(acc_dk(x) * f.scale);
      rDV(x) = static_cast<T>(acc_dv(x));
    }
    // The stmatrix addresses from an opaque base: hoisted out of the item loop, they stayed
    // live across it and were spilled (nvcc 13.0, D = 128).
    T* k_base = S.k.data();
    T* v_base = S.v.data();
    asm volatile("" : "+l"(k_base), "+l"(v_base));
    copy(sts, sts_thr.retile_S(rDK),
         sts_thr.partition_D(make_tensor(make_smem_ptr(k_base), typename Tr::LayoutTile{})));
    copy(sts, sts_thr.retile_S(rDV),
         sts_thr.partition_D(make_tensor(make_smem_ptr(v_base), typename Tr::LayoutTile{})));
    tma_store_fence();
    consumers_sync(Tr::kConsumerThreads);
    if (ctid == 0) {
      Tensor mDK = P.tma_dk.get_tma_tensor(
          make_shape(P.nk_tma, int32_t(kD), P.hkv_tma, int32_t(f.b)));
      Tensor mDV = P.tma_dv.get_tma_tensor(
          make_shape(P.nk_tma, int32_t(kD), P.hkv_tma, int32_t(f.b)));
      Tensor gDK = local_tile(mDK(_, _, w.g, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.c, _0{}));
      Tensor gDV = local_tile(mDV(_, _, w.g, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.c, _0{}));
      auto [tKgK, tKsK] = tma_partition(P.tma_dk, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                        group_modes<0, 2>(gDK));
      auto [tVgV, tVsV] = tma_partition(P.tma_dv, _0{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                        group_modes<0, 2>(gDV));
      copy(P.tma_dk, tKsK, tKgK);
      copy(P.tma_dv, tVsV, tVgV);
      tma_store_arrive();
      // Shared memory read: K and V may be refilled (this also waits for this thread's
      // reduce-adds of dQ, so none is in flight when the kernel ends).
      tma_store_wait<0>();
      arrive_barrier(S.kv_empty);
    }
  }
}

// kTmaDq: shared memory is Traits::SmemKVTma (SmemKV first, then the dS / staging tiles).
template <class T, int kD, bool kTmaDq>
__global__ void __launch_bounds__(Traits<T, kD>::kThreads, 1)
    dkdv90_kernel(const __grid_constant__ Params<T, kD> P) {
  using Tr = Traits<T, kD>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& S = *reinterpret_cast<typename Tr::SmemKV*>(smem_raw);
  const int tid = int(threadIdx.x);
  if (tid == 0) {
    prefetch_tma_descriptor(P.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_do.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_v.get_tma_descriptor());
    if constexpr (kTmaDq) prefetch_tma_descriptor(P.tma_dq_acc.get_tma_descriptor());
    initialize_barrier(S.kv_full, 1);
    initialize_barrier(S.kv_empty, 1);  // the thread that stored dK and dV
    for (int s = 0; s < Tr::kStages; ++s) {
      initialize_barrier(S.q_full[s], 1);
      initialize_barrier(S.q_empty[s], Tr::kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (tid / 128 == 0) {
    // 32, not the forward's 24: the column walk over the GQA group's heads needs them (with
    // 24 ptxas spilled three words); 128 x 32 + 256 x 240 = 65536, the whole register file.
    cutlass::arch::warpgroup_reg_dealloc<32>();
    if (tid == 0) kv_producer<T, kD>(P, S);
  } else {
    cutlass::arch::warpgroup_reg_alloc<240>();
    kv_consumer<T, kD, kTmaDq>(P, S, tid - 128);
  }
}

// ---------------------------------------------------------------------------------------------
// dQ (query-major)

template <class T, int kD>
__device__ __forceinline__ void q_producer(const Params<T, kD>& P,
                                           typename Traits<T, kD>::SmemQ& S) {
  using Tr = Traits<T, kD>;
  constexpr int kTile = Tr::kTile, kStages = Tr::kStages;
  const BwdParams& p = P.p;
  const FwdParams& f = p.f;
  Tensor mQ = P.tma_q.get_tma_tensor(make_shape(P.nq_tma, int32_t(kD), P.hq_tma, int32_t(f.b)));
  Tensor mDO = P.tma_do.get_tma_tensor(make_shape(P.nq_tma, int32_t(kD), P.hq_tma, int32_t(f.b)));
  Tensor mK = P.tma_k.get_tma_tensor(make_shape(P.nk_tma, int32_t(kD), P.hkv_tma, int32_t(f.b)));
  Tensor mV = P.tma_v.get_tma_tensor(make_shape(P.nk_tma, int32_t(kD), P.hkv_tma, int32_t(f.b)));
  Tensor sQ = make_tensor(make_smem_ptr(S.q.data()), typename Tr::LayoutTile{});
  Tensor sDO = make_tensor(make_smem_ptr(S.dout.data()), typename Tr::LayoutTile{});
  Tensor sK = make_tensor(make_smem_ptr(S.k.data()), typename Tr::LayoutRing{});
  Tensor sV = make_tensor(make_smem_ptr(S.v.data()), typename Tr::LayoutRing{});

  PipeState ring;
  uint32_t q_phase = 0;
  for (PersistentWork wk(blockIdx.x, gridDim.x, hopper_bwd_q_items(p)); wk.valid(); wk.advance()) {
    const CtaWork w = cta_work(f, wk.item);
    const int64_t g = kv_head(f, w.h);
    Tensor gQ = local_tile(mQ(_, _, w.h, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.a, _0{}));
    Tensor gDO = local_tile(mDO(_, _, w.h, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.a, _0{}));
    auto [tQgQ, tQsQ] = tma_partition(P.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                      group_modes<0, 2>(gQ));
    auto [tOgO, tOsO] = tma_partition(P.tma_do, _0{}, Layout<_1>{}, group_modes<0, 2>(sDO),
                                      group_modes<0, 2>(gDO));
    // Q's buffer is free once the previous item's dQ store (staged in it) has read it.
    wait_barrier(S.q_empty, q_phase ^ 1u);
    set_barrier_transaction_bytes(S.q_full, 2 * Tr::kTileBytes + 2 * Tr::kStatBytes);
    copy(P.tma_q.with(S.q_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tQgQ, tQsQ);
    copy(P.tma_do.with(S.q_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tOgO, tOsO);
    const int64_t st = stat_offset(p, w.b, w.h, w.a * kTile);
    SM90_BULK_COPY_G2S::copy(p.lse2 + st, &S.q_full, S.lse2.data(), int32_t(Tr::kStatBytes));
    SM90_BULK_COPY_G2S::copy(p.delta + st, &S.q_full, S.delta.data(), int32_t(Tr::kStatBytes));
    q_phase ^= 1u;

    Tensor gK = local_tile(mK(_, _, g, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(_, _0{}));
    Tensor gV = local_tile(mV(_, _, g, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(_, _0{}));
    auto [tKgK, tKsK] = tma_partition(P.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                      group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(P.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                      group_modes<0, 2>(gV));
    RowWalk walk(f, w.h, w.a);
    int64_t c = 0;
    bool partial = false;
    while (walk.next(f, &c, &partial)) {
      wait_barrier(S.kv_empty[ring.stage], ring.producer_wait_parity());
      set_barrier_transaction_bytes(S.kv_full[ring.stage], 2 * Tr::kTileBytes);
      copy(P.tma_k.with(S.kv_full[ring.stage], 0, TMA::CacheHintSm90::EVICT_LAST), tKgK(_, c),
           tKsK(_, ring.stage));
      copy(P.tma_v.with(S.kv_full[ring.stage], 0, TMA::CacheHintSm90::EVICT_LAST), tVgV(_, c),
           tVsV(_, ring.stage));
      ring.advance(kStages);
    }
  }
}

template <class T, int kD>
__device__ __forceinline__ void q_consumer(const Params<T, kD>& P,
                                           typename Traits<T, kD>::SmemQ& S, int ctid) {
  using Tr = Traits<T, kD>;
  constexpr int kTile = Tr::kTile, kHalf = Tr::kHalf, kStages = Tr::kStages;
  const BwdParams& p = P.p;
  const FwdParams& f = p.f;
  const int lane = ctid % 32;

  Tensor sQ = make_tensor(make_smem_ptr(S.q.data()), typename Tr::LayoutTile{});
  Tensor sDO = make_tensor(make_smem_ptr(S.dout.data()), typename Tr::LayoutTile{});
  // Key halves of the ring: (64, D, 2 halves, 1, stage); K^T (D, 64, 1, 2, stage).
  Tensor sKh = flat_divide(make_tensor(make_smem_ptr(S.k.data()), typename Tr::LayoutRing{}),
                           Shape<Int<kHalf>, Int<kD>>{});
  Tensor sVh = flat_divide(make_tensor(make_smem_ptr(S.v.data()), typename Tr::LayoutRing{}),
                           Shape<Int<kHalf>, Int<kD>>{});
  Tensor sKth = flat_divide(make_tensor(make_smem_ptr(S.k.data()), typename Tr::LayoutRingT{}),
                            Shape<Int<kD>, Int<kHalf>>{});

  typename Tr::MmaSdP mma_sdp;
  typename Tr::MmaAcc mma_acc;
  auto thr_sdp = mma_sdp.get_thread_slice(ctid);
  auto thr_acc = mma_acc.get_thread_slice(ctid);
  Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);
  Tensor tSrDO = thr_sdp.partition_fragment_A(sDO);
  Tensor tSrK = thr_sdp.partition_fragment_B(sKh);    // (MMA, MMA_N, MMA_K, 2, 1, stage)
  Tensor tSrV = thr_sdp.partition_fragment_B(sVh);
  Tensor tArKt = thr_acc.partition_fragment_B(sKth);  // (MMA, MMA_N, MMA_K, 1, 2, stage)
  Tensor acc_dq = partition_fragment_C(mma_acc, Shape<Int<kTile>, Int<kD>>{});

  // (query row, key col) of every S value this thread holds.
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kTile>, Int<kHalf>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), rows_cols90(tScS.layout()));
  constexpr int kRows = decltype(size<0>(tScS_rc))::value;
  constexpr int kCols = decltype(size<1>(tScS_rc))::value;
  using Ident = decltype(tScS_rc);
  const RowOf<Ident> row_of{tScS_rc};
  const ColOf<Ident> col_of{tScS_rc};

  using LayoutS = decltype(partition_fragment_C(mma_sdp, Shape<Int<kTile>, Int<kHalf>>{}).layout());
  Tensor rDS = make_tensor<T>(LayoutS{});
  Tensor tArDS = make_tensor(rDS.data(), acc_as_a90(rDS.layout()));

  auto sts = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, T>{}, mma_acc);
  auto sts_thr = sts.get_thread_slice(ctid);
  Tensor tSsQ = sts_thr.partition_D(sQ);

  PipeState ring;
  uint32_t q_phase = 0;
  for (PersistentWork wk(blockIdx.x, gridDim.x, hopper_bwd_q_items(p)); wk.valid(); wk.advance()) {
    const CtaWork w = cta_work(f, wk.item);
    const int64_t i0 = w.a * kTile;
    const bool rule_exact = range_is_exact(f.pred, w.h);
    clear(acc_dq);
    wait_barrier(S.q_full, q_phase);
    q_phase ^= 1u;
    // This thread's rows' statistics, for every block of the item.
    float lse2[kRows], delta[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      lse2[r] = S.lse2[row_of(r)];
      delta[r] = S.delta[row_of(r)];
    }

    RowWalk walk(f, w.h, w.a);
    int64_t c = 0;
    bool partial = false;
    while (walk.next(f, &c, &partial)) {
      const bool masked = hopper_bwd_needs_mask(f.nk, partial, c);
      wait_barrier(S.kv_full[ring.stage], ring.consumer_wait_parity());
#pragma unroll 1
      for (int half = 0; half < 2; ++half) {
        const int64_t j0 = c * kTile + half * kHalf;
        const uint32_t keep =
            masked ? fragment_keep_bits<kRows, kCols, false>(f, partial, rule_exact, w.h, i0, j0,
                                                             row_of, col_of)
                   : ~uint32_t(0);
        Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kTile>, Int<kHalf>>{});
        Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kTile>, Int<kHalf>>{});
        wg_gemm<true, -1>(mma_sdp, tSrQ, tSrK(_, _, _, half, 0, ring.stage), acc_s);
        wg_gemm<true, -1>(mma_sdp, tSrDO, tSrV(_, _, _, half, 0, ring.stage), acc_dp);
        warpgroup_wait<1>();
        warpgroup_fence_operand(acc_s);
        // score -> P (score modifiers go here)
        Tensor s = make_tensor(acc_s.data(), rows_cols90(acc_s.layout()));
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          CUTE_UNROLL
          for (int x = 0; x < kCols; ++x)
            s(r, x) = bwd_prob(s(r, x), f.scale_log2, lse2[r], (keep >> (r * kCols + x)) & 1u);
        }
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_dp);
        Tensor dp = make_tensor(acc_dp.data(), rows_cols90(acc_dp.layout()));
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          CUTE_UNROLL
          for (int x = 0; x < kCols; ++x) dp(r, x) = bwd_ds(s(r, x), dp(r, x), delta[r]);
        }
        CUTE_UNROLL
        for (int x = 0; x < size(acc_dp); ++x) rDS(x) = static_cast<T>(acc_dp(x));
        wg_gemm<false, 0>(mma_acc, tArDS, tArKt(_, _, _, 0, half, ring.stage), acc_dq);
      }
      __syncwarp();
      if (lane == 0) arrive_barrier(S.kv_empty[ring.stage]);
      ring.advance(kStages);
    }

    // ---- epilogue: dQ = scale * sum dS K into this warpgroup's own rows of Q's buffer (only
    // its own products read them, and they are complete), one TMA store.
    Tensor rDQ = make_tensor<T>(acc_dq.layout());
    CUTE_UNROLL
    for (int x = 0; x < size(acc_dq); ++x) rDQ(x) = static_cast<T>(acc_dq(x) * f.scale);
    copy(sts, sts_thr.retile_S(rDQ), tSsQ);
    tma_store_fence();
    consumers_sync(Tr::kConsumerThreads);
    if (ctid == 0) {
      Tensor mDQ = P.tma_dq.get_tma_tensor(
          make_shape(P.nq_tma, int32_t(kD), P.hq_tma, int32_t(f.b)));
      Tensor gDQ = local_tile(mDQ(_, _, w.h, w.b), Shape<Int<kTile>, Int<kD>>{}, make_coord(w.a, _0{}));
      auto [tQgQ, tQsQ] = tma_partition(P.tma_dq, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                        group_modes<0, 2>(gDQ));
      copy(P.tma_dq, tQsQ, tQgQ);
      tma_store_arrive();
      tma_store_wait<0>();  // shared memory read: Q's buffer may be refilled
      arrive_barrier(S.q_empty);
    }
  }
}

template <class T, int kD>
__global__ void __launch_bounds__(Traits<T, kD>::kThreads, 1)
    dq90_kernel(const __grid_constant__ Params<T, kD> P) {
  using Tr = Traits<T, kD>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& S = *reinterpret_cast<typename Tr::SmemQ*>(smem_raw);
  const int tid = int(threadIdx.x);
  if (tid == 0) {
    prefetch_tma_descriptor(P.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_do.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(P.tma_v.get_tma_descriptor());
    initialize_barrier(S.q_full, 1);
    initialize_barrier(S.q_empty, 1);  // the thread that stored dQ
    for (int s = 0; s < Tr::kStages; ++s) {
      initialize_barrier(S.kv_full[s], 1);
      initialize_barrier(S.kv_empty[s], Tr::kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (tid / 128 == 0) {
    cutlass::arch::warpgroup_reg_dealloc<24>();
    if (tid == 0) q_producer<T, kD>(P, S);
  } else {
    cutlass::arch::warpgroup_reg_alloc<240>();
    q_consumer<T, kD>(P, S, tid - 128);
  }
}

// ---------------------------------------------------------------------------------------------
// Host: descriptors and launches.

// Launches dK/dV then dQ on `stream` (lse2 and delta already computed for nq_pad rows).
// Pointers 16-byte aligned, strides of extent > 1 positive multiples of 16 bytes (the launcher
// repacks other tensors; checked again: cudaErrorInvalidValue). HopperDq::Tma: the dK/dV kernel
// reduce-adds dQ into p.dq_accum (zeroed, [B, Hq, nq_pad, D] fp32, 16-byte aligned; the caller
// converts it) and the dQ kernel does not run; Nq and Nk must be positive.
template <class T, int kD>
cudaError_t run90(const BwdParams& p, HopperDq dq, cudaStream_t stream) {
  using Tr = Traits<T, kD>;
  using fwd90::tma_ok;
  using fwd90::tma_stride;
  const FwdParams& f = p.f;
  const bool have_q = f.nq > 0, have_k = f.nk > 0;
  if ((have_q && (!tma_ok<T>(f.q, {f.q_sn, f.q_sh, f.q_sb}, {f.nq, f.hq, f.b}) ||
                  !tma_ok<T>(p.dout, {p.do_sn, p.do_sh, p.do_sb}, {f.nq, f.hq, f.b}) ||
                  !tma_ok<T>(p.dq, {p.dq_sn, p.dq_sh, p.dq_sb}, {f.nq, f.hq, f.b}) ||
                  p.dq_sd != 1)) ||
      (have_k && (!tma_ok<T>(f.k, {f.k_sn, f.k_sh, f.k_sb}, {f.nk, f.hkv, f.b}) ||
                  !tma_ok<T>(f.v, {f.v_sn, f.v_sh, f.v_sb}, {f.nk, f.hkv, f.b}) ||
                  !tma_ok<T>(p.dk, {p.dk_sn, p.dk_sh, p.dk_sb}, {f.nk, f.hkv, f.b}) ||
                  !tma_ok<T>(p.dv, {p.dv_sn, p.dv_sh, p.dv_sb}, {f.nk, f.hkv, f.b}))))
    return cudaErrorInvalidValue;
  if (p.nq_pad % kHopperBwdBlockM != 0 || (have_q && f.sched == nullptr))
    return cudaErrorInvalidValue;  // the layout must be staged for 128 x 128 with its rows
  const bool tma_dq = dq == HopperDq::Tma;
  if (tma_dq && (!have_q || !have_k || p.dq_accum == nullptr ||
                 reinterpret_cast<uintptr_t>(p.dq_accum) % 16 != 0 || f.d != kD))
    return cudaErrorInvalidValue;

  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;

  Params<T, kD> P;
  P.p = p;
  P.nq_tma = int32_t(have_q ? f.nq : 1);
  P.nk_tma = int32_t(have_k ? f.nk : 1);
  // An empty side's descriptors point at the other side's tensors (never loaded or stored).
  struct View {
    const void* ptr;
    int64_t n, h, sn, sh, sb;
  };
  auto load = [&](View x) {
    return make_tma_copy(
        SM90_TMA_LOAD{},
        make_tensor(make_gmem_ptr(static_cast<const T*>(x.ptr)),
                    make_shape(int32_t(x.n), int32_t(kD), int32_t(x.h), int32_t(f.b)),
                    make_stride(tma_stride(x.sn, x.n), _1{}, tma_stride(x.sh, x.h),
                                tma_stride(x.sb, f.b))),
        typename Tr::LayoutTile{}, Shape<Int<Tr::kTile>, Int<kD>>{}, _1{});
  };
  auto store = [&](View x) {
    return make_tma_copy(
        SM90_TMA_STORE{},
        make_tensor(make_gmem_ptr(static_cast<T*>(const_cast<void*>(x.ptr))),
                    make_shape(int32_t(x.n), int32_t(kD), int32_t(x.h), int32_t(f.b)),
                    make_stride(tma_stride(x.sn, x.n), _1{}, tma_stride(x.sh, x.h),
                                tma_stride(x.sb, f.b))),
        typename Tr::LayoutTile{}, Shape<Int<Tr::kTile>, Int<kD>>{}, _1{});
  };
  const View vq = have_q ? View{f.q, f.nq, f.hq, f.q_sn, f.q_sh, f.q_sb}
                         : View{f.k, 1, f.hkv, f.k_sn, f.k_sh, f.k_sb};
  const View vdo = have_q ? View{p.dout, f.nq, f.hq, p.do_sn, p.do_sh, p.do_sb} : vq;
  const View vdq = have_q ? View{p.dq, f.nq, f.hq, p.dq_sn, p.dq_sh, p.dq_sb} : View{p.dk, 1, f.hkv, p.dk_sn, p.dk_sh, p.dk_sb};
  const View vk = have_k ? View{f.k, f.nk, f.hkv, f.k_sn, f.k_sh, f.k_sb}
                         : View{f.q, 1, f.hq, f.q_sn, f.q_sh, f.q_sb};
  const View vv = have_k ? View{f.v, f.nk, f.hkv, f.v_sn, f.v_sh, f.v_sb} : vk;
  const View vdk = have_k ? View{p.dk, f.nk, f.hkv, p.dk_sn, p.dk_sh, p.dk_sb}
                          : View{p.dq, 1, f.hq, p.dq_sn, p.dq_sh, p.dq_sb};
  const View vdv = have_k ? View{p.dv, f.nk, f.hkv, p.dv_sn, p.dv_sh, p.dv_sb} : vdk;
  P.tma_q = load(vq);
  P.tma_do = load(vdo);
  P.tma_k = load(vk);
  P.tma_v = load(vv);
  P.tma_dq = store(vdq);
  P.tma_dk = store(vdk);
  P.tma_dv = store(vdv);
  P.hq_tma = int32_t(vq.h);
  P.hkv_tma = int32_t(vk.h);
  P.nq_pad_tma = int32_t(p.nq_pad);
  if (tma_dq) {
    // The accumulator's (row, d, head, batch) view: boxes of kDqRows x D, never clipped.
    const DqAccumView a = hopper_dq_accum_view(p);
    P.tma_dq_acc = make_tma_copy(
        SM90_TMA_REDUCE_ADD{},
        make_tensor(make_gmem_ptr(p.dq_accum),
                    make_shape(int32_t(a.shape[0]), int32_t(kD), int32_t(a.shape[2]),
                               int32_t(a.shape[3])),
                    make_stride(tma_stride(a.stride[0], a.shape[0]), _1{},
                                tma_stride(a.stride[2], a.shape[2]),
                                tma_stride(a.stride[3], a.shape[3]))),
        typename Tr::LayoutDQStage{}, Shape<Int<Tr::kDqRows>, Int<kD>>{}, _1{});
  }

  const int64_t kv_items = have_k ? hopper_bwd_kv_items(p) : 0;
  auto launch_kv = [&](auto kernel, size_t smem) {
    cudaError_t r = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(smem));
    if (r != cudaSuccess) return r;
    kernel<<<dim3(unsigned(persistent_grid(kv_items, sms))), dim3(Tr::kThreads), smem, stream>>>(P);
    return cudaGetLastError();
  };
  if (kv_items > 0) {
    e = tma_dq ? launch_kv(&dkdv90_kernel<T, kD, true>, sizeof(typename Tr::SmemKVTma))
               : launch_kv(&dkdv90_kernel<T, kD, false>, sizeof(typename Tr::SmemKV));
    if (e != cudaSuccess) return e;
  }
  if (tma_dq) return cudaSuccess;  // dQ is in p.dq_accum
  const int64_t q_items = have_q ? hopper_bwd_q_items(p) : 0;
  if (q_items > 0) {
    auto kernel = &dq90_kernel<T, kD>;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(sizeof(typename Tr::SmemQ)));
    if (e != cudaSuccess) return e;
    kernel<<<dim3(unsigned(persistent_grid(q_items, sms))), dim3(Tr::kThreads),
             sizeof(typename Tr::SmemQ), stream>>>(P);
    e = cudaGetLastError();
  }
  return e;
}

}  // namespace spattn::cuda::sm90a::bwd90

#define SPATTN_BWD90_INSTANTIATE(T, D)                                                   \
  namespace spattn::cuda::sm90a::bwd90 {                                                 \
  template cudaError_t run90<T, D>(const BwdParams&, HopperDq, cudaStream_t);            \
  }
