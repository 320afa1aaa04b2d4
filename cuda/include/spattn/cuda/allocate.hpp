// Results on a CUDA device: a contiguous tensor in device memory, owned as a DLPack managed
// tensor (its deleter frees the memory), so that outputs go back to any framework zero-copy.
// Implemented by cuda/src/host/allocate.cpp with CUDA, by cuda/src/stub.cpp without (throws).
#pragma once

#include <cstdint>
#include <vector>

#include "spattn/tensor.hpp"

namespace spattn::cuda {

// A row-major tensor of `shape` on CUDA device `device` (cudaMalloc; contents undefined).
// RuntimeError for any CUDA failure (no device, out of memory), ValueError for bad shapes.
ManagedTensor allocate(DType dtype, const std::vector<int64_t>& shape, int device);

}  // namespace spattn::cuda
