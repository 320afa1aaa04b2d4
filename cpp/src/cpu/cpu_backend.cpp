// The CPU backend (backend/backend.hpp): the planner's operations on host memory, through the
// SIMD kernels of this folder. Layouts come from the compiled pattern's cache (layout_for), so a
// call on a pattern seen before with the same sizes compiles nothing.
#include <cstring>

#include "backend/backend.hpp"
#include "cpu/attention_cpu.hpp"
#include "cpu/attention_f64.hpp"
#include "cpu/decode_cpu.hpp"
#include "cpu/thread_pool.hpp"
#include "large_buffers.hpp"
#include "spattn/error.hpp"

namespace spattn::backend {

namespace {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }

  std::string unsupported(Op, DType, int64_t, int64_t, const Call&) const override {
    return {};  // every operation, dtype and head dim the planner accepts (TopKBlocks' dtypes:
                // select::expect_selectable)
  }

  Tile tile(Op, const Dims&, DType, const Call&) const override {
    const cpu::TileSize t = cpu::cpu_tile_size();
    return {t.bq, t.bk};
  }

  void forward(const Attention& a, const CompiledPattern& cp, const Call& call) override {
    const Tile t = tile(Op::Forward, a.s, a.dtype, call);
    cpu::ForwardArgs f{a.q, a.k, a.v, a.out, a.lse, a.dtype, a.scale, &cp.layout_for(t.bq, t.bk),
                       cp.predicate(), a.mods};
    if (a.dtype == DType::Float64) return cpu::forward_f64(f);
    cpu::forward(f);
  }

  void backward(const Attention& a, const Gradients& g, const CompiledPattern& cp,
                const Call& call) override {
    const Tile t = tile(Op::Backward, a.s, a.dtype, call);
    cpu::BackwardArgs b{g.dout, a.q,  a.k,     a.v,   a.out,
                        a.lse,  g.dq, g.dk,    g.dv,  a.dtype,
                        a.scale, &cp.layout_for(t.bq, t.bk), cp.predicate(), g.rows_complete,
                        a.mods};
    if (a.dtype == DType::Float64) return cpu::backward_f64(b);
    cpu::backward(b);
  }

  std::string unsupported_modifiers(Op, const Call&) const override {
    return {};  // softcap, ALiBi and sinks in every operation
  }

  void sink_grad(const TensorView& dout, const TensorView& out, const TensorView& lse,
                 const ScoreMods& mods, const TensorView& dsinks, DType dtype,
                 const Call&) override {
    if (dtype == DType::Float64) return cpu::sink_grad_f64(dout, out, lse, mods, dsinks);
    cpu::sink_grad(dout, out, lse, mods, dsinks, dtype);
  }

  void decode(const Decode& d, const Call&) override {
    cpu::decode(d);
  }

  void pool_keys(const PoolKeys& p, const Call&) override { cpu::pool_keys(p); }

  ManagedTensor allocate(DType dtype, const std::vector<int64_t>& shape, const Call&) override {
    return ManagedTensor::allocate_cpu(dtype, shape);
  }

  void merge(const TensorView* outs, const TensorView* lses, int n, const TensorView& out,
             const TensorView& lse, DType dtype, const Call&) override {
    const cpu::MergeArgs m{outs, lses, n, out, lse, dtype};
    if (dtype == DType::Float64) return cpu::merge_f64(m);
    cpu::merge(m);
  }

  void sum(const TensorView& dst, const TensorView* srcs, int n, DType dtype, const Call&) override {
    if (dtype == DType::Float64) return cpu::sum_f64(dst, srcs, n);
    cpu::sum(dst, srcs, n, dtype);
  }

  void read_to_host(const TensorView& t, void* host, size_t bytes, const Call&) override {
    if (bytes) std::memcpy(host, t.data, bytes);
  }

  void describe(std::map<std::string, std::string>& r) const override {
    r["cpu_simd"] = cpu::simd_level();
    r["cpu_threads"] = std::to_string(cpu::num_threads());
    r["cpu_cache"] = cpu::cache_desc();
    r["cpu_tile"] = std::to_string(cpu::cpu_tile_size().bq) + "x" +
                    std::to_string(cpu::cpu_tile_size().bk);
    r["cpu_blocking"] = cpu::blocking_desc();
    r["cpu_buffer_cache"] = detail::buffer_cache_desc();
  }
};

}  // namespace

Backend* cpu_backend() {
  static CpuBackend b;
  return &b;
}

}  // namespace spattn::backend
