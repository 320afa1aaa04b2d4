// The decode plan made on the device (spattn/cuda/decode_plan_logic.hpp): one thread per layout
// row of each sequence, then one per (sequence, kv head). Nothing is read back.
#include "decode_plan_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kPlanThreads = 128;

__global__ void __launch_bounds__(kPlanThreads, 1) decode_plan_rows_kernel(const DecodePlanParams p) {
  const int64_t r = int64_t(blockIdx.x) * kPlanThreads + threadIdx.x;
  if (r < p.b * p.lheads) dec_plan_row(p, r);
}

__global__ void __launch_bounds__(kPlanThreads, 1) decode_plan_union_kernel(const DecodePlanParams p) {
  const int64_t bg = int64_t(blockIdx.x) * kPlanThreads + threadIdx.x;
  if (bg < p.b * p.hkv) dec_plan_union(p, bg);
}

int64_t blocks_for(int64_t n) { return (n + kPlanThreads - 1) / kPlanThreads; }

}  // namespace

cudaError_t decode_plan(const DecodePlanParams& p, cudaStream_t stream) {
  const int64_t rows = p.b * p.lheads, bgs = p.b * p.hkv;
  if (rows <= 0 || bgs <= 0) return cudaSuccess;
  if (blocks_for(rows) > 0x7fffffff || blocks_for(bgs) > 0x7fffffff) return cudaErrorInvalidValue;
  decode_plan_rows_kernel<<<unsigned(blocks_for(rows)), kPlanThreads, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  decode_plan_union_kernel<<<unsigned(blocks_for(bgs)), kPlanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
