// spattn/cuda/forward.hpp for a build with CUDA: the host-side launcher of the forward kernel.
// Plain C++ compiled by the host compiler into the core; it reaches the kernels through the
// per-architecture entry points of arch_api.hpp and picks one by the device's capability.
//
// Per call: check the problem, bind the layout staged on the device beforehand (the CUDA
// backend keeps it with the compiled pattern), allocate workspace only for tensors that must be
// repacked (through the caller's allocator, else stream-ordered), launch on the caller's stream.
// No synchronisation and no host-to-device copy; every CUDA return code is checked and turned
// into RuntimeError.
#include "spattn/cuda/forward.hpp"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <cuda_runtime_api.h>

#include "arch_api.hpp"
#include "launch_util.hpp"
#include "spattn/cuda/forward_logic.hpp"
#include "spattn/cuda/hopper_logic.hpp"
#include "spattn/error.hpp"
#if SPATTN_CUDA_HAS_SM90A
#include "sm90a/fwd90_api.hpp"
#endif

namespace spattn::cuda {

using namespace launch;

ForwardTile forward_tile(int64_t d, int64_t dv) { return sm80_forward_tile(DType::BFloat16, d, dv); }

namespace {

#if SPATTN_CUDA_HAS_SM90A
// SPATTN_CUDA_FORWARD=sm80 forces the sm80-style kernel on Hopper (read on every call, so a
// test can run both kernels in one process).
bool forced_sm80() {
  const char* e = std::getenv("SPATTN_CUDA_FORWARD");
  return e != nullptr && std::strcmp(e, "sm80") == 0;
}
#endif

// Whether the sm90a kernel runs (dtype, d == dv) on a device of capability major.minor.
bool hopper_runs(int major, int minor, DType dtype, int64_t d, int64_t dv) {
#if SPATTN_CUDA_HAS_SM90A
  if (major != 9 || minor != 0 || d != dv || forced_sm80()) return false;
  if (dtype != DType::Float16 && dtype != DType::BFloat16) return false;
  return d <= 4096 && sm90a::forward90_supported(kernel_dtype(dtype), int(d));
#else
  (void)major, (void)minor, (void)dtype, (void)d, (void)dv;
  return false;
#endif
}

// TMA descriptors take strides that are positive multiples of 16 bytes below 2^40 bytes; a
// tensor the 16-byte copies can read may still have a zero (broadcast) stride.
bool tma_readable(const int64_t* strides, const int64_t* shape, int elem_bytes) {
  for (int i = 0; i < 3; ++i)
    if (shape[i] > 1 && (strides[i] <= 0 || strides[i] * elem_bytes >= (int64_t(1) << 40)))
      return false;
  return true;
}

}  // namespace

ForwardTile forward_tile(int64_t d, int64_t dv, int device, DType dtype) {
  if (device >= 0) {
    const DeviceInfo& dev = device_info(device);  // read once per device
    if (hopper_runs(dev.major, dev.minor, dtype, d, dv)) return {kHopperBlockM, hopper_block_n(int(d))};
  }
  return sm80_forward_tile(dtype, d, dv);
}

bool supports(DType dtype, int64_t d, int64_t dv) {
  return has_kernel(&ArchFns::supported, dtype, d, dv);
}

std::string forward_kernels() { return kernel_list(&ArchFns::supported); }

std::string forward_kernels_sm90a() {
  std::string r;
#if SPATTN_CUDA_HAS_SM90A
  for (DType t : {DType::Float16, DType::BFloat16}) {
    std::string dims;
    for (int d : {32, 64, 96, 128, 256})
      if (sm90a::forward90_supported(kernel_dtype(t), d))
        dims += (dims.empty() ? "" : ",") + std::to_string(d);
    if (!dims.empty()) r += (r.empty() ? "" : ";") + std::string(dtype_name(t)) + ":" + dims;
  }
#endif
  return r;
}

void attention_forward(const ForwardProblem& p) {
  if (p.dtype != DType::Float32 && p.dtype != DType::Float16 && p.dtype != DType::BFloat16)
    throw RuntimeError(std::string("cuda attention: ") + dtype_name(p.dtype) +
                       " is not supported by the CUDA kernels (float32, float16 and bfloat16 are)");
  if (!supports(p.dtype, p.d, p.dv))
    throw RuntimeError("cuda attention: no CUDA kernel for " + std::string(dtype_name(p.dtype)) +
                       " with D=" + std::to_string(p.d) + ", Dv=" + std::to_string(p.dv) +
                       " in this build (compiled: " + forward_kernels() + "; D must equal Dv)");
  if (p.staged == nullptr || p.staged_dev == nullptr)
    throw ValueError("cuda attention: no staged block layout given");
  if (p.b < 0 || p.nq < 0 || p.nk < 0 || p.hq < 1 || p.hkv < 1 || p.hq % p.hkv != 0)
    throw ValueError("cuda attention: bad sizes (B=" + std::to_string(p.b) + ", Nq=" +
                     std::to_string(p.nq) + ", Nk=" + std::to_string(p.nk) + ", Hq=" +
                     std::to_string(p.hq) + ", Hkv=" + std::to_string(p.hkv) + ")");
  if (p.b == 0 || p.nq == 0) return;  // nothing to write

  const int64_t q_shape[4] = {p.b, p.nq, p.hq, p.d};
  const int64_t k_shape[4] = {p.b, p.nk, p.hkv, p.d};
  const int64_t v_shape[4] = {p.b, p.nk, p.hkv, p.dv};
  const int64_t o_shape[4] = {p.b, p.nq, p.hq, p.dv};
  DeviceGuard guard(p.device);
  const DeviceInfo& dev = device_info(p.device);
  const ArchFns* arch = &arch_of(p.device, "cuda attention");
  // The sm90a kernel when the device and build have it and the staged layout has its tile (a
  // layout compiled with forward_tile(d, dv, device, dtype)); else the sm80-style kernel.
  const bool hopper = hopper_runs(dev.major, dev.minor, p.dtype, p.d, p.dv) &&
                      p.staged->bq == kHopperBlockM && p.staged->bk == hopper_block_n(int(p.d));
  // The sm80-style kernels walk the layout with their own tile, fixed at compile time: a layout
  // of another tile would be read with the wrong block geometry.
  const ForwardTile own = sm80_forward_tile(p.dtype, p.d, p.dv);
  if (!hopper && (p.staged->bq != own.bq || p.staged->bk != own.bk))
    throw ValueError("cuda attention: the staged layout has " + std::to_string(p.staged->bq) +
                     " x " + std::to_string(p.staged->bk) + " tiles, the " +
                     std::string(dtype_name(p.dtype)) + " D=" + std::to_string(p.d) +
                     " kernel walks " + std::to_string(own.bq) + " x " + std::to_string(own.bk) +
                     " (compile the layout with forward_tile(d, dv, device, dtype))");
  const bool have_k = p.nk > 0;
  expect_device_pointer(p.q, "q", p.device);
  expect_device_pointer(p.out, "out", p.device);
  if (have_k) {
    expect_device_pointer(p.k, "k", p.device);
    expect_device_pointer(p.v, "v", p.device);
  }
  if (p.lse) expect_device_pointer(p.lse, "lse", p.device);

  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);

  // Tensors the kernel cannot read (or write) as they are go through compact copies.
  const int es = dtype_size(p.dtype);
  auto readable = [&](const void* ptr, const int64_t* strides, const int64_t* shape) {
    return kernel_readable(ptr, strides, shape) && (!hopper || tma_readable(strides, shape, es));
  };
  const bool rq = !readable(p.q, p.q_strides, q_shape);
  const bool rk = have_k && !readable(p.k, p.k_strides, k_shape);
  const bool rv = have_k && !readable(p.v, p.v_strides, v_shape);
  const bool ro = !readable(p.out, p.out_strides, o_shape);
  Repacks w{0, es};
  const size_t q_at = w.reserve(rq, q_shape);
  const size_t k_at = w.reserve(rk, k_shape);
  const size_t v_at = w.reserve(rv, v_shape);
  const size_t o_at = w.reserve(ro, o_shape);

  DeviceScratch buf(w.at, stream, dev.pools, p.allocator, p.device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);

  FwdParams fp;
  p.staged->bind(const_cast<void*>(p.staged_dev), &fp);
  int64_t qs[4], ks[4], vs[4], os[4];
  const void* q = kernel_input(*arch, rq, p.q, p.q_strides, q_shape, base + q_at, qs, es, stream, "q");
  const void* k = kernel_input(*arch, rk, p.k, p.k_strides, k_shape, base + k_at, ks, es, stream, "k");
  const void* v = kernel_input(*arch, rv, p.v, p.v_strides, v_shape, base + v_at, vs, es, stream, "v");
  void* o = kernel_output(ro, p.out, p.out_strides, o_shape, base + o_at, os);

  fp.q = q;
  fp.k = k;
  fp.v = v;
  fp.o = o;
  fp.lse = p.lse;
  fp.q_sb = qs[0], fp.q_sn = qs[1], fp.q_sh = qs[2];
  fp.k_sb = ks[0], fp.k_sn = ks[1], fp.k_sh = ks[2];
  fp.v_sb = vs[0], fp.v_sn = vs[1], fp.v_sh = vs[2];
  fp.o_sb = os[0], fp.o_sn = os[1], fp.o_sh = os[2];
  fp.lse_sb = p.lse_strides[0], fp.lse_sh = p.lse_strides[1], fp.lse_sn = p.lse_strides[2];
  fp.b = p.b, fp.nq = p.nq, fp.nk = p.nk, fp.hq = p.hq, fp.hkv = p.hkv, fp.d = p.d, fp.dv = p.dv;
  fp.group = p.hq / p.hkv;
  fp.scale = p.scale;
  fp.scale_log2 = p.scale * 1.4426950408889634f;
  fp.m = p.mods;
  fp.mods = p.mods.softcap_log2 != 0.f || p.mods.alibi != nullptr;

  cudaError_t launched = cudaErrorNotSupported;
#if SPATTN_CUDA_HAS_SM90A
  if (hopper) launched = sm90a::forward90(fp, kernel_dtype(p.dtype), stream);
#endif
  if (!hopper) launched = arch->forward(fp, kernel_dtype(p.dtype), stream);
  check(launched, std::string("launching the ") + (hopper ? "sm_90a wgmma" : arch->name) +
                      " forward kernel (" + dtype_name(p.dtype) +
            ", D=" + std::to_string(p.d) + ", q " + dims_str(q_shape, 4) + ")");
  if (ro) check(arch->copy(o, os, p.out, p.out_strides, o_shape, es, stream), "writing out back");
  if (sync_after_launch(stream)) check(cudaStreamSynchronize(stream), "the forward kernel (SPATTN_CUDA_SYNC)");
}

}  // namespace spattn::cuda
