// Host-side pieces shared by the CUDA launchers (forward.cpp, backward.cpp): the per-arch entry
// table and its choice by compute capability, CUDA error checks (-> RuntimeError), the device
// guard, one stream-ordered scratch allocation, pointer checks, and the test for tensors the
// kernels can read with 16-byte copies. Internal: compiled by the host compiler into the core.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <cuda_runtime_api.h>

#include "arch_api.hpp"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/error.hpp"
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

struct ArchFns {
  const char* name;
  ForwardFn forward;
  SupportedFn supported;
  CopyFn copy;
  BackwardFn backward;
  SupportedFn backward_supported;
};

#if SPATTN_CUDA_HAS_SM80
inline const ArchFns kSm80{"sm_80",          &sm80::forward,  &sm80::forward_supported,
                           &sm80::copy_strided_4d, &sm80::backward, &sm80::backward_supported};
#endif
#if SPATTN_CUDA_HAS_SM90A
inline const ArchFns kSm90a{"sm_90a",          &sm90a::forward,  &sm90a::forward_supported,
                            &sm90a::copy_strided_4d, &sm90a::backward, &sm90a::backward_supported};
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

inline KernelDType kernel_dtype(DType t) {
  return t == DType::Float16 ? KernelDType::Float16
         : t == DType::BFloat16 ? KernelDType::BFloat16
                                : KernelDType::Float32;
}

// Whether a kernel table (ArchFns::supported or ::backward_supported; every architecture
// compiles the same set) has a kernel for dtype with D == Dv == d.
inline bool has_kernel(SupportedFn ArchFns::*table, DType dtype, int64_t d, int64_t dv) {
  const ArchFns* a = any_arch();
  if (!a || d != dv || d <= 0 || d > 4096) return false;
  if (dtype != DType::Float16 && dtype != DType::BFloat16) return false;
  return (a->*table)(kernel_dtype(dtype), int(d));
}

// The kernels of a table as "float16:64,128;bfloat16:64,128" (empty without CUDA).
inline std::string kernel_list(SupportedFn ArchFns::*table) {
  std::string r;
  for (DType t : {DType::Float16, DType::BFloat16}) {
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

// One device allocation, freed on every way out: stream-ordered when the device supports it
// (no synchronisation), else cudaFree.
struct DeviceScratch {
  void* p = nullptr;
  cudaStream_t stream = nullptr;
  bool async = false;
  DeviceScratch(size_t bytes, cudaStream_t s, bool use_async) : stream(s), async(use_async) {
    if (bytes == 0) return;
    if (async)
      check(cudaMallocAsync(&p, bytes, stream), "cudaMallocAsync(" + std::to_string(bytes) + " bytes)");
    else
      check(cudaMalloc(&p, bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
  }
  ~DeviceScratch() {
    if (!p) return;
    if (async)
      (void)cudaFreeAsync(p, stream);
    else
      (void)cudaFree(p);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
};

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
// unit last stride, and the other strides (of dimensions longer than 1) multiples of 8 elements.
inline bool kernel_readable(const void* ptr, const int64_t* strides, const int64_t* shape) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  if (shape[3] > 1 && strides[3] != 1) return false;
  for (int i = 0; i < 3; ++i)
    if (shape[i] > 1 && strides[i] % 8 != 0) return false;
  return true;
}

inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

inline bool sync_after_launch() {
  static const bool on = [] {
    const char* e = std::getenv("SPATTN_CUDA_SYNC");
    return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
  }();
  return on;
}

inline std::string dims_str(const int64_t* s, int n) {
  std::string r = "[";
  for (int i = 0; i < n; ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace spattn::cuda::launch
