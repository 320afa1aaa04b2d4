// TopKBlocks in the decode: each sequence's blocks chosen on the device and the decode plan made
// from them (spattn/cuda/decode_topk_logic.hpp has every rule; host/decode_topk.cpp launches):
//
//   qpool_kernel    one CTA per (query block, head, sequence): the pooled query, threads over
//                   features (dec_topk_query_mean)
//   pages_kernel    one thread per (sequence, page): the CPU's check of every page below
//                   cache_len (dec_topk_check_page)
//   kpool_kernel    one CTA per (scored block, kv head, sequence): the pooled key, threads over
//                   features (dec_topk_key_mean: the cache's rows, or the caller's pooled keys)
//   choose_kernel   one CTA per (query block, head, sequence): common/topk_choose.cuh, the
//                   attention's choosing step, with the sequence's own geometry
//   rows_kernel     one thread per (sequence, head): dec_topk_row
//   union_kernel    one thread per (sequence, kv head): dec_plan_union
// With cache_len on the device (decode_topk_dev_logic.hpp), two launches come first:
//   always_kernel   one thread per (sequence, always head): dec_plan_row of the always program
//   seq_kernel      one thread per sequence: dec_topk_dev_seq (length checks, geometry, slots,
//                   element rule, DecodeSeq)
// Then the decode kernels (decode.cu) run on the plan. Deterministic: every float sum has one
// owner and a fixed order; the only atomics are integer minima (the error record) and the
// choosing step's histogram counts.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/convert.cuh"
#include "common/topk_choose.cuh"
#include "decode_topk_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kPoolThreads = 128;
constexpr int kRowThreads = 128;
constexpr unsigned kMaxGridYZ = 65535;

// One element of q or of the cache as float (dec_topk_query_mean / dec_topk_key_mean's load).
template <class T>
struct Load {
  const DecTopkParams* p;
  __device__ float operator()(int64_t b, int64_t j, int64_t h, int64_t f, bool key,
                              int64_t page) const {
    if (!key) return to_f32(*dec_topk_q<T>(*p, b, j, h, f));
    return to_f32(static_cast<const T*>(p->dp.k)[dec_topk_k_offset(*p, b, page, j, h, f)]);
  }
};

template <class T>
__global__ void __launch_bounds__(kPoolThreads) qpool_kernel(const DecTopkParams p) {
  const int64_t a = blockIdx.x, h = blockIdx.y;
  const Load<T> load{&p};
  for (int64_t b = blockIdx.z; b < p.pp.b; b += gridDim.z) {
    if (p.seqs[b].g.nk == 0) continue;
    for (int64_t f = threadIdx.x; f < p.dp.d; f += kPoolThreads)
      p.qm[((b * p.pp.hq + h) * p.nqb + a) * p.dp.d + f] = dec_topk_query_mean(p, b, h, a, f, load);
  }
}

__global__ void __launch_bounds__(kRowThreads) pages_kernel(const DecTopkParams p) {
  const int64_t idx = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (idx >= p.pp.b * p.dp.max_pages) return;
  const int64_t b = idx / p.dp.max_pages;
  dec_topk_check_page(p, b, idx - b * p.dp.max_pages);
}

template <class T>
__global__ void __launch_bounds__(kPoolThreads) kpool_kernel(const DecTopkParams p) {
  const int64_t c = blockIdx.x, g = blockIdx.y;
  const Load<T> load{&p};
  for (int64_t b = blockIdx.z; b < p.pp.b; b += gridDim.z) {
    const DecTopkSeq& s = p.seqs[b];
    if (c >= s.g.kmax) continue;
    for (int64_t f = threadIdx.x; f < p.dp.d; f += kPoolThreads)
      s.km[(g * s.g.kmax + c) * p.dp.d + f] = dec_topk_key_mean(p, b, g, c, f, load);
  }
}

__global__ void __launch_bounds__(kChooseThreads) choose_kernel(const DecTopkParams p) {
  extern __shared__ float smem[];
  const int64_t a = blockIdx.x, h = blockIdx.y;
  for (int64_t b = blockIdx.z; b < p.pp.b; b += gridDim.z) {
    const DecTopkSeq& s = p.seqs[b];
    const TopkGeom g = s.g;
    if (g.nk == 0 || a >= g.nqb) continue;  // uniform over the CTA
    uint8_t* row = s.mask + (h * g.nqb + a) * g.nkb;
    topk_fixed_row(g, a, row);
    if (!topk_scored(g, a)) continue;  // uniform over the CTA
    const float* qm = p.qm + ((b * g.hq + h) * g.nqb + a) * g.d;
    const float* kg = s.km + (h / (g.hq / g.hkv)) * g.kmax * g.d;
    topk_score_row(g, a, qm, kg, row, smem);
  }
}

__global__ void __launch_bounds__(kRowThreads, 1) rows_kernel(const DecTopkParams p) {
  const int64_t r = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (r < p.pp.b * p.pp.hq) dec_topk_row(p, r);
}

__global__ void __launch_bounds__(kRowThreads, 1) union_kernel(const DecodePlanParams p) {
  const int64_t bg = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (bg < p.b * p.hkv) dec_plan_union(p, bg);
}

__global__ void __launch_bounds__(kRowThreads, 1) always_kernel(const DecodePlanParams p) {
  const int64_t r = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (r < p.b * p.lheads) dec_plan_row(p, r);
}

__global__ void __launch_bounds__(kRowThreads) seq_kernel(const DecTopkParams p, const DecTopkDev v) {
  const int64_t b = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (b < p.pp.b) dec_topk_dev_seq(p, v, b);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kRowThreads - 1) / kRowThreads); }

template <class T>
cudaError_t launch(const DecTopkParams& p, cudaStream_t stream) {
  const DecodePlanParams& pp = p.pp;
  const unsigned bz = unsigned(pp.b < kMaxGridYZ ? pp.b : kMaxGridYZ);
  cudaError_t e;
  if (p.kmax_max > 0) {  // some query block compares scores
    qpool_kernel<T><<<dim3(unsigned(p.nqb), unsigned(pp.hq), bz), kPoolThreads, 0, stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  if (p.dp.paged && p.pooled == nullptr && pp.b * p.dp.max_pages > 0) {
    pages_kernel<<<blocks_for(pp.b * p.dp.max_pages), kRowThreads, 0, stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  if (p.kmax_max > 0) {
    kpool_kernel<T><<<dim3(unsigned(p.kmax_max), unsigned(pp.hkv), bz), kPoolThreads, 0, stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  const int64_t smem = decode_topk_smem(p.dp.d, p.kmax_max);
  if (smem > 48 * 1024) {
    e = cudaFuncSetAttribute(choose_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  choose_kernel<<<dim3(unsigned(p.nqb), unsigned(pp.hq), bz), kChooseThreads, size_t(smem), stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  rows_kernel<<<blocks_for(pp.b * pp.hq), kRowThreads, 0, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  union_kernel<<<blocks_for(pp.b * pp.hkv), kRowThreads, 0, stream>>>(pp);
  return cudaGetLastError();
}

}  // namespace

int64_t decode_topk_smem(int64_t d, int64_t kmax) {
  return (((d + 3) & ~int64_t(3)) + kmax) * int64_t(sizeof(float));
}

cudaError_t decode_topk_dev_plan(const DecTopkParams& p, const DecTopkDev& v, DType dtype,
                                 cudaStream_t stream) {
  const DecodePlanParams& pp = p.pp;
  if (pp.b <= 0 || pp.hq <= 0) return cudaSuccess;
  if (pp.b >= (int64_t(1) << 31) || (v.has_always && pp.b * v.ap.lheads >= (int64_t(1) << 31)))
    return cudaErrorInvalidValue;
  cudaError_t e;
  if (v.has_always) {
    always_kernel<<<blocks_for(pp.b * v.ap.lheads), kRowThreads, 0, stream>>>(v.ap);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  seq_kernel<<<blocks_for(pp.b), kRowThreads, 0, stream>>>(p, v);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  return decode_topk_plan(p, dtype, stream);
}

cudaError_t decode_topk_plan(const DecTopkParams& p, DType dtype, cudaStream_t stream) {
  const DecodePlanParams& pp = p.pp;
  if (pp.b <= 0 || pp.hq <= 0) return cudaSuccess;
  if (p.nqb <= 0 || p.nqb >= (int64_t(1) << 31) || p.kmax_max >= (int64_t(1) << 31) ||
      pp.hq > kMaxGridYZ || pp.hkv > kMaxGridYZ || p.dp.d <= 0 || pp.hq % pp.hkv != 0 ||
      (int64_t(blocks_for(pp.b * pp.hq)) >= (int64_t(1) << 31)) ||
      pp.b * p.dp.max_pages >= (int64_t(1) << 40))
    return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::Float32: return launch<float>(p, stream);
    case DType::Float16: return launch<__half>(p, stream);
    case DType::BFloat16: return launch<__nv_bfloat16>(p, stream);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
