// The seam between the planner (cpp/src/api.cpp and friends: checks, pattern cache, residue
// split, union parts, TopKBlocks, varlen) and the code that runs on one kind of device.
//
// The planner never names a device: it describes a problem in device-neutral terms (checked
// TensorViews, dtype, resolved scale, a cached CompiledPattern) and hands it to the Backend of
// the tensors' device. A backend is one folder (cpp/src/cpu/, cuda/src/host/) with one class
// implementing this interface, and one line in registry.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "spattn/layout.hpp"
#include "spattn/options.hpp"
#include "spattn/pattern.hpp"
#include "spattn/tensor.hpp"

namespace spattn::backend {

// The sizes of one problem, read from q, k, v and checked against each other.
struct Dims {
  int64_t b, nq, nk, hq, hkv, d, dv;
};

// The context of one call, the same for every operation it queues: the device of the tensors
// and the stream and allocator of Options. (The host thread budget, Options::num_threads, holds
// for the whole call: the planner sets it once, cpu/thread_pool.hpp.)
struct Call {
  DLDevice device{kDLCPU, 0};
  void* stream = nullptr;
  const Allocator* allocator = nullptr;
  // Options::deterministic: a backward whose gradients are not bitwise reproducible raises.
  bool deterministic = false;
};

// The score modifiers of a call (Options::modifiers), checked, with pointers on q's device.
// Keys are described in the problem's own coordinates: rel of row i and key j is
// rel_step * (i - j) + rel_base, where rel_base is Nk - Nq of the problem unless rel_shifted
// (the row-strided views of residue classes, whose rows are d rows of the whole problem apart).
struct ScoreMods {
  float softcap = 0.f;           // 0: none
  const float* alibi = nullptr;  // [Hq] slopes, element stride alibi_stride; null: none
  const float* sinks = nullptr;  // [Hq] logits, element stride sinks_stride; null: none
  int64_t alibi_stride = 1, sinks_stride = 1;
  // Float64 inputs: the slopes and sinks are float64 (lse's dtype, so that a float64 gradient
  // check sees them unrounded) and come here instead of alibi / sinks, which only the kernels of
  // the other dtypes read; softcap64 is the softcap as given (every dtype).
  const double* alibi64 = nullptr;
  const double* sinks64 = nullptr;
  double softcap64 = 0.0;
  bool rel_shifted = false;
  int64_t rel_step = 1, rel_base = 0;
  bool has_alibi() const { return alibi != nullptr || alibi64 != nullptr; }
  bool has_sinks() const { return sinks != nullptr || sinks64 != nullptr; }
  void drop_sinks() { sinks = nullptr, sinks64 = nullptr; }
  // Softcap or ALiBi: the scores change (sinks only change the normalisation).
  bool scores() const { return softcap != 0.f || has_alibi(); }
  bool any() const { return scores() || has_sinks(); }
};

// One dense-batch attention problem ([B, N, H, D] views, any strides), already checked.
struct Attention {
  TensorView q, k, v, out;
  TensorView lse;  // data == nullptr: not wanted (forward only; the backward always has it)
  DType dtype = DType::Float32;
  double scale = 1.0;  // resolved; float64 kernels use it as it is, the others round it to float
  Dims s{};
  // Forward: all of them; backward: softcap and ALiBi (the sinks act through lse; their own
  // gradient is sink_grad's).
  ScoreMods mods;
};

// What the backward adds: dout in, gradients out (overwritten), same shapes as out, q, k, v.
struct Gradients {
  TensorView dout, dq, dk, dv;
  // The pattern holds every key its rows see (false for one part of a union run in parts): the
  // low-precision backward may then recompute delta = rowsum(dO * O) exactly from P and dP.
  bool rows_complete = true;
};

// A decode call (docs/api.md), checked by decode_api.cpp: q [B, Nq, Hq, D]; k/v contiguous
// [B, Ncap, Hkv, D/Dv] or paged [pages, page_size, Hkv, D/Dv] with table [B, max_pages] (int32
// or int64); out [B, Nq, Hq, Dv]; lse [B, Hq, Nq] float32 or data null. The lengths: either
// cache_len (read on the host, each in [0, capacity]) or, when the backend plans from lengths
// on its device (device_lengths_refusal empty), `lengths` itself, never read on the host: the
// backend then finds their errors itself. The backend checks the pattern per sequence and every
// table entry it visits before anything is computed (or reports them as described for
// defer_errors).
struct Decode {
  TensorView q, k, v, out, lse;
  TensorView table;  // data null (paged false): contiguous caches
  bool paged = false;
  const int64_t* cache_len = nullptr;  // B values, host memory; null: use `lengths`
  TensorView lengths;                  // cache_len as given (int32 / int64 [B])
  int64_t capacity = 0;                // the largest valid length
  bool defer_errors = false;           // Options::decode_defer_errors
  DType dtype = DType::Float32;
  double scale = 1.0;  // resolved; float64 kernels use it as it is, the others round it to float
  const Pattern* pattern = nullptr;
  TensorView pooled;  // TopKBlocks only: float32 [B, blocks, Hkv, D] mean keys (data null: none)
  ScoreMods mods;     // rel_base per sequence: cache_len[b] - Nq
};

// The mean key of every block of `block` keys of each sequence (pool_keys, docs/api.md): k,
// table as for Decode, out float32 [B, blocks, Hkv, D]. The lengths: either cache_len (read on
// the host, each in [0, capacity] and within out's blocks) or, when the backend reads lengths
// on its device (pool_keys_device_lengths), `lengths` itself, never read on the host: the
// backend then finds their errors itself and reports them as decode's (defer_errors).
struct PoolKeys {
  TensorView k, table, out;
  bool paged = false;
  const int64_t* cache_len = nullptr;  // B values, host memory; null: use `lengths`
  TensorView lengths;                  // cache_len as given (int32 / int64 [B])
  int64_t capacity = 0;                // the largest valid length
  bool defer_errors = false;           // Options::decode_defer_errors
  DType dtype = DType::Float32;
  int64_t block = 1;
};

// The query x key tile a kernel walks a block layout with: layouts are compiled for it.
struct Tile {
  int64_t bq, bk;
};

// Select: TopKBlocks' choice as a call of its own (select_blocks: masks returned on the host,
// select_topk). AttentionSelect: the choice inside attention forward / backward, which a
// backend may make on its device (forward_topk / backward_topk). DecodeSelect: the choice
// inside decode, per sequence (made by the backend's decode).
enum class Op { Forward, Backward, Decode, PoolKeys, Select, AttentionSelect, DecodeSelect };

class Backend {
 public:
  virtual ~Backend() = default;
  // "cpu", "cuda": for messages and `spattn info`.
  virtual const char* name() const = 0;
  // Empty when `op` runs here for (dtype, D, Dv); else the reason, which the planner raises as
  // RuntimeError after "q: ".
  virtual std::string unsupported(Op op, DType dtype, int64_t d, int64_t dv,
                                  const Call& call) const = 0;
  // The tile the op's kernel walks layouts with, for these sizes on call.device.
  virtual Tile tile(Op op, const Dims& s, DType dtype, const Call& call) const = 0;

  // out (and lse) = attention over the pairs cp keeps. cp was compiled for (s.nq, s.nk, s.hq);
  // its cached layouts and attachments (CompiledPattern::layout_for / attachment) are the
  // backend's to use, so a call on a pattern seen before does no O(N) host work.
  virtual void forward(const Attention& a, const CompiledPattern& cp, const Call& call) = 0;
  virtual void backward(const Attention& a, const Gradients& g, const CompiledPattern& cp,
                        const Call& call) = 0;
  // TopKBlocks (pattern.data_dependent()) chosen on this device from a's q and k, per batch
  // element, with select::choose's rule, and the attention run over that choice; false: this
  // backend does not, and the planner chooses on the host (select::choose) and runs the
  // concrete pattern. The backward chooses again from the same q and k (the choice is
  // deterministic), so it differentiates exactly the forward's pattern.
  virtual bool forward_topk(const Attention& a, const Pattern& topk, const Call& call) {
    (void)a, (void)topk, (void)call;
    return false;
  }
  virtual bool backward_topk(const Attention& a, const Gradients& g, const Pattern& topk,
                             const Call& call) {
    (void)a, (void)g, (void)topk, (void)call;
    return false;
  }
  // TopKBlocks' choice alone (select_blocks): the blocks of `topk` for every batch element of
  // probs[0..n) (q, k, dtype and sizes are read; v, out and lse are not), chosen on this device
  // with select::choose's rule and written to masks[0..), one per batch element in order, in
  // host memory, each already shaped [Hq, nqb, nkb] by the planner. Returns once they are there
  // (the masks are the result: one read back, one wait). false: this backend does not choose on
  // its device, and the planner chooses on the host (select::choose).
  virtual bool select_topk(const Attention* probs, size_t n, const Pattern& topk, BlockMask* masks,
                           const Call& call) {
    (void)probs, (void)n, (void)topk, (void)masks, (void)call;
    return false;
  }
  virtual void decode(const Decode& d, const Call& call) = 0;
  // Empty when this backend plans decode d from its lengths where they are (d.lengths on this
  // device; d.cache_len not read): no host read of them, no synchronisation. Else the reason
  // (the planner then reads them to the host first). May raise when the call cannot proceed
  // either way (a stream capturing a CUDA graph).
  virtual std::string device_lengths_refusal(const Decode& d, const Call& call) {
    (void)d, (void)call;
    return "this backend reads cache_len on the host";
  }
  // Raises the first error a decode with defer_errors left on call.device (and forgets it);
  // nothing when there is none. Backends that never defer have nothing to raise.
  virtual void raise_deferred_decode_errors(const Call& call) { (void)call; }
  virtual void pool_keys(const PoolKeys& p, const Call& call) = 0;
  // Whether pool_keys reads lengths that live on call.device there (PoolKeys::lengths, with no
  // host read and no synchronisation but an immediate error report's); false: the planner
  // reads them to the host first.
  virtual bool pool_keys_device_lengths(const Call& call) const {
    (void)call;
    return false;
  }

  // A compact row-major tensor on call.device (through call.allocator where given), owned by
  // the result; freed in stream order. Contents undefined.
  virtual ManagedTensor allocate(DType dtype, const std::vector<int64_t>& shape,
                                 const Call& call) = 0;
  // Exact merge of partial results over disjoint key sets: outs[i] [B, N, H, Dv] with lses[i]
  // [B, H, N] float32 -> out, lse (lse data null: not wanted). Rows no part saw: 0 and -inf.
  virtual void merge(const TensorView* outs, const TensorView* lses, int n, const TensorView& out,
                     const TensorView& lse, DType dtype, const Call& call) = 0;
  // dst = sum of srcs[0..n), all [B, N, H, D] of one dtype, any strides (float32 accumulation).
  virtual void sum(const TensorView& dst, const TensorView* srcs, int n, DType dtype,
                   const Call& call) = 0;
  // Empty when this backend runs the score modifiers (ScoreMods) for `op`; else the reason.
  virtual std::string unsupported_modifiers(Op op, const Call& call) const {
    (void)op;
    (void)call;
    return "the score modifiers (softcap, alibi_slopes, sinks) are not implemented on this "
           "device in this version";
  }
  // The sinks' gradient: dsinks[h] = -sum over (b, i) of exp(sinks[h] - lse[b, h, i]) *
  // sum_d dout[b, i, h, d] * out[b, i, h, d]; out/dout [B, N, H, Dv], lse [B, H, N], dsinks
  // float32 [H] (overwritten). Only backends whose unsupported_modifiers is empty are asked.
  virtual void sink_grad(const TensorView& dout, const TensorView& out, const TensorView& lse,
                         const ScoreMods& mods, const TensorView& dsinks, DType dtype,
                         const Call& call) {
    (void)dout, (void)out, (void)lse, (void)mods, (void)dsinks, (void)dtype, (void)call;
  }
  // Copies `bytes` bytes starting at t.data (on call.device) to host memory; waits for them.
  virtual void read_to_host(const TensorView& t, void* host, size_t bytes, const Call& call) = 0;

  // Build and runtime facts for spattn::info(), keys prefixed by the backend's name.
  virtual void describe(std::map<std::string, std::string>& info) const = 0;
};

// The backend of a device type; nullptr when this build has none for it.
Backend* find(DLDeviceType type);
// The backend of the device the tensors live on, or RuntimeError naming `what` (the argument,
// usually "q") and why there is none (an unknown device, a build without CUDA, ...).
Backend& for_device(const DLDevice& device, const char* what);
// Every backend of this build, in registration order (for info()).
const std::vector<Backend*>& all();

// The registered backends. Each is defined in its own folder; a build without CUDA links
// cuda/src/stub.cpp, whose cuda_backend() returns nullptr.
Backend* cpu_backend();
Backend* cuda_backend();

}  // namespace spattn::backend
