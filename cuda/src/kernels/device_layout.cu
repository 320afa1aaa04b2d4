// The device layout compiler's kernels (spattn/cuda/device_layout_logic.hpp): one thread per
// layout row counts its ranges, one CTA scans the counts into the CSR offsets, one thread per
// row writes its ranges, then the schedule is sorted by cost (cub, stable). All on the
// caller's stream; nothing is read back.
#include <cub/device/device_radix_sort.cuh>

#include "device_layout_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kRowThreads = 128;
constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kRowThreads, 1) layout_rows_kernel(const DevLayoutParams p, bool fill) {
  const int64_t r = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (r < p.rows()) compile_layout_row(p, r, fill);
}

// Inclusive scan of a[1..rows] and b[1..rows] in place (a[0] = b[0] = 0): each thread sums a
// contiguous chunk, the chunk sums are scanned in shared memory, each thread rewrites its chunk.
__global__ void __launch_bounds__(kScanThreads) scan_counts_kernel(int64_t* a, int64_t* b, int64_t rows) {
  __shared__ int64_t sa[kScanThreads], sb[kScanThreads];
  const int t = threadIdx.x;
  const int64_t chunk = (rows + kScanThreads - 1) / kScanThreads;
  const int64_t lo = rows < t * chunk ? rows : t * chunk;
  const int64_t hi = rows < lo + chunk ? rows : lo + chunk;
  int64_t x = 0, y = 0;
  for (int64_t i = lo; i < hi; ++i) x += a[i + 1], y += b[i + 1];
  sa[t] = x;
  sb[t] = y;
  __syncthreads();
  for (int off = 1; off < kScanThreads; off *= 2) {
    const int64_t vx = t >= off ? sa[t - off] : 0, vy = t >= off ? sb[t - off] : 0;
    __syncthreads();
    sa[t] += vx;
    sb[t] += vy;
    __syncthreads();
  }
  int64_t px = sa[t] - x, py = sb[t] - y;
  for (int64_t i = lo; i < hi; ++i) {
    px += a[i + 1];
    a[i + 1] = px;
    py += b[i + 1];
    b[i + 1] = py;
  }
  if (t == 0) a[0] = b[0] = 0;
}

__global__ void schedule_keys_kernel(const DevLayoutLaunch l) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= l.sched_len) return;
  l.keys_in[e] = schedule_key(l.p, e);
  l.vals_in[e] = int32_t(e);
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace

size_t layout_sort_bytes(int64_t n) {
  size_t bytes = 0;
  (void)cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                                  static_cast<uint32_t*>(nullptr),
                                                  static_cast<const int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), int(n));
  return bytes;
}

cudaError_t compile_layout(const DevLayoutLaunch& l, cudaStream_t stream) {
  const DevLayoutParams& p = l.p;
  cudaError_t e = cudaMemsetAsync(p.overflow, 0, sizeof(int32_t), stream);
  if (e != cudaSuccess) return e;
  const int64_t rows = p.rows();
  if (rows > 0) {
    layout_rows_kernel<<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(p, false);
    scan_counts_kernel<<<1, kScanThreads, 0, stream>>>(p.full_ptr, p.part_ptr, rows);
    layout_rows_kernel<<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(p, true);
  } else {
    e = cudaMemsetAsync(p.full_ptr, 0, sizeof(int64_t), stream);
    if (e == cudaSuccess) e = cudaMemsetAsync(p.part_ptr, 0, sizeof(int64_t), stream);
    if (e != cudaSuccess) return e;
  }
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  if (l.sched_len == 0) return cudaSuccess;
  schedule_keys_kernel<<<blocks_for(l.sched_len, 256), 256, 0, stream>>>(l);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  size_t bytes = l.sort_temp_bytes;
  return cub::DeviceRadixSort::SortPairsDescending(l.sort_temp, bytes, l.keys_in, l.keys_out,
                                                   l.vals_in, l.sched, int(l.sched_len), 0, 32,
                                                   stream);
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
