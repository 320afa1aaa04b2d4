// A decode planned on the device from lengths that live there (decode_plan_logic.hpp has the
// plan, kernels/decode_plan.cu its launches; decode.cpp says when this path is taken).
//
// Per call: look up the program (the pattern compiled for one length, with its slot tables)
// uploaded once and kept with the compiled pattern; carve one workspace out of the caller's
// allocator (plan arrays | error record | partials); launch the plan's two kernels and the
// decode kernels on the caller's stream. No host read of cache_len, no pageable copy, no
// synchronisation unless an error must be raised in this call (decode_errors.hpp). All of it
// can be captured in a CUDA graph: a replay reads the lengths the graph's cache_len tensor holds
// then, plans for them and decodes.
#include <memory>
#include <string>

#include <cuda_runtime_api.h>

#include "decode_errors.hpp"
#include "decode_launch.hpp"
#include "decode_plan_api.hpp"
#include "launch_util.hpp"
#include "pattern/length_rule.hpp"
#include "spattn/cuda/decode_plan_logic.hpp"
#include "spattn/error.hpp"
#include "spattn/test_hooks.hpp"

namespace spattn::cuda {

using namespace launch;

namespace {

// Device memory the plan's arrays of one call may take (they are bounds: a pattern whose bound
// is far above its real size, a dilated one over a long cache, say, plans on the host instead).
constexpr size_t kMaxPlanBytes = size_t(256) << 20;

using PlanFn = cudaError_t (*)(const DecodePlanParams&, cudaStream_t);

PlanFn plan_fn(int device) {
  const ArchFns* a = device_info(device).arch;
#if SPATTN_CUDA_HAS_SM90A
  if (a == &kSm90a) return &sm90a::decode_plan;
#endif
#if SPATTN_CUDA_HAS_SM80
  if (a == &kSm80) return &sm80::decode_plan;
#endif
  (void)a;
  return nullptr;
}

// The program of one (pattern, Nq, Hq, bk, capacity, device), uploaded once.
struct Program {
  std::string why;  // empty: usable
  DecodeProgram prog;
  DeviceBlob blob;
  int64_t min_keys = 0;
};

// The kept program of a's pattern (made and uploaded on first use), or one with `why` set.
std::shared_ptr<Program> program_for(const backend::Decode& a, cudaStream_t stream, int device) {
  const int64_t nq = a.q.shape[1], hq = a.q.shape[2], bk = decode_block_keys(a);
  const LengthRule rule = length_rule(*a.pattern);
  if (!rule.free) {
    auto p = std::make_shared<Program>();
    p->why = "the pattern's rule depends on the length: " + rule.why;
    return p;
  }
  // One length for which the pattern fits (the rule is the same for all): the capacity, or
  // min_keys when that is larger (every nonzero length is then an error, found on the device).
  const int64_t nk_plan = std::max<int64_t>(std::max<int64_t>(a.capacity, rule.min_keys), 1);
  std::shared_ptr<const CompiledPattern> cp = a.pattern->compiled(nq, nk_plan, hq);
  const std::string key = "decode-plan:" + std::to_string(bk) + ":" + std::to_string(a.capacity) +
                          ":" + std::to_string(device);
  std::shared_ptr<void> made = cp->attachment(key, [&]() -> std::shared_ptr<void> {
    auto p = std::make_shared<Program>();
    p->min_keys = rule.min_keys;
    const Predicate pred = cp->predicate();
    const int64_t cap = spattn::detail::layout_row_budget(pred.heads);
    if (!plan_decode_program(pred, nq, hq, bk, a.capacity, cap, &p->prog, &p->why)) {
      p->why = "the pattern has no device plan: " + p->why;
      return p;
    }
    p->blob.device = device;
    allocate_blob(p->blob, p->prog.blob.size());
    p->prog.relocate(p->blob.dev);
    upload_blob(p->blob, p->prog.blob, stream);
    return p;
  });
  return std::static_pointer_cast<Program>(made);
}

}  // namespace

std::string decode_device_plan_refusal(const backend::Decode& a, const backend::Call& call) {
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  std::string why;
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], hkv = a.k.shape[2];
  if (a.pattern->data_dependent()) {
    why = decode_topk_device_lengths_refusal(a, call);  // decode_topk.cpp
  } else if (plan_fn(device) == nullptr) {
    why = "no decode plan kernels for this device";
  } else if (B > 0 && nq > 0) {
    std::shared_ptr<Program> p = program_for(a, stream, device);
    why = p->why;
    if (why.empty()) {
      const DecodePlanSpace s = plan_decode_space(p->prog, B, hkv, hq / hkv, nq, decode_block_keys(a),
                                                  device_info(device).sms);
      if (s.total > kMaxPlanBytes)
        why = "its plan would take " + std::to_string(s.total) + " bytes (bound " +
              std::to_string(kMaxPlanBytes) + ")";
    }
  }
  if (!why.empty() && stream_capturing(stream))
    throw RuntimeError("decode on CUDA cannot be captured in a CUDA graph here: cache_len is on the "
                       "GPU but the plan needs it on the host, because " + why);
  return why;
}

void decode_device_plan(const backend::Decode& a, const backend::Call& call) {
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3], G = hq / hkv;
  const int64_t bk = decode_block_keys(a);
  const int64_t dmax = decode_dim_max(D, Dv);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const int device = call.device.device_id;
  DeviceGuard guard(device);
  const DeviceInfo& dev = device_info(device);
  const ArchFns& arch = arch_of(device, "decode");
  const PlanFn plan = plan_fn(device);
  std::shared_ptr<Program> prog = program_for(a, stream, device);
  if (plan == nullptr || !prog->why.empty())  // decode_device_plan_refusal said otherwise
    throw RuntimeError("cuda decode: no device plan for this call (" + prog->why + ")");

  for (const auto& [ptr, name] : {std::pair<const void*, const char*>{q.data, "q"},
                                  {k.data, "k_cache"}, {v.data, "v_cache"}, {a.out.data, "out"},
                                  {a.lengths.data, "cache_len"}})
    expect_device_pointer(ptr, name, device);
  if (a.paged) expect_device_pointer(a.table.data, "block_table", device);

  // One workspace: plan arrays | error record | partial m | l | acc.
  const DecodePlanSpace space = plan_decode_space(prog->prog, B, hkv, G, nq, bk, dev.sms);
  const int64_t ntasks = B * hkv * space.ns_max, rgroups = dec_row_groups(G, nq);
  if (ntasks >= (int64_t(1) << 31) || rgroups > 65535)
    throw ValueError("cuda decode: too many split-K tasks");
  const int64_t slots = ntasks * rgroups * kDecRows;
  const size_t err_at = align16(space.total);
  const size_t m_at = err_at + align16(kDecErrorWords * 8);
  const size_t l_at = m_at + align16(size_t(slots) * sizeof(float));
  const size_t acc_at = l_at + align16(size_t(slots) * sizeof(float));
  const size_t total = acc_at + align16(size_t(slots * dmax) * sizeof(float));
  DeviceScratch buf(total, stream, dev.pools, call.allocator, device);
  unsigned char* base = static_cast<unsigned char*>(buf.p);
  unsigned long long* err = reinterpret_cast<unsigned long long*>(base + err_at);
  check(cudaMemsetAsync(err, 0xff, kDecErrorWords * 8, stream), "cudaMemsetAsync (error record)");

  DecodePlanParams pp;
  prog->prog.bind(prog->blob.dev, &pp);
  space.bind(base, &pp);
  pp.lens = a.lengths.data;
  pp.lens64 = a.lengths.dtype.bits == 64;
  pp.lens_s = a.lengths.strides[0];
  pp.b = B, pp.nq = nq, pp.hq = hq, pp.hkv = hkv, pp.group = G, pp.bk = bk;
  pp.capacity = a.capacity;
  pp.min_keys = prog->min_keys;
  pp.error = err;
  check(plan(pp, stream), "launching the decode plan kernels");

  DecodeParams p;
  dec_bind_device_plan(pp, &p);
  fill_decode_params(a, bk, dmax, &p);
  p.part_m = reinterpret_cast<float*>(base + m_at);
  p.part_l = reinterpret_cast<float*>(base + l_at);
  p.part_acc = reinterpret_cast<float*>(base + acc_at);
  p.error = err;
  const bool defer = a.defer_errors || stream_capturing(stream);
  if (defer) p.sticky = deferred_record(device);
  launch_decode_kernels(arch, p, a, stream);
  if (defer) return;
  unsigned long long rec[kDecErrorWords];
  read_error_record(err, stream, device, rec);
  raise_if_error(p, rec, a.pattern);
}

}  // namespace spattn::cuda
