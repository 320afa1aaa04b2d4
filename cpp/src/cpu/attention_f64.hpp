// The CPU's float64 path: attention, its backward, decode, merge and sum computed in float64
// throughout (scores, softmax, lse, accumulation), for gradient checks on small problems
// (torch.autograd.gradcheck). A plain row-at-a-time kernel: it walks only the layout's kept
// blocks (full blocks without a mask, partial ones through keeps()), parallel over independent
// rows or heads, and shares nothing with the SIMD kernels of the other dtypes, which it
// therefore cannot slow down.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/attention_cpu.hpp"
#include "cpu/decode_cpu.hpp"

namespace spattn::cpu {

// As forward() / backward() (attention_cpu.hpp) for dtype float64; lse is float64 too, and so
// are the score modifiers' slopes and sinks (ScoreMods::alibi64, sinks64).
void forward_f64(const ForwardArgs& a);
void backward_f64(const BackwardArgs& a);

// One sequence of a decode call as decode.cpp planned it: its keys (cache_len), its compiled
// layout (one query block of all Nq rows) and its element rule.
struct DecodeSeqF64 {
  int64_t nk = 0;
  const BlockLayout* layout = nullptr;  // null when nk == 0
  Predicate pred;
};
// Decode in float64; table entries of the visited pages are already checked.
void decode_f64(const DecodeArgs& a, const std::vector<DecodeSeqF64>& seqs);

// sink_grad() (attention_cpu.hpp) for float64: out, dout, lse, the sinks (mods.sinks64) and
// dsinks float64.
void sink_grad_f64(const TensorView& dout, const TensorView& out, const TensorView& lse,
                   const backend::ScoreMods& mods, const TensorView& dsinks);

// merge() and sum() (attention_cpu.hpp) for float64 outputs and lse.
void merge_f64(const MergeArgs& a);
void sum_f64(const TensorView& dst, const TensorView* srcs, int n);

}  // namespace spattn::cpu
