// Decode and pool_keys on a CUDA device (the CPU's cpu/decode.cpp, its plan moved to
// spattn/cuda/decode_logic.hpp and its kernels to kernels/decode.cu).
//
// Two ways to plan a call:
//   - on the device (decode_device_plan.cpp), when cache_len lives on the device and the
//     pattern's rule does not depend on the length (every leaf has a device block rule and is
//     length-free, pattern/length_rule.hpp): the host never reads the lengths, nothing is
//     copied from the host per call, nothing waits (unless an error is to be raised at once),
//     and the call can be captured in a CUDA graph and replayed with new lengths (TopKBlocks:
//     decode_topk.cpp, which chooses on the device too, when its always pattern is so);
//   - on the host (here), otherwise: compile the pattern per sequence (Pattern::compiled keeps
//     the last few sizes, so a repeated cache_len does no O(N) work), take its layout with one
//     query block and key blocks of the page size, build the plan (union of visited blocks per
//     (sequence, kv head), split-K tasks) in one blob, copy it from pinned memory on the
//     caller's stream. This plan is host data of the call: it cannot be captured in a graph.
// Both launch the same split and merge kernels on the caller's stream, and give the same splits
// for the same lengths, so the same bits.
//
// Errors. The table is device memory and the CPU's rule is that a visited entry outside
// [0, pages) is a ValueError before anything is read. Here the kernels check each entry where
// they read it (a bad one is never dereferenced; its keys count as not kept) and record the
// first bad read (with the device plan, bad lengths too). By default the call then copies that
// record to pinned host memory and waits for it on the caller's stream (one synchronisation per
// call, after the kernels) to raise the CPU's ValueError: the price of reporting an error in the
// call that made it. With Options::decode_defer_errors, and always while the stream captures a
// graph, the record goes to the device's persistent one instead and check_decode_errors raises
// it later (decode_errors.hpp). out and lse hold undefined values for a call with an error.
#include "decode_launch.hpp"

#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "decode_errors.hpp"
#include "launch_util.hpp"
#include "spattn/cuda/decode_logic.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"

namespace spattn::cuda {

using namespace launch;

namespace {

// Pinned staging for the plan's upload and the error record's read-back, one per device, held
// (mutex) for a whole call. A call records `copied` after its upload; the next call waits for
// that event before it writes the buffer again (normally long done: no stall).
struct Staging {
  std::mutex m;
  void* host = nullptr;
  size_t cap = 0;
  cudaEvent_t copied = nullptr;
  bool pending = false;
  // Room for `bytes`, once the previous upload from it is complete (grown to a power of two).
  void* reserve(size_t bytes) {
    if (pending) {
      check(cudaEventSynchronize(copied), "cudaEventSynchronize (decode staging)");
      pending = false;
    }
    if (!copied) check(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming), "cudaEventCreate");
    if (bytes > cap) {
      size_t n = 4096;
      while (n < bytes) n *= 2;
      if (host) (void)cudaFreeHost(host);
      host = nullptr;
      cap = 0;
      check(cudaMallocHost(&host, n), "cudaMallocHost (decode staging)");
      cap = n;
    }
    return host;
  }
  // After the copy out of the buffer was queued on `stream`.
  void queued(cudaStream_t stream) {
    check(cudaEventRecord(copied, stream), "cudaEventRecord (decode staging)");
    pending = true;
  }
};

Staging& staging(int device) {
  static std::mutex m;
  static std::vector<std::unique_ptr<Staging>> all;
  std::lock_guard<std::mutex> lock(m);
  if (size_t(device) >= all.size()) all.resize(size_t(device) + 1);
  if (!all[size_t(device)]) all[size_t(device)] = std::make_unique<Staging>();
  return *all[size_t(device)];
}

size_t floats_bytes(int64_t n) { return align16(size_t(n) * sizeof(float)); }

}  // namespace

void refuse_capture(cudaStream_t stream, const char* what, const std::string& why) {
  if (stream_capturing(stream))
    throw RuntimeError(std::string(what) + " on CUDA cannot be captured in a CUDA graph here: " +
                       why);
}

int64_t decode_block_keys(const backend::Decode& a) {
  return a.paged ? a.k.shape[1] : kDecContigBlock;
}

void launch_decode_kernels(const ArchFns& arch, const DecodeParams& p, const backend::Decode& a,
                           cudaStream_t stream) {
  check(arch.decode(p, a.dtype, stream),
        std::string("launching the ") + arch.name + " decode kernels (" + dtype_name(a.dtype) +
            ", D=" + std::to_string(a.q.shape[3]) + ", Dv=" + std::to_string(a.v.shape[3]) + ")");
}

int64_t decode_dim_max(int64_t D, int64_t Dv) {
  const int64_t dmax = dec_dim_max(D, Dv);
  if (dmax == 0)
    throw RuntimeError("q: the CUDA decode kernel takes head dims up to " +
                       std::to_string(kDecMaxDim) + ", got D=" + std::to_string(D) +
                       ", Dv=" + std::to_string(Dv));
  return dmax;
}

void upload_call_blob(const std::vector<unsigned char>& blob, void* dev, cudaStream_t stream,
                      int device) {
  Staging& st = staging(device);
  std::lock_guard<std::mutex> lock(st.m);
  void* pinned = st.reserve(blob.size() + 16);
  std::memcpy(pinned, blob.data(), blob.size());
  check(cudaMemcpyAsync(dev, pinned, blob.size(), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync (decode plan)");
  st.queued(stream);
}

void decode_on_device(const backend::Decode& a, const backend::Call& call) {
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3], G = hq / hkv;
  const int64_t bk = decode_block_keys(a);
  if (B == 0 || nq == 0) return;
  if (a.cache_len == nullptr)  // lengths on the device
    return a.pattern->data_dependent() ? decode_topk_device_lengths(a, call)  // decode_topk.cpp
                                       : decode_device_plan(a, call);
  if (a.pattern->data_dependent()) return decode_topk_on_device(a, call);  // decode_topk.cpp
  const int64_t dmax = decode_dim_max(D, Dv);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  refuse_capture(stream, "decode",
                 "cache_len is host memory, so each call plans on the host (pass cache_len on "
                 "the GPU to plan there; docs/api.md, \"Decode on a GPU\")");
  const DeviceInfo& dev = device_info(device);
  const ArchFns& arch = arch_of(device, "decode");

  // 1. The pattern of each sequence (all checks before any work), as the CPU decode does.
  std::vector<std::shared_ptr<const CompiledPattern>> cps(static_cast<size_t>(B));
  std::vector<DecodeSeqIn> ins(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t nk = a.cache_len[b];
    ins[size_t(b)].nk = nk;
    if (nk == 0) continue;
    try {
      cps[size_t(b)] = a.pattern->compiled(nq, nk, hq);
    } catch (const ValueError& e) {
      std::ostringstream m;
      m << "pattern: does not fit sequence " << b << " (Nq=" << nq << ", cache_len=" << nk
        << "): " << e.what();
      throw ValueError(m.str());
    }
    ins[size_t(b)].layout = &cps[size_t(b)]->layout_for(nq, bk);
    ins[size_t(b)].pred = cps[size_t(b)]->predicate();
  }

  // 2. The plan, and one workspace: plan blob | error record | partial m | l | acc.
  StagedDecode plan = stage_decode(ins, hkv, G, nq, bk, dev.sms);
  const int64_t slots = plan.ntasks * plan.rgroups * kDecRows;
  const size_t blob_at = 0, err_at = align16(plan.blob.size());
  const size_t m_at = err_at + align16(kDecErrorWords * 8), l_at = m_at + floats_bytes(slots);
  const size_t acc_at = l_at + floats_bytes(slots);
  const size_t total = acc_at + floats_bytes(slots * dmax);

  for (const auto& [ptr, name] : {std::pair<const void*, const char*>{q.data, "q"},
                                  {k.data, "k_cache"}, {v.data, "v_cache"}, {a.out.data, "out"}})
    expect_device_pointer(ptr, name, device);
  if (a.paged) expect_device_pointer(a.table.data, "block_table", device);

  Staging& st = staging(device);
  std::lock_guard<std::mutex> lock(st.m);
  unsigned char* pinned = static_cast<unsigned char*>(st.reserve(err_at + 16));
  DeviceScratch buf(total, stream, dev.pools, call.allocator, device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);
  plan.relocate(base + blob_at);
  std::memcpy(pinned, plan.blob.data(), plan.blob.size());
  check(cudaMemcpyAsync(base + blob_at, pinned, plan.blob.size(), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync (decode plan)");
  st.queued(stream);
  check(cudaMemsetAsync(base + err_at, 0xff, kDecErrorWords * 8, stream),
        "cudaMemsetAsync (error record)");

  // 3. Parameters.
  DecodeParams p;
  plan.bind(base + blob_at, &p);
  fill_decode_params(a, bk, dmax, &p);
  p.part_m = reinterpret_cast<float*>(base + m_at);
  p.part_l = reinterpret_cast<float*>(base + l_at);
  p.part_acc = reinterpret_cast<float*>(base + acc_at);
  p.error = reinterpret_cast<unsigned long long*>(base + err_at);
  if (a.defer_errors) p.sticky = deferred_record(device);

  launch_decode_kernels(arch, p, a, stream);

  // 4. The errors (see the top of this file). Contiguous caches have no table to check.
  if (!a.paged || a.defer_errors) return;
  unsigned long long rec[kDecErrorWords];
  read_error_record(base + err_at, stream, device, rec);
  raise_if_error(p, rec, a.pattern);
}

void fill_decode_params(const backend::Decode& a, int64_t bk, int64_t dmax, DecodeParams* pp) {
  DecodeParams& p = *pp;
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3], G = hq / hkv;
  p.q = q.data;
  p.q_sb = q.strides[0], p.q_sn = q.strides[1], p.q_sh = q.strides[2], p.q_sd = q.strides[3];
  p.out = a.out.data;
  p.o_sb = a.out.strides[0], p.o_sn = a.out.strides[1], p.o_sh = a.out.strides[2];
  p.o_sd = a.out.strides[3];
  if (a.lse.data) {
    p.lse = static_cast<float*>(a.lse.data);
    p.lse_sb = a.lse.strides[0], p.lse_sh = a.lse.strides[1], p.lse_sn = a.lse.strides[2];
  }
  p.k = k.data;
  p.v = v.data;
  // Contiguous caches: the first stride is the batch's; paged: the page's.
  p.k_sp = k.strides[0], p.k_sn = k.strides[1], p.k_sh = k.strides[2], p.k_sd = k.strides[3];
  p.v_sp = v.strides[0], p.v_sn = v.strides[1], p.v_sh = v.strides[2], p.v_sd = v.strides[3];
  p.paged = a.paged;
  p.bk = bk;
  if (a.paged) {
    p.pages = k.shape[0];
    p.table = a.table.data;
    p.table64 = a.table.dtype.bits == 64;
    p.table_sb = a.table.strides[0];
    p.table_sc = a.table.strides[1];
    p.max_pages = a.table.shape[1];
  } else {
    p.max_pages = (k.shape[1] + bk - 1) / bk;  // error keys only (never set: no table)
  }
  p.vec_k = D % kDecVec == 0 && kernel_readable(k.data, k.strides, k.shape);
  p.vec_v = Dv % kDecVec == 0 && kernel_readable(v.data, v.strides, v.shape);
  p.b = B, p.nq = nq, p.hq = hq, p.hkv = hkv, p.group = G, p.d = D, p.dv = Dv;
  p.scale_log2 = float(a.scale) * 1.4426950408889634f;
  p.softcap_log2 = a.mods.softcap * 1.4426950408889634f;
  p.alibi = a.mods.alibi;
  p.alibi_s = a.mods.alibi_stride;
  p.sinks = a.mods.sinks;
  p.sinks_s = a.mods.sinks_stride;
  p.dvp = dmax;
  p.capacity = a.capacity;
}

// Two ways to get the lengths: host lengths (checked by the planner) copied to the device
// through the pinned staging buffer, which a graph cannot capture; or cache_len on the device
// read by the kernel itself, which checks it: nothing is copied from the host, and the call can
// be captured and replayed with new lengths. Either way a bad table entry is found where it is
// read, and with device lengths a bad length too; they are raised as decode's are (one wait
// for the record, or deferred with Options::decode_defer_errors and while capturing).
void pool_keys_on_device(const backend::PoolKeys& a, const backend::Call& call) {
  const TensorView &k = a.k, &o = a.out;
  const int64_t B = o.shape[0];
  const bool device_lengths = a.cache_len == nullptr;
  const bool empty = o.shape[1] == 0 || o.shape[2] == 0 || o.shape[3] == 0;
  if (B == 0 || (empty && !device_lengths)) return;
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  if (!device_lengths)
    refuse_capture(stream, "pool_keys",
                   "cache_len is host memory, copied to the GPU per call (pass cache_len on the "
                   "GPU to read it there)");
  const DeviceInfo& dev = device_info(device);
  const ArchFns& arch = arch_of(device, "pool_keys");
  if (k.data) expect_device_pointer(k.data, "k_cache", device);
  if (!empty) expect_device_pointer(o.data, "out", device);
  if (device_lengths) expect_device_pointer(a.lengths.data, "cache_len", device);
  if (a.paged) expect_device_pointer(a.table.data, "block_table", device);

  // Workspace: the host lengths' copy [B] int64 (host lengths only) | error record.
  const size_t len_bytes = device_lengths ? 0 : align16(size_t(B) * sizeof(int64_t));
  const size_t rec_bytes = kDecErrorWords * sizeof(unsigned long long);
  DeviceScratch buf(len_bytes + rec_bytes, stream, dev.pools, call.allocator, device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);
  PoolParams p;
  if (device_lengths) {
    p.lens = a.lengths.data;
    p.lens64 = a.lengths.dtype.bits == 64;
    p.lens_s = a.lengths.strides[0];
  } else {
    Staging& st = staging(device);
    std::lock_guard<std::mutex> lock(st.m);
    void* pinned = st.reserve(size_t(B) * sizeof(int64_t));
    std::memcpy(pinned, a.cache_len, size_t(B) * sizeof(int64_t));
    check(cudaMemcpyAsync(base, pinned, size_t(B) * sizeof(int64_t), cudaMemcpyHostToDevice,
                          stream),
          "cudaMemcpyAsync (cache_len)");
    st.queued(stream);
    p.cache_len = reinterpret_cast<const int64_t*>(base);
  }
  p.capacity = a.capacity;
  unsigned long long* err = reinterpret_cast<unsigned long long*>(base + len_bytes);
  check(cudaMemsetAsync(err, 0xff, rec_bytes, stream), "cudaMemsetAsync (error record)");

  p.k = k.data;
  p.k_sp = k.strides[0], p.k_sn = k.strides[1], p.k_sh = k.strides[2], p.k_sd = k.strides[3];
  p.paged = a.paged;
  if (a.paged) {
    p.page_size = k.shape[1];
    p.pages = k.shape[0];
    p.table = a.table.data;
    p.table64 = a.table.dtype.bits == 64;
    p.table_sb = a.table.strides[0];
    p.table_sc = a.table.strides[1];
    p.max_pages = a.table.shape[1];
  }
  p.out = static_cast<float*>(o.data);
  p.o_sb = o.strides[0], p.o_sc = o.strides[1], p.o_sh = o.strides[2], p.o_sd = o.strides[3];
  p.b = B, p.blocks = o.shape[1], p.hkv = o.shape[2], p.d = o.shape[3], p.block = a.block;
  p.error = err;
  const bool defer = a.defer_errors || stream_capturing(stream);
  if (defer) p.sticky = deferred_record(device);
  check(arch.pool_keys(p, a.dtype, stream), std::string("launching the ") + arch.name +
                                                " pool_keys kernel (" + dtype_name(a.dtype) + ")");
  if (defer || (!a.paged && !device_lengths)) return;  // nothing to report, or reported later
  unsigned long long rec[kDecErrorWords];
  read_error_record(err, stream, device, rec);
  raise_if_pool_error(p, rec);
}

}  // namespace spattn::cuda
