// Weighted sums of rows of any dtype: the inner loop of merging partial attention results.
// ISA-namespaced; see simd.hpp for the inclusion rules.
#pragma once

#include "cpu/pack.hpp"

namespace spattn::cpu::SPATTN_ISA {

inline void weighted_sum_row(int dtype, int n, const void* const* src, const int64_t* src_stride,
                             const float* w, int nsrc, void* dst, int64_t dst_stride, float* tmp) {
  float* acc = tmp;
  float* row = tmp + n;
  for (int i = 0; i < n; ++i) acc[i] = 0.f;
  for (int k = 0; k < nsrc; ++k) {
    if (w[k] == 0.f) continue;  // a part that saw no key: its row may be anything finite
    load_row(src[k], dtype, src_stride[k], n, w[k], row);
    int i = 0;
    for (; i + W <= n; i += W) store(acc + i, load(acc + i) + load(row + i));
    for (; i < n; ++i) acc[i] += row[i];
  }
  store_row(dst, dtype, dst_stride, n, acc, 1.f);
}

}  // namespace spattn::cpu::SPATTN_ISA
