// Zero-padded head dims for the CUDA kernels (pad.hpp).
#include "pad.hpp"

#include <memory>

namespace spattn::cuda {

using namespace launch;

int64_t padded_head_dim(DType dtype, int64_t d, int64_t dv, bool forward) {
  SupportedFn ArchFns::*table = forward ? &ArchFns::supported : &ArchFns::backward_supported;
  if (d == dv && has_kernel(table, dtype, d, d)) return d;
  const int64_t need = d > dv ? d : dv;
  for (int64_t p : {32, 64, 96, 128, 160, 192, 224, 256})
    if (p >= need && has_kernel(table, dtype, p, p)) return p;
  return 0;
}

namespace {

// Carves [.., P] compact tensors out of one workspace and fills them.
struct Carver {
  const backend::Call& call;
  const ArchFns& arch;
  cudaStream_t stream;
  unsigned char* base = nullptr;
  size_t at = 0;
  int64_t p;
  int es;

  // A compact view shaped like t with last dimension P at base + at (advances at).
  TensorView carve(const TensorView& t) {
    TensorView r = t;
    r.shape[3] = p;
    r.strides[3] = 1;
    r.strides[2] = p;
    r.strides[1] = p * t.shape[2];
    r.strides[0] = p * t.shape[2] * t.shape[1];
    r.data = base + at;
    at += align16(size_t(t.shape[0] * t.shape[1] * t.shape[2] * p) * size_t(es));
    return r;
  }
  static size_t bytes(const TensorView& t, int64_t p, int es) {
    return align16(size_t(t.shape[0] * t.shape[1] * t.shape[2] * p) * size_t(es));
  }
  // dst (padded, compact) = src with zeros past src's last dimension.
  void fill(const TensorView& dst, const TensorView& src, const char* name) {
    const size_t n = size_t(dst.shape[0] * dst.shape[1] * dst.shape[2] * p) * size_t(es);
    if (n == 0) return;
    check(cudaMemsetAsync(dst.data, 0, n, stream), std::string("zeroing padded ") + name);
    copy(dst, src, src.shape, name);
  }
  // The first shape[3] columns of src into dst.
  void copy(const TensorView& dst, const TensorView& src, const int64_t* shape, const char* name) {
    if (shape[0] * shape[1] * shape[2] * shape[3] == 0) return;
    check(arch.copy(src.data, src.strides, dst.data, dst.strides, shape, es, stream),
          std::string("copying padded ") + name);
  }
};

}  // namespace

PaddedForward::PaddedForward(const backend::Attention& a, const backend::Call& call)
    : q(a.q), k(a.k), v(a.v), out(a.out), a_(a), call_(call) {
  p_ = padded_head_dim(a.dtype, a.s.d, a.s.dv, true);
  if (p_ == 0 || (p_ == a.s.d && p_ == a.s.dv)) return;  // no kernel: attention_forward says so
  const int es = dtype_size(a.dtype);
  const size_t n = Carver::bytes(a.q, p_, es) + Carver::bytes(a.k, p_, es) +
                   Carver::bytes(a.v, p_, es) + Carver::bytes(a.out, p_, es);
  const int dev = call.device.device_id;
  DeviceGuard guard(dev);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  buf_ = std::make_unique<DeviceScratch>(n, stream, device_info(dev).pools, call.allocator, dev);
  Carver c{call, arch_of(dev, "cuda attention"), stream, static_cast<unsigned char*>(buf_->p), 0, p_, es};
  q = c.carve(a.q);
  k = c.carve(a.k);
  v = c.carve(a.v);
  out = c.carve(a.out);
  c.fill(q, a.q, "q");
  c.fill(k, a.k, "k");
  c.fill(v, a.v, "v");
}

void PaddedForward::finish() {
  if (!buf_) return;
  const int dev = call_.device.device_id;
  DeviceGuard guard(dev);
  Carver c{call_, arch_of(dev, "cuda attention"), static_cast<cudaStream_t>(call_.stream),
           nullptr, 0, p_, dtype_size(a_.dtype)};
  c.copy(a_.out, out, a_.out.shape, "out");
}

PaddedBackward::PaddedBackward(const backend::Attention& a, const backend::Gradients& g,
                               const backend::Call& call)
    : dout(g.dout), q(a.q), k(a.k), v(a.v), out(a.out), dq(g.dq), dk(g.dk), dv(g.dv),
      a_(a), g_(g), call_(call) {
  p_ = padded_head_dim(a.dtype, a.s.d, a.s.dv, false);
  if (p_ == 0 || (p_ == a.s.d && p_ == a.s.dv)) return;
  const int es = dtype_size(a.dtype);
  const size_t n = Carver::bytes(g.dout, p_, es) + Carver::bytes(a.q, p_, es) +
                   Carver::bytes(a.k, p_, es) + Carver::bytes(a.v, p_, es) +
                   Carver::bytes(a.out, p_, es) + Carver::bytes(g.dq, p_, es) +
                   Carver::bytes(g.dk, p_, es) + Carver::bytes(g.dv, p_, es);
  const int dev = call.device.device_id;
  DeviceGuard guard(dev);
  const cudaStream_t stream = static_cast<cudaStream_t>(call.stream);
  buf_ = std::make_unique<DeviceScratch>(n, stream, device_info(dev).pools, call.allocator, dev);
  Carver c{call, arch_of(dev, "cuda attention backward"), stream,
           static_cast<unsigned char*>(buf_->p), 0, p_, es};
  dout = c.carve(g.dout);
  q = c.carve(a.q);
  k = c.carve(a.k);
  v = c.carve(a.v);
  out = c.carve(a.out);
  dq = c.carve(g.dq);
  dk = c.carve(g.dk);
  dv = c.carve(g.dv);
  c.fill(dout, g.dout, "dout");
  c.fill(q, a.q, "q");
  c.fill(k, a.k, "k");
  c.fill(v, a.v, "v");
  c.fill(out, a.out, "out");
}

void PaddedBackward::finish() {
  if (!buf_) return;
  const int dev = call_.device.device_id;
  DeviceGuard guard(dev);
  Carver c{call_, arch_of(dev, "cuda attention backward"),
           static_cast<cudaStream_t>(call_.stream), nullptr, 0, p_, dtype_size(a_.dtype)};
  c.copy(g_.dq, dq, g_.dq.shape, "dq");
  c.copy(g_.dk, dk, g_.dk.shape, "dk");
  c.copy(g_.dv, dv, g_.dv.shape, "dv");
}

}  // namespace spattn::cuda
