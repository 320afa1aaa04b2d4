// TopKBlocks' selection on the GPU, made of the SPATTN_HD rules of spattn/cuda/topk_logic.hpp:
//
//   pool_kernel     one CTA per (block, head, batch): the float32 mean of the block's rows, each
//                   thread summing its features over the rows in order (the CPU's order)
//   choose_kernel   one CTA per (query block, head, batch): the mask row, chosen by
//                   common/topk_choose.cuh (shared with the decode's choice)
//   count_kernel    one thread per layout row: the number of full and partial runs
//   scan_kernel     one CTA per batch element: the rows' CSR offsets (block-wide prefix sums);
//                   copies the region's tail and points the chosen leaves at the batch's mask
//   write_kernel    one thread per layout row: the runs at their offsets
//
// Everything is deterministic: counts are integers, each score is summed by one half-warp in a
// fixed order, and no choice depends on the order atomics land in.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/convert.cuh"
#include "common/topk_choose.cuh"
#include "topk_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kScanThreads = 1024;
constexpr int kRowThreads = 128;
constexpr unsigned kMaxGridYZ = 65535;

// out[b][h][c][x] = mean of rows [c * bs, min(n, (c + 1) * bs)) of head h (zero for no rows).
template <class T>
__global__ void pool_kernel(const T* x, int64_t s0, int64_t s1, int64_t s2, int64_t s3, int64_t n,
                            int64_t heads, int64_t d, int64_t bs, int64_t nb, int64_t batch,
                            float* out) {
  const int64_t c = blockIdx.x, h = blockIdx.y;
  int64_t j0, j1;
  topk_pool_rows(n, bs, c, &j0, &j1);
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z)
    for (int64_t f = threadIdx.x; f < d; f += blockDim.x) {
      const T* col = x + b * s0 + h * s2 + f * s3;
      float acc = 0.f;
      for (int64_t j = j0; j < j1; ++j) acc = topk_add(acc, to_f32(col[j * s1]));
      if (j1 > j0) acc = topk_mul(acc, topk_pool_scale(j1 - j0));
      out[((b * heads + h) * nb + c) * d + f] = acc;
    }
}

__global__ void __launch_bounds__(kChooseThreads) choose_kernel(const TopkSelectParams p) {
  extern __shared__ float smem[];
  const TopkGeom& g = p.g;
  const int64_t a = blockIdx.x, h = blockIdx.y;
  const bool scored = topk_scored(g, a);
  for (int64_t b = blockIdx.z; b < p.b; b += gridDim.z) {
    uint8_t* row = p.mask + ((b * g.hq + h) * g.nqb + a) * g.nkb;
    topk_fixed_row(g, a, row);
    if (!scored) continue;  // uniform over the CTA
    const float* qm = p.qm + ((b * g.hq + h) * g.nqb + a) * g.d;
    const float* kg = p.km + (b * g.hkv + h / (g.hq / g.hkv)) * g.kmax * g.d;
    topk_score_row(g, a, qm, kg, row, smem);
  }
}

// Run counts of layout row idx = b * rows + r.
__global__ void count_kernel(const TopkLayoutParams p) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.b * p.rows) return;
  const int64_t b = idx / p.rows, r = idx - b * p.rows;
  int64_t h, o;
  topk_row_of(p, r, &h, &o);
  const uint8_t* mask = p.mask + b * p.g.hq * p.g.nqb * p.g.nkb;
  int32_t nf = 0, np = 0;  // named, not an array indexed by kind: they stay in registers
  topk_layout_row(p.g, mask, p.always, p.tm, p.tn, p.by_cols, h, o,
                  [&](int kind, int64_t, int64_t) { kind == 0 ? ++nf : ++np; });
  p.counts[2 * idx] = nf;
  p.counts[2 * idx + 1] = np;
}

// Inclusive prefix sums of (f, q) over the CTA's threads (kScanThreads).
__device__ void block_scan(int64_t* f, int64_t* q, int64_t* tot_f, int64_t* tot_q) {
  __shared__ int64_t sf[kScanThreads / 32], sq[kScanThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int s = 1; s < 32; s <<= 1) {
    const int64_t uf = __shfl_up_sync(0xffffffffu, *f, s);
    const int64_t uq = __shfl_up_sync(0xffffffffu, *q, s);
    if (lane >= s) *f += uf, *q += uq;
  }
  if (lane == 31) sf[warp] = *f, sq[warp] = *q;
  __syncthreads();
  int64_t add_f = 0, add_q = 0, all_f = 0, all_q = 0;
  for (int w = 0; w < kScanThreads / 32; ++w) {
    if (w < warp) add_f += sf[w], add_q += sq[w];
    all_f += sf[w], all_q += sq[w];
  }
  *f += add_f, *q += add_q;
  *tot_f = all_f, *tot_q = all_q;
  __syncthreads();
}

__global__ void __launch_bounds__(kScanThreads) scan_kernel(const TopkLayoutParams p) {
  for (int64_t b = blockIdx.x; b < p.b; b += gridDim.x) {
    unsigned char* region = p.regions + b * p.region_bytes;
    int64_t* full_ptr = reinterpret_cast<int64_t*>(region + p.full_ptr);
    int64_t* part_ptr = reinterpret_cast<int64_t*>(region + p.part_ptr);
    int64_t base_f = 0, base_q = 0;
    for (int64_t r0 = 0; r0 < p.rows; r0 += kScanThreads) {
      const int64_t r = r0 + threadIdx.x;
      const int32_t* n = p.counts + 2 * (b * p.rows + r);
      const int64_t cf = r < p.rows ? n[0] : 0, cq = r < p.rows ? n[1] : 0;
      int64_t f = cf, q = cq, tf, tq;
      block_scan(&f, &q, &tf, &tq);
      // Offsets past the capacity (impossible by topk_capacity's bound) are clamped, so a
      // wrong bound can lose ranges but never make a kernel read outside the region.
      if (r < p.rows) {
        full_ptr[r] = min(base_f + f - cf, p.cap);
        part_ptr[r] = min(base_q + q - cq, p.cap);
      }
      base_f += tf, base_q += tq;
    }
    if (threadIdx.x == 0) {
      full_ptr[p.rows] = min(base_f, p.cap);
      part_ptr[p.rows] = min(base_q, p.cap);
    }
    if (!p.copy_tail) continue;
    const uint4* src = reinterpret_cast<const uint4*>(p.tail_src);
    uint4* dst = reinterpret_cast<uint4*>(region + p.region_tail);
    for (size_t x = threadIdx.x; x < p.tail_bytes / 16; x += kScanThreads) dst[x] = src[x];
    __syncthreads();
    PredNode* nodes = reinterpret_cast<PredNode*>(region + p.nodes_at);
    const uint8_t* mask = p.mask + b * p.g.hq * p.g.nqb * p.g.nkb;
    for (int64_t x = threadIdx.x; x < p.chosen_count; x += kScanThreads) nodes[p.chosen[x]].data = mask;
    __syncthreads();
  }
}

__global__ void write_kernel(const TopkLayoutParams p) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.b * p.rows) return;
  const int64_t b = idx / p.rows, r = idx - b * p.rows;
  int64_t h, o;
  topk_row_of(p, r, &h, &o);
  unsigned char* region = p.regions + b * p.region_bytes;
  const int64_t* full_ptr = reinterpret_cast<const int64_t*>(region + p.full_ptr);
  const int64_t* part_ptr = reinterpret_cast<const int64_t*>(region + p.part_ptr);
  int32_t* full_lo = reinterpret_cast<int32_t*>(region + p.full_lo);
  int32_t* full_hi = reinterpret_cast<int32_t*>(region + p.full_hi);
  int32_t* part_lo = reinterpret_cast<int32_t*>(region + p.part_lo);
  int32_t* part_hi = reinterpret_cast<int32_t*>(region + p.part_hi);
  int64_t fa = full_ptr[r], pa = part_ptr[r];
  const int64_t fe = full_ptr[r + 1], pe = part_ptr[r + 1];
  const uint8_t* mask = p.mask + b * p.g.hq * p.g.nqb * p.g.nkb;
  topk_layout_row(p.g, mask, p.always, p.tm, p.tn, p.by_cols, h, o,
                  [&](int kind, int64_t l, int64_t e) {
                    if (kind == 0 && fa < fe) {
                      full_lo[fa] = int32_t(l);
                      full_hi[fa++] = int32_t(e);
                    } else if (kind == 1 && pa < pe) {
                      part_lo[pa] = int32_t(l);
                      part_hi[pa++] = int32_t(e);
                    }
                  });
}

template <class T>
cudaError_t launch_select(const TopkSelectParams& p, cudaStream_t stream) {
  const TopkGeom& g = p.g;
  const unsigned bz = unsigned(p.b < kMaxGridYZ ? p.b : kMaxGridYZ);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const unsigned pool_threads = g.d >= 128 ? 128 : 32 * unsigned((g.d + 31) / 32);
  if (g.kmax > 0) {
    pool_kernel<T><<<dim3(unsigned(g.nqb), unsigned(g.hq), bz), pool_threads, 0, stream>>>(
        q, p.q_s[0], p.q_s[1], p.q_s[2], p.q_s[3], g.nq, g.hq, g.d, g.bq, g.nqb, p.b, p.qm);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    pool_kernel<T><<<dim3(unsigned(g.kmax), unsigned(g.hkv), bz), pool_threads, 0, stream>>>(
        k, p.k_s[0], p.k_s[1], p.k_s[2], p.k_s[3], g.nk, g.hkv, g.d, g.bk, g.kmax, p.b, p.km);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  const int64_t smem = topk_select_smem(g);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(choose_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(smem));
    if (e != cudaSuccess) return e;
  }
  choose_kernel<<<dim3(unsigned(g.nqb), unsigned(g.hq), bz), kChooseThreads, size_t(smem), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int64_t topk_select_smem(const TopkGeom& g) {
  return (((g.d + 3) & ~int64_t(3)) + g.kmax) * int64_t(sizeof(float));
}

cudaError_t topk_select(const TopkSelectParams& p, cudaStream_t stream) {
  const TopkGeom& g = p.g;
  if (p.b <= 0 || g.nqb <= 0 || g.nkb <= 0) return cudaSuccess;  // no mask bit to write
  if (g.nqb >= (int64_t(1) << 31) || g.kmax >= (int64_t(1) << 31) || g.hq > kMaxGridYZ ||
      g.hkv > kMaxGridYZ || g.d <= 0 || g.hq % g.hkv != 0)
    return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::Float32: return launch_select<float>(p, stream);
    case DType::Float16: return launch_select<__half>(p, stream);
    case DType::BFloat16: return launch_select<__nv_bfloat16>(p, stream);
    default: return cudaErrorNotSupported;
  }
}

cudaError_t topk_layout(const TopkLayoutParams& p, cudaStream_t stream) {
  if (p.b <= 0) return cudaSuccess;
  const int64_t rows = p.b * p.rows;
  const int64_t blocks = (rows + kRowThreads - 1) / kRowThreads;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  if (blocks > 0) {
    count_kernel<<<unsigned(blocks), kRowThreads, 0, stream>>>(p);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  scan_kernel<<<unsigned(p.b < kMaxGridYZ ? p.b : kMaxGridYZ), kScanThreads, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || blocks == 0) return e;
  write_kernel<<<unsigned(blocks), kRowThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
