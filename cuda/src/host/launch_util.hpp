// Host-side pieces shared by the CUDA launchers (forward.cpp, backward.cpp): the per-arch entry
// table and its choice by compute capability, CUDA error checks (-> RuntimeError), the device
// guard, one stream-ordered scratch allocation, pointer checks, and the test for tensors the
// kernels can read with 16-byte copies. Internal: compiled by the host compiler into the core.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "arch_api.hpp"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/error.hpp"
#include "spattn/options.hpp"
#include "spattn/tensor.hpp"

#ifndef SPATTN_CUDA_HAS_SM80
#define SPATTN_CUDA_HAS_SM80 0
#endif
#ifndef SPATTN_CUDA_HAS_SM90A
#define SPATTN_CUDA_HAS_SM90A 0
#endif

namespace spattn::cuda::launch {

using ForwardFn = cudaError_t (*)(const FwdParams&, KernelDType, cudaStream_t);
using BackwardFn = cudaError_t (*)(const BwdParams&, KernelDType, cudaStream_t);
using SupportedFn = bool (*)(KernelDType, int);
using CopyFn = cudaError_t (*)(const void*, const int64_t*, void*, const int64_t*, const int64_t*,
                               int, cudaStream_t);

using MergeFn = cudaError_t (*)(const MergeParams&, KernelDType, cudaStream_t);
using SumFn = cudaError_t (*)(const SumParams&, KernelDType, cudaStream_t);
using SinkGradFn = cudaError_t (*)(const SinkGradProblem&, KernelDType, cudaStream_t);
using DecodeFn = cudaError_t (*)(const DecodeParams&, KernelDType, cudaStream_t);
using PoolKeysFn = cudaError_t (*)(const PoolParams&, KernelDType, cudaStream_t);

struct ArchFns {
  const char* name;
  ForwardFn forward;
  SupportedFn supported;
  CopyFn copy;
  BackwardFn backward;
  SupportedFn backward_supported;
  MergeFn merge;
  SumFn sum;
  SinkGradFn sink_grad;
  DecodeFn decode;
  PoolKeysFn pool_keys;
};

#if SPATTN_CUDA_HAS_SM80
inline const ArchFns kSm80{"sm_80",          &sm80::forward,  &sm80::forward_supported,
                           &sm80::copy_strided_4d, &sm80::backward, &sm80::backward_supported,
                           &sm80::merge,           &sm80::sum,
                           &sm80::sink_grad,       &sm80::decode,
                           &sm80::pool_keys};
#endif
#if SPATTN_CUDA_HAS_SM90A
inline const ArchFns kSm90a{"sm_90a",          &sm90a::forward,  &sm90a::forward_supported,
                            &sm90a::copy_strided_4d, &sm90a::backward, &sm90a::backward_supported,
                            &sm90a::merge,           &sm90a::sum,
                            &sm90a::sink_grad,       &sm90a::decode,
                            &sm90a::pool_keys};
#endif

// The kernels compiled for every architecture are the same set: any arch answers supports().
inline const ArchFns* any_arch() {
#if SPATTN_CUDA_HAS_SM80
  return &kSm80;
#elif SPATTN_CUDA_HAS_SM90A
  return &kSm90a;
#else
  return nullptr;
#endif
}

// sm_80 machine code runs on every 8.x device, sm_90a only on 9.0 (no PTX is embedded).
inline const ArchFns* arch_for(int major, int minor) {
#if SPATTN_CUDA_HAS_SM90A
  if (major == 9 && minor == 0) return &kSm90a;
#endif
#if SPATTN_CUDA_HAS_SM80
  if (major == 8) return &kSm80;
#endif
  (void)major;
  (void)minor;
  return nullptr;
}

// The kernels take the library's DType itself (arch_api.hpp); kept as a name for the call sites.
inline KernelDType kernel_dtype(DType t) { return t; }

// Whether a kernel table (ArchFns::supported or ::backward_supported; every architecture
// compiles the same set) has a kernel for dtype with D == Dv == d.
inline bool has_kernel(SupportedFn ArchFns::*table, DType dtype, int64_t d, int64_t dv) {
  const ArchFns* a = any_arch();
  if (!a || d != dv || d <= 0 || d > 4096) return false;
  if (dtype != DType::Float32 && dtype != DType::Float16 && dtype != DType::BFloat16) return false;
  return (a->*table)(kernel_dtype(dtype), int(d));
}

// The kernels of a table as "float32:128;float16:64,128;bfloat16:64,128" (empty without CUDA).
inline std::string kernel_list(SupportedFn ArchFns::*table) {
  std::string r;
  for (DType t : {DType::Float32, DType::Float16, DType::BFloat16}) {
    std::string dims;
    for (int d : {32, 64, 96, 128, 160, 192, 224, 256})
      if (has_kernel(table, t, d, d)) dims += (dims.empty() ? "" : ",") + std::to_string(d);
    if (!dims.empty()) r += (r.empty() ? "" : ";") + std::string(dtype_name(t)) + ":" + dims;
  }
  return r;
}

inline void check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw RuntimeError("cuda attention: " + what + " failed: " + cudaGetErrorName(e) + " (" +
                     cudaGetErrorString(e) + ")");
}

// Whether `stream` is capturing a CUDA graph (work launched on it then runs only at replay).
inline bool stream_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

// Makes `device` current for the call and restores the caller's device after.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev), "cudaGetDevice");
    if (prev != device) check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  }
  ~DeviceGuard() {
    int now = -1;
    if (prev >= 0 && cudaGetDevice(&now) == cudaSuccess && now != prev) (void)cudaSetDevice(prev);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};

// One device allocation, freed on every way out, in stream order: through the caller's
// Allocator when there is one (torch's caching allocator, say), else cudaMallocAsync where the
// device has memory pools, else cudaMalloc.
struct DeviceScratch {
  void* p = nullptr;
  size_t bytes = 0;
  cudaStream_t stream = nullptr;
  const Allocator* alloc = nullptr;
  int device = 0;
  bool async = false;
  DeviceScratch(size_t n, cudaStream_t s, bool use_async, const Allocator* a = nullptr, int dev = 0)
      : bytes(n), stream(s), alloc(a), device(dev), async(use_async) {
    if (bytes == 0) return;
    if (alloc != nullptr && alloc->allocate != nullptr) {
      p = alloc->allocate(alloc->ctx, bytes, DLDevice{kDLCUDA, device}, stream);
      if (p == nullptr)
        throw RuntimeError("cuda attention: the caller's allocator returned no memory for " +
                           std::to_string(bytes) + " bytes of workspace");
    } else if (async) {
      check(cudaMallocAsync(&p, bytes, stream), "cudaMallocAsync(" + std::to_string(bytes) + " bytes)");
    } else {
      check(cudaMalloc(&p, bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
    }
  }
  ~DeviceScratch() {
    if (!p) return;
    if (alloc != nullptr && alloc->allocate != nullptr) {
      if (alloc->deallocate) alloc->deallocate(alloc->ctx, p, bytes, DLDevice{kDLCUDA, device}, stream);
    } else if (async) {
      (void)cudaFreeAsync(p, stream);
    } else {
      (void)cudaFree(p);
    }
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
};

// What a call needs to know about its device, read once per device and kept: the kernel table
// for its architecture (nullptr: none compiled for it), memory pools, the name for messages.
// cudaGetDeviceProperties costs far more than a kernel launch, so it is never called per call.
struct DeviceInfo {
  const ArchFns* arch = nullptr;
  bool pools = false;
  int major = 0, minor = 0, sms = 0;
  std::string name;
};
const DeviceInfo& device_info(int device);

// The arch table of `device`, or RuntimeError naming `what` and the compiled architectures.
const ArchFns& arch_of(int device, const char* what);

// A staged blob (layout CSR, schedule, predicate program and its data) copied to the device
// once and kept (as a CompiledPattern attachment) for every later call: no host work, no
// pageable copy and no synchronisation per call. The upload is queued on `stream` from pinned
// memory; when `stream` is being captured into a CUDA graph it goes through a private stream
// instead and is waited for, so that the data exists outside the graph too.
struct DeviceBlob {
  void* dev = nullptr;
  void* pinned = nullptr;
  int device = 0;
  DeviceBlob() = default;
  DeviceBlob(const DeviceBlob&) = delete;
  DeviceBlob& operator=(const DeviceBlob&) = delete;
  ~DeviceBlob();
};
// Allocates out.dev (bytes, on out.device, persistent: cudaMalloc, allowed during a capture).
void allocate_blob(DeviceBlob& out, size_t bytes);
// Copies `blob` (already relocated for out.dev) to out.dev, as described above.
void upload_blob(DeviceBlob& out, const std::vector<unsigned char>& blob, cudaStream_t stream);

// A device pointer of this device (or managed memory), for a clear error instead of a fault.
inline void expect_device_pointer(const void* ptr, const char* name, int device) {
  cudaPointerAttributes a{};
  check(cudaPointerGetAttributes(&a, ptr), std::string("cudaPointerGetAttributes(") + name + ")");
  if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
    throw RuntimeError(std::string("cuda attention: ") + name +
                       " is not device memory (a host pointer was passed to the CUDA backend)");
  if (a.type == cudaMemoryTypeDevice && a.device != device)
    throw RuntimeError(std::string("cuda attention: ") + name + " lives on device " +
                       std::to_string(a.device) + ", the problem on device " +
                       std::to_string(device));
}

// Whether the kernel can read a [B, N, H, D] tensor with 16-byte copies as it is: aligned base,
// unit last stride, and the other strides (of dimensions longer than 1) multiples of 8 elements
// (16 bytes of a 2-byte dtype; 32 bytes of float32, more than its kernels need, never less).
inline bool kernel_readable(const void* ptr, const int64_t* strides, const int64_t* shape) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  if (shape[3] > 1 && strides[3] != 1) return false;
  for (int i = 0; i < 3; ++i)
    if (shape[i] > 1 && strides[i] % 8 != 0) return false;
  return true;
}

inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Elements of a [B, N, H, D] shape.
inline int64_t numel4(const int64_t* s) { return s[0] * s[1] * s[2] * s[3]; }

// The strides of a compact row-major [B, N, H, D] tensor of that shape.
inline void compact_strides(const int64_t* s, int64_t* out) {
  out[3] = 1;
  out[2] = s[3];
  out[1] = s[2] * s[3];
  out[0] = s[1] * s[2] * s[3];
}

// Compact copies of the tensors a kernel cannot use in place, carved out of one scratch buffer.
// While sizing it, reserve() gives each copy's offset (nothing when `on` is false); once the
// buffer exists, input() / output() hand the kernel a tensor and the strides it uses with it.
struct Repacks {
  size_t at = 0;  // bytes reserved so far (a caller may take its own pieces first)
  int es = 2;     // element size
  size_t reserve(bool on, const int64_t* shape) {
    const size_t here = at;
    if (on) at += align16(size_t(numel4(shape)) * size_t(es));
    return here;
  }
};

// A tensor the kernel reads: as it is (used = its strides), or copied compact to dst.
inline const void* kernel_input(const ArchFns& arch, bool repack, const void* ptr,
                                const int64_t* strides, const int64_t* shape, void* dst,
                                int64_t* used, int es, cudaStream_t stream, const char* name) {
  std::memcpy(used, strides, 4 * sizeof(int64_t));
  if (!repack) return ptr;
  compact_strides(shape, used);
  check(arch.copy(ptr, strides, dst, used, shape, es, stream), std::string("repacking ") + name);
  return dst;
}

// Where the kernel writes a tensor: in place (used = its strides), or compact at dst for the
// caller to copy out afterwards.
inline void* kernel_output(bool temp, void* ptr, const int64_t* strides, const int64_t* shape,
                           void* dst, int64_t* used) {
  std::memcpy(used, strides, 4 * sizeof(int64_t));
  if (!temp) return ptr;
  compact_strides(shape, used);
  return dst;
}

// SPATTN_CUDA_SYNC=1: synchronise after each launch to report a kernel's own errors there (for
// debugging). Never while `stream` is being captured into a graph, where it is not allowed.
inline bool sync_after_launch(cudaStream_t stream) {
  static const bool on = [] {
    const char* e = std::getenv("SPATTN_CUDA_SYNC");
    return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
  }();
  if (!on) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &status) == cudaSuccess && status == cudaStreamCaptureStatusNone;
}

inline std::string dims_str(const int64_t* s, int n) {
  std::string r = "[";
  for (int i = 0; i < n; ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace spattn::cuda::launch
