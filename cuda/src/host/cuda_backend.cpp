// The CUDA backend (backend/backend.hpp): the planner's operations on CUDA device memory.
//
// Per compiled pattern and device, the layout is staged (schedule, predicate program and data
// in one blob) and copied to the device ONCE, kept as a CompiledPattern attachment (the
// forward's layout and schedule are compiled by kernels on the device where the pattern's
// leaves allow it: device_layout.hpp; the backward's columns, schedule and sm90a rows too, by
// the same row compile and a device transposition: device_backward.hpp; else on the host and
// uploaded): a later call with the same pattern and sizes only binds pointers and launches, on
// the caller's stream, with workspaces from the caller's allocator. Head dims without a kernel of their own run on
// the next larger compiled one, zero-padded (pad.cpp): D != Dv included.
#include <cstring>
#include <memory>
#include <string>

#include <cuda_runtime_api.h>

#include "backend/backend.hpp"
#include "decode_launch.hpp"
#include "device_backward.hpp"
#include "device_layout.hpp"
#include "launch_util.hpp"
#include "pad.hpp"
#include "topk_select.hpp"
#include "spattn/cuda/backend_info.hpp"
#include "spattn/cuda/backward.hpp"
#include "spattn/cuda/decode_logic.hpp"
#include "spattn/cuda/hopper_bwd_logic.hpp"
#include "spattn/cuda/forward.hpp"
#include "spattn/error.hpp"

namespace spattn::backend {

namespace {

using namespace spattn::cuda::launch;

// A layout staged for one kernel and uploaded to one device.
template <class Staged>
struct OnDevice {
  Staged staged;  // host description (offsets into the blob) for bind()
  DeviceBlob blob;
};

template <class Staged>
std::shared_ptr<OnDevice<Staged>> upload(Staged staged, const Call& call) {
  auto r = std::make_shared<OnDevice<Staged>>();
  r->staged = std::move(staged);
  r->blob.device = call.device.device_id;
  allocate_blob(r->blob, r->staged.blob.size());
  r->staged.relocate_nodes(r->blob.dev);
  upload_blob(r->blob, r->staged.blob, static_cast<cudaStream_t>(call.stream));
  return r;
}

std::string key_of(const char* what, const Call& call, const Tile& t, int64_t extra) {
  return std::string(what) + ":" + std::to_string(call.device.device_id) + ":" +
         std::to_string(t.bq) + "x" + std::to_string(t.bk) + ":" + std::to_string(extra);
}

// The kernels' score modifiers from the planner's (pointers stay on the device).
cuda::ScoreModParams mod_params(const Attention& a) {
  const ScoreMods& m = a.mods;
  cuda::ScoreModParams r;
  r.softcap_log2 = m.softcap * 1.4426950408889634f;
  r.alibi = m.alibi;
  r.alibi_s = m.alibi_stride;
  r.sinks = m.sinks;
  r.sinks_s = m.sinks_stride;
  r.rel_step = m.rel_shifted ? m.rel_step : 1;
  r.rel_base = m.rel_shifted ? m.rel_base : a.s.nk - a.s.nq;
  return r;
}

void copy_strides(const TensorView& t, int64_t* s, int n) {
  for (int i = 0; i < n; ++i) s[i] = t.strides[i];
}

// A ManagedTensor over memory from the caller's Allocator, returned to it when released.
struct AllocatorBlock {
  DLManagedTensorVersioned managed;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  Allocator alloc;
  size_t bytes;
  void* stream;
};

void allocator_deleter(DLManagedTensorVersioned* self) {
  auto* b = static_cast<AllocatorBlock*>(self->manager_ctx);
  if (b->alloc.deallocate)
    b->alloc.deallocate(b->alloc.ctx, self->dl_tensor.data, b->bytes, self->dl_tensor.device,
                        b->stream);
  delete b;
}

// Stream-ordered device memory (cudaMallocAsync), freed on the same stream: for workspaces.
struct AsyncBlock {
  DLManagedTensorVersioned managed;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  cudaStream_t stream;
  int device;
  bool async;
};

void async_deleter(DLManagedTensorVersioned* self) {
  auto* b = static_cast<AsyncBlock*>(self->manager_ctx);
  int prev = -1;
  const bool restore = cudaGetDevice(&prev) == cudaSuccess && prev != b->device;
  if (restore) (void)cudaSetDevice(b->device);
  if (b->async)
    (void)cudaFreeAsync(self->dl_tensor.data, b->stream);
  else
    (void)cudaFree(self->dl_tensor.data);
  if (restore) (void)cudaSetDevice(prev);
  (void)cudaGetLastError();
  delete b;
}

template <class Block>
void fill_compact(Block* b, DLManagedTensorVersioned* m, void* data, DType dtype,
                  const std::vector<int64_t>& shape, DLDevice device) {
  const int nd = int(shape.size());
  int64_t stride = 1;
  for (int i = nd - 1; i >= 0; --i) {
    b->shape[i] = shape[size_t(i)];
    b->strides[i] = stride;
    stride *= shape[size_t(i)] > 0 ? shape[size_t(i)] : 1;
  }
  m->version = DLPackVersion{1, 1};
  m->manager_ctx = b;
  m->flags = 0;
  m->dl_tensor.data = data;
  m->dl_tensor.device = device;
  m->dl_tensor.ndim = nd;
  m->dl_tensor.dtype = to_dl(dtype);
  m->dl_tensor.shape = b->shape;
  m->dl_tensor.strides = b->strides;
  m->dl_tensor.byte_offset = 0;
}

// float64 is for gradient checks on small problems: the CPU computes it in float64 throughout;
// no CUDA kernel does.
std::string float64_refused() {
  return "float64 runs on the CPU only (a float64 kernel for gradient checks); the CUDA kernels "
         "take float32, float16 or bfloat16: move the tensors to the CPU (x.cpu()) or cast them";
}

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  std::string unsupported(Op op, DType dtype, int64_t d, int64_t dv, const Call&) const override {
    if (dtype == DType::Float64) return float64_refused();
    switch (op) {
      case Op::Forward:
      case Op::Backward: {
        const bool fwd = op == Op::Forward;
        if (cuda::padded_head_dim(dtype, d, dv, fwd) == 0)
          return std::string("no CUDA ") + (fwd ? "forward" : "backward") + " kernel for " +
                 dtype_name(dtype) + " with D=" + std::to_string(d) + ", Dv=" +
                 std::to_string(dv) + " in this build (compiled dtype:head dims: " +
                 (fwd ? cuda::forward_kernels() : cuda::backward_kernels()) +
                 "; smaller head dims run padded to a compiled one); pass CPU tensors";
        return {};
      }
      case Op::Decode:  // float32, float16, bfloat16 (float64 was refused above)
        if (cuda::dec_dim_max(d, dv) == 0)
          return "the CUDA decode kernel takes head dims D, Dv up to " +
                 std::to_string(cuda::kDecMaxDim) + ", got D=" + std::to_string(d) + ", Dv=" +
                 std::to_string(dv) + "; pass CPU tensors";
        return {};
      case Op::PoolKeys:
        return {};  // float32, float16, bfloat16 (float64 was refused above)
      case Op::Select:  // select_blocks: host/topk_select.cpp, masks copied back
      case Op::AttentionSelect:  // host/topk_select.cpp pools float32, float16, bfloat16
      case Op::DecodeSelect:     // host/decode_topk.cpp, the same dtypes
        return {};
    }
    return "unknown operation";
  }

  Tile tile(Op op, const Dims& s, DType dtype, const Call& call) const override {
    if (op == Op::Backward) {
      // The sm90a backward's tile where it runs (opt-in), at the padded head dim (pad.hpp).
      const int64_t pd = cuda::padded_head_dim(dtype, s.d, s.dv, false);
      const cuda::BackwardTile t = pd ? cuda::backward_tile(pd, pd, call.device.device_id, dtype)
                                      : cuda::backward_tile(s.d, s.dv);
      return {t.bq, t.bk};
    }
    // The kernel runs at the padded head dim (pad.hpp); on Hopper its tile is the sm90a
    // kernel's where that exists for (dtype, D).
    const int64_t pd = cuda::padded_head_dim(dtype, s.d, s.dv, true);
    const cuda::ForwardTile t =
        pd ? cuda::forward_tile(pd, pd, call.device.device_id, dtype) : cuda::forward_tile(s.d, s.dv);
    return {t.bq, t.bk};
  }

  // Softcap, ALiBi and sinks in every kernel: forward, backward, decode.
  std::string unsupported_modifiers(Op, const Call&) const override { return {}; }

  // dsinks from out, dout and lse on the device (kernels/sink_grad.cu).
  void sink_grad(const TensorView& dout, const TensorView& out, const TensorView& lse,
                 const ScoreMods& mods, const TensorView& dsinks, DType dtype,
                 const Call& call) override {
    DeviceGuard guard(call.device.device_id);
    cuda::SinkGradProblem p;
    p.dout = dout.data;
    p.out = out.data;
    p.lse = static_cast<const float*>(lse.data);
    p.sinks = mods.sinks;
    p.sinks_s = mods.sinks_stride;
    p.dsinks = static_cast<float*>(dsinks.data);
    p.dsinks_s = dsinks.strides[0];
    p.b = out.shape[0], p.n = out.shape[1], p.h = out.shape[2], p.dv = out.shape[3];
    for (int i = 0; i < 4; ++i) p.out_strides[i] = out.strides[i], p.dout_strides[i] = dout.strides[i];
    for (int i = 0; i < 3; ++i) p.lse_strides[i] = lse.strides[i];
    const ArchFns& arch = arch_of(call.device.device_id, "sink_grad");
    check(arch.sink_grad(p, cuda::launch::kernel_dtype(dtype), static_cast<cudaStream_t>(call.stream)),
          "launching the sinks' gradient kernel");
  }

  void forward(const Attention& a, const CompiledPattern& cp, const Call& call) override {
    if (a.s.b == 0 || a.s.nq == 0) return;
    const Tile t = tile(Op::Forward, a.s, a.dtype, call);
    // Compiled on the device where the pattern's leaves allow it (device_layout.hpp), else on
    // the host and uploaded; once per (pattern, sizes, tile, device, compiler).
    const bool on_device = layout_on_device_requested();
    auto dev = std::static_pointer_cast<OnDevice<cuda::StagedForward>>(cp.attachment(
        key_of(on_device ? "cuda-fwd-dev" : "cuda-fwd", call, t, 0), [&]() -> std::shared_ptr<void> {
          if (on_device) {
            auto r = std::make_shared<OnDevice<cuda::StagedForward>>();
            if (compile_forward_layout_on_device(cp, t.bq, t.bk, call.device.device_id,
                                                 static_cast<cudaStream_t>(call.stream),
                                                 call.allocator, &r->staged, &r->blob))
              return r;
          }
          return upload(cuda::stage_forward(cp.layout_for(t.bq, t.bk), cp.predicate(), a.s.nq,
                                            a.s.nk, a.s.hq, t.bq, t.bk),
                        call);
        }));
    launch_forward(a, dev->staged, dev->blob.dev, call);
  }

  void backward(const Attention& a, const Gradients& g, const CompiledPattern& cp,
                const Call& call) override {
    if (a.s.b == 0 || (a.s.nq == 0 && a.s.nk == 0)) return;
    const Tile t = tile(Op::Backward, a.s, a.dtype, call);
    const bool sm90a = backward_sm90a(t, call);
    // As the forward's: the columns (and the sm90a's rows) made on the device where the
    // pattern's leaves allow it (device_backward.hpp), else on the host and uploaded.
    const bool on_device = layout_on_device_requested();
    auto dev = std::static_pointer_cast<OnDevice<cuda::StagedBackward>>(cp.attachment(
        key_of(on_device ? "cuda-bwd-dev" : "cuda-bwd", call, t, a.s.hkv),
        [&]() -> std::shared_ptr<void> {
          if (on_device) {
            auto r = std::make_shared<OnDevice<cuda::StagedBackward>>();
            if (compile_backward_layout_on_device(cp, a.s.hkv, t.bq, t.bk, sm90a,
                                                  call.device.device_id,
                                                  static_cast<cudaStream_t>(call.stream),
                                                  call.allocator, &r->staged, &r->blob))
              return r;
          }
          const BlockLayout& layout = cp.layout_for(t.bq, t.bk);
          return upload(sm90a ? cuda::stage_backward90(layout, cp.predicate(), a.s.nq, a.s.nk,
                                                       a.s.hq, a.s.hkv)
                              : cuda::stage_backward(layout, cp.predicate(), a.s.nq, a.s.nk,
                                                     a.s.hq, a.s.hkv),
                        call);
        }));
    launch_backward(a, g, dev->staged, dev->blob.dev, call);
  }

  // TopKBlocks: the blocks are chosen on the device (host/topk_select.cpp) into one layout per
  // batch element, each walked by the same kernels as any other pattern.
  bool forward_topk(const Attention& a, const Pattern& topk, const Call& call) override {
    if (a.s.b == 0 || a.s.nq == 0) return true;
    const Tile t = tile(Op::Forward, a.s, a.dtype, call);
    const cuda::TopkRun run = cuda::topk_select_on_device(a, topk, t.bq, t.bk, true, false, call);
    for (int64_t b = 0; b < a.s.b; ++b)
      launch_forward(cuda::batch_attention(a, b), run.forward, run.region(b), call);
    return true;
  }

  bool backward_topk(const Attention& a, const Gradients& g, const Pattern& topk,
                     const Call& call) override {
    if (a.s.b == 0 || (a.s.nq == 0 && a.s.nk == 0)) return true;
    const Tile t = tile(Op::Backward, a.s, a.dtype, call);
    const bool sm90a = backward_sm90a(t, call);
    const cuda::TopkRun run = cuda::topk_select_on_device(a, topk, t.bq, t.bk, sm90a, true, call);
    for (int64_t b = 0; b < a.s.b; ++b)
      launch_backward(cuda::batch_attention(a, b), cuda::batch_gradients(g, b), run.backward,
                      run.region(b), call);
    return true;
  }

  // select_blocks: the same kernels choose, and the masks come back in one copy.
  bool select_topk(const Attention* probs, size_t n, const Pattern& topk, BlockMask* masks,
                   const Call& call) override {
    cuda::topk_masks_on_device(probs, n, topk, masks, call);
    return true;
  }

  void decode(const Decode& d, const Call& call) override { cuda::decode_on_device(d, call); }
  std::string device_lengths_refusal(const Decode& d, const Call& call) override {
    return cuda::decode_device_plan_refusal(d, call);
  }
  void raise_deferred_decode_errors(const Call& call) override {
    cuda::raise_deferred_decode_errors(call);
  }
  bool pool_keys_device_lengths(const Call&) const override { return true; }
  void pool_keys(const PoolKeys& p, const Call& call) override {
    cuda::pool_keys_on_device(p, call);
  }

  ManagedTensor allocate(DType dtype, const std::vector<int64_t>& shape,
                         const Call& call) override {
    int64_t numel = 1;
    for (int64_t n : shape) numel *= n;
    const size_t bytes = size_t(numel) * size_t(dtype_size(dtype));
    const size_t asked = bytes == 0 ? 256 : bytes;  // a unique valid pointer
    if (call.allocator && call.allocator->allocate) {
      void* data = call.allocator->allocate(call.allocator->ctx, asked, call.device, call.stream);
      if (data == nullptr)
        throw RuntimeError("the caller's allocator returned no memory for " +
                           std::to_string(asked) + " bytes on " + spattn::describe(call.device));
      auto* b = new AllocatorBlock();
      b->alloc = *call.allocator;
      b->bytes = asked;
      b->stream = call.stream;
      b->managed.deleter = &allocator_deleter;
      fill_compact(b, &b->managed, data, dtype, shape, call.device);
      return ManagedTensor::adopt(&b->managed);
    }
    DeviceGuard guard(call.device.device_id);
    const DeviceInfo& info = device_info(call.device.device_id);
    const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
    void* data = nullptr;
    if (info.pools)
      check(cudaMallocAsync(&data, asked, stream), "cudaMallocAsync(" + std::to_string(asked) + ")");
    else
      check(cudaMalloc(&data, asked), "cudaMalloc(" + std::to_string(asked) + ")");
    auto* b = new AsyncBlock();
    b->stream = stream;
    b->device = call.device.device_id;
    b->async = info.pools;
    b->managed.deleter = &async_deleter;
    fill_compact(b, &b->managed, data, dtype, shape, call.device);
    return ManagedTensor::adopt(&b->managed);
  }

  void merge(const TensorView* outs, const TensorView* lses, int n, const TensorView& out,
             const TensorView& lse, DType dtype, const Call& call) override {
    if (dtype == DType::Float64) throw RuntimeError("outs[0]: " + float64_refused());
    DeviceGuard guard(call.device.device_id);
    const ArchFns& arch = arch_of(call.device.device_id, "merge");
    const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
    // More parts than one launch takes: merge the first ones into out / a temporary lse, then
    // merge that with the next ones (exact: a merge of merges is the merge of all).
    ManagedTensor tmp_lse;
    TensorView acc_out, acc_lse;
    int done = 0;
    while (done < n) {
      cuda::MergeParams p;
      int k = 0;
      if (done > 0) {
        p.outs[k] = acc_out.data;
        copy_strides(acc_out, p.out_part_strides[k], 4);
        p.lses[k] = acc_lse.ptr<const float>();
        copy_strides(acc_lse, p.lse_strides[k], 3);
        ++k;
      }
      for (; k < cuda::kMergeMaxParts && done < n; ++k, ++done) {
        p.outs[k] = outs[done].data;
        copy_strides(outs[done], p.out_part_strides[k], 4);
        p.lses[k] = lses[done].ptr<const float>();
        copy_strides(lses[done], p.lse_strides[k], 3);
      }
      p.n = k;
      for (int i = 0; i < 4; ++i) p.shape[i] = out.shape[i];
      p.out = out.data;
      copy_strides(out, p.out_strides, 4);
      TensorView lse_dst = lse;
      if (done < n && lse.data == nullptr) {  // rounds need the lse of the merged part
        if (tmp_lse.empty())
          tmp_lse = allocate(DType::Float32, {out.shape[0], out.shape[2], out.shape[1]}, call);
        lse_dst = tmp_lse.view("lse");
      }
      p.lse = lse_dst.ptr<float>();
      if (lse_dst.data) copy_strides(lse_dst, p.lse_out_strides, 3);
      check(arch.merge(p, cuda::launch::kernel_dtype(dtype), stream), "launching the merge kernel");
      acc_out = out;
      acc_lse = lse_dst;
    }
  }

  void sum(const TensorView& dst, const TensorView* srcs, int n, DType dtype,
           const Call& call) override {
    if (dtype == DType::Float64) throw RuntimeError("q: " + float64_refused());
    DeviceGuard guard(call.device.device_id);
    const ArchFns& arch = arch_of(call.device.device_id, "sum");
    const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
    int done = 0;
    while (done < n) {
      cuda::SumParams p;
      int k = 0;
      if (done > 0) {  // dst holds the sum so far: each thread reads its element, then writes it
        p.srcs[k] = dst.data;
        copy_strides(dst, p.src_strides[k], 4);
        ++k;
      }
      for (; k < cuda::kMergeMaxParts && done < n; ++k, ++done) {
        p.srcs[k] = srcs[done].data;
        copy_strides(srcs[done], p.src_strides[k], 4);
      }
      p.n = k;
      for (int i = 0; i < 4; ++i) p.shape[i] = dst.shape[i];
      p.dst = dst.data;
      copy_strides(dst, p.dst_strides, 4);
      check(arch.sum(p, cuda::launch::kernel_dtype(dtype), stream), "launching the sum kernel");
    }
  }

  void read_to_host(const TensorView& t, void* host, size_t bytes, const Call& call) override {
    if (bytes == 0) return;
    DeviceGuard guard(call.device.device_id);
    const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
    check(cudaMemcpyAsync(host, t.data, bytes, cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (reading offsets to the host)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (reading offsets to the host)");
  }

  void describe(std::map<std::string, std::string>& info) const override {
    info["cuda_compiled"] = "yes";
    info["cuda_archs"] = cuda::compiled_archs();
    info["cuda_kernels"] = cuda::forward_kernels();
    info["cuda_sm90a_kernels"] = cuda::forward_kernels_sm90a();
    info["cuda_backward_kernels"] = cuda::backward_kernels();
    // The sm90a backward: compiled, not yet run on a GPU, so opt-in (SPATTN_CUDA_BACKWARD=sm90a).
    info["cuda_sm90a_backward_kernels"] = cuda::backward_kernels_sm90a();
    info["cuda_sm90a_backward_default"] =
        "no: opt-in with SPATTN_CUDA_BACKWARD=sm90a on compute capability 9.0 until it has run "
        "correctly on a GPU; other head dims (256) use the sm80-style backward";
    info["cuda_sm90a_backward_dq"] =
        "pass (default: a query-major dQ kernel, deterministic); tma with SPATTN_CUDA_DQ=tma "
        "(fp32 TMA reduce-add from the dK/dV kernel, not bitwise reproducible: "
        "deterministic=True keeps pass)";
    // Decode: compiled and host-tested, not yet run on a GPU (cuda/README.md).
    info["cuda_decode"] =
        "float32, float16, bfloat16; D, Dv <= 256; contiguous and paged caches, split-K; score modifiers; "
        "TopKBlocks chosen on the GPU (host lengths: cache_len on the GPU is read back); with cache_len on the GPU and a length-free pattern "
        "(windows, sinks, globals, dilated, strided, fixed, prefix-LM and their combinations) "
        "planned on the GPU: no host read, capturable in CUDA graphs, errors raised at once or "
        "deferred to check_decode_errors (docs/api.md, \"Decode on a GPU\")";
    info["cuda_topk"] =
        "attention forward and backward choose TopKBlocks' blocks on the GPU (pooling, scoring "
        "and top-k kernels, no host read-back), the CPU's choice bit for bit on x86-64 builds "
        "(docs/patterns.md); decode chooses on the GPU too, per sequence; select_blocks chooses on "
        "the GPU too and copies the masks back (one copy, one wait)";
    info["cuda_backward_deterministic"] =
        "sm90a backward only (deterministic=True raises with the sm80-style backward)";
  }

 private:
  // Whether the backward runs the sm90a kernel (its tile), refusing deterministic=True where
  // the kernel that runs is not deterministic.
  static bool backward_sm90a(const Tile& t, const Call& call) {
    const bool sm90a = cuda::backward_tile_deterministic({t.bq, t.bk});
    if (call.deterministic && !sm90a)
      throw RuntimeError(
          "deterministic=True: the CUDA backward on this device accumulates dq with float32 "
          "atomics (not bitwise reproducible); only the sm90a backward is deterministic "
          "(compute capability 9.0, opt-in with SPATTN_CUDA_BACKWARD=sm90a, compiled for " +
          (cuda::backward_kernels_sm90a().empty() ? std::string("no dtype:head dim in this build")
                                                  : cuda::backward_kernels_sm90a()) +
          "); or pass CPU tensors (the CPU backward is deterministic)");
    return sm90a;
  }

  // The forward over a layout staged at staged_dev (described by staged) on the device.
  static void launch_forward(const Attention& a, const cuda::StagedForward& staged,
                             const void* staged_dev, const Call& call) {
    cuda::PaddedForward padded(a, call);  // the kernel's head dim, and temporaries if it differs
    cuda::ForwardProblem p = cuda::forward_problem(padded.q, padded.k, padded.v, padded.out,
                                                   a.lse, a.dtype, a.scale, call.stream);
    p.mods = mod_params(a);
    p.staged = &staged;
    p.staged_dev = staged_dev;
    p.allocator = call.allocator;
    p.device = call.device.device_id;
    cuda::attention_forward(p);
    padded.finish();
  }

  static void launch_backward(const Attention& a, const Gradients& g,
                              const cuda::StagedBackward& staged, const void* staged_dev,
                              const Call& call) {
    cuda::PaddedBackward padded(a, g, call);
    cuda::BackwardProblem p = cuda::backward_problem(
        padded.dout, padded.q, padded.k, padded.v, padded.out, a.lse, padded.dq, padded.dk,
        padded.dv, a.dtype, a.scale, call.stream);
    p.mods = mod_params(a);
    p.staged = &staged;
    p.staged_dev = staged_dev;
    p.allocator = call.allocator;
    p.device = call.device.device_id;
    p.deterministic = call.deterministic;
    cuda::attention_backward(p);
    padded.finish();
  }
};

}  // namespace

Backend* cuda_backend() {
  static CudaBackend b;
  return &b;
}

}  // namespace spattn::backend
