// Results on a CUDA device: a contiguous tensor in device memory, owned as a DLPack managed
// tensor (its deleter frees the memory), so that outputs go back to any framework zero-copy.
// Implemented by cuda/src/host/allocate.cpp with CUDA, by cuda/src/stub.cpp without (throws).
#pragma once

#include <cstdint>
#include <cstddef>
#include <vector>

#include "spattn/tensor.hpp"

namespace spattn::cuda {

// A row-major tensor of `shape` on CUDA device `device` (cudaMalloc; contents undefined).
// RuntimeError for any CUDA failure (no device, out of memory), ValueError for bad shapes.
ManagedTensor allocate(DType dtype, const std::vector<int64_t>& shape, int device);

// spattn's kernels run on the legacy default stream. A consumer that takes a result on another
// stream (DLPack's __dlpack__(stream=s): 2 = per-thread default, else a cudaStream_t) must not
// read it before that work is done: this makes `stream` wait for the legacy default stream's
// work so far (an event, no host synchronisation). Streams 1 (legacy default itself) and -1
// (no ordering wanted) need nothing. RuntimeError for a CUDA failure.
void order_after_spattn(intptr_t stream, int device);

}  // namespace spattn::cuda
