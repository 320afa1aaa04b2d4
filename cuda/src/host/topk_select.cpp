// TopKBlocks' selection on a CUDA device (topk_select.hpp): per problem, what does not depend on
// the data (the concrete pattern's element rule, the always pattern's layouts, schedules) is
// staged and uploaded once, kept with the always pattern's compiled form; per call, one
// workspace holds the pooled means, the chosen mask and each batch element's layouts, filled
// by six kernels queued on the caller's stream.
#include "topk_select.hpp"

#include <string>

#include "pattern/node.hpp"
#include "spattn/error.hpp"
#include "topk_api.hpp"

namespace spattn::cuda {

using namespace launch;

struct TopkTemplate {
  TopkStaging staging;
  DeviceBlob blob;
};

namespace {

struct TopkFns {
  cudaError_t (*select)(const TopkSelectParams&, cudaStream_t);
  int64_t (*smem)(const TopkGeom&);
  cudaError_t (*layout)(const TopkLayoutParams&, cudaStream_t);
};

const TopkFns& topk_fns(int device) {
  const ArchFns& a = arch_of(device, "TopKBlocks' selection");
#if SPATTN_CUDA_HAS_SM90A
  static const TopkFns sm90{&sm90a::topk_select, &sm90a::topk_select_smem, &sm90a::topk_layout};
  if (&a == &kSm90a) return sm90;
#endif
#if SPATTN_CUDA_HAS_SM80
  static const TopkFns sm80_{&sm80::topk_select, &sm80::topk_select_smem, &sm80::topk_layout};
  if (&a == &kSm80) return sm80_;
#endif
  throw RuntimeError(std::string("TopKBlocks' selection: no kernels for ") + a.name);
}

// Patterns the template is built from, kept for the process: the always part of a TopKBlocks
// without one (Sink(0) keeps nothing), and Causal() for its element rule.
const Pattern& keeps_nothing() {
  static const Pattern p = Pattern::sink(0);
  return p;
}
const Pattern& causal_pattern() {
  static const Pattern p = Pattern::causal();
  return p;
}

std::shared_ptr<const TopkTemplate> topk_template(const TopkGeom& g, const Pattern& topk,
                                                  int64_t tm, int64_t tn, bool rows, bool cols,
                                                  const backend::Call& call) {
  const PatternNode& node = topk.node();
  const bool has_always = !node.children.empty();
  const Pattern& always = has_always ? node.children[0] : keeps_nothing();
  const auto acp = always.compiled(g.nq, g.nk, g.hq);
  const std::string key = "cuda-topk:" + std::to_string(call.device.device_id) + ":" +
                          std::to_string(tm) + "x" + std::to_string(tn) + ":" +
                          std::to_string(g.k) + "," + std::to_string(g.bq) + "," +
                          std::to_string(g.bk) + "," + std::to_string(int(g.causal)) + "," +
                          std::to_string(int(has_always)) + ":" + std::to_string(int(rows)) +
                          std::to_string(int(cols)) + ":" + std::to_string(g.hkv);
  // Asked before attachment(): make() runs under the compiled pattern's lock, which
  // layout_for takes too.
  const BlockLayout& always_rows = acp->layout_for(tm, tn);
  return std::static_pointer_cast<const TopkTemplate>(
      acp->attachment(key, [&]() -> std::shared_ptr<void> {
        const auto ccp = causal_pattern().compiled(g.nq, g.nk, g.hq);
        const Predicate cp = ccp->predicate();
        if (cp.head_end[0] - cp.head_begin[0] != 1)
          throw RuntimeError("TopKBlocks' selection: Causal() did not compile to one rule");
        const Predicate ap = acp->predicate();
        const TopkPredicate pred =
            topk_predicate(g, has_always ? &ap : nullptr, cp.nodes[cp.head_begin[0]]);
        auto t = std::make_shared<TopkTemplate>();
        t->staging = stage_topk(g, tm, tn, rows, cols, always_rows, pred);
        t->blob.device = call.device.device_id;
        allocate_blob(t->blob, t->staging.blob.size());
        t->staging.pred.relocate(t->staging.blob, t->blob.dev);
        upload_blob(t->blob, t->staging.blob, static_cast<cudaStream_t>(call.stream));
        return t;
      }));
}

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

TensorView batch_view(const TensorView& t, int64_t b) {
  TensorView r = t;
  r.shape[0] = 1;
  if (t.data != nullptr) r.data = static_cast<char*>(t.data) + b * t.strides[0] * (t.dtype.bits / 8);
  return r;
}

}  // namespace

backend::Attention batch_attention(const backend::Attention& a, int64_t b) {
  backend::Attention r = a;
  r.q = batch_view(a.q, b);
  r.k = batch_view(a.k, b);
  r.v = batch_view(a.v, b);
  r.out = batch_view(a.out, b);
  r.lse = batch_view(a.lse, b);
  r.s.b = 1;
  return r;
}

backend::Gradients batch_gradients(const backend::Gradients& g, int64_t b) {
  return backend::Gradients{batch_view(g.dout, b), batch_view(g.dq, b), batch_view(g.dk, b),
                            batch_view(g.dv, b), g.rows_complete};
}

TopkRun topk_select_on_device(const backend::Attention& a, const Pattern& topk, int64_t tm,
                              int64_t tn, bool rows, bool cols, const backend::Call& call) {
  const TopKParams& tp = topk.node().params_as<TopKParams>();
  const backend::Dims& s = a.s;
  const TopkGeom g = topk_geom(s.nq, s.nk, s.hq, s.hkv, s.d, tp.k, tp.bq, tp.bk, tp.causal);
  DeviceGuard guard(call.device.device_id);
  const DeviceInfo& info = device_info(call.device.device_id);
  const TopkFns& fns = topk_fns(call.device.device_id);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);

  // Every candidate's score of a query block lives in shared memory while it is ranked.
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               call.device.device_id),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  const int64_t smem = fns.smem(g), smem_max = int64_t(optin) - 2048;  // the kernel's static part
  if (smem > smem_max)
    throw RuntimeError("pattern: TopKBlocks on " + info.name + " ranks at most " +
                       std::to_string(smem_max / 4 - (g.d + 3) / 4 * 4) +
                       " candidate key blocks per query block; this problem has " +
                       std::to_string(g.kmax) + " (Nk=" + std::to_string(g.nk) +
                       ", blocks of " + std::to_string(g.bk) +
                       " keys): use larger key blocks, or pass CPU tensors");

  // The selection kernels read q and k before any attention launcher checks them.
  if (g.kmax > 0) {
    expect_device_pointer(a.q.data, "q", call.device.device_id);
    expect_device_pointer(a.k.data, "k", call.device.device_id);
  }

  TopkRun run;
  run.keep = topk_template(g, topk, tm, tn, rows, cols, call);
  const TopkStaging& st = run.keep->staging;
  const void* blob = run.keep->blob.dev;

  // Workspace: qm, km, mask, counts, then the batch regions (each region_bytes, 256-aligned).
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t r = at;
    at = align256(at + bytes);
    return r;
  };
  const size_t qm_at = take(size_t(s.b * g.hq * g.nqb * g.d) * sizeof(float) * (g.kmax > 0));
  const size_t km_at = take(size_t(s.b * g.hkv * g.kmax * g.d) * sizeof(float));
  const size_t mask_at = take(size_t(s.b * g.hq * g.nqb * g.nkb));
  const size_t counts_at = take(size_t(s.b * std::max(st.rows[0], st.rows[1])) * 2 * sizeof(int32_t));
  const size_t regions_at = take(size_t(s.b) * st.region_bytes);
  run.ws = std::make_unique<DeviceScratch>(at, stream, info.pools, call.allocator,
                                           call.device.device_id);
  unsigned char* base = static_cast<unsigned char*>(run.ws->p);
  run.regions = base + regions_at;
  run.region_bytes = st.region_bytes;

  TopkSelectParams sp;
  sp.dtype = a.dtype;
  sp.q = a.q.data;
  sp.k = a.k.data;
  for (int i = 0; i < 4; ++i) sp.q_s[i] = a.q.strides[i], sp.k_s[i] = a.k.strides[i];
  sp.b = s.b;
  sp.g = g;
  sp.qm = reinterpret_cast<float*>(base + qm_at);
  sp.km = reinterpret_cast<float*>(base + km_at);
  sp.mask = base + mask_at;
  check(fns.select(sp, stream), "launching TopKBlocks' selection kernels");

  bool tail_copied = false;
  for (int l = 0; l < 2; ++l) {
    if (!st.want[l]) continue;
    TopkLayoutParams lp = st.layout_params(g, l, blob);
    lp.b = s.b;
    lp.mask = sp.mask;
    lp.counts = reinterpret_cast<int32_t*>(base + counts_at);
    lp.regions = run.regions;
    lp.copy_tail = !tail_copied;
    tail_copied = true;
    check(fns.layout(lp, stream), "launching TopKBlocks' layout kernels");
  }
  if (rows) run.forward = st.forward();
  if (cols) run.backward = st.backward();
  if (sync_after_launch(stream))
    check(cudaStreamSynchronize(stream), "TopKBlocks' selection kernels (SPATTN_CUDA_SYNC)");
  return run;
}

}  // namespace spattn::cuda
