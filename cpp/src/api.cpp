// The C++ entry points: every argument is checked here, once, before anything is written; then
// the pattern is compiled for the backend's tile size and the backend runs.
#include "spattn/spattn.hpp"

#include <cmath>
#include <optional>
#include <sstream>
#include <vector>

#include "cpu/attention_cpu.hpp"
#include "cpu/thread_pool.hpp"
#include "large_buffers.hpp"
#include "plan/residue.hpp"
#include "select/topk.hpp"
#include "spattn/cuda/backend_info.hpp"
#include "spattn/cuda/backward.hpp"
#include "spattn/cuda/forward.hpp"
#include "spattn/select.hpp"

#ifndef SPATTN_VERSION
#define SPATTN_VERSION "0.0.0"
#endif

namespace spattn {

namespace {

constexpr int64_t kMaxHeadDim = 256;

std::string dims(const TensorView& t) { return t.shape_str(); }

void expect_rank(const TensorView& t, const char* name, int rank, const char* layout) {
  if (t.ndim != rank) {
    std::ostringstream m;
    m << name << ": expected " << rank << " dimensions " << layout << ", got " << t.ndim
      << " with shape " << dims(t);
    throw ValueError(m.str());
  }
}

void expect_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> want,
                  const char* layout) {
  expect_rank(t, name, int(want.size()), layout);
  int d = 0;
  for (int64_t w : want) {
    if (t.shape[d] != w) {
      std::ostringstream m;
      m << name << ": expected shape [";
      int e = 0;
      for (int64_t x : want) m << (e++ ? ", " : "") << x;
      m << "] " << layout << ", got " << dims(t);
      throw ValueError(m.str());
    }
    ++d;
  }
}

void expect_dtype(const TensorView& t, const char* name, DType want, const char* ref) {
  const DType got = float_dtype(t, name);
  if (got != want) {
    std::ostringstream m;
    m << name << ": dtype " << dtype_name(got) << " does not match " << ref << "'s "
      << dtype_name(want);
    throw TypeError(m.str());
  }
}

void expect_same_device(const TensorView& t, const char* name, const TensorView& q) {
  if (t.device.device_type != q.device.device_type || t.device.device_id != q.device.device_id) {
    std::ostringstream m;
    m << name << ": on device " << describe(t.device) << ", but q is on "
      << describe(q.device) << "; all tensors must be on one device";
    throw ValueError(m.str());
  }
}

// Outputs must not have two elements at one address (tensor.hpp: broadcast views, overlapping
// strides; empty outputs pass).
void expect_writable_layout(const TensorView& t, const char* name) {
  expect_no_self_overlap(t, name);
}

bool on_cuda(const TensorView& t) { return t.device.device_type == kDLCUDA; }

// The tensors' device must have a backend for this call: the CPU always; CUDA for the forward
// and backward of a dense batch (cuda_what == nullptr) when this build has CUDA kernels, else
// RuntimeError naming what is missing (cuda_what: the call that has no CUDA version yet).
void expect_backend(const TensorView& q, const char* cuda_what) {
  const auto type = q.device.device_type;
  if (type == kDLCPU || type == kDLCUDAHost) return;
  std::ostringstream m;
  if (type == kDLCUDA || type == kDLCUDAManaged) {
    m << "q: tensors are on " << describe(q.device) << ", but ";
    if (!cuda::compiled())
      m << "this spattn was built without CUDA; rebuild with SPATTN_CUDA=ON or pass CPU "
           "tensors";
    else if (cuda_what != nullptr)
      m << cuda_what << " runs on the CPU only in this version (the CUDA kernels cover the "
        << "forward and backward of dense batches); pass CPU tensors";
    else if (type == kDLCUDAManaged)
      m << "the CUDA kernels take device memory (kDLCUDA), not managed memory; pass device or "
           "CPU tensors";
    else
      return;
  } else {
    m << "q: no spattn backend for device " << describe(q.device) << "; pass CPU tensors";
  }
  throw RuntimeError(m.str());
}

// The CPU thread limit of one call (Options::num_threads), checked.
int thread_limit(const Options& o) {
  if (o.num_threads < 0)
    throw ValueError("num_threads: expected 0 (all) or a positive count, got " +
                     std::to_string(o.num_threads));
  return o.num_threads;
}

// TopKBlocks reads q and k on the host to choose its blocks.
void refuse_selection_on_cuda(const TensorView& q, const Pattern& pattern) {
  if (on_cuda(q) && pattern.data_dependent())
    throw RuntimeError("pattern: TopKBlocks' selection runs on the CPU only in this version; "
                       "pass CPU tensors, or select on the CPU and pass the selected pattern");
}

float resolve_scale(double scale, int64_t d) {
  if (!std::isfinite(scale)) {
    std::ostringstream m;
    m << "scale: expected a finite number, got " << scale;
    throw ValueError(m.str());
  }
  return scale == 0.0 ? float(1.0 / std::sqrt(double(d))) : float(scale);
}

// The problem's sizes, read from q, k, v and checked against each other.
struct Dims {
  int64_t b, nq, nk, hq, hkv, d, dv;
};

// varlen: q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv] (no batch dimension; b = 1, nq = Tq,
// nk = Tk in the result).
//
// cuda_what: nullptr when the call has a CUDA version, else its name for the message;
// backward: the CUDA kernels it needs are the backward's.
Dims check_qkv(const TensorView& q, const TensorView& k, const TensorView& v, DType* dtype,
               bool varlen, const char* cuda_what, bool backward = false) {
  const int r = varlen ? 3 : 4, o = varlen ? 0 : 1;  // rank; index of the sequence dimension
  expect_rank(q, "q", r, varlen ? "[Tq, Hq, D]" : "[B, Nq, Hq, D]");
  expect_rank(k, "k", r, varlen ? "[Tk, Hkv, D]" : "[B, Nk, Hkv, D]");
  expect_rank(v, "v", r, varlen ? "[Tk, Hkv, Dv]" : "[B, Nk, Hkv, Dv]");
  *dtype = float_dtype(q, "q");
  expect_dtype(k, "k", *dtype, "q");
  expect_dtype(v, "v", *dtype, "q");
  expect_same_device(k, "k", q);
  expect_same_device(v, "v", q);
  Dims s{varlen ? 1 : q.shape[0], q.shape[o],     k.shape[o],    q.shape[o + 1],
         k.shape[o + 1],          q.shape[o + 2], v.shape[o + 2]};
  std::ostringstream m;
  if (!varlen && (k.shape[0] != s.b || v.shape[0] != s.b))
    m << "k, v: batch sizes " << k.shape[0] << " and " << v.shape[0] << " must equal q's "
      << s.b << " (q " << dims(q) << ", k " << dims(k) << ", v " << dims(v) << ")";
  else if (v.shape[o] != s.nk)
    m << "v: expected " << (varlen ? "Tk=" : "Nk=") << s.nk << " keys like k " << dims(k)
      << ", got " << dims(v);
  else if (v.shape[o + 1] != s.hkv)
    m << "v: expected Hkv=" << s.hkv << " heads like k " << dims(k) << ", got " << dims(v);
  else if (k.shape[o + 2] != s.d)
    m << "k: head dim " << k.shape[3] << " must equal q's D=" << s.d << " (q " << dims(q)
      << ", k " << dims(k) << ")";
  else if (s.hq < 1 || s.hkv < 1)
    m << "q, k: expected at least one head, got Hq=" << s.hq << ", Hkv=" << s.hkv;
  else if (s.hq % s.hkv != 0)
    m << "q, k: Hq=" << s.hq << " query heads must be a multiple of Hkv=" << s.hkv
      << " key/value heads (GQA)";
  else if (s.d < 1 || s.d > kMaxHeadDim)
    m << "q: head dim D=" << s.d << " is outside 1.." << kMaxHeadDim;
  else if (s.dv < 1 || s.dv > kMaxHeadDim)
    m << "v: head dim Dv=" << s.dv << " is outside 1.." << kMaxHeadDim;
  if (!m.str().empty()) throw ValueError(m.str());
  expect_backend(q, cuda_what);
  if (on_cuda(q) && !(backward ? cuda::supports_backward(*dtype, s.d, s.dv)
                                : cuda::supports(*dtype, s.d, s.dv))) {
    std::ostringstream c;
    c << "q: no CUDA " << (backward ? "backward" : "forward") << " kernel for "
      << dtype_name(*dtype) << " with D=" << s.d << ", Dv=" << s.dv
      << " in this build (compiled dtype:head dims: "
      << (backward ? cuda::backward_kernels() : cuda::forward_kernels())
      << "); pass CPU tensors";
    throw RuntimeError(c.str());
  }
  return s;
}

// An input that must match q's dtype and device and have the given shape.
void check_input(const TensorView& t, const char* name, std::initializer_list<int64_t> shape,
                 const char* layout, const TensorView& q, DType dtype) {
  expect_shape(t, name, shape, layout);
  expect_dtype(t, name, dtype, "q");
  expect_same_device(t, name, q);
}

// An output: an input that is also written, so no two of its elements may share an address.
void check_output(const TensorView& t, const char* name, std::initializer_list<int64_t> shape,
                  const char* layout, const TensorView& q, DType dtype) {
  check_input(t, name, shape, layout, q, dtype);
  expect_writable_layout(t, name);
}

void check_lse(const TensorView& t, const char* name, const Dims& s, const TensorView& q) {
  expect_shape(t, name, {s.b, s.hq, s.nq}, "[B, Hq, Nq]");
  if (!(t.dtype.code == kDLFloat && t.dtype.bits == 32 && t.dtype.lanes == 1))
    throw TypeError(std::string(name) + ": expected float32, got " + describe(t.dtype));
  expect_same_device(t, name, q);
}

// Run one dense-batch problem ([B, Nq, Hq, D] views, already checked, pattern.check passed):
// compile the pattern for (nq, nk, hq) and run the backend. Shared by the batched and the
// varlen entry points (varlen calls it once per sequence on sub-views).
void walk_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse, DType dtype, float scale,
                  const Pattern& pattern, const Dims& s) {
  const CompiledPattern cp = pattern.compile(s.nq, s.nk, s.hq);
  if (on_cuda(q)) {  // asynchronous on the legacy default stream; layout copied before return
    const cuda::ForwardTile t = cuda::forward_tile(s.d, s.dv);
    const BlockLayout layout = cp.layout(t.bq, t.bk);
    cuda::attention_forward(cuda::forward_problem(q, k, v, out, lse, dtype, scale, layout,
                                                  cp.predicate(), /*stream=*/nullptr));
    return;
  }
  const cpu::TileSize tile = cpu::cpu_tile_size();
  const BlockLayout layout = cp.layout(tile.bq, tile.bk);
  cpu::ForwardArgs a{q, k, v, out, lse, dtype, scale, &layout, cp.predicate()};
  cpu::forward(a);
}

void walk_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                   const TensorView& v, const TensorView& out, const TensorView& lse,
                   const TensorView& dq, const TensorView& dk, const TensorView& dv, DType dtype,
                   float scale, const Pattern& pattern, const Dims& s, bool rows_complete) {
  const CompiledPattern cp = pattern.compile(s.nq, s.nk, s.hq);
  if (on_cuda(q)) {  // asynchronous on the legacy default stream, like the forward
    const cuda::BackwardTile t = cuda::backward_tile(s.d, s.dv);
    const BlockLayout layout = cp.layout(t.bq, t.bk);
    cuda::attention_backward(cuda::backward_problem(dout, q, k, v, out, lse, dq, dk, dv, dtype,
                                                    scale, layout, cp.predicate(),
                                                    /*stream=*/nullptr));
    return;
  }
  const cpu::TileSize tile = cpu::cpu_tile_size();
  const BlockLayout layout = cp.layout(tile.bq, tile.bk);
  cpu::BackwardArgs a{dout, q,  k,  v,     out,   lse,     dq,
                      dk,   dv, dtype, scale, &layout, cp.predicate(), rows_complete};
  cpu::backward(a);
}

// How a pattern runs: one or more parts with disjoint kept pairs. A part is a pattern walked over
// its block layout, or a residue window run as its classes (plan/residue.hpp: ordinary windows
// on row-strided views with disjoint outputs and gradients). Several parts are computed into
// temporaries and merged exactly through their logsumexps; gradients of disjoint parts add.
struct Part {
  Pattern walk;                                   // when residue is empty
  std::optional<plan::ResidueWindow> residue;
};

std::vector<Part> make_plan(const Pattern& pattern, const Dims& s) {
  const std::optional<plan::ResidueWindow> rw = plan::residue_form(pattern);
  if (rw && plan::residue_split_pays(*rw, s.nq)) return {Part{pattern, rw}};
  if (const auto u = plan::window_residue_union(pattern)) {
    bool pays = true;
    for (const plan::ResidueWindow& r : u->rest) pays = pays && plan::residue_split_pays(r, s.nq);
    if (pays) {
      std::vector<Part> parts{Part{u->window, std::nullopt}};
      for (const plan::ResidueWindow& r : u->rest) parts.push_back(Part{Pattern(), r});
      return parts;
    }
  }
  return {Part{pattern, std::nullopt}};
}

// Dims of one residue class.
Dims class_dims(Dims s, const plan::ResidueClass& c) {
  s.nq = c.nq;
  s.nk = c.nk;
  return s;
}

void forward_part(const Part& part, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse, DType dtype, float scale,
                  const Dims& s) {
  if (!part.residue) return walk_forward(q, k, v, out, lse, dtype, scale, part.walk, s);
  const int64_t d = part.residue->d;
  for (const plan::ResidueClass& c : plan::residue_classes(*part.residue, s.nq, s.nk)) {
    if (c.nq == 0) continue;  // keys no query sees: nothing to compute in the forward
    const TensorView lse_c = lse.data ? plan::strided_rows(lse, 2, c.q0, c.nq, d) : lse;
    walk_forward(plan::strided_rows(q, 1, c.q0, c.nq, d), plan::strided_rows(k, 1, c.k0, c.nk, d),
                 plan::strided_rows(v, 1, c.k0, c.nk, d), plan::strided_rows(out, 1, c.q0, c.nq, d),
                 lse_c, dtype, scale, c.window, class_dims(s, c));
  }
}

void backward_part(const Part& part, const TensorView& dout, const TensorView& q,
                   const TensorView& k, const TensorView& v, const TensorView& out,
                   const TensorView& lse, const TensorView& dq, const TensorView& dk,
                   const TensorView& dv, DType dtype, float scale, const Dims& s,
                   bool rows_complete) {
  if (!part.residue)
    return walk_backward(dout, q, k, v, out, lse, dq, dk, dv, dtype, scale, part.walk, s,
                         rows_complete);
  const int64_t d = part.residue->d;
  for (const plan::ResidueClass& c : plan::residue_classes(*part.residue, s.nq, s.nk)) {
    auto rows_q = [&](const TensorView& t) { return plan::strided_rows(t, 1, c.q0, c.nq, d); };
    auto rows_k = [&](const TensorView& t) { return plan::strided_rows(t, 1, c.k0, c.nk, d); };
    walk_backward(rows_q(dout), rows_q(q), rows_k(k), rows_k(v), rows_q(out),
                  plan::strided_rows(lse, 2, c.q0, c.nq, d), rows_q(dq), rows_k(dk), rows_k(dv),
                  dtype, scale, c.window, class_dims(s, c), rows_complete);
  }
}

// Batch element b of a [B, ...] view (lse [B, Hq, Nq] too), as a [1, ...] view.
TensorView batch_view(const TensorView& t, int64_t b) {
  TensorView r = t;
  r.shape[0] = 1;
  if (t.data != nullptr) r.data = static_cast<char*>(t.data) + b * t.strides[0] * (t.dtype.bits / 8);
  return r;
}

// TopKBlocks: each batch element chooses its blocks from its own q and k, then runs as the
// concrete pattern. The choice is deterministic, so the backward pass, choosing again from the
// same q and k, computes the gradients of exactly the forward's pattern.
template <class Run>
void per_batch_selection(const Pattern& pattern, const TensorView& q, const TensorView& k,
                         DType dtype, const Dims& s, Run run) {
  for (int64_t b = 0; b < s.b; ++b) {
    BlockMask chosen = select::choose(pattern, select::batch_rows(q, b, dtype),
                                      select::batch_rows(k, b, dtype));
    Dims one = s;
    one.b = 1;
    run(b, select::concrete(pattern, std::move(chosen)), one);
  }
}

void run_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& out, const TensorView& lse, DType dtype, float scale,
                 const Pattern& pattern, const Dims& s) {
  // CUDA: one walk over the whole pattern (exact for any rule; the residue split and the merge
  // of parts run on the CPU only so far).
  if (on_cuda(q)) return walk_forward(q, k, v, out, lse, dtype, scale, pattern, s);
  if (pattern.data_dependent())
    return per_batch_selection(pattern, q, k, dtype, s, [&](int64_t b, const Pattern& p, const Dims& one) {
      run_forward(batch_view(q, b), batch_view(k, b), batch_view(v, b), batch_view(out, b),
                  batch_view(lse, b), dtype, scale, p, one);
    });
  const std::vector<Part> parts = make_plan(pattern, s);
  if (parts.size() == 1) return forward_part(parts[0], q, k, v, out, lse, dtype, scale, s);
  std::vector<ManagedTensor> owned;
  std::vector<TensorView> outs, lses;
  for (const Part& part : parts) {
    owned.push_back(ManagedTensor::allocate_cpu(dtype, {s.b, s.nq, s.hq, s.dv}));
    outs.push_back(owned.back().view("out"));
    owned.push_back(ManagedTensor::allocate_cpu(DType::Float32, {s.b, s.hq, s.nq}));
    lses.push_back(owned.back().view("lse"));
    forward_part(part, q, k, v, outs.back(), lses.back(), dtype, scale, s);
  }
  cpu::merge(cpu::MergeArgs{outs.data(), lses.data(), int(parts.size()), out, lse, dtype});
}

void run_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                  const TensorView& v, const TensorView& out, const TensorView& lse,
                  const TensorView& dq, const TensorView& dk, const TensorView& dv, DType dtype,
                  float scale, const Pattern& pattern, const Dims& s) {
  if (on_cuda(q))  // one walk over the whole pattern, as the forward
    return walk_backward(dout, q, k, v, out, lse, dq, dk, dv, dtype, scale, pattern, s, true);
  if (pattern.data_dependent())
    return per_batch_selection(pattern, q, k, dtype, s, [&](int64_t b, const Pattern& p, const Dims& one) {
      auto bv = [b](const TensorView& t) { return batch_view(t, b); };
      run_backward(bv(dout), bv(q), bv(k), bv(v), bv(out), bv(lse), bv(dq), bv(dk), bv(dv), dtype,
                   scale, p, one);
    });
  const std::vector<Part> parts = make_plan(pattern, s);
  if (parts.size() == 1)
    return backward_part(parts[0], dout, q, k, v, out, lse, dq, dk, dv, dtype, scale, s, true);
  // Each part's gradient uses the whole attention's out and lse, so the parts' sum is exact.
  std::vector<ManagedTensor> owned;
  std::vector<TensorView> dqs, dks, dvs;
  for (const Part& part : parts) {
    owned.push_back(ManagedTensor::allocate_cpu(dtype, {s.b, s.nq, s.hq, s.d}));
    dqs.push_back(owned.back().view("dq"));
    owned.push_back(ManagedTensor::allocate_cpu(dtype, {s.b, s.nk, s.hkv, s.d}));
    dks.push_back(owned.back().view("dk"));
    owned.push_back(ManagedTensor::allocate_cpu(dtype, {s.b, s.nk, s.hkv, s.dv}));
    dvs.push_back(owned.back().view("dv"));
    backward_part(part, dout, q, k, v, out, lse, dqs.back(), dks.back(), dvs.back(), dtype, scale,
                  s, /*rows_complete=*/false);
  }
  cpu::sum(dq, dqs.data(), int(parts.size()), dtype);
  cpu::sum(dk, dks.data(), int(parts.size()), dtype);
  cpu::sum(dv, dvs.data(), int(parts.size()), dtype);
}
}  // namespace

void attention_forward(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
                       const Pattern& pattern, const DLTensor& out_, const DLTensor* lse_,
                       const Options& options) {
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k"), v = view_of(v_, "v");
  DType dtype;
  const Dims s = check_qkv(q, k, v, &dtype, false, nullptr);
  const TensorView out = view_of(out_, "out");
  check_output(out, "out", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", q, dtype);
  TensorView lse;
  if (lse_) {
    lse = view_of(*lse_, "lse");
    check_lse(lse, "lse", s, q);
    expect_writable_layout(lse, "lse");
  }
  expect_disjoint_outputs({{&out, "out"}, {&lse, "lse"}}, {{&q, "q"}, {&k, "k"}, {&v, "v"}});
  const float scale = resolve_scale(options.scale, s.d);
  const cpu::ThreadLimit limit(thread_limit(options));
  pattern.check(s.nq, s.nk, s.hq);
  refuse_selection_on_cuda(q, pattern);
  run_forward(q, k, v, out, lse, dtype, scale, pattern, s);
}

void attention_backward(const DLTensor& dout_, const DLTensor& q_, const DLTensor& k_,
                        const DLTensor& v_, const DLTensor& out_, const DLTensor& lse_,
                        const Pattern& pattern, const DLTensor& dq_, const DLTensor& dk_,
                        const DLTensor& dv_, const Options& options) {
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k"), v = view_of(v_, "v");
  DType dtype;
  const Dims s = check_qkv(q, k, v, &dtype, false, nullptr, /*backward=*/true);
  const TensorView dout = view_of(dout_, "dout"), out = view_of(out_, "out");
  const TensorView lse = view_of(lse_, "lse");
  check_input(dout, "dout", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", q, dtype);
  check_input(out, "out", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", q, dtype);
  check_lse(lse, "lse", s, q);
  const TensorView dq = view_of(dq_, "dq"), dk = view_of(dk_, "dk"), dv = view_of(dv_, "dv");
  check_output(dq, "dq", {s.b, s.nq, s.hq, s.d}, "[B, Nq, Hq, D]", q, dtype);
  check_output(dk, "dk", {s.b, s.nk, s.hkv, s.d}, "[B, Nk, Hkv, D]", q, dtype);
  check_output(dv, "dv", {s.b, s.nk, s.hkv, s.dv}, "[B, Nk, Hkv, Dv]", q, dtype);
  expect_disjoint_outputs({{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}},
                          {{&dout, "dout"}, {&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}, {&lse, "lse"}});
  const float scale = resolve_scale(options.scale, s.d);
  const cpu::ThreadLimit limit(thread_limit(options));
  pattern.check(s.nq, s.nk, s.hq);
  refuse_selection_on_cuda(q, pattern);
  run_backward(dout, q, k, v, out, lse, dq, dk, dv, dtype, scale, pattern, s);
}

// ---------------------------------------------------------------------------------------------
// Variable-length batches (SPEC §1): q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv], offsets
// cu_seqlens_q / cu_seqlens_k [B+1]; sequence b is the dense problem on rows
// [cu_q[b], cu_q[b+1]) of q and [cu_k[b], cu_k[b+1]) of k and v, with the pattern applied
// inside it (its own Nq, Nk and bottom-right alignment).

namespace {

// The offsets of a cu_seqlens argument, read on the host: int32 (int64 accepted) [B+1] with
// B >= 0, on q's device, first 0, non-decreasing, last == total (the rows of q or k).
std::vector<int64_t> read_cu_seqlens(const DLTensor& t_, const char* name, int64_t total,
                                     const char* total_name, const TensorView& q) {
  const TensorView t = view_of(t_, name);
  const DLDataType dt = t.dtype;
  std::ostringstream m;
  if (!(dt.code == kDLInt && (dt.bits == 32 || dt.bits == 64) && dt.lanes == 1)) {
    m << name << ": expected int32 offsets [B+1], got dtype " << describe(dt);
    throw TypeError(m.str());
  }
  if (t.ndim != 1 || t.shape[0] < 1) {
    m << name << ": expected 1 dimension [B+1] holding at least one offset, got shape "
      << dims(t);
    throw ValueError(m.str());
  }
  expect_same_device(t, name, q);
  const int64_t n = t.shape[0];
  if (n > (int64_t(1) << 31)) {  // int32 offsets: at most 2^31 - 1 sequences (a broadcast view
    m << name << ": expected at most 2^31 offsets, got " << n;  // could claim any count)
    throw ValueError(m.str());
  }
  std::vector<int64_t> c(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i)
    c[size_t(i)] = dt.bits == 32 ? int64_t(t.ptr<const int32_t>()[i * t.strides[0]])
                                 : t.ptr<const int64_t>()[i * t.strides[0]];
  if (c[0] != 0)
    m << name << ": the first offset must be 0, got " << c[0];
  for (int64_t i = 0; i + 1 < n && m.str().empty(); ++i)
    if (c[size_t(i + 1)] < c[size_t(i)])
      m << name << ": offsets must be non-decreasing, but " << name << "[" << i + 1
        << "] = " << c[size_t(i + 1)] << " < " << name << "[" << i << "] = " << c[size_t(i)]
        << " (sequence " << i << " would have negative length)";
  if (m.str().empty() && c[size_t(n - 1)] != total)
    m << name << ": the last offset must equal " << total_name << " = " << total
      << " (the rows of " << (total_name[1] == 'q' ? "q" : "k and v") << "), got "
      << c[size_t(n - 1)];
  if (!m.str().empty()) throw ValueError(m.str());
  return c;
}

// Both offset arrays, checked against each other: the same number of sequences.
void read_both_cu_seqlens(const DLTensor& cu_q, const DLTensor& cu_k, const Dims& t,
                          const TensorView& q, std::vector<int64_t>* cq,
                          std::vector<int64_t>* ck) {
  *cq = read_cu_seqlens(cu_q, "cu_seqlens_q", t.nq, "Tq", q);
  *ck = read_cu_seqlens(cu_k, "cu_seqlens_k", t.nk, "Tk", q);
  if (cq->size() != ck->size()) {
    std::ostringstream m;
    m << "cu_seqlens_q, cu_seqlens_k: expected the same number of offsets (B+1 for B "
      << "sequences), got " << cq->size() << " and " << ck->size();
    throw ValueError(m.str());
  }
}

// The varlen lse [Hq, Tq] float32.
void check_lse_varlen(const TensorView& t, const Dims& s, const TensorView& q) {
  expect_shape(t, "lse", {s.hq, s.nq}, "[Hq, Tq]");
  if (!(t.dtype.code == kDLFloat && t.dtype.bits == 32 && t.dtype.lanes == 1))
    throw TypeError("lse: expected float32, got " + describe(t.dtype));
  expect_same_device(t, "lse", q);
}

// pattern.check for every sequence, before anything runs; the message names the sequence.
void check_pattern_varlen(const Pattern& pattern, const std::vector<int64_t>& cq,
                          const std::vector<int64_t>& ck, int64_t hq) {
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t nq = cq[b + 1] - cq[b], nk = ck[b + 1] - ck[b];
    try {
      pattern.check(nq, nk, hq);
    } catch (const ValueError& e) {
      std::ostringstream m;
      m << "pattern: does not fit sequence " << b << " (Nq=" << nq << ", Nk=" << nk
        << "): " << e.what();
      throw ValueError(m.str());
    }
  }
}

// Rows [start, start + len) of dimension `dim` of t, presented with a leading unit (batch)
// dimension for the dense-batch path. A view is plain data: nothing is copied.
TensorView seq_view(const TensorView& t, int dim, int64_t start, int64_t len) {
  TensorView r = t;
  r.ndim = t.ndim + 1;
  r.shape[0] = 1;
  r.strides[0] = 0;
  for (int d = 0; d < t.ndim; ++d) {
    r.shape[d + 1] = t.shape[d];
    r.strides[d + 1] = t.strides[d];
  }
  r.shape[dim + 1] = len;
  if (t.data != nullptr && len > 0)  // data == nullptr: empty, or an output not wanted (lse)
    r.data = static_cast<char*>(t.data) + start * t.strides[dim] * int64_t(t.dtype.bits / 8);
  return r;
}

}  // namespace

// Parallelism: sequences run one after another, each using all threads (the kernels
// parallelise over heads and query tiles inside a problem). Fine for long sequences; many
// short ones would be better served by one task list over (sequence, head, tile).
void attention_forward_varlen(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
                              const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                              const Pattern& pattern, const DLTensor& out_, const DLTensor* lse_,
                              const Options& options) {
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k"), v = view_of(v_, "v");
  DType dtype;
  const Dims t = check_qkv(q, k, v, &dtype, /*varlen=*/true,  // t.nq = Tq, t.nk = Tk
                           "attention on a variable-length batch");
  const TensorView out = view_of(out_, "out");
  check_output(out, "out", {t.nq, t.hq, t.dv}, "[Tq, Hq, Dv]", q, dtype);
  TensorView lse;
  if (lse_) {
    lse = view_of(*lse_, "lse");
    check_lse_varlen(lse, t, q);
    expect_writable_layout(lse, "lse");
  }
  expect_disjoint_outputs({{&out, "out"}, {&lse, "lse"}}, {{&q, "q"}, {&k, "k"}, {&v, "v"}});
  std::vector<int64_t> cq, ck;
  read_both_cu_seqlens(cu_seqlens_q, cu_seqlens_k, t, q, &cq, &ck);
  const float scale = resolve_scale(options.scale, t.d);
  const cpu::ThreadLimit limit(thread_limit(options));
  check_pattern_varlen(pattern, cq, ck, t.hq);

  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t q0 = cq[b], nq = cq[b + 1] - q0, k0 = ck[b], nk = ck[b + 1] - k0;
    const Dims s{1, nq, nk, t.hq, t.hkv, t.d, t.dv};
    run_forward(seq_view(q, 0, q0, nq), seq_view(k, 0, k0, nk), seq_view(v, 0, k0, nk),
                seq_view(out, 0, q0, nq), seq_view(lse, 1, q0, nq), dtype, scale, pattern, s);
  }
}

void attention_backward_varlen(const DLTensor& dout_, const DLTensor& q_, const DLTensor& k_,
                               const DLTensor& v_, const DLTensor& out_, const DLTensor& lse_,
                               const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                               const Pattern& pattern, const DLTensor& dq_, const DLTensor& dk_,
                               const DLTensor& dv_, const Options& options) {
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k"), v = view_of(v_, "v");
  DType dtype;
  const Dims t = check_qkv(q, k, v, &dtype, /*varlen=*/true, "the backward pass");
  const TensorView dout = view_of(dout_, "dout"), out = view_of(out_, "out");
  const TensorView lse = view_of(lse_, "lse");
  check_input(dout, "dout", {t.nq, t.hq, t.dv}, "[Tq, Hq, Dv]", q, dtype);
  check_input(out, "out", {t.nq, t.hq, t.dv}, "[Tq, Hq, Dv]", q, dtype);
  check_lse_varlen(lse, t, q);
  const TensorView dq = view_of(dq_, "dq"), dk = view_of(dk_, "dk"), dv = view_of(dv_, "dv");
  check_output(dq, "dq", {t.nq, t.hq, t.d}, "[Tq, Hq, D]", q, dtype);
  check_output(dk, "dk", {t.nk, t.hkv, t.d}, "[Tk, Hkv, D]", q, dtype);
  check_output(dv, "dv", {t.nk, t.hkv, t.dv}, "[Tk, Hkv, Dv]", q, dtype);
  expect_disjoint_outputs({{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}},
                          {{&dout, "dout"}, {&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}, {&lse, "lse"}});
  std::vector<int64_t> cq, ck;
  read_both_cu_seqlens(cu_seqlens_q, cu_seqlens_k, t, q, &cq, &ck);
  const float scale = resolve_scale(options.scale, t.d);
  const cpu::ThreadLimit limit(thread_limit(options));
  check_pattern_varlen(pattern, cq, ck, t.hq);

  // One sequence after another (see attention_forward_varlen). Every row of dq, dk and dv
  // belongs to exactly one sequence (the offsets cover 0..T), so all of them are written.
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t q0 = cq[b], nq = cq[b + 1] - q0, k0 = ck[b], nk = ck[b + 1] - k0;
    const Dims s{1, nq, nk, t.hq, t.hkv, t.d, t.dv};
    run_backward(seq_view(dout, 0, q0, nq), seq_view(q, 0, q0, nq), seq_view(k, 0, k0, nk),
                 seq_view(v, 0, k0, nk), seq_view(out, 0, q0, nq), seq_view(lse, 1, q0, nq),
                 seq_view(dq, 0, q0, nq), seq_view(dk, 0, k0, nk), seq_view(dv, 0, k0, nk),
                 dtype, scale, pattern, s);
  }
}

// ---------------------------------------------------------------------------------------------
// TopKBlocks' selection (select.hpp). q and k are checked as attention's are; v is not needed,
// so k stands in for it in check_qkv.

namespace {
void expect_topk(const Pattern& p) {
  if (!p.valid() || p.kind() != Pattern::Kind::TopKBlocks)
    throw ValueError("pattern: select needs a TopKBlocks pattern, got " +
                     (p.valid() ? p.describe() : std::string("an empty pattern")));
}
}  // namespace

std::vector<BlockMask> select_blocks(const DLTensor& q_, const DLTensor& k_, const Pattern& topk) {
  expect_topk(topk);
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k");
  DType dtype;
  const Dims s = check_qkv(q, k, k, &dtype, false, "TopKBlocks' selection");
  topk.check(s.nq, s.nk, s.hq);
  std::vector<BlockMask> r;
  for (int64_t b = 0; b < s.b; ++b)
    r.push_back(select::choose(topk, select::batch_rows(q, b, dtype), select::batch_rows(k, b, dtype)));
  return r;
}

std::vector<BlockMask> select_blocks_varlen(const DLTensor& q_, const DLTensor& k_,
                                            const DLTensor& cu_seqlens_q,
                                            const DLTensor& cu_seqlens_k, const Pattern& topk) {
  expect_topk(topk);
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k");
  DType dtype;
  const Dims t = check_qkv(q, k, k, &dtype, /*varlen=*/true, "TopKBlocks' selection");
  std::vector<int64_t> cq, ck;
  read_both_cu_seqlens(cu_seqlens_q, cu_seqlens_k, t, q, &cq, &ck);
  check_pattern_varlen(topk, cq, ck, t.hq);
  std::vector<BlockMask> r;
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t q0 = cq[b], k0 = ck[b];
    r.push_back(select::choose(topk,
                               select::batch_rows(seq_view(q, 0, q0, cq[b + 1] - q0), 0, dtype),
                               select::batch_rows(seq_view(k, 0, k0, ck[b + 1] - k0), 0, dtype)));
  }
  return r;
}

Pattern selected_pattern(const Pattern& topk, BlockMask chosen) {
  expect_topk(topk);
  return select::concrete(topk, std::move(chosen));
}

const char* version() { return SPATTN_VERSION; }

std::map<std::string, std::string> info() {
  std::map<std::string, std::string> r;
  r["version"] = SPATTN_VERSION;
  r["backends"] = cuda::compiled() ? "cpu,cuda" : "cpu";
  r["cpu_simd"] = cpu::simd_level();
  r["cpu_threads"] = std::to_string(cpu::num_threads());
  r["cpu_cache"] = cpu::cache_desc();
  r["cpu_tile"] = std::to_string(cpu::cpu_tile_size().bq) + "x" +
                  std::to_string(cpu::cpu_tile_size().bk);
  r["cpu_blocking"] = cpu::blocking_desc();
  r["cpu_buffer_cache"] = detail::buffer_cache_desc();
  r["cuda_compiled"] = cuda::compiled() ? "yes" : "no";
  r["cuda_archs"] = cuda::compiled() ? cuda::compiled_archs() : "";
  r["cuda_kernels"] = cuda::compiled() ? cuda::forward_kernels() : "";
  r["cuda_backward_kernels"] = cuda::compiled() ? cuda::backward_kernels() : "";
  return r;
}

}  // namespace spattn
