// The backward's staged layout made on the device (device_transpose_logic.hpp, kernels/
// device_layout.cu and device_transpose.cu) on first use of a (pattern, sizes, tile, Hkv,
// device), instead of on the host.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "launch_util.hpp"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/pattern.hpp"

namespace spattn::cuda::launch {

// Compiles cp's row layout for bq x bk tiles on `device` and transposes it into the backward's
// columns and schedule, on `stream`, into *staged (offsets into *blob) and *blob (allocated
// here; the temporaries come from `allocator` when given, else stream-ordered). with_rows: the
// sm90a backward's row layout and forward schedule are staged too. No host synchronisation, no
// pageable copy. Returns false (touching nothing) where the caller must use the host path:
// SPATTN_LAYOUT_COMPILE=host is the caller's check; here a leaf without a device block rule,
// Hq not a multiple of Hkv (the host path raises), buffers past the bound, or a stream that is
// capturing a graph.
bool compile_backward_layout_on_device(const CompiledPattern& cp, int64_t hkv, int64_t bq,
                                       int64_t bk, bool with_rows, int device,
                                       cudaStream_t stream, const Allocator* allocator,
                                       StagedBackward* staged, DeviceBlob* blob);

}  // namespace spattn::cuda::launch
