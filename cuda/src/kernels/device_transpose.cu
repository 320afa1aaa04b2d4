// The backward layout's transposition (spattn/cuda/device_transpose_logic.hpp): one thread per
// sweep counts the column runs that start, cub scans the counts into the column CSR offsets,
// one thread per sweep writes the runs' ends, one thread per column sorts them and sums its
// cost, then the backward schedule is sorted by cost (cub, stable). All on the caller's stream;
// nothing is read back.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "device_transpose_api.hpp"

namespace spattn::cuda::SPATTN_CUDA_ARCH_NS {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) count_kernel(const DevTransposeParams p) {
  const int64_t s = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (s < p.sweeps()) transpose_count(p, s);
}

__global__ void __launch_bounds__(kThreads) fill_kernel(const DevTransposeParams p) {
  const int64_t s = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (s < p.sweeps()) transpose_fill(p, s);
}

__global__ void __launch_bounds__(kThreads) column_kernel(const DevTransposeParams p) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c < p.cols()) transpose_column(p, c);
}

__global__ void __launch_bounds__(kThreads) keys_kernel(const DevTransposeLaunch l) {
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= l.p.sched_len()) return;
  l.keys_in[e] = bwd_schedule_key(l.p, e);
  l.vals_in[e] = int32_t(e);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

}  // namespace

size_t transpose_scan_bytes(int64_t n) {
  size_t bytes = 0;
  (void)cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                      static_cast<int64_t*>(nullptr), int(n));
  return bytes;
}

cudaError_t compile_backward_columns(const DevTransposeLaunch& l, cudaStream_t stream) {
  const DevTransposeParams& p = l.p;
  const int64_t cols = p.cols();
  cudaError_t e = cudaMemsetAsync(p.full_ptr, 0, sizeof(int64_t), stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(p.part_ptr, 0, sizeof(int64_t), stream);
  if (e != cudaSuccess || cols == 0) return e;
  e = cudaMemsetAsync(p.count, 0, size_t(2 * cols) * sizeof(int64_t), stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(p.cursor, 0, size_t(4 * cols) * sizeof(uint32_t), stream);
  if (e != cudaSuccess) return e;
  count_kernel<<<blocks_for(p.sweeps()), kThreads, 0, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  for (int kind = 0; kind < 2; ++kind) {
    size_t bytes = l.scan_temp_bytes;
    e = cub::DeviceScan::InclusiveSum(l.scan_temp, bytes, p.count + kind * cols,
                                      (kind == 0 ? p.full_ptr : p.part_ptr) + 1, int(cols), stream);
    if (e != cudaSuccess) return e;
  }
  fill_kernel<<<blocks_for(p.sweeps()), kThreads, 0, stream>>>(p);
  column_kernel<<<blocks_for(cols), kThreads, 0, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  const int64_t n = p.sched_len();
  keys_kernel<<<blocks_for(n), kThreads, 0, stream>>>(l);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  size_t bytes = l.sort_temp_bytes;
  return cub::DeviceRadixSort::SortPairsDescending(l.sort_temp, bytes, l.keys_in, l.keys_out,
                                                   l.vals_in, l.sched, int(n), 0, 32, stream);
}

}  // namespace spattn::cuda::SPATTN_CUDA_ARCH_NS
