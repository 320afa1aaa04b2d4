// The sm90a backward's host entry (backward90.cpp), for backward.cpp: a problem whose layout
// was staged for the sm90a tile (backward_tile(d, dv, device, dtype) chose it) runs there.
#pragma once

#include "spattn/cuda/backward.hpp"

namespace spattn::cuda {

// Whether the sm90a backward runs (dtype, d == dv) on `device`: opted in with
// SPATTN_CUDA_BACKWARD=sm90a, compiled for (dtype, d), compute capability 9.0.
bool backward90_runs(int device, DType dtype, int64_t d, int64_t dv);

// Launches it (p.staged from stage_backward90). Throws like attention_backward.
void attention_backward90(const BackwardProblem& p);

}  // namespace spattn::cuda
