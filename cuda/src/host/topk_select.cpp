// TopKBlocks' selection on a CUDA device (topk_select.hpp): per problem, what does not depend on
// the data (the concrete pattern's element rule, the always pattern's layouts, schedules) is
// staged and uploaded once, kept with the always pattern's compiled form; per call, one
// workspace holds the pooled means, the chosen mask and each batch element's layouts, filled
// by six kernels queued on the caller's stream.
#include "topk_select.hpp"

#include <algorithm>
#include <string>
#include <vector>

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

namespace {

// The geometry of a's choice, checked: every candidate of a query block fits in the device's
// shared memory, and q and k are on the device (the selection kernels read them before any
// attention launcher checks them).
TopkGeom checked_geom(const backend::Attention& a, const Pattern& topk, const TopkFns& fns,
                      const backend::Call& call) {
  const TopKParams& tp = topk.node().params_as<TopKParams>();
  const backend::Dims& s = a.s;
  const TopkGeom g = topk_geom(s.nq, s.nk, s.hq, s.hkv, s.d, tp.k, tp.bq, tp.bk, tp.causal);
  // Every candidate's score of a query block lives in shared memory while it is ranked.
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               call.device.device_id),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  const int64_t smem = fns.smem(g), smem_max = int64_t(optin) - 2048;  // the kernel's static part
  if (smem > smem_max)
    throw RuntimeError("pattern: TopKBlocks on " + device_info(call.device.device_id).name +
                       " ranks at most " + std::to_string(smem_max / 4 - (g.d + 3) / 4 * 4) +
                       " candidate key blocks per query block; this problem has " +
                       std::to_string(g.kmax) + " (Nk=" + std::to_string(g.nk) +
                       ", blocks of " + std::to_string(g.bk) +
                       " keys): use larger key blocks, or pass CPU tensors");
  if (g.kmax > 0) {
    expect_device_pointer(a.q.data, "q", call.device.device_id);
    expect_device_pointer(a.k.data, "k", call.device.device_id);
  }
  return g;
}

// The workspace bytes of one choice: pooled queries, pooled keys, the mask [B, Hq, nqb, nkb].
size_t pooled_q_bytes(const TopkGeom& g, int64_t b) {
  return g.kmax > 0 ? size_t(b * g.hq * g.nqb * g.d) * sizeof(float) : 0;
}
size_t pooled_k_bytes(const TopkGeom& g, int64_t b) {
  return size_t(b * g.hkv * g.kmax * g.d) * sizeof(float);
}
size_t mask_bytes(const TopkGeom& g, int64_t b) { return size_t(b * g.hq * g.nqb * g.nkb); }

// Queues the pooling and choosing kernels of a's batch elements into qm, km and mask.
void queue_choice(const backend::Attention& a, const TopkGeom& g, const TopkFns& fns, float* qm,
                  float* km, uint8_t* mask, cudaStream_t stream) {
  TopkSelectParams sp;
  sp.dtype = a.dtype;
  sp.q = a.q.data;
  sp.k = a.k.data;
  for (int i = 0; i < 4; ++i) sp.q_s[i] = a.q.strides[i], sp.k_s[i] = a.k.strides[i];
  sp.b = a.s.b;
  sp.g = g;
  sp.qm = qm;
  sp.km = km;
  sp.mask = mask;
  check(fns.select(sp, stream), "launching TopKBlocks' selection kernels");
}

}  // namespace

TopkRun topk_select_on_device(const backend::Attention& a, const Pattern& topk, int64_t tm,
                              int64_t tn, bool rows, bool cols, const backend::Call& call) {
  const backend::Dims& s = a.s;
  DeviceGuard guard(call.device.device_id);
  const DeviceInfo& info = device_info(call.device.device_id);
  const TopkFns& fns = topk_fns(call.device.device_id);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  const TopkGeom g = checked_geom(a, topk, fns, call);

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
  const size_t qm_at = take(pooled_q_bytes(g, s.b));
  const size_t km_at = take(pooled_k_bytes(g, s.b));
  const size_t mask_at = take(mask_bytes(g, s.b));
  const size_t counts_at = take(size_t(s.b * std::max(st.rows[0], st.rows[1])) * 2 * sizeof(int32_t));
  const size_t regions_at = take(size_t(s.b) * st.region_bytes);
  run.ws = std::make_unique<DeviceScratch>(at, stream, info.pools, call.allocator,
                                           call.device.device_id);
  unsigned char* base = static_cast<unsigned char*>(run.ws->p);
  run.regions = base + regions_at;
  run.region_bytes = st.region_bytes;

  uint8_t* mask = base + mask_at;
  queue_choice(a, g, fns, reinterpret_cast<float*>(base + qm_at),
               reinterpret_cast<float*>(base + km_at), mask, stream);

  bool tail_copied = false;
  for (int l = 0; l < 2; ++l) {
    if (!st.want[l]) continue;
    TopkLayoutParams lp = st.layout_params(g, l, blob);
    lp.b = s.b;
    lp.mask = mask;
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

void topk_masks_on_device(const backend::Attention* probs, size_t n, const Pattern& topk,
                          BlockMask* masks, const backend::Call& call) {
  DeviceGuard guard(call.device.device_id);
  const DeviceInfo& info = device_info(call.device.device_id);
  const TopkFns& fns = topk_fns(call.device.device_id);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  if (stream_capturing(stream))
    throw RuntimeError("select_blocks: the chosen blocks are returned on the host, so the call "
                       "waits for its stream, which is capturing a CUDA graph; select outside "
                       "the capture (attention chooses inside it by itself)");

  // One workspace: every problem's masks packed first (one copy brings them all back, in the
  // order of `masks`), then each problem's pooled means.
  std::vector<TopkGeom> geoms;
  size_t all_masks = 0;
  for (size_t i = 0; i < n; ++i) {
    geoms.push_back(checked_geom(probs[i], topk, fns, call));
    all_masks += mask_bytes(geoms.back(), probs[i].s.b);
  }
  size_t at = align256(all_masks);
  std::vector<size_t> qm_at(n), km_at(n);
  for (size_t i = 0; i < n; ++i) {
    qm_at[i] = at;
    at = align256(at + pooled_q_bytes(geoms[i], probs[i].s.b));
    km_at[i] = at;
    at = align256(at + pooled_k_bytes(geoms[i], probs[i].s.b));
  }
  if (all_masks == 0) return;  // no bit to choose (masks are empty)
  DeviceScratch ws(at, stream, info.pools, call.allocator, call.device.device_id);
  unsigned char* base = static_cast<unsigned char*>(ws.p);
  size_t mask_at = 0;
  for (size_t i = 0; i < n; ++i) {
    queue_choice(probs[i], geoms[i], fns, reinterpret_cast<float*>(base + qm_at[i]),
                 reinterpret_cast<float*>(base + km_at[i]), base + mask_at, stream);
    mask_at += mask_bytes(geoms[i], probs[i].s.b);
  }
  std::vector<uint8_t> host(all_masks);
  check(cudaMemcpyAsync(host.data(), base, all_masks, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (TopKBlocks' chosen blocks to the host)");
  check(cudaStreamSynchronize(stream), "TopKBlocks' selection kernels");
  // Each mask was shaped [Hq, nqb, nkb] by the planner: one batch element's rows of the kernels.
  size_t from = 0, m = 0;
  for (size_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < probs[i].s.b; ++b, ++m) {
      std::vector<uint8_t>& bits = masks[m].bits;
      std::copy(host.begin() + from, host.begin() + from + bits.size(), bits.begin());
      from += bits.size();
    }
}

}  // namespace spattn::cuda
