// The forward's layout compiled on the device (device_layout_logic.hpp, kernels/
// device_layout.cu) on first use of a (pattern, sizes, tile, device), instead of on the host.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "launch_util.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/pattern.hpp"

namespace spattn::cuda::launch {

// Which compiler makes the forward's layout: SPATTN_LAYOUT_COMPILE=host forces the host
// compiler (for comparison); unset or "device": the device one where the pattern allows it.
bool layout_on_device_requested();

// Compiles cp's layout for bq x bk tiles on `device`, on `stream`, into *staged (offsets into
// *blob) and *blob (allocated here, on blob->device; the compile's temporaries come from
// `allocator` when given, else stream-ordered). No host synchronisation, no pageable copy:
// the program and its data go up from pinned memory, the kernels make the rest. Returns false
// (touching nothing) when the pattern has a leaf without a device block rule, the buffers
// would exceed the bound, or the stream is capturing a graph: the caller then uses the host
// compiler.
bool compile_forward_layout_on_device(const CompiledPattern& cp, int64_t bq, int64_t bk,
                                      int device, cudaStream_t stream,
                                      const Allocator* allocator, StagedForward* staged,
                                      DeviceBlob* blob);

}  // namespace spattn::cuda::launch
