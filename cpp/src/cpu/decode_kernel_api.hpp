// The plain-data boundary between the decode planner (decode.cpp, default target) and the
// per-ISA decode kernels (decode_isa_*.cpp). Structs and declarations only, no inline code, so
// nothing here is compiled twice with different target flags.
#pragma once

#include <cstdint>

#include "spattn/predicate.hpp"

namespace spattn::cpu {

// Keys per score tile of the decode kernel (a block longer than this is walked in pieces).
constexpr int kDecodeTile = 64;

// One split-K chunk of one (sequence b, kv head g): a list of key-block ranges, and the G query
// heads h0 .. h0 + G - 1 that read kv head g, with all nq queries of each. The kernel writes
// the chunk's unnormalised partial result in base-2 units: for row r = hh * nq + i,
//   m[r] = max score (base 2, -inf if the row kept no key), l[r] = sum 2^(s - m[r]),
//   acc[r * Dvp + :] = sum 2^(s - m[r]) v.
struct DecodeChunk {
  int dtype = 0;  // kF32 / kF16 / kBF16 (kernel_api.hpp)
  int64_t nq = 0, nk = 0, G = 1, h0 = 0, D = 0, Dv = 0, Dp = 0, Dvp = 0;
  float scale2 = 1.f;  // softmax scale * log2(e)
  // q at [b, 0, h0, 0]; element strides along the query, head and feature dimensions.
  const void* q = nullptr;
  int64_t q_si = 0, q_sh = 0, q_sd = 1;
  // Key rows: key t of block c lies at k + page(c) * k_sp + t * k_sr (elements), features
  // k_sd apart (likewise v). Blocks hold bk keys (the last one may be cut by nk).
  // page(c) = c without a table (contiguous caches), else table[c * table_s] (int32 / int64).
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_sp = 0, k_sr = 0, k_sd = 1, v_sp = 0, v_sr = 0, v_sd = 1, bk = 1;
  const void* table = nullptr;
  bool table64 = false;
  int64_t table_s = 1;
  // The blocks to visit: [blo[t], bhi[t]) for t < nranges, ascending, within [0, ceil(nk/bk)).
  const int32_t* blo = nullptr;
  const int32_t* bhi = nullptr;
  int64_t nranges = 0;
  // The block layout (1 query block of nq rows, key blocks of bk): row of head h is
  // (lheads == 1 ? 0 : h); full blocks need no element check, partial blocks use pred.
  int64_t lheads = 1;
  const int64_t *full_ptr = nullptr, *part_ptr = nullptr;
  const int32_t *full_lo = nullptr, *full_hi = nullptr, *part_lo = nullptr, *part_hi = nullptr;
  Predicate pred;
  // Score modifiers (kernel_api.hpp's Problem, base-2 units): softcap2 (0: none), alibi2 [G]
  // slopes of heads h0.. (null: none), with rel = i + nk - nq - j.
  float softcap2 = 0.f;
  const float* alibi2 = nullptr;
  // Outputs: acc [G * nq, Dvp], m and l [G * nq].
  float* acc = nullptr;
  float* m = nullptr;
  float* l = nullptr;
};

// Floats of scratch one thread needs for chunks of this shape.
int64_t decode_ws_floats(int64_t rows, int64_t G, int64_t Dp, int64_t Dvp);

// The exact merge of the chunks of one (sequence, kv head): for each row, with M = max_t m_t
// and L = sum_t 2^(m_t - M) l_t, out = sum_t 2^(m_t - M) acc_t / L and lse = ln 2 (M + log2 L).
// A row no chunk kept a key for (or no chunk at all) gets out = 0, lse = -inf.
struct DecodeFinish {
  int dtype = 0;
  int64_t nq = 0, G = 1, Dv = 0, Dvp = 0;
  int64_t nparts = 0;
  const float* const* acc = nullptr;  // [nparts] of [G * nq, Dvp]
  const float* const* m = nullptr;    // [nparts] of [G * nq]
  const float* const* l = nullptr;
  void* out = nullptr;  // at [b, 0, h0, 0]; element strides below
  int64_t out_si = 0, out_sh = 0, out_sd = 1;
  float* lse = nullptr;  // at [b, h0, 0], or null
  int64_t lse_sh = 0, lse_si = 0;
  // Sinks of heads h0 .. h0 + G - 1 in base-2 units (null: none): one more term 2^sink2 in each
  // row's denominator, with no value; a row that kept no key gets out = 0, lse = sink.
  const float* sink2 = nullptr;
};

// Attention over rows that each keep a short list of keys (sparse rows: sparse_rows.cpp): rows
// i0 .. i0 + n - 1 (n <= kSparseRowsMax) of one (batch, query head), row r over keys[ptr[r] .. ptr[r + 1]) (ascending).
// Writes each row's out (and lse), normalised, with the sink if any: what the tile kernels
// write for the same rows.
struct SparseRows {
  int dtype = 0;
  int64_t n = 0, i0 = 0, D = 0, Dv = 0, Dp = 0, Dvp = 0;
  float scale2 = 1.f;  // softmax scale * log2(e)
  // q at row i0 of the head; k and v at key 0 of its kv head; element strides.
  const void* q = nullptr;
  int64_t q_si = 0, q_sd = 1;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_sj = 0, k_sd = 1, v_sj = 0, v_sd = 1;
  const int64_t* ptr = nullptr;
  const int64_t* keys = nullptr;
  // Score modifiers in base-2 units (kernel_api.hpp's Problem): softcap2 (0: none), the head's
  // ALiBi slope alibi2 (0: none) with rel = rel_step * (i - j) + rel_base, and its sink.
  float softcap2 = 0.f, alibi2 = 0.f;
  int64_t rel_step = 1, rel_base = 0;
  bool sink = false;
  float sink2 = 0.f;
  void* out = nullptr;  // row i0 of the head
  int64_t out_si = 0, out_sd = 1;
  float* lse = nullptr;  // [i0] of the head's lse row, or null
  int64_t lse_si = 0;
};

// Rows per sparse_rows call, at most.
constexpr int64_t kSparseRowsMax = 64;

// Floats of scratch sparse_rows needs for rows of at most max_keys keys.
inline int64_t sparse_rows_ws_floats(int64_t max_keys, int64_t Dp, int64_t Dvp) {
  return 2 * Dp + 2 * Dvp + ((max_keys + 15) & ~int64_t(15));
}

// The backward of sparse rows: for rows i0 .. i0 + n - 1 of one (batch, query head) over their
// key lists (f: q, k, v, keys, softcap and ALiBi; its out and sinks unused), with the forward's
// lse (natural log) and delta = rowsum(dO * O) from `o`, or, with exact_delta, recomputed as
// sum P dP: writes the rows' dq (times scale) and accumulates the kv head's dK (unscaled) and
// dV into dk_acc [keys][Dp] and dv_acc [keys][Dvp] (float32, key 0 first).
struct SparseRowsBwd {
  SparseRows f;
  const void* dout = nullptr;  // row i0 of the head
  int64_t dout_si = 0, dout_sd = 1;
  const void* o = nullptr;  // row i0 of the head
  int64_t o_si = 0, o_sd = 1;
  const float* lse = nullptr;  // [i0] of the head's lse row
  int64_t lse_si = 0;
  bool exact_delta = false;
  float scale = 1.f;
  void* dq = nullptr;  // row i0 of the head
  int64_t dq_si = 0, dq_sd = 1;
  float* dk_acc = nullptr;
  float* dv_acc = nullptr;
};

// Floats of scratch sparse_rows_bwd needs for rows of at most max_keys keys.
inline int64_t sparse_rows_bwd_ws_floats(int64_t max_keys, int64_t Dp, int64_t Dvp) {
  return 4 * Dp + 3 * Dvp + 4 * ((max_keys + 15) & ~int64_t(15));
}

struct DecodeKernels {
  const char* name;
  void (*chunk)(const DecodeChunk& c, float* ws);
  void (*finish)(const DecodeFinish& f, float* ws);  // ws: Dvp floats
  // acc[0..np) += sum of n rows of d elements (dtype, element stride), np = d rounded up to 16;
  // tmp: np floats. Pools keys and queries for TopKBlocks (select/topk.cpp).
  void (*sum_rows)(const void* const* rows, int64_t n, int dtype, int64_t stride, int d, int np,
                   float* acc, float* tmp);
  void (*sparse_rows)(const SparseRows& c, float* ws);  // ws: sparse_rows_ws_floats()
  void (*sparse_rows_bwd)(const SparseRowsBwd& c, float* ws);  // ws: sparse_rows_bwd_ws_floats()
};

// The decode kernels for the SIMD level of kernels() (the same choice, SPATTN_SIMD included).
const DecodeKernels* decode_kernels();
const DecodeKernels* decode_kernels_portable();
#if defined(__x86_64__) || defined(_M_X64)
const DecodeKernels* decode_kernels_avx2();
const DecodeKernels* decode_kernels_avx512();
#endif

}  // namespace spattn::cpu
