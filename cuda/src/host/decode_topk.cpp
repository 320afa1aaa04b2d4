// TopKBlocks in the CUDA decode (spattn/cuda/decode_topk_logic.hpp): with host lengths, the
// host checks each sequence as the CPU decode does and stages what the lengths fix (geometry,
// the always pattern's decode layout, the element rule with its chosen leaf pointed at the
// sequence's mask on the device, every buffer's place) in one blob, copied from pinned memory
// on the caller's stream; six kernels (kernels/decode_topk.cu) then pool, check pages, choose,
// lay out the rows and unite them into the decode's device plan, and the decode kernels run on
// it. The chosen blocks are never read back; nothing waits, except (paged caches) for the error
// record after the kernels, as every decode with a host plan does (decode.cpp).
// A graph capture of that path is refused: the blob is host data of the call.
//
// With cache_len on the device (decode_topk_dev_logic.hpp), decode_topk_device_lengths plans
// from the lengths there: the static part (the element rule's template, the always pattern's
// device program) is planned for the capacity and uploaded once, kept with the compiled always
// pattern (or Causal()); each call carves one workspace sized from the capacity, launches eight
// kernels and the decode kernels on the caller's stream, and reads nothing back except, by
// default outside a capture, the error record after the kernels (decode_errors.hpp). So it can
// be captured in a CUDA graph; a replay plans for the lengths cache_len holds then.
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "decode_errors.hpp"
#include "decode_launch.hpp"
#include "decode_topk_api.hpp"
#include "launch_util.hpp"
#include "pattern/length_rule.hpp"
#include "spattn/cuda/decode_topk_host.hpp"
#include "spattn/error.hpp"

namespace spattn::cuda {

using namespace launch;

namespace {

struct DecodeTopkFns {
  cudaError_t (*plan)(const DecTopkParams&, DType, cudaStream_t);
  int64_t (*smem)(int64_t, int64_t);
  cudaError_t (*dev_plan)(const DecTopkParams&, const DecTopkDev&, DType, cudaStream_t);
};

const DecodeTopkFns& decode_topk_fns(int device) {
  const ArchFns& a = arch_of(device, "TopKBlocks' decode selection");
#if SPATTN_CUDA_HAS_SM90A
  static const DecodeTopkFns sm90{&sm90a::decode_topk_plan, &sm90a::decode_topk_smem,
                                  &sm90a::decode_topk_dev_plan};
  if (&a == &kSm90a) return sm90;
#endif
#if SPATTN_CUDA_HAS_SM80
  static const DecodeTopkFns sm80_{&sm80::decode_topk_plan, &sm80::decode_topk_smem,
                                   &sm80::decode_topk_dev_plan};
  if (&a == &kSm80) return sm80_;
#endif
  throw RuntimeError(std::string("TopKBlocks' decode selection: no kernels for ") + a.name);
}

// Device memory the plan's arrays of one device-lengths call may take (sized from the
// capacity: a long cache with small blocks plans from host lengths instead).
constexpr size_t kMaxTopkPlanBytes = size_t(256) << 20;

// The static part of a device-lengths call, uploaded once (why: empty when usable).
struct TopkProgram {
  std::string why;
  DecTopkDevProgram prog;
  DeviceBlob blob, ablob;
};

// The kept program of a's pattern and sizes (planned and uploaded on first use).
std::shared_ptr<TopkProgram> topk_program_for(const backend::Decode& a, cudaStream_t stream,
                                              int device) {
  static const Pattern causal = Pattern::causal();
  const int64_t nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3], hkv = a.k.shape[2];
  const int64_t bk = decode_block_keys(a);
  const PatternNode& node = a.pattern->node();
  const TopKParams& tp = node.params_as<TopKParams>();
  const bool has_always = !node.children.empty();
  auto refused = [](std::string why) {
    auto p = std::make_shared<TopkProgram>();
    p->why = std::move(why);
    return p;
  };
  int64_t min_keys = 0;
  if (has_always) {
    const LengthRule rule = length_rule(node.children[0]);
    if (!rule.free) return refused("its always pattern's rule depends on the length: " + rule.why);
    min_keys = rule.min_keys;
  }
  // The program is kept with what it was planned from: the always pattern (or Causal())
  // compiled for one length its rule holds for.
  const int64_t nk_plan = std::max<int64_t>(std::max<int64_t>(a.capacity, min_keys), 1);
  std::shared_ptr<const CompiledPattern> anchor;
  try {
    anchor = (has_always ? node.children[0] : causal).compiled(nq, nk_plan, hq);
  } catch (const ValueError& e) {
    return refused(std::string("it does not fit these sizes: ") + e.what());
  }
  const std::string key = "decode-topk:" + std::to_string(tp.k) + ":" + std::to_string(tp.bq) +
                          ":" + std::to_string(tp.bk) + ":" + std::to_string(int(tp.causal)) +
                          ":" + std::to_string(hkv) + ":" + std::to_string(D) + ":" +
                          std::to_string(bk) + ":" + std::to_string(a.capacity) + ":" +
                          std::to_string(device);
  std::shared_ptr<void> made = anchor->attachment(key, [&]() -> std::shared_ptr<void> {
    auto p = std::make_shared<TopkProgram>();
    if (!plan_dec_topk_program(*a.pattern, nq, hq, hkv, D, bk, a.capacity, &p->prog, &p->why))
      return p;
    p->blob.device = p->ablob.device = device;
    allocate_blob(p->blob, p->prog.blob.size());
    if (p->prog.has_always) allocate_blob(p->ablob, p->prog.always.blob.size());
    p->prog.relocate(p->blob.dev, p->ablob.dev);
    upload_blob(p->blob, p->prog.blob, stream);
    if (p->prog.has_always) upload_blob(p->ablob, p->prog.always.blob, stream);
    return p;
  });
  return std::static_pointer_cast<TopkProgram>(made);
}

// The caller's pooled keys, when given (else the kernels pool them from the cache).
void bind_pooled(const backend::Decode& a, DecTopkParams* p) {
  if (a.pooled.data == nullptr) return;
  p->pooled = static_cast<const float*>(a.pooled.data);
  p->pk_sb = a.pooled.strides[0], p->pk_sc = a.pooled.strides[1];
  p->pk_sh = a.pooled.strides[2], p->pk_sd = a.pooled.strides[3];
}

// The dynamic shared memory the choosing kernel may use on `device`.
int64_t choose_smem_max(int device) {
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  return int64_t(optin) - 2048;
}

}  // namespace

std::string decode_topk_device_lengths_refusal(const backend::Decode& a,
                                               const backend::Call& call) {
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], D = a.q.shape[3];
  if (B == 0 || nq == 0) return "";
  std::shared_ptr<TopkProgram> p = topk_program_for(a, stream, device);
  if (!p->why.empty()) return p->why;
  const DecTopkDevProgram& P = p->prog;
  if (a.pooled.data != nullptr && a.pooled.shape[1] < P.gcap.kmax)
    return "pooled_keys holds " + std::to_string(a.pooled.shape[1]) +
           " key blocks, fewer than a length up to the capacity may score (" +
           std::to_string(P.gcap.kmax) + ")";
  const DecodeTopkFns& fns = decode_topk_fns(device);
  if (fns.smem(D, P.gcap.kmax) > choose_smem_max(device))
    return "a length up to the capacity may rank more candidate key blocks than shared memory "
           "holds";
  const DecTopkDevSpace s = plan_dec_topk_space(P, B, 16, device_info(device).sms);
  if (s.error > kMaxTopkPlanBytes)
    return "its plan would take " + std::to_string(s.error) + " bytes (bound " +
           std::to_string(kMaxTopkPlanBytes) + ")";
  return "";
}

void decode_topk_device_lengths(const backend::Decode& a, const backend::Call& call) {
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], D = q.shape[3], Dv = v.shape[3];
  const int64_t bk = decode_block_keys(a);
  const int64_t dmax = decode_dim_max(D, Dv);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  const DeviceInfo& dev = device_info(device);
  const ArchFns& arch = arch_of(device, "decode");
  const DecodeTopkFns& fns = decode_topk_fns(device);
  std::shared_ptr<TopkProgram> prog = topk_program_for(a, stream, device);
  if (!prog->why.empty())  // decode_topk_device_lengths_refusal said otherwise
    throw RuntimeError("cuda decode: no device plan for this call (" + prog->why + ")");
  const DecTopkDevProgram& P = prog->prog;

  for (const auto& [ptr, name] : {std::pair<const void*, const char*>{q.data, "q"},
                                  {k.data, "k_cache"}, {v.data, "v_cache"}, {a.out.data, "out"},
                                  {a.lengths.data, "cache_len"}})
    expect_device_pointer(ptr, name, device);
  if (a.paged) expect_device_pointer(a.table.data, "block_table", device);
  if (a.pooled.data != nullptr) expect_device_pointer(a.pooled.data, "pooled_keys", device);

  const DecTopkDevSpace space = plan_dec_topk_space(P, B, dmax, dev.sms);
  DeviceScratch buf(space.total, stream, dev.pools, call.allocator, device);
  DecTopkParams p;
  DecTopkDev dv;
  fill_decode_params(a, bk, dmax, &p.dp);
  bind_pooled(a, &p);
  space.bind(buf.p, P, prog->blob.dev, prog->ablob.dev, a.lengths.data,
             a.lengths.dtype.bits == 64, a.lengths.strides[0], &p, &dv);
  check(cudaMemsetAsync(p.dp.error, 0xff, kDecErrorWords * 8, stream),
        "cudaMemsetAsync (error record)");
  const bool defer = a.defer_errors || stream_capturing(stream);
  if (defer) p.dp.sticky = deferred_record(device);

  check(fns.dev_plan(p, dv, a.dtype, stream), "launching TopKBlocks' decode selection kernels");
  launch_decode_kernels(arch, p.dp, a, stream);
  if (defer) return;
  unsigned long long rec[kDecErrorWords];
  read_error_record(p.dp.error, stream, device, rec);
  raise_if_error(p.dp, rec, a.pattern);
}

void decode_topk_on_device(const backend::Decode& a, const backend::Call& call) {
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3];
  const int64_t bk = decode_block_keys(a);
  const int64_t dmax = decode_dim_max(D, Dv);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  refuse_capture(stream, "decode",
                 "cache_len is host memory, so each call plans on the host (pass cache_len on "
                 "the GPU to plan there; docs/api.md, \"Decode on a GPU\")");
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
  const int64_t smem = fns.smem(D, st.kmax_max), smem_max = choose_smem_max(device);
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
  bind_pooled(a, &p);
  p.pp.capacity = a.capacity;
  st.bind(base, &p);
  check(cudaMemsetAsync(p.dp.error, 0xff, kDecErrorWords * 8, stream),
        "cudaMemsetAsync (error record)");
  if (a.defer_errors) p.dp.sticky = deferred_record(device);

  // 3. Choose and plan, then decode: all on the caller's stream.
  check(fns.plan(p, a.dtype, stream), "launching TopKBlocks' decode selection kernels");
  launch_decode_kernels(arch, p.dp, a, stream);

  // 4. The errors, as decode.cpp's host plan reports them. Contiguous caches read no table.
  if (!a.paged || a.defer_errors) return;
  unsigned long long rec[kDecErrorWords];
  read_error_record(p.dp.error, stream, device, rec);
  raise_if_error(p.dp, rec, a.pattern);
}

}  // namespace spattn::cuda
