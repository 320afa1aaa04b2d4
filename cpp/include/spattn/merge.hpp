// Exact combination of attention computed on disjoint key sets (split-K, unions of patterns,
// context parallelism): given partial results out_k with their logsumexps lse_k,
//   lse = log(sum_k exp(lse_k)),  out = sum_k exp(lse_k - lse) * out_k.
// Rows that no part saw (every lse_k = -inf) give out = 0 and lse = -inf.
#pragma once

#include <vector>

#include "spattn/dlpack.hpp"
#include "spattn/options.hpp"

namespace spattn {

// outs[k]: [B, N, H, Dv] (or varlen [T, H, Dv]); lses[k]: [B, H, N] (or [H, T]) float32
// (float64 with float64 outs).
// out has the shape and dtype of outs[0]; lse (optional) that of lses[0]. Any strides. All on
// one device (CPU or CUDA; on CUDA, queued on options.stream).
void merge_partials(const std::vector<DLTensor>& outs, const std::vector<DLTensor>& lses,
                    const DLTensor& out, const DLTensor* lse, const Options& options = {});

}  // namespace spattn
