// The gradient of the attention sinks (spattn/options.hpp, Modifiers::dsinks): a sink is one
// more term of each row's softmax denominator, with no value, so its probability is
// exp(sink_h - lse) and dL/dsink_h = -sum over the rows of head h of that probability times
// delta = rowsum(dout * out). One block per head; each thread sums rows in a fixed order and a
// shared-memory tree adds the threads' sums: the same bits on every run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/convert.cuh"
#include "arch_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads) sink_grad_kernel(const SinkGradProblem p) {
  __shared__ float part[kThreads];
  const int64_t h = blockIdx.x;
  const float sink = p.sinks[h * p.sinks_s];
  float acc = 0.f;
  if (sink != -INFINITY) {
    for (int64_t r = threadIdx.x; r < p.b * p.n; r += kThreads) {
      const int64_t b = r / p.n, i = r - b * p.n;
      const float l = p.lse[b * p.lse_strides[0] + h * p.lse_strides[1] + i * p.lse_strides[2]];
      const float pr = expf(sink - l);
      if (pr == 0.f) continue;
      const T* o = static_cast<const T*>(p.out) + b * p.out_strides[0] + i * p.out_strides[1] +
                   h * p.out_strides[2];
      const T* d = static_cast<const T*>(p.dout) + b * p.dout_strides[0] + i * p.dout_strides[1] +
                   h * p.dout_strides[2];
      float delta = 0.f;
      for (int64_t x = 0; x < p.dv; ++x)
        delta += to_f32(o[x * p.out_strides[3]]) * to_f32(d[x * p.dout_strides[3]]);
      acc -= pr * delta;
    }
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) p.dsinks[h * p.dsinks_s] = part[0];
}

}  // namespace

cudaError_t sink_grad(const SinkGradProblem& p, KernelDType dtype, cudaStream_t stream) {
  if (p.h <= 0) return cudaSuccess;
  if (p.h > int64_t(INT32_MAX)) return cudaErrorInvalidConfiguration;
  const dim3 grid(unsigned(p.h));
  switch (dtype) {
    case KernelDType::Float32: sink_grad_kernel<float><<<grid, kThreads, 0, stream>>>(p); break;
    case KernelDType::Float16: sink_grad_kernel<__half><<<grid, kThreads, 0, stream>>>(p); break;
    case KernelDType::BFloat16: sink_grad_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p); break;
  }
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
