// TopKBlocks in the CUDA decode (spattn/cuda/decode_topk_logic.hpp): with host lengths, the
// host checks each sequence as the CPU decode does and stages what the lengths fix (geometry,
// the always pattern's decode layout, the element rule with its chosen leaf pointed at the
// sequence's mask on the device, every buffer's place) in one blob, copied from pinned memory
// on the caller's stream; six kernels (kernels/decode_topk.cu) then pool, check pages, choose,
// lay out the rows and unite them into the decode's device plan, and the decode kernels run on
// it. The chosen blocks are never read back; nothing waits, except (paged caches) for the error
// record after the kernels, as every decode with a host plan does (decode.cpp).
// Lengths on the device are read to the host first (decode_device_plan_refusal says why), and
// a graph capture is refused: the blob is host data of the call.
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "decode_errors.hpp"
#include "decode_launch.hpp"
#include "decode_topk_api.hpp"
#include "launch_util.hpp"
#include "spattn/cuda/decode_topk_host.hpp"
#include "spattn/error.hpp"

namespace spattn::cuda {

using namespace launch;

namespace {

struct DecodeTopkFns {
  cudaError_t (*plan)(const DecTopkParams&, DType, cudaStream_t);
  int64_t (*smem)(int64_t, int64_t);
};

const DecodeTopkFns& decode_topk_fns(int device) {
  const ArchFns& a = arch_of(device, "TopKBlocks' decode selection");
#if SPATTN_CUDA_HAS_SM90A
  static const DecodeTopkFns sm90{&sm90a::decode_topk_plan, &sm90a::decode_topk_smem};
  if (&a == &kSm90a) return sm90;
#endif
#if SPATTN_CUDA_HAS_SM80
  static const DecodeTopkFns sm80_{&sm80::decode_topk_plan, &sm80::decode_topk_smem};
  if (&a == &kSm80) return sm80_;
#endif
  throw RuntimeError(std::string("TopKBlocks' decode selection: no kernels for ") + a.name);
}

}  // namespace

void decode_topk_on_device(const backend::Decode& a, const backend::Call& call) {
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3];
  const int64_t bk = a.paged ? k.shape[1] : kDecContigBlock;
  const int64_t dmax = decode_dim_max(D, Dv);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  refuse_capture(stream, "decode",
                 "cache_len is host memory, so each call plans on the host (TopKBlocks sizes "
                 "its device plan from the lengths; docs/api.md, \"Decode on a GPU\")");
  const DeviceInfo& dev = device_info(device);
  const ArchFns& arch = arch_of(device, "decode");
  const DecodeTopkFns& fns = decode_topk_fns(device);

  // 1. Per sequence, the CPU decode's checks, then what the kernels need (host only).
  // (pooled_keys without data, an empty array, count as not given: the CPU's rule.)
  const int64_t pooled_blocks = a.pooled.data != nullptr ? a.pooled.shape[1] : -1;
  const DecTopkHost in = dec_topk_inputs(*a.pattern, a.cache_len, B, nq, hq, hkv, D, bk,
                                         pooled_blocks);
  StagedDecTopk st = stage_dec_topk(in.in, nq, hq, hkv, D, in.bq, in.bk, bk, dmax, dev.sms);

  // Every candidate's score of a query block lives in shared memory while it is ranked.
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  const int64_t smem = fns.smem(D, st.kmax_max), smem_max = int64_t(optin) - 2048;
  if (smem > smem_max)
    throw RuntimeError("pattern: TopKBlocks on " + dev.name + " ranks at most " +
                       std::to_string(smem_max / 4 - (D + 3) / 4 * 4) +
                       " candidate key blocks per query block; this decode has " +
                       std::to_string(st.kmax_max) + " (blocks of " + std::to_string(in.bk) +
                       " keys): use larger key blocks, or pass CPU tensors");

  for (const auto& [ptr, name] : {std::pair<const void*, const char*>{q.data, "q"},
                                  {k.data, "k_cache"}, {v.data, "v_cache"}, {a.out.data, "out"}})
    expect_device_pointer(ptr, name, device);
  if (a.paged) expect_device_pointer(a.table.data, "block_table", device);
  if (a.pooled.data != nullptr) expect_device_pointer(a.pooled.data, "pooled_keys", device);

  // 2. One workspace: the blob (relocated to its address, copied) and every buffer after it.
  DeviceScratch buf(st.total, stream, dev.pools, call.allocator, device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);
  st.relocate(base);
  upload_call_blob(st.blob, base, stream, device);

  DecTopkParams p;
  fill_decode_params(a, bk, dmax, &p.dp);
  if (a.pooled.data != nullptr) {
    p.pooled = static_cast<const float*>(a.pooled.data);
    p.pk_sb = a.pooled.strides[0], p.pk_sc = a.pooled.strides[1];
    p.pk_sh = a.pooled.strides[2], p.pk_sd = a.pooled.strides[3];
  }
  p.pp.capacity = a.capacity;
  st.bind(base, &p);
  check(cudaMemsetAsync(p.dp.error, 0xff, kDecErrorWords * 8, stream),
        "cudaMemsetAsync (error record)");
  if (a.defer_errors) p.dp.sticky = deferred_record(device);

  // 3. Choose and plan, then decode: all on the caller's stream.
  check(fns.plan(p, a.dtype, stream), "launching TopKBlocks' decode selection kernels");
  check(arch.decode(p.dp, a.dtype, stream),
        std::string("launching the ") + arch.name + " decode kernels (" + dtype_name(a.dtype) +
            ", D=" + std::to_string(D) + ", Dv=" + std::to_string(Dv) + ")");

  // 4. The errors, as decode.cpp's host plan reports them. Contiguous caches read no table.
  if (!a.paged || a.defer_errors) return;
  unsigned long long rec[kDecErrorWords];
  read_error_record(p.dp.error, stream, device, rec);
  raise_if_error(p.dp, rec, a.pattern);
}

}  // namespace spattn::cuda
