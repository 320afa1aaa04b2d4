// spattn/cuda/backward.hpp for a build with CUDA: the host-side launcher of the backward
// kernels. Plain C++ compiled by the host compiler into the core, like forward.cpp, with which
// it shares the per-arch table, the checks and the scratch allocation (launch_util.hpp).
//
// Per call: check the problem; bind the transposed layout, backward schedule and predicate
// staged on the device beforehand (backward_logic.hpp: stage_backward; cuda_backend.cpp keeps
// it with the compiled pattern); allocate one workspace (the caller's allocator, else
// stream-ordered) for the fp32 dq accumulator, lse2, delta and any repacked tensor; zero the dq
// accumulator; launch
// preprocess, main kernel and dq conversion on the caller's stream; copy repacked dk / dv back;
// free asynchronously. No device-wide synchronisation; every CUDA return code is checked and
// turned into RuntimeError.
//
// Repacking: the main kernel reads q, k, v, dout with 16-byte cp.async and writes dk, dv with
// 16-byte stores, so those go through compact temporaries when their base or strides do not
// allow it (kernel_readable). out and lse are read by the preprocess, dq written by the
// conversion, element by element with any strides: never repacked.
#include "spattn/cuda/backward.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <cuda_runtime_api.h>

#include "arch_api.hpp"
#include "backward90.hpp"
#include "launch_util.hpp"
#include "spattn/cuda/backward_logic.hpp"
#include "spattn/error.hpp"

namespace spattn::cuda {

using namespace launch;

BackwardTile backward_tile(int64_t, int64_t) { return {kBwdBlockM, kBwdBlockN}; }

bool supports_backward(DType dtype, int64_t d, int64_t dv) {
  return has_kernel(&ArchFns::backward_supported, dtype, d, dv);
}

std::string backward_kernels() { return kernel_list(&ArchFns::backward_supported); }

void attention_backward(const BackwardProblem& p) {
  if (p.dtype != DType::Float32 && p.dtype != DType::Float16 && p.dtype != DType::BFloat16)
    throw RuntimeError(std::string("cuda attention backward: ") + dtype_name(p.dtype) +
                       " is not supported by the CUDA kernels (float32, float16 and bfloat16 are)");
  if (!supports_backward(p.dtype, p.d, p.dv_dim))
    throw RuntimeError("cuda attention backward: no CUDA kernel for " +
                       std::string(dtype_name(p.dtype)) + " with D=" + std::to_string(p.d) +
                       ", Dv=" + std::to_string(p.dv_dim) + " in this build (compiled: " +
                       backward_kernels() + "; D must equal Dv)");
  if (p.staged == nullptr || p.staged_dev == nullptr)
    throw ValueError("cuda attention backward: no staged block layout given");
  if (p.b < 0 || p.nq < 0 || p.nk < 0 || p.hq < 1 || p.hkv < 1 || p.hq % p.hkv != 0)
    throw ValueError("cuda attention backward: bad sizes (B=" + std::to_string(p.b) + ", Nq=" +
                     std::to_string(p.nq) + ", Nk=" + std::to_string(p.nk) + ", Hq=" +
                     std::to_string(p.hq) + ", Hkv=" + std::to_string(p.hkv) + ")");
  if (p.b == 0 || (p.nq == 0 && p.nk == 0)) return;  // nothing to write
  // A layout staged for the sm90a tile (backward_tile(d, dv, device, dtype) chose it).
  if (p.staged->rows_staged) return attention_backward90(p);

  const int64_t q_shape[4] = {p.b, p.nq, p.hq, p.d};
  const int64_t k_shape[4] = {p.b, p.nk, p.hkv, p.d};
  const int64_t v_shape[4] = {p.b, p.nk, p.hkv, p.dv_dim};
  const int64_t o_shape[4] = {p.b, p.nq, p.hq, p.dv_dim};
  const StagedBackward& st = *p.staged;
  const int64_t nq_pad = st.nqb * kBwdBlockM;

  DeviceGuard guard(p.device);
  const DeviceInfo& dev = device_info(p.device);
  const ArchFns* arch = &arch_of(p.device, "cuda attention backward");
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

  // Layout of the one scratch buffer: dq_accum | lse2 | delta | repacked tensors.
  const int es = dtype_size(p.dtype);
  const bool rq = have_q && !kernel_readable(p.q, p.q_strides, q_shape);
  const bool rdo = have_q && !kernel_readable(p.dout, p.dout_strides, o_shape);
  const bool rk = have_k && !kernel_readable(p.k, p.k_strides, k_shape);
  const bool rv = have_k && !kernel_readable(p.v, p.v_strides, v_shape);
  const bool rdk = have_k && !kernel_readable(p.dk, p.dk_strides, k_shape);
  const bool rdv = have_k && !kernel_readable(p.dv, p.dv_strides, v_shape);
  const size_t stat_elems = size_t(p.b * p.hq * nq_pad);
  Repacks w{0, es};
  const size_t acc_at = w.at;
  w.at += align16(stat_elems * size_t(p.d) * sizeof(float));
  const size_t lse2_at = w.at;
  w.at += align16(stat_elems * sizeof(float));
  const size_t delta_at = w.at;
  w.at += align16(stat_elems * sizeof(float));
  const size_t q_at = w.reserve(rq, q_shape);
  const size_t do_at = w.reserve(rdo, o_shape);
  const size_t k_at = w.reserve(rk, k_shape);
  const size_t v_at = w.reserve(rv, v_shape);
  const size_t dk_at = w.reserve(rdk, k_shape);
  const size_t dv_at = w.reserve(rdv, v_shape);

  DeviceScratch buf(w.at, stream, dev.pools, p.allocator, p.device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);
  if (stat_elems > 0)
    check(cudaMemsetAsync(base + acc_at, 0, stat_elems * size_t(p.d) * sizeof(float), stream),
          "cudaMemsetAsync (dq workspace)");

  BwdParams bp;
  st.bind(const_cast<void*>(p.staged_dev), &bp);
  int64_t qs[4], dos[4], ks[4], vs[4], dks[4], dvs[4];
  const void* q = kernel_input(*arch, rq, p.q, p.q_strides, q_shape, base + q_at, qs, es, stream, "q");
  const void* dout =
      kernel_input(*arch, rdo, p.dout, p.dout_strides, o_shape, base + do_at, dos, es, stream, "dout");
  const void* k = kernel_input(*arch, rk, p.k, p.k_strides, k_shape, base + k_at, ks, es, stream, "k");
  const void* v = kernel_input(*arch, rv, p.v, p.v_strides, v_shape, base + v_at, vs, es, stream, "v");
  void* dk = kernel_output(rdk, p.dk, p.dk_strides, k_shape, base + dk_at, dks);
  void* dv = kernel_output(rdv, p.dv, p.dv_strides, v_shape, base + dv_at, dvs);

  FwdParams& fp = bp.f;
  fp.q = q;
  fp.k = k;
  fp.v = v;
  fp.o = const_cast<void*>(p.out);  // read only (by the preprocess)
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
  fp.m = p.mods;
  fp.m.sinks = nullptr;  // the lse holds them
  fp.mods = p.mods.softcap_log2 != 0.f || p.mods.alibi != nullptr;
  bp.dout = dout;
  bp.do_sb = dos[0], bp.do_sn = dos[1], bp.do_sh = dos[2];
  bp.dq = p.dq;
  bp.dq_sb = p.dq_strides[0], bp.dq_sn = p.dq_strides[1], bp.dq_sh = p.dq_strides[2];
  bp.dq_sd = p.dq_strides[3];
  bp.dk = dk;
  bp.dk_sb = dks[0], bp.dk_sn = dks[1], bp.dk_sh = dks[2];
  bp.dv = dv;
  bp.dv_sb = dvs[0], bp.dv_sn = dvs[1], bp.dv_sh = dvs[2];
  bp.dq_accum = reinterpret_cast<float*>(base + acc_at);
  bp.lse2 = reinterpret_cast<float*>(base + lse2_at);
  bp.delta = reinterpret_cast<float*>(base + delta_at);

  check(arch->backward(bp, kernel_dtype(p.dtype), stream),
        std::string("launching the ") + arch->name + " backward kernels (" +
            dtype_name(p.dtype) + ", D=" + std::to_string(p.d) + ", q " + dims_str(q_shape, 4) +
            ", k " + dims_str(k_shape, 4) + ")");
  if (rdk) check(arch->copy(dk, dks, p.dk, p.dk_strides, k_shape, es, stream), "writing dk back");
  if (rdv) check(arch->copy(dv, dvs, p.dv, p.dv_strides, v_shape, es, stream), "writing dv back");
  if (sync_after_launch(stream))
    check(cudaStreamSynchronize(stream), "the backward kernels (SPATTN_CUDA_SYNC)");
}

}  // namespace spattn::cuda
