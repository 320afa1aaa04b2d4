// The CUDA backward main kernel: FlashAttention-2 style, key-block major, in CuTe, for sm_80 and
// later (compiled unchanged for sm_90a, like the forward).
//
// One CTA owns one (batch b, kv head g, key tile c of kBlockN = 64 keys): K(c) and V(c) stay in
// shared memory, dK and dV accumulate in registers (fp32). It walks the transposed layout
// (ColumnWalk, backward_logic.hpp): for each query head h of g's GQA group, the query tiles of
// kBlockM = 64 rows that see key tile c, full and partial. Per visit (h, a):
//
//   wait Q(a), dO(a) ─ issue Q, dO of the next visit (other buffer) ─ S = Q K^T ─
//   P = exp2(S * scale_log2 - lse2) (masked: 0) ─ P → smem (dtype) ─ dP = dO V^T ─
//   dS = P (dP - delta) → smem (dtype) ─ barrier ─ dV += P^T dO ─ dK += dS^T Q ─
//   dQ(a) = dS K, added to the fp32 dq_accum with atomics
//
// lse2 (lse * log2 e, +inf for rows that see nothing and for padding rows) and delta
// (rowsum(dout * out)) come from the preprocess kernel (kernels/backward.cu), padded to whole
// query tiles. Masks as in the forward: a full block has no mask unless it sticks out past Nk
// (rows past Nq need none: their lse2 is +inf, so P = 0); partial blocks use row_interval() when
// the head's rule is one window, else element_kept() -> keeps(). The epilogue scales dK by the
// softmax scale, stages dK and dV through shared memory and stores rows < Nk with 16-byte stores.
// A key tile no query sees gets dK = dV = 0 (the grid covers every key tile).
//
// Operands: Q, dO (2 buffers each up to D = 128), K, V, P, dS in swizzled shared memory; the
// transposed operands (P^T, dS^T, Q^T, dO^T, K^T) are views of the same buffers read with
// ldmatrix.trans. Shared memory: (2 * 64 * D * (1 + stages) + 2 * 64 * 64) * 2 bytes: 112 KB at
// D = 128, 64 KB at D = 64.
//
// Registers (no spills, cuda/check_ptxas.sh backward): 256 threads with a minimum of one CTA per
// SM. At D = 256 dK and dV alone take 128 registers per thread, so there dQ is made 64 columns
// at a time (kDqCols), the next visit is found only after the products (one Q / dO buffer), and
// the loop's per-thread partitions are rebuilt per visit (kFreshAddresses).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/copy_traits_sm80.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm80.hpp>

#include <cuda_runtime_api.h>

#include "common/tile_ops.cuh"
#include "spattn/cuda/backward_logic.hpp"

#ifndef SPATTN_CUDA_ARCH_NS
#error "SPATTN_CUDA_ARCH_NS must name the architecture namespace (set by cuda/CMakeLists.txt)"
#endif

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::bwd {

using namespace cute;
using tileops::gemm_ss;
using tileops::load_rows;
using tileops::rows_cols;

template <class T, int kD>
struct BwdTraits {
  static_assert(kD % 32 == 0 && kD <= 256, "head dims: multiples of 32 up to 256");
  static constexpr int kBlockM = kBwdBlockM;
  static constexpr int kBlockN = kBwdBlockN;
  static_assert(kBlockM == 64 && kBlockN == 64, "the MMA tilings below assume 64 x 64 tiles");
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  // Q / dO buffers: two (the next visit's loads overlap this one's products) up to D = 128;
  // one at D = 256 (shared memory).
  static constexpr int kStages = kD <= 128 ? 2 : 1;

  using MmaOp = std::conditional_t<std::is_same_v<T, cute::bfloat16_t>,
                                   SM80_16x8x16_F32BF16BF16F32_TN, SM80_16x8x16_F32F16F16F32_TN>;
  // S = Q K^T and dP = dO V^T, 64 x 64: 4 warps along the query rows, 2 along the keys (each
  // warp 16 x 32; N tile 16 per warp so one ldmatrix.x4 feeds two n8 MMAs of B).
  using MmaSdP = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<_4, _2, _1>>, Tile<_64, _32, _16>>;
  // dK, dV (64 keys x D) and dQ (64 rows x D): 2 x 4 warps when D is a multiple of 64 (fewer
  // shared-memory operand loads), else 4 x 2.
  static constexpr int kWm = kD % 64 == 0 ? 2 : 4;
  static constexpr int kWn = kWarps / kWm;
  using MmaDkv = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kWm>, Int<kWn>, _1>>,
                          Tile<Int<16 * kWm>, Int<16 * kWn>, _16>>;
  using MmaDq = MmaDkv;
  // dQ = dS K is made kDqCols columns at a time (each part's fp32 accumulator added to dq_accum
  // before the next): at D = 256 a whole 64 x 256 dQ is 64 more registers per thread beside the
  // 128 of dK and dV, and the kernel spilled. Up to D = 128 one part (the measured code).
  static constexpr int kDqCols = kD <= 128 ? kD : 64;
  static_assert(kD % kDqCols == 0 && kDqCols % (16 * kWn) == 0, "dQ parts are whole MMA tiles");
  // Above D = 128 the per-thread partitions of the visit loop (ldmatrix sources of the five
  // products, the P / dS stores, the score coordinates, the dq_accum atomics; swizzled: not one
  // base plus constants) are rebuilt per visit from an opaque thread index (per dQ part for the
  // dQ product), as in the forward: the compiler would otherwise hoist the addresses of every
  // k step out of the walk and hold them beside the 128 registers of dK and dV. Up to D = 128
  // there is room.
  static constexpr bool kFreshAddresses = kD > 128;

  // Shared memory: rows of kD elements in 8-row x kBlockK swizzled atoms (as the forward); P
  // and dS (64 x 64) in 8 x 64 atoms.
  static constexpr int kBlockK = kD % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzleBits = kBlockK == 64 ? 3 : 2;
  using SmemAtom = decltype(composition(
      Swizzle<kSwizzleBits, 3, 3>{},
      Layout<Shape<_8, Int<kBlockK>>, Stride<Int<kBlockK>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kD>>{}));
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_layout(Shape<Int<kD>, Int<kBlockM>>{}, GenRowMajor{})));  // (d, m)
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kD>>{}));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kD>, Int<kBlockN>>{}, GenRowMajor{})));  // (d, n)
  using SmemAtomP = decltype(composition(Swizzle<3, 3, 3>{},
                                         Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  using SmemLayoutP = decltype(tile_to_shape(SmemAtomP{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutPt = decltype(composition(
      SmemLayoutP{}, make_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, GenRowMajor{})));  // (n, m)

  static constexpr int kSmemQ = kBlockM * kD;
  static constexpr int kSmemKV = kBlockN * kD;
  static constexpr int kSmemP = kBlockM * kBlockN;
  // Offsets in elements: K, V, Q[stages], dO[stages], P, dS.
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kSmemKV;
  static constexpr int kOffQ = 2 * kSmemKV;
  static constexpr int kOffdO = kOffQ + kStages * kSmemQ;
  static constexpr int kOffP = kOffdO + kStages * kSmemQ;
  static constexpr int kOffdS = kOffP + kSmemP;
  static constexpr size_t kSmemBytes = size_t(kOffdS + kSmemP) * sizeof(T);
  // The epilogue stages dK and dV (2 x kSmemKV) where Q and dO were.
  static_assert(2 * kStages * kSmemQ >= 2 * kSmemKV, "epilogue staging fits the Q/dO buffers");

  // Global <-> shared: 16 bytes (8 elements) per thread and copy, threads along a row first.
  static constexpr int kRowThreads = kBlockK / 8;
  using GmemThreads = Layout<Shape<Int<kThreads / kRowThreads>, Int<kRowThreads>>,
                             Stride<Int<kRowThreads>, _1>>;
  using GmemLoad = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, T>{}, GmemThreads{},
      Layout<Shape<_1, _8>>{}));
  using GmemStore = decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, T>{},
                                             GmemThreads{}, Layout<Shape<_1, _8>>{}));
  using LdsmN = Copy_Atom<SM75_U32x4_LDSM_N, T>;   // operands stored along their k mode
  using LdsmT = Copy_Atom<SM75_U16x8_LDSM_T, T>;   // transposed views (P^T, dS^T, Q^T, dO^T, K^T)
  using StsC = Copy_Atom<UniversalCopy<cute::uint32_t>, T>;  // accumulators -> shared
};

template <class T, int kD>
// A minimum of 1 CTA per SM: without it ptxas capped D = 32 (sm_80, sm_90a) and D = 64 (sm_90a)
// at 128 registers, aiming for 2 CTAs per SM, and spilled (see cuda/README.md).
__global__ void __launch_bounds__(BwdTraits<T, kD>::kThreads, 1)
    backward_kernel(const __grid_constant__ BwdParams p) {
  using Tr = BwdTraits<T, kD>;
  constexpr int kBlockM = Tr::kBlockM;
  constexpr int kBlockN = Tr::kBlockN;
  constexpr int kStages = Tr::kStages;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);

  const int tid = threadIdx.x;
  const FwdParams& f = p.f;
  const BwdWork w = bwd_cta_work(p, int64_t(blockIdx.x));
  const int64_t j0 = w.c * kBlockN;
  const int n_keys = bwd_block_keys(p, w.c);

  // ---- shared memory
  Tensor sK = make_tensor(make_smem_ptr(smem + Tr::kOffK), typename Tr::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem + Tr::kOffV), typename Tr::SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(smem + Tr::kOffK), typename Tr::SmemLayoutKt{});
  Tensor sP = make_tensor(make_smem_ptr(smem + Tr::kOffP), typename Tr::SmemLayoutP{});
  Tensor sPt = make_tensor(make_smem_ptr(smem + Tr::kOffP), typename Tr::SmemLayoutPt{});
  Tensor sdS = make_tensor(make_smem_ptr(smem + Tr::kOffdS), typename Tr::SmemLayoutP{});
  Tensor sdSt = make_tensor(make_smem_ptr(smem + Tr::kOffdS), typename Tr::SmemLayoutPt{});
  auto sQ = [&](int s) {
    return make_tensor(make_smem_ptr(smem + Tr::kOffQ + s * Tr::kSmemQ), typename Tr::SmemLayoutQ{});
  };
  auto sQt = [&](int s) {
    return make_tensor(make_smem_ptr(smem + Tr::kOffQ + s * Tr::kSmemQ), typename Tr::SmemLayoutQt{});
  };
  auto sdO = [&](int s) {
    return make_tensor(make_smem_ptr(smem + Tr::kOffdO + s * Tr::kSmemQ), typename Tr::SmemLayoutQ{});
  };
  auto sdOt = [&](int s) {
    return make_tensor(make_smem_ptr(smem + Tr::kOffdO + s * Tr::kSmemQ), typename Tr::SmemLayoutQt{});
  };

  // ---- global -> shared loads
  typename Tr::GmemLoad gload;
  auto gload_thr = gload.get_thread_slice(tid);
  Tensor cQ = gload_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor cK = gload_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kD>>{}));
  {
    Tensor gK = make_tensor(make_gmem_ptr(static_cast<const T*>(f.k) + k_offset(f, w.b, j0, w.g)),
                            Shape<Int<kBlockN>, Int<kD>>{}, make_stride(f.k_sn, _1{}));
    Tensor gV = make_tensor(make_gmem_ptr(static_cast<const T*>(f.v) + v_offset(f, w.b, j0, w.g)),
                            Shape<Int<kBlockN>, Int<kD>>{}, make_stride(f.v_sn, _1{}));
    load_rows(gload, gload_thr.partition_S(gK), gload_thr.partition_D(sK), cK, n_keys);
    load_rows(gload, gload_thr.partition_S(gV), gload_thr.partition_D(sV), cK, n_keys);
  }
  auto load_qdo = [&](const BwdVisit& v, int s) {
    const int64_t i0 = v.a * kBlockM;
    const int rows = bwd_tile_rows(p, v.a);
    Tensor gQ = make_tensor(make_gmem_ptr(static_cast<const T*>(f.q) + q_offset(f, w.b, i0, v.h)),
                            Shape<Int<kBlockM>, Int<kD>>{}, make_stride(f.q_sn, _1{}));
    Tensor gdO = make_tensor(make_gmem_ptr(static_cast<const T*>(p.dout) + do_offset(p, w.b, i0, v.h)),
                             Shape<Int<kBlockM>, Int<kD>>{}, make_stride(p.do_sn, _1{}));
    load_rows(gload, gload_thr.partition_S(gQ), gload_thr.partition_D(sQ(s)), cQ, rows);
    load_rows(gload, gload_thr.partition_S(gdO), gload_thr.partition_D(sdO(s)), cQ, rows);
  };

  // ---- products: fragments and shared-memory operand partitions
  typename Tr::MmaSdP mma_sdp;
  typename Tr::MmaDkv mma_dkv;
  typename Tr::MmaDq mma_dq;
  auto thr_sdp = mma_sdp.get_slice(tid);
  auto thr_dkv = mma_dkv.get_slice(tid);
  auto thr_dq = mma_dq.get_slice(tid);

  Tensor tSrQ = thr_sdp.partition_fragment_A(sQ(0));       // (MMA, MMA_M, MMA_K = D / 16)
  Tensor tSrK = thr_sdp.partition_fragment_B(sK);
  Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO(0));
  Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
  Tensor tdVrPt = thr_dkv.partition_fragment_A(sPt);       // (MMA, MMA_N keys, MMA_K = BM / 16)
  Tensor tdVrdOt = thr_dkv.partition_fragment_B(sdOt(0));
  Tensor tdKrdSt = thr_dkv.partition_fragment_A(sdSt);
  Tensor tdKrQt = thr_dkv.partition_fragment_B(sQt(0));
  // dQ part `part` (columns part * kDqCols ...) reads K^T rows d of that part.
  auto sKt_part = [&](int part) {
    return local_tile(sKt, Shape<Int<Tr::kDqCols>, Int<kBlockN>>{}, make_coord(part, 0));
  };
  Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);        // (MMA, MMA_M, MMA_K = BN / 16)
  Tensor tdQrKt = thr_dq.partition_fragment_B(sKt_part(0));

  auto cpA_sdp = make_tiled_copy_A(typename Tr::LdsmN{}, mma_sdp);
  auto cpB_sdp = make_tiled_copy_B(typename Tr::LdsmN{}, mma_sdp);
  // The loop's shared-memory partitions are made where used from ldsm_tid(): tid, or above
  // D = 128 the opaque copy of it taken at each visit (see kFreshAddresses).
  int ldsm_tid_ = tid;
  auto ldsm_tid = [&]() { return ldsm_tid_; };

  auto cpA_dkv = make_tiled_copy_A(typename Tr::LdsmT{}, mma_dkv);
  auto cpB_dkv = make_tiled_copy_B(typename Tr::LdsmT{}, mma_dkv);

  auto cpA_dq = make_tiled_copy_A(typename Tr::LdsmN{}, mma_dq);
  auto cpB_dq = make_tiled_copy_B(typename Tr::LdsmT{}, mma_dq);

  auto sts_pds = make_tiled_copy_C(typename Tr::StsC{}, mma_sdp);

  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kD>>{});
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kD>>{});
  clear(acc_dk);
  clear(acc_dv);

  // (row, col) of every score thread t holds, in the rows x cols view (made per visit from
  // ldsm_tid(), like the shared-memory partitions).
  auto score_coords = [&](int t) {
    Tensor cS = mma_sdp.get_slice(t).partition_C(
        make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    return make_tensor(cS.data(), rows_cols(cS.layout()));
  };
  constexpr int kRows = decltype(size<0>(score_coords(0)))::value;
  constexpr int kCols = decltype(size<1>(score_coords(0)))::value;
  static_assert(kRows * kCols <= 32, "one mask bit per score in a uint32_t");

  // ---- prologue: the first visit's Q and dO (K and V are in the same group)
  ColumnWalk walk(p, w.g, w.c);
  BwdVisit v{0, 0, false};
  bool have = walk.next(p, &v);
  if (have) load_qdo(v, 0);
  cp_async_fence();

  int s = 0;  // buffer of the current visit
  while (have) {
    // The next visit: found here with two Q / dO buffers (its loads start below); with one
    // (D = 256) only once this visit's products are done, so that it is not held in registers
    // through them.
    BwdVisit nx{0, 0, false};
    bool have_next = false;
    if constexpr (kStages == 2) have_next = walk.next(p, &nx);
    const int64_t i0 = v.a * kBlockM;
    if constexpr (Tr::kFreshAddresses) ldsm_tid_ = tileops::opaque(tid);
    Tensor cS_rc = score_coords(ldsm_tid());

    // The block's mask, one bit per score this thread holds (as in the forward).
    uint32_t keep = ~uint32_t(0);
    if (block_needs_mask_n(f.nk, kBlockN, v.partial, w.c)) {
      keep = 0;
      if (mask_by_interval(v.partial, range_is_exact(f.pred, v.h))) {
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          int64_t lo, hi;
          row_interval(f, v.partial, v.h, i0 + get<0>(cS_rc(r, 0)), &lo, &hi);
          lo -= j0;
          hi -= j0;
          CUTE_UNROLL
          for (int x = 0; x < kCols; ++x) {
            const int64_t jj = get<1>(cS_rc(r, x));
            if (jj >= lo && jj <= hi) keep |= uint32_t(1) << (r * kCols + x);
          }
        }
      } else {
#pragma unroll 1
        for (int e = 0; e < kRows * kCols; ++e) {
          const int r = e / kCols, x = e - (e / kCols) * kCols;
          if (element_kept(f, true, v.h, i0 + get<0>(cS_rc(r, x)), j0 + get<1>(cS_rc(r, x))))
            keep |= uint32_t(1) << e;
        }
      }
    }
    // This thread's rows of lse2 and delta (padded workspaces: no bounds checks).
    float row_lse2[kRows], row_delta[kRows];
    {
      const int64_t st = stat_offset(p, w.b, v.h, i0);
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const int row = get<0>(cS_rc(r, 0));
        row_lse2[r] = p.lse2[st + row];
        row_delta[r] = p.delta[st + row];
      }
    }

    cp_async_wait<0>();
    __syncthreads();  // Q, dO (and K, V) landed; every thread is done with the last visit
    if constexpr (kStages == 2) {
      if (have_next) load_qdo(nx, s ^ 1);
      cp_async_fence();
    }

    // S = Q K^T -> P (fp32 in registers, dtype in shared memory)
    Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    {
      auto tA = cpA_sdp.get_thread_slice(ldsm_tid());
      auto tB = cpB_sdp.get_thread_slice(ldsm_tid());
      gemm_ss(mma_sdp, acc_s, tSrQ, tSrK, tA.partition_S(sQ(s)), tB.partition_S(sK), cpA_sdp,
              cpB_sdp, tA, tB);
    }
    Tensor pr = make_tensor(acc_s.data(), rows_cols(acc_s.layout()));
    if (!f.mods) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int x = 0; x < kCols; ++x)
          pr(r, x) = bwd_prob(pr(r, x), f.scale_log2, row_lse2[r], (keep >> (r * kCols + x)) & 1u);
      }
      Tensor rP = make_tensor<T>(acc_s.layout());
      CUTE_UNROLL
      for (int x = 0; x < size(acc_s); ++x) rP(x) = static_cast<T>(acc_s(x));
      {
        auto sts_pds_thr = sts_pds.get_thread_slice(ldsm_tid());
        copy(sts_pds, sts_pds_thr.retile_S(rP), sts_pds_thr.partition_D(sP));
      }
    } else {
      // Softcap / ALiBi (a kernel parameter: the same branch in every thread): P goes to shared
      // memory; the registers keep P times the softcap's derivative, so that dS below is
      // P (dP - delta) (1 - tanh^2).
      Tensor rP = make_tensor<T>(acc_s.layout());
      Tensor rp = make_tensor(rP.data(), rows_cols(rP.layout()));
      const ScoreMod smod = score_mod(f, v.h);
      const float rel0 = rel_of(f, i0, j0), rel_step = float(f.m.rel_step);
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int x = 0; x < kCols; ++x) {
          float dcap;
          const float s2 = apply_mod(
              smod, score_scaled(pr(r, x), f.scale_log2, (keep >> (r * kCols + x)) & 1u),
              rel0 + rel_step * float(get<0>(cS_rc(r, x)) - get<1>(cS_rc(r, x))), &dcap);
          const float pv = fast_exp2(s2 - row_lse2[r]);
          rp(r, x) = static_cast<T>(pv);
          pr(r, x) = pv * dcap;
        }
      }
      {
        auto sts_pds_thr = sts_pds.get_thread_slice(ldsm_tid());
        copy(sts_pds, sts_pds_thr.retile_S(rP), sts_pds_thr.partition_D(sP));
      }
    }

    // dP = dO V^T -> dS = P (dP - delta) (dtype, shared memory)
    Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_dp);
    {
      auto tA = cpA_sdp.get_thread_slice(ldsm_tid());
      auto tB = cpB_sdp.get_thread_slice(ldsm_tid());
      gemm_ss(mma_sdp, acc_dp, tdPrdO, tdPrV, tA.partition_S(sdO(s)), tB.partition_S(sV), cpA_sdp,
              cpB_sdp, tA, tB);
    }
    Tensor ds = make_tensor(acc_dp.data(), rows_cols(acc_dp.layout()));
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int x = 0; x < kCols; ++x) ds(r, x) = bwd_ds(pr(r, x), ds(r, x), row_delta[r]);
    }
    {
      Tensor rdS = make_tensor<T>(acc_dp.layout());
      CUTE_UNROLL
      for (int x = 0; x < size(acc_dp); ++x) rdS(x) = static_cast<T>(acc_dp(x));
      auto sts_pds_thr = sts_pds.get_thread_slice(ldsm_tid());
      copy(sts_pds, sts_pds_thr.retile_S(rdS), sts_pds_thr.partition_D(sdS));
    }
    __syncthreads();  // P and dS visible to every warp

    // dV += P^T dO, dK += dS^T Q (keys x D, in registers)
    {
      auto tA = cpA_dkv.get_thread_slice(ldsm_tid());
      auto tB = cpB_dkv.get_thread_slice(ldsm_tid());
      gemm_ss(mma_dkv, acc_dv, tdVrPt, tdVrdOt, tA.partition_S(sPt), tB.partition_S(sdOt(s)),
              cpA_dkv, cpB_dkv, tA, tB);
    }
    {
      auto tA = cpA_dkv.get_thread_slice(ldsm_tid());
      auto tB = cpB_dkv.get_thread_slice(ldsm_tid());
      gemm_ss(mma_dkv, acc_dk, tdKrdSt, tdKrQt, tA.partition_S(sdSt), tB.partition_S(sQt(s)),
              cpA_dkv, cpB_dkv, tA, tB);
    }
    // dQ(a) += dS K: this key tile's part, added to the fp32 workspace (kDqCols at a time)
    Tensor gdQ = make_tensor(make_gmem_ptr(p.dq_accum + dqacc_offset(p, w.b, v.h, i0)),
                             Shape<Int<kBlockM>, Int<kD>>{}, Stride<Int<kD>, _1>{});
    CUTE_UNROLL
    for (int part = 0; part < kD / Tr::kDqCols; ++part) {
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<Tr::kDqCols>>{});
      clear(acc_dq);
      // Above D = 128 a fresh index per part: dS is read again for each part, instead of its
      // fragments being held across the parts.
      const int part_tid = Tr::kFreshAddresses ? tileops::opaque(tid) : tid;
      auto tA = cpA_dq.get_thread_slice(part_tid);
      auto tB = cpB_dq.get_thread_slice(part_tid);
      gemm_ss(mma_dq, acc_dq, tdQrdS, tdQrKt, tA.partition_S(sdS), tB.partition_S(sKt_part(part)),
              cpA_dq, cpB_dq, tA, tB);
      if constexpr (kStages == 1) {
        if (part + 1 == kD / Tr::kDqCols) {
          __syncthreads();  // every thread is done with Q, dO and dS of this visit
          have_next = walk.next(p, &nx);
          if (have_next) load_qdo(nx, 0);
          cp_async_fence();
        }
      }
      Tensor tdQgdQ = mma_dq.get_slice(ldsm_tid()).partition_C(  // the atomics' addresses too
          local_tile(gdQ, Shape<Int<kBlockM>, Int<Tr::kDqCols>>{}, make_coord(0, part)));
      static_assert(decltype(size(tdQgdQ))::value == decltype(size(acc_dq))::value);
      CUTE_UNROLL
      for (int x = 0; x < size(acc_dq); ++x) atomicAdd(&tdQgdQ(x), acc_dq(x));
    }

    v = nx;
    have = have_next;
    if constexpr (kStages == 2) s ^= 1;
  }

  // ---- epilogue: dK *= scale; dK, dV -> dtype -> shared memory -> rows < Nk
  cp_async_wait<0>();
  __syncthreads();  // no copy in flight and no thread still reads Q or dO
  CUTE_UNROLL
  for (int x = 0; x < size(acc_dk); ++x) acc_dk(x) *= f.scale;
  Tensor rdK = make_tensor<T>(acc_dk.layout());
  Tensor rdV = make_tensor<T>(acc_dv.layout());
  CUTE_UNROLL
  for (int x = 0; x < size(acc_dk); ++x) {
    rdK(x) = static_cast<T>(acc_dk(x));
    rdV(x) = static_cast<T>(acc_dv(x));
  }
  Tensor sdKo = make_tensor(make_smem_ptr(smem + Tr::kOffQ), typename Tr::SmemLayoutKV{});
  Tensor sdVo = make_tensor(make_smem_ptr(smem + Tr::kOffQ + Tr::kSmemKV), typename Tr::SmemLayoutKV{});
  auto sts_kv = make_tiled_copy_C(typename Tr::StsC{}, mma_dkv);
  auto sts_kv_thr = sts_kv.get_thread_slice(tid);
  copy(sts_kv, sts_kv_thr.retile_S(rdK), sts_kv_thr.partition_D(sdKo));
  copy(sts_kv, sts_kv_thr.retile_S(rdV), sts_kv_thr.partition_D(sdVo));
  __syncthreads();

  Tensor gdK = make_tensor(make_gmem_ptr(static_cast<T*>(p.dk) + dk_offset(p, w.b, j0, w.g)),
                           Shape<Int<kBlockN>, Int<kD>>{}, make_stride(p.dk_sn, _1{}));
  Tensor gdV = make_tensor(make_gmem_ptr(static_cast<T*>(p.dv) + dv_offset(p, w.b, j0, w.g)),
                           Shape<Int<kBlockN>, Int<kD>>{}, make_stride(p.dv_sn, _1{}));
  typename Tr::GmemStore gstore;
  auto gstore_thr = gstore.get_thread_slice(tid);
  Tensor tsK = gstore_thr.partition_S(sdKo);
  Tensor tsV = gstore_thr.partition_S(sdVo);
  Tensor tgK = gstore_thr.partition_D(gdK);
  Tensor tgV = gstore_thr.partition_D(gdV);
  Tensor tcK = gstore_thr.partition_D(make_identity_tensor(Shape<Int<kBlockN>, Int<kD>>{}));
  CUTE_UNROLL
  for (int m = 0; m < size<1>(tgK); ++m) {
    if (get<0>(tcK(0, m, 0)) < n_keys) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(tgK); ++k) {
        copy(gstore, tsK(_, m, k), tgK(_, m, k));
        copy(gstore, tsV(_, m, k), tgV(_, m, k));
      }
    }
  }
}

// Launches the main kernel for one (dtype, head dim) on `stream`; p.f.d == p.f.dv == kD. The
// preprocess must have filled p.lse2 and p.delta and p.dq_accum must be zero.
template <class T, int kD>
cudaError_t run(const BwdParams& p, cudaStream_t stream) {
  using Tr = BwdTraits<T, kD>;
  const int64_t ctas = bwd_grid_size(p);
  if (ctas == 0) return cudaSuccess;
  if (ctas > int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  auto kernel = &backward_kernel<T, kD>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(Tr::kSmemBytes));
  if (e != cudaSuccess) return e;
  kernel<<<dim3(unsigned(ctas)), dim3(Tr::kThreads), Tr::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::bwd

// One translation unit per (dtype, head dim, architecture) instantiates this (generated by
// cuda/CMakeLists.txt from bwd_instance.cu.in).
#define SPATTN_BWD_INSTANTIATE(T, D)                                                        \
  namespace spattn::cuda::SPATTN_CUDA_ARCH_NS::bwd {                                        \
  template cudaError_t run<T, D>(const BwdParams&, cudaStream_t);                           \
  }
