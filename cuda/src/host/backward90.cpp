// The host side of the sm90a backward (sm90a/bwd90_kernel.cuh): when it runs, its tile, and its
// launcher. Plain C++ compiled by the host compiler into the core, beside backward.cpp (which
// hands a problem staged for this kernel's tile over to attention_backward90).
//
// Opt-in: the sm90a backward has been compiled, never run on a GPU. Until its GPU tests
// (tests/python/test_cuda_sm90_backward.py) have passed on an H100/H200, a compute-capability
// 9.0 device runs it only when SPATTN_CUDA_BACKWARD=sm90a is set (read on every call, so one
// process can run both); otherwise the sm80-style backward runs there as on 8.x.
//
// dQ: by the query-major dQ kernel (HopperDq::Pass, the default), or reduce-added by the dK/dV
// kernel into an fp32 accumulator (HopperDq::Tma) when SPATTN_CUDA_DQ=tma (read on every call,
// so that one process can time both; hopper_dq_tma_logic.hpp). deterministic=True always takes
// the Pass path: the reduce-adds of different key tiles land in any order.
//
// Per call: check that the tensors suit TMA (16-byte aligned, strides positive multiples of 16
// bytes, unit last stride) or go through compact copies (inputs) and temporaries copied back
// (outputs); allocate lse2 and delta for nq_pad rows (and, with Tma, the dq accumulator);
// launch preprocess, dK/dV and dQ (or the conversion) on the caller's stream.
#include "backward90.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#include <cuda_runtime_api.h>

#include "arch_api.hpp"
#include "launch_util.hpp"
#include "spattn/cuda/backward.hpp"
#include "spattn/cuda/hopper_bwd_logic.hpp"
#include "spattn/cuda/hopper_dq_tma_logic.hpp"
#include "spattn/error.hpp"
#if SPATTN_CUDA_HAS_SM90A
#include "sm90a/bwd90_api.hpp"
#endif

namespace spattn::cuda {

using namespace launch;

namespace {

// SPATTN_CUDA_BACKWARD=sm90a opts in to the sm90a backward on compute capability 9.0.
bool opted_in() {
  const char* e = std::getenv("SPATTN_CUDA_BACKWARD");
  return e != nullptr && std::strcmp(e, "sm90a") == 0;
}

// SPATTN_CUDA_DQ: pass (default) or tma; anything else is a mistake worth an error (a typo
// would otherwise time the default twice).
HopperDq dq_mode(bool deterministic) {
  const char* e = std::getenv("SPATTN_CUDA_DQ");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "pass") == 0) return HopperDq::Pass;
  if (std::strcmp(e, "tma") == 0) return deterministic ? HopperDq::Pass : HopperDq::Tma;
  throw ValueError(std::string("SPATTN_CUDA_DQ=") + e +
                   ": expected pass (the query-major dQ kernel, default) or tma (TMA reduce-add "
                   "of dQ from the dK/dV kernel)");
}

bool backward90_built(DType dtype, int64_t d, int64_t dv) {
#if SPATTN_CUDA_HAS_SM90A
  if (d != dv || d <= 0 || d > 4096) return false;
  if (dtype != DType::Float16 && dtype != DType::BFloat16) return false;
  return sm90a::backward90_supported(kernel_dtype(dtype), int(d));
#else
  (void)dtype, (void)d, (void)dv;
  return false;
#endif
}

// TMA: strides of dimensions longer than 1 positive multiples of 16 bytes below 2^40 bytes
// (kernel_readable() checked the base, the unit last stride and multiples of 8 elements).
bool tma_fits(const void* ptr, const int64_t* strides, const int64_t* shape, int es) {
  if (!kernel_readable(ptr, strides, shape)) return false;
  for (int i = 0; i < 3; ++i)
    if (shape[i] > 1 && (strides[i] <= 0 || strides[i] * es >= (int64_t(1) << 40))) return false;
  return true;
}

}  // namespace

bool backward90_runs(int device, DType dtype, int64_t d, int64_t dv) {
  if (device < 0 || !opted_in() || !backward90_built(dtype, d, dv)) return false;
  const DeviceInfo& dev = device_info(device);  // read once per device
  return dev.major == 9 && dev.minor == 0;
}

BackwardTile backward_tile(int64_t d, int64_t dv, int device, DType dtype) {
  if (backward90_runs(device, dtype, d, dv)) return {kHopperBwdBlockM, kHopperBwdBlockN};
  return backward_tile(d, dv);
}

std::string backward_kernels_sm90a() {
  std::string r;
  for (DType t : {DType::Float16, DType::BFloat16}) {
    std::string dims;
    for (int d : {32, 64, 96, 128, 256})
      if (backward90_built(t, d, d)) dims += (dims.empty() ? "" : ",") + std::to_string(d);
    if (!dims.empty()) r += (r.empty() ? "" : ";") + std::string(dtype_name(t)) + ":" + dims;
  }
  return r;
}

void attention_backward90(const BackwardProblem& p) {
#if SPATTN_CUDA_HAS_SM90A
  const StagedBackward& st = *p.staged;
  if (!st.rows_staged || st.bq != kHopperBwdBlockM || st.bk != kHopperBwdBlockN)
    throw ValueError("cuda attention backward: the sm90a backward needs a layout staged for "
                     "128x128 tiles with its rows (stage_backward90)");
  const int64_t q_shape[4] = {p.b, p.nq, p.hq, p.d};
  const int64_t k_shape[4] = {p.b, p.nk, p.hkv, p.d};
  const int64_t v_shape[4] = {p.b, p.nk, p.hkv, p.dv_dim};
  const int64_t o_shape[4] = {p.b, p.nq, p.hq, p.dv_dim};
  const int64_t nq_pad = st.nqb * kHopperBwdBlockM;

  DeviceGuard guard(p.device);
  const DeviceInfo& dev = device_info(p.device);
  const ArchFns* arch = &arch_of(p.device, "cuda attention backward");
  if (dev.major != 9 || dev.minor != 0)
    throw RuntimeError("cuda attention backward: the sm90a backward runs on compute capability "
                       "9.0 only, device " + std::to_string(p.device) + " is " +
                       std::to_string(dev.major) + "." + std::to_string(dev.minor));
  const bool have_q = p.nq > 0, have_k = p.nk > 0;
  if (have_q) {
    expect_device_pointer(p.dout, "dout", p.device);
    expect_device_pointer(p.q, "q", p.device);
    expect_device_pointer(p.out, "out", p.device);
    expect_device_pointer(p.lse, "lse", p.device);
    expect_device_pointer(p.dq, "dq", p.device);
  }
  if (have_k) {
    expect_device_pointer(p.k, "k", p.device);
    expect_device_pointer(p.v, "v", p.device);
    expect_device_pointer(p.dk, "dk", p.device);
    expect_device_pointer(p.dv, "dv", p.device);
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const int es = dtype_size(p.dtype);
  const bool rq = have_q && !tma_fits(p.q, p.q_strides, q_shape, es);
  const bool rdo = have_q && !tma_fits(p.dout, p.dout_strides, o_shape, es);
  const bool rdq = have_q && !tma_fits(p.dq, p.dq_strides, q_shape, es);
  const bool rk = have_k && !tma_fits(p.k, p.k_strides, k_shape, es);
  const bool rv = have_k && !tma_fits(p.v, p.v_strides, v_shape, es);
  const bool rdk = have_k && !tma_fits(p.dk, p.dk_strides, k_shape, es);
  const bool rdv = have_k && !tma_fits(p.dv, p.dv_strides, v_shape, es);
  const size_t stat_elems = size_t(p.b * p.hq * nq_pad);
  const HopperDq dq_how = have_q && have_k ? dq_mode(p.deterministic) : HopperDq::Pass;
  Repacks w{0, es};
  const size_t acc_at = w.at;
  if (dq_how == HopperDq::Tma) w.at += align16(stat_elems * size_t(p.d) * sizeof(float));
  const size_t lse2_at = w.at;
  w.at += align16(stat_elems * sizeof(float));
  const size_t delta_at = w.at;
  w.at += align16(stat_elems * sizeof(float));
  const size_t q_at = w.reserve(rq, q_shape);
  const size_t do_at = w.reserve(rdo, o_shape);
  const size_t dq_at = w.reserve(rdq, q_shape);
  const size_t k_at = w.reserve(rk, k_shape);
  const size_t v_at = w.reserve(rv, v_shape);
  const size_t dk_at = w.reserve(rdk, k_shape);
  const size_t dv_at = w.reserve(rdv, v_shape);
  DeviceScratch buf(w.at, stream, dev.pools, p.allocator, p.device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);

  int64_t qs[4], dos[4], ks[4], vs[4], dqs[4], dks[4], dvs[4];
  const void* q = kernel_input(*arch, rq, p.q, p.q_strides, q_shape, base + q_at, qs, es, stream, "q");
  const void* dout =
      kernel_input(*arch, rdo, p.dout, p.dout_strides, o_shape, base + do_at, dos, es, stream, "dout");
  const void* k = kernel_input(*arch, rk, p.k, p.k_strides, k_shape, base + k_at, ks, es, stream, "k");
  const void* v = kernel_input(*arch, rv, p.v, p.v_strides, v_shape, base + v_at, vs, es, stream, "v");
  void* dq = kernel_output(rdq, p.dq, p.dq_strides, q_shape, base + dq_at, dqs);
  void* dk = kernel_output(rdk, p.dk, p.dk_strides, k_shape, base + dk_at, dks);
  void* dv = kernel_output(rdv, p.dv, p.dv_strides, v_shape, base + dv_at, dvs);

  BwdParams bp;
  st.bind(const_cast<void*>(p.staged_dev), &bp);
  FwdParams& fp = bp.f;
  fp.q = q;
  fp.k = k;
  fp.v = v;
  fp.o = const_cast<void*>(p.out);    // read only (by the preprocess)
  fp.lse = const_cast<float*>(p.lse);  // read only
  fp.q_sb = qs[0], fp.q_sn = qs[1], fp.q_sh = qs[2];
  fp.k_sb = ks[0], fp.k_sn = ks[1], fp.k_sh = ks[2];
  fp.v_sb = vs[0], fp.v_sn = vs[1], fp.v_sh = vs[2];
  fp.o_sb = p.out_strides[0], fp.o_sn = p.out_strides[1], fp.o_sh = p.out_strides[2];
  bp.o_sd = p.out_strides[3];
  fp.lse_sb = p.lse_strides[0], fp.lse_sh = p.lse_strides[1], fp.lse_sn = p.lse_strides[2];
  fp.b = p.b, fp.nq = p.nq, fp.nk = p.nk, fp.hq = p.hq, fp.hkv = p.hkv, fp.d = p.d;
  fp.dv = p.dv_dim;
  fp.group = p.hq / p.hkv;
  fp.scale = p.scale;
  fp.scale_log2 = p.scale * 1.4426950408889634f;
  bp.dout = dout;
  bp.do_sb = dos[0], bp.do_sn = dos[1], bp.do_sh = dos[2];
  bp.dq = dq;
  bp.dq_sb = dqs[0], bp.dq_sn = dqs[1], bp.dq_sh = dqs[2], bp.dq_sd = dqs[3];
  bp.dk = dk;
  bp.dk_sb = dks[0], bp.dk_sn = dks[1], bp.dk_sh = dks[2];
  bp.dv = dv;
  bp.dv_sb = dvs[0], bp.dv_sn = dvs[1], bp.dv_sh = dvs[2];
  bp.dq_accum = dq_how == HopperDq::Tma ? reinterpret_cast<float*>(base + acc_at) : nullptr;
  bp.lse2 = reinterpret_cast<float*>(base + lse2_at);
  bp.delta = reinterpret_cast<float*>(base + delta_at);
  bp.nq_pad = nq_pad;

  check(sm90a::backward90(bp, kernel_dtype(p.dtype), dq_how, stream),
        std::string("launching the sm_90a wgmma backward kernels (") + dtype_name(p.dtype) +
            (dq_how == HopperDq::Tma ? ", dQ by TMA reduce-add" : "") +
            ", D=" + std::to_string(p.d) + ", q " + dims_str(q_shape, 4) + ", k " +
            dims_str(k_shape, 4) + ")");
  if (rdq) check(arch->copy(dq, dqs, p.dq, p.dq_strides, q_shape, es, stream), "writing dq back");
  if (rdk) check(arch->copy(dk, dks, p.dk, p.dk_strides, k_shape, es, stream), "writing dk back");
  if (rdv) check(arch->copy(dv, dvs, p.dv, p.dv_strides, v_shape, es, stream), "writing dv back");
  if (sync_after_launch(stream))
    check(cudaStreamSynchronize(stream), "the sm90a backward kernels (SPATTN_CUDA_SYNC)");
#else
  (void)p;
  throw RuntimeError("cuda attention backward: this build has no sm_90a kernels");
#endif
}

}  // namespace spattn::cuda
