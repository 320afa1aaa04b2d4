// dQ by TMA reduce-add in the sm90a backward (cuda/src/sm90a/bwd90_kernel.cuh): which rows each
// reduce-add box covers, the fp32 accumulator as the TMA unit sees it, and the shared memory of
// the dK/dV kernel that produces them. SPATTN_HD functions, so that the host test
// (tests/cpp/test_cuda_hopper_bwd_logic.cpp) checks exactly what the kernel runs.
//
// The sm90a backward has two ways to form dQ (issue #12 asks for both, measured):
//   Pass (default): a separate query-major dQ kernel walks the row layout and writes every dQ
//     tile once (no atomics, bitwise reproducible).
//   Tma (SPATTN_CUDA_DQ=tma): the key-major dK/dV kernel also forms dQ_part = dS K for each
//     visit and part (hopper_bwd_kv_sub(D) = 64 queries x D) and adds it, fp32, into a
//     [B, Hq, nq_pad, D] accumulator with one TMA reduce-add (cp.reduce.async.bulk.tensor ... add)
//     per part; a conversion kernel then writes dq = scale * accumulator. The dQ kernel's
//     second pass over Q, dO, K and V is gone, at the price of fp32 reduce traffic to L2 and of
//     summation order: key tiles arrive in any order, so it is NOT bitwise reproducible and
//     deterministic=True keeps the Pass path.
#pragma once

#include <cstdint>

#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/hopper_bwd_logic.hpp"
#include "spattn/hostdevice.hpp"

namespace spattn::cuda {

// How the sm90a backward forms dQ (see above).
enum class HopperDq : uint8_t { Pass, Tma };

// Shared memory of one Hopper CTA (the dynamic limit an sm_90 kernel may raise to).
constexpr int64_t kHopperSmemLimit = 227 * 1024;
// Slack for the mbarriers and the rounding of a struct with 1024-byte aligned members.
constexpr int64_t kHopperSmemSlack = 1024;

// Query rows of one reduce-add box: one part of a visit (the dK/dV kernel's S^T / dS^T tiles
// are 128 keys x this many queries).
SPATTN_HD constexpr int hopper_dq_tma_rows(int d) { return hopper_bwd_kv_sub(d); }

// Columns of dQ_part per consumer warpgroup: both warpgroups need all 128 keys of dS (each
// holds 64 keys' rows of dS^T), so the product is split along D, not along queries (64 rows
// are one wgmma M atom).
SPATTN_HD constexpr int hopper_dq_tma_cols(int d) { return d / 2; }

// Bytes of the dS tile (128 keys x rows, input dtype) that both warpgroups read, and of the
// fp32 staging tile (rows x D) that the reduce-add reads.
SPATTN_HD constexpr int64_t hopper_dq_tma_ds_bytes(int d, int elem_bytes) {
  return int64_t(kHopperBwdBlockN) * hopper_dq_tma_rows(d) * elem_bytes;
}
SPATTN_HD constexpr int64_t hopper_dq_tma_stage_bytes(int d) {
  return int64_t(hopper_dq_tma_rows(d)) * d * 4;
}

// Whether the staging tile must share the dS tile's bytes (a union): when both beside the
// dK/dV kernel's own buffers would not fit. Then dS must be read by both warpgroups' dQ
// products before the staging tile is written, and the previous reduce-add must have read the
// staging tile before dS is written again (two more barriers per part; bwd90_kernel.cuh).
// D = 64: 164 KB + 16 + 16 KB, separate. D = 128: 194 KB + 16 + 32 KB would be 242 KB: aliased.
SPATTN_HD constexpr bool hopper_dq_tma_aliased(int d, int elem_bytes) {
  return hopper_bwd_smem_bytes(d, elem_bytes, true) + hopper_dq_tma_ds_bytes(d, elem_bytes) +
             hopper_dq_tma_stage_bytes(d) + kHopperSmemSlack >
         kHopperSmemLimit;
}

// Shared memory of the dK/dV kernel with the reduce-add (without the slack).
SPATTN_HD constexpr int64_t hopper_dq_tma_smem_bytes(int d, int elem_bytes) {
  const int64_t ds = hopper_dq_tma_ds_bytes(d, elem_bytes), st = hopper_dq_tma_stage_bytes(d);
  return hopper_bwd_smem_bytes(d, elem_bytes, true) +
         (hopper_dq_tma_aliased(d, elem_bytes) ? (ds > st ? ds : st) : ds + st);
}

// The fp32 accumulator [B, Hq, nq_pad, D] (the sm80-style backward's dq_accum layout, so that
// dqacc_offset() and the shared conversion kernel read it) as the TMA unit sees it:
// (row, d, head, batch), strides in elements. Whole 128-row tiles per head: no box is clipped.
struct DqAccumView {
  int64_t shape[4];
  int64_t stride[4];
};
SPATTN_HD DqAccumView hopper_dq_accum_view(const BwdParams& p) {
  const int64_t d = p.f.d;
  return {{p.nq_pad, d, p.f.hq, p.f.b}, {d, 1, p.nq_pad * d, p.f.hq * p.nq_pad * d}};
}

// The box one part of one visit reduces into: rows [row, row + hopper_dq_tma_rows(d)) of
// (batch b, query head v.h). tile is row in units of boxes (the TMA tile coordinate).
struct DqBox {
  int64_t row, tile, h, b;
};
SPATTN_HD DqBox hopper_dq_tma_box(const BwdVisit& v, int64_t b, int part, int d) {
  const int64_t rows = hopper_dq_tma_rows(d);
  const int64_t row = v.a * kHopperBwdBlockM + part * rows;
  return {row, row / rows, v.h, b};
}

}  // namespace spattn::cuda
