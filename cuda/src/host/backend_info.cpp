// spattn/cuda/backend_info.hpp for a build with CUDA (SPATTN_WITH_CUDA=1). Host code only,
// compiled by the C++ compiler into the core; the CUDA runtime is linked statically, so loading
// the library opens no driver: libcuda is looked for on the first call below.
#include "spattn/cuda/backend_info.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "arch_api.hpp"

#ifndef SPATTN_CUDA_ARCHS_STR
#error "SPATTN_CUDA_ARCHS_STR must list the compiled architectures (set by cuda/CMakeLists.txt)"
#endif
#ifndef SPATTN_CUDA_HAS_SM80
#define SPATTN_CUDA_HAS_SM80 0
#endif
#ifndef SPATTN_CUDA_HAS_SM90A
#define SPATTN_CUDA_HAS_SM90A 0
#endif

namespace spattn::cuda {

bool compiled() noexcept { return true; }

std::string compiled_archs() { return SPATTN_CUDA_ARCHS_STR; }

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver, no device, ...: clear the sticky-free error
    return 0;
  }
  return n;
}

namespace {

using ScaleTile = cudaError_t (*)(KernelDType, const void*, int64_t, void*, int64_t, int, int, float,
                                  cudaStream_t);

// The compiled kernels that run on compute capability major.minor, or nullptr. sm_80 machine
// code runs on every 8.x device; sm_90a only on 9.0.
ScaleTile scale_tile_for(int major, int minor) {
  (void)minor;
#if SPATTN_CUDA_HAS_SM90A
  if (major == 9 && minor == 0) return &sm90a::scale_tile;
#endif
#if SPATTN_CUDA_HAS_SM80
  if (major == 8) return &sm80::scale_tile;
#endif
  return nullptr;
}

std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

// Frees a device allocation on every path out.
struct DeviceBuffer {
  void* p = nullptr;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

}  // namespace

std::string selftest(int device) {
  const int n = device_count();
  if (n == 0) return "no CUDA device (or no driver)";
  if (device < 0 || device >= n)
    return "device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " devices)";
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return cuda_error("cudaSetDevice", e);
  cudaDeviceProp prop{};
  e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return cuda_error("cudaGetDeviceProperties", e);
  ScaleTile kernel = scale_tile_for(prop.major, prop.minor);
  if (!kernel)
    return std::string("no kernels for ") + prop.name + " (sm_" + std::to_string(prop.major) +
           std::to_string(prop.minor) + "); compiled for " + SPATTN_CUDA_ARCHS_STR;

  // Odd sizes and padded row strides, so the predicates and strides are exercised.
  const int rows = 97, cols = 131;
  const int64_t ld_in = 140, ld_out = 133;
  const float alpha = 0.75f;
  std::vector<float> in(static_cast<size_t>(rows * ld_in));
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(static_cast<int>(i % 251) - 125);
  std::vector<float> out(static_cast<size_t>(rows * ld_out), -1.0f);

  DeviceBuffer d_in, d_out;
  if ((e = cudaMalloc(&d_in.p, in.size() * sizeof(float))) != cudaSuccess) return cuda_error("cudaMalloc", e);
  if ((e = cudaMalloc(&d_out.p, out.size() * sizeof(float))) != cudaSuccess) return cuda_error("cudaMalloc", e);
  if ((e = cudaMemcpy(d_in.p, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice)) != cudaSuccess)
    return cuda_error("cudaMemcpy", e);
  if ((e = cudaMemcpy(d_out.p, out.data(), out.size() * sizeof(float), cudaMemcpyHostToDevice)) != cudaSuccess)
    return cuda_error("cudaMemcpy", e);
  if ((e = kernel(KernelDType::Float32, d_in.p, ld_in, d_out.p, ld_out, rows, cols, alpha, nullptr)) != cudaSuccess)
    return cuda_error("scale_tile launch", e);
  if ((e = cudaDeviceSynchronize()) != cudaSuccess) return cuda_error("scale_tile", e);
  if ((e = cudaMemcpy(out.data(), d_out.p, out.size() * sizeof(float), cudaMemcpyDeviceToHost)) != cudaSuccess)
    return cuda_error("cudaMemcpy", e);

  for (int r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < ld_out; ++c) {
      const float got = out[static_cast<size_t>(r * ld_out + c)];
      const float want = c < cols ? alpha * in[static_cast<size_t>(r * ld_in + c)] : -1.0f;
      if (got != want)
        return "wrong result at (" + std::to_string(r) + ", " + std::to_string(c) + "): got " +
               std::to_string(got) + ", want " + std::to_string(want);
    }
  }
  return {};
}

}  // namespace spattn::cuda
