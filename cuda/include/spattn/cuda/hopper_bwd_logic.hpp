// The index, mask and scheduling logic of the sm90a (Hopper) backward kernels
// (cuda/src/sm90a/bwd90_kernel.cuh), as SPATTN_HD functions so that the host test
// (tests/cpp/test_cuda_hopper_bwd_logic.cpp) checks exactly what the kernels run.
//
// The sm90a backward is two kernels on ONE block layout compiled for 128 x 128 tiles:
//   dK/dV, key-major: a CTA holds a key tile (128 keys: 64 per consumer warpgroup) and walks
//     the TRANSPOSED layout (backward_logic.hpp: ColumnWalk over every query head of the GQA
//     group), one 128-row query tile per visit, computed as two halves of 64 queries;
//   dQ, query-major: a CTA holds a query tile (128 rows: 64 per consumer warpgroup) and walks
//     the ROW layout (forward_logic.hpp: RowWalk, the forward's schedule), one 128-key block per
//     step, computed as two halves of 64 keys.
// Neither uses atomics: every output tile is written by one CTA that sums in a fixed order, so
// the gradients are bitwise reproducible (deterministic by construction).
//
// What lives here: the tile, the ring depths, shared-memory sizes, which head dims have the
// kernels, whether a block needs a mask, and the mask bits of one thread's accumulator fragment
// in either orientation (queries as rows: dQ; queries as columns: dK/dV). Element rule, range
// walks, offsets and per-element math are forward_logic.hpp's and backward_logic.hpp's: one
// definition for CPU, sm80 and sm90a.
#pragma once

#include <cstdint>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/hostdevice.hpp"

#if !defined(__CUDA_ARCH__)
#include <string>
#include <vector>
#endif

// Loop unrolling hints for the kernels (the host compilers do not know the pragma).
#if defined(__CUDA_ARCH__)
#define SPATTN_BWD90_UNROLL _Pragma("unroll")
#define SPATTN_BWD90_ROLLED _Pragma("unroll 1")
#else
#define SPATTN_BWD90_UNROLL
#define SPATTN_BWD90_ROLLED
#endif

namespace spattn::cuda {

// The layout tile of the sm90a backward (both kernels walk the same layout).
constexpr int kHopperBwdBlockM = 128;  // query rows per layout tile
constexpr int kHopperBwdBlockN = 128;  // keys per layout tile
// The other dimension of each product is split in halves of 64, so that the two 64 x 64 fp32
// score tiles (S and dP, 32 registers each) fit next to the two 64 x D accumulators (dK and
// dV, or dQ) of a consumer warpgroup.
constexpr int kHopperBwdHalf = 64;

// Query columns per product in the dK/dV kernel (the kernel takes any multiple of 16 that
// divides 128; 64 keeps ptxas within 240 registers without spills at D = 128 once the K / V
// descriptors are remade per product, see bwd90_kernel.cuh).
SPATTN_HD constexpr int hopper_bwd_kv_sub(int) { return kHopperBwdHalf; }

// Head dims with sm90a backward kernels. D = 256 would need 2 x 128 accumulator registers for
// dK and dV per thread (64 x 256 fp32 each): it stays on the sm80-style backward.
SPATTN_HD constexpr bool hopper_bwd_head_dim(int d) { return d == 64 || d == 128; }

// Ring depths in 227 KB: the dK/dV kernel keeps K and V (128 x D each) and rings (Q, dO, lse2,
// delta) of a query tile; the dQ kernel keeps Q, dO, lse2, delta and rings (K, V).
//   d = 64: 16 + 16 KB resident, 4 x (16 + 16 KB) ring; d = 128: 32 + 32 KB, 2 x (32 + 32 KB).
SPATTN_HD constexpr int hopper_bwd_stages(int d) { return d <= 64 ? 4 : 2; }

// Bytes of the rows statistics (lse2 and delta, fp32) of one 128-row query tile, each.
constexpr int kHopperBwdStatBytes = kHopperBwdBlockM * 4;

SPATTN_HD constexpr int64_t hopper_bwd_smem_bytes(int d, int elem_bytes, bool dkdv) {
  const int64_t tile = int64_t(kHopperBwdBlockM) * d * elem_bytes;
  const int64_t stats = 2 * kHopperBwdStatBytes;
  return dkdv ? 2 * tile + hopper_bwd_stages(d) * (2 * tile + stats)
              : 2 * tile + stats + hopper_bwd_stages(d) * 2 * tile;
}

// Rows of the lse2 / delta workspaces per (batch, head): whole 128-row tiles, so a tile's
// statistics are one 512-byte bulk copy (padding rows: lse2 = +inf, delta = 0, so P = 0).
SPATTN_HD constexpr int64_t hopper_bwd_nq_pad(int64_t nq) {
  return (nq + kHopperBwdBlockM - 1) / kHopperBwdBlockM * kHopperBwdBlockM;
}

// Whether key block c (128 keys) needs a mask: partial blocks, and full blocks that stick out
// past Nk. The dQ kernel needs the latter: TMA zero-fills keys past Nk, whose P =
// exp2(-lse2) need not be 0 and whose dS times a zero key row could be inf * 0. In the dK/dV
// kernel such keys only reach their own (never stored) rows, but the rule is kept the same.
SPATTN_HD bool hopper_bwd_needs_mask(int64_t nk, bool partial, int64_t c) {
  return block_needs_mask_n(nk, kHopperBwdBlockN, partial, c);
}

// The mask bits of one thread's accumulator fragment of kRows x kCols values: bit
// r * kCols + x is set when the pair of register row r (tile row row_of(r)) and register
// column x (tile column col_of(x)) is kept. Rows are queries q0 + row and columns keys
// k0 + col, or, with kQueryCols (the dK/dV kernel's S^T tiles), columns are queries and rows
// keys. Masked blocks only (hopper_bwd_needs_mask): by one key interval per query
// (row_interval) when mask_by_interval(partial, rule_exact), else element_kept() -> keeps()
// per element in a rolled loop (the interpreter stays out of the accumulators' registers).
// Rows past Nq and keys past Nk are never kept and never reach keeps().
template <int kRows, int kCols, bool kQueryCols, class RowOf, class ColOf>
SPATTN_HD uint32_t fragment_keep_bits(const FwdParams& p, bool partial, bool rule_exact,
                                      int64_t h, int64_t q0, int64_t k0, RowOf row_of,
                                      ColOf col_of) {
  static_assert(kRows * kCols <= 32, "one bit per value in a uint32_t");
  uint32_t keep = 0;
  if (mask_by_interval(partial, rule_exact)) {
    if constexpr (!kQueryCols) {
SPATTN_BWD90_UNROLL
      for (int r = 0; r < kRows; ++r) {
        int64_t lo, hi;
        row_interval(p, partial, h, q0 + row_of(r), &lo, &hi);
SPATTN_BWD90_UNROLL
        for (int x = 0; x < kCols; ++x) {
          const int64_t j = k0 + col_of(x);
          if (j >= lo && j <= hi) keep |= uint32_t(1) << (r * kCols + x);
        }
      }
    } else {
      // One interval per query column (16 per thread): a rolled loop, so that the interval
      // code is not replicated beside the dK and dV accumulators (128 registers at D = 128).
SPATTN_BWD90_ROLLED
      for (int x = 0; x < kCols; ++x) {
        int64_t lo, hi;
        row_interval(p, partial, h, q0 + col_of(x), &lo, &hi);
SPATTN_BWD90_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int64_t j = k0 + row_of(r);
          if (j >= lo && j <= hi) keep |= uint32_t(1) << (r * kCols + x);
        }
      }
    }
  } else {
SPATTN_BWD90_ROLLED
    for (int e = 0; e < kRows * kCols; ++e) {
      const int r = e / kCols, x = e - (e / kCols) * kCols;
      const int64_t i = kQueryCols ? q0 + col_of(x) : q0 + row_of(r);
      const int64_t j = kQueryCols ? k0 + row_of(r) : k0 + col_of(x);
      if (element_kept(p, true, h, i, j)) keep |= uint32_t(1) << e;
    }
  }
  return keep;
}

// Work items of the two kernels (persistent grids, hopper_logic.hpp's PersistentWork):
// dK/dV: B * Hkv * key tiles, in the backward schedule's order (bwd_cta_work: longest columns
// first, batch fastest); dQ: B * Hq * query tiles in the forward schedule's order (cta_work on
// BwdParams::f, whose layout fields hold the row layout: StagedBackward::rows_staged).
SPATTN_HD int64_t hopper_bwd_kv_items(const BwdParams& p) { return bwd_grid_size(p); }
SPATTN_HD int64_t hopper_bwd_q_items(const BwdParams& p) { return fwd_grid_size(p.f); }

#if !defined(__CUDA_ARCH__)

// Stages a layout compiled for 128 x 128 tiles for the sm90a backward: the transposed layout
// and its schedule (dK/dV) as stage_backward does, plus the row layout and the forward's
// schedule (dQ). Throws ValueError when the layout does not fit.
inline StagedBackward stage_backward90(const BlockLayout& L, const Predicate& pred, int64_t nq,
                                       int64_t nk, int64_t hq, int64_t hkv) {
  return stage_backward(L, pred, nq, nk, hq, hkv, kHopperBwdBlockM, kHopperBwdBlockN, true);
}

#endif  // !__CUDA_ARCH__

}  // namespace spattn::cuda
