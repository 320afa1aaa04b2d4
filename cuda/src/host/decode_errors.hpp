// How a CUDA decode's errors reach the caller (decode_errors.cpp). The kernels record the first
// bad length or table entry in a small device record (spattn/cuda/decode_logic.hpp). Then
//   - immediate (the default, outside a graph capture): the call copies the record to pinned
//     memory, waits for it on its stream (one synchronisation, after the kernels) and raises
//     the CPU's ValueError;
//   - deferred (Options::decode_defer_errors, or a stream capturing a graph): the finish kernel
//     copies the record into the device's persistent one (only if that one is empty: the first
//     error stays) and the call returns at once; check_decode_errors(device) raises it later.
#pragma once

#include <cuda_runtime_api.h>

#include "backend/backend.hpp"
#include "spattn/cuda/decode_logic.hpp"

namespace spattn::cuda {

// The device's persistent record (kDecStickyWords words, all ones when empty), made on first use
// (also during a capture: it lives outside the graph).
unsigned long long* deferred_record(int device);

// Copies the record at `dev` (kDecErrorWords words) to the host, waiting on `stream`.
void read_error_record(const void* dev, cudaStream_t stream, int device, unsigned long long* out);

// Raises the error of a persistent-format record w (kDecStickyWords words; w[0] != all ones).
// pattern (may be null): to say why a length does not fit it, as the CPU does.
[[noreturn]] void raise_decode_error(const unsigned long long* w, const Pattern* pattern,
                                     int64_t hq);

// The immediate report of one call's record (read with read_error_record): returns if empty.
void raise_if_error(const DecodeParams& p, const unsigned long long* rec, const Pattern* pattern);
// The same for pool_keys' record.
void raise_if_pool_error(const PoolParams& p, const unsigned long long* rec);

}  // namespace spattn::cuda
