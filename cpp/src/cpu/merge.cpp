// Merging partial attention results computed on disjoint key sets. For each row, with
// m = max_k lse_k: w_k = exp(lse_k - m) / sum_j exp(lse_j - m), out = sum_k w_k out_k and
// lse = m + log(sum_j exp(lse_j - m)); a row no part saw (all lse_k = -inf) gives out = 0,
// lse = -inf. Rows are independent: tasks over (batch, row chunk).
#include <cmath>
#include <vector>

#include "cpu/common.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

void merge(const MergeArgs& a) {
  using namespace detail;
  const int64_t B = a.out.shape[0], N = a.out.shape[1], H = a.out.shape[2], Dv = a.out.shape[3];
  constexpr int64_t kRows = 64;
  const int64_t chunks = (N + kRows - 1) / kRows;
  if (B * chunks == 0) return;
  const KernelTable* kt = kernels();
  const int dtype = code_of(a.dtype);
  const int es = dtype_size(a.dtype);
  const int K = a.nparts;
  const int nthreads = num_threads();
  Scratch ws = alloc_floats(2 * Dv * nthreads);
  parallel_for(B * chunks, [&](int64_t task, int thread) {
    const int64_t b = task / chunks, i0 = (task % chunks) * kRows;
    std::vector<const void*> src(static_cast<size_t>(K));
    std::vector<int64_t> src_stride(static_cast<size_t>(K));
    std::vector<float> w(static_cast<size_t>(K));
    float* tmp = ws.get() + thread * 2 * Dv;
    for (int64_t i = i0; i < std::min(N, i0 + kRows); ++i)
      for (int64_t h = 0; h < H; ++h) {
        float m = -INFINITY;
        for (int k = 0; k < K; ++k) {
          const TensorView& l = a.lses[k];
          w[size_t(k)] = l.ptr<const float>()[b * l.strides[0] + h * l.strides[1] + i * l.strides[2]];
          m = std::max(m, w[size_t(k)]);
        }
        float total = 0.f;
        for (int k = 0; k < K; ++k) {
          w[size_t(k)] = m == -INFINITY ? 0.f : std::exp(w[size_t(k)] - m);
          total += w[size_t(k)];
          const TensorView& o = a.outs[k];
          src[size_t(k)] = static_cast<const char*>(o.data) +
                           (b * o.strides[0] + i * o.strides[1] + h * o.strides[2]) * es;
          src_stride[size_t(k)] = o.strides[3];
        }
        for (int k = 0; k < K; ++k) w[size_t(k)] = total == 0.f ? 0.f : w[size_t(k)] / total;  // NaN lse: NaN row
        const TensorView& o = a.out;
        void* dst = static_cast<char*>(o.data) +
                    (b * o.strides[0] + i * o.strides[1] + h * o.strides[2]) * es;
        kt->weighted_sum_row(dtype, int(Dv), src.data(), src_stride.data(), w.data(), K, dst,
                             o.strides[3], tmp);
        if (a.lse.data) {
          const TensorView& l = a.lse;
          l.ptr<float>()[b * l.strides[0] + h * l.strides[1] + i * l.strides[2]] =
              total == 0.f ? -INFINITY : m + std::log(total);
        }
      }
  });
}

}  // namespace spattn::cpu

namespace spattn::cpu {

void sum(const TensorView& dst, const TensorView* srcs, int n, DType dtype) {
  using namespace detail;
  const int64_t B = dst.shape[0], N = dst.shape[1], H = dst.shape[2], D = dst.shape[3];
  if (B * N * H == 0) return;
  const KernelTable* kt = kernels();
  const int code = code_of(dtype), es = dtype_size(dtype);
  Scratch ws = alloc_floats(2 * D * num_threads());
  const std::vector<float> ones(static_cast<size_t>(n), 1.f);
  parallel_for(B * N, [&](int64_t task, int thread) {
    const int64_t b = task / N, i = task % N;
    std::vector<const void*> src(static_cast<size_t>(n));
    std::vector<int64_t> stride(static_cast<size_t>(n));
    for (int64_t h = 0; h < H; ++h) {
      for (int k = 0; k < n; ++k) {
        const TensorView& s = srcs[k];
        src[size_t(k)] = static_cast<const char*>(s.data) +
                         (b * s.strides[0] + i * s.strides[1] + h * s.strides[2]) * es;
        stride[size_t(k)] = s.strides[3];
      }
      void* d = static_cast<char*>(dst.data) +
                (b * dst.strides[0] + i * dst.strides[1] + h * dst.strides[2]) * es;
      kt->weighted_sum_row(code, int(D), src.data(), stride.data(), ones.data(), n, d,
                           dst.strides[3], ws.get() + thread * 2 * D);
    }
  });
}

}  // namespace spattn::cpu
