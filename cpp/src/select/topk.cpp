// TopKBlocks' selection: pool, score, keep the top k (see topk.hpp and SPEC §2).
//
// Cost: pooling reads every row of q and of the candidate key blocks once (the same bytes as one
// pass of attention over them); scoring is nqb * candidates * D multiply-adds per head, about
// 1/(bq * bk) of dense attention. Both run on the thread pool; each (head, block) is summed by
// one thread in a fixed order, so the choice never depends on the number of threads.
#include "select/topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "cpu/thread_pool.hpp"
#include "spattn/error.hpp"
#include "spattn/predicate.hpp"

namespace spattn::select {

namespace {

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, em = h & 0x7fffu;
  float f;
  if (em < 0x400u) {
    f = float(em) * 5.9604644775390625e-08f;  // zero or subnormal: em * 2^-24, exact
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u |= sign;
    std::memcpy(&f, &u, 4);
    return f;
  }
  uint32_t u = (em << 13) + (112u << 23);
  if (em >= 0x7c00u) u += 112u << 23;  // inf, nan
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}

// acc[0..d) += row (any dtype, element stride s).
void add_row(const char* p, DType dtype, int64_t s, int64_t d, float* acc) {
  if (dtype == DType::Float32) {
    const float* r = reinterpret_cast<const float*>(p);
    for (int64_t x = 0; x < d; ++x) acc[x] += r[x * s];
    return;
  }
  const uint16_t* r = reinterpret_cast<const uint16_t*>(p);
  if (dtype == DType::BFloat16) {
    for (int64_t x = 0; x < d; ++x) {
      const uint32_t u = uint32_t(r[x * s]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      acc[x] += f;
    }
    return;
  }
  for (int64_t x = 0; x < d; ++x) acc[x] += half_to_float(r[x * s]);
}

// dst[h][c][0..dp) = mean of rows [c * bs, min(n, (c + 1) * bs)) of head h, for blocks c in
// [0, nb) with want(h, c); zero padding up to dp.
template <class Want>
void pool(const Rows& rows, int64_t bs, int64_t nb, int64_t dp, float* dst, Want want) {
  cpu::parallel_for(rows.heads * nb, [&](int64_t t, int) {
    const int64_t h = t / nb, c = t % nb;
    float* out = dst + t * dp;
    std::fill(out, out + dp, 0.f);
    if (!want(h, c)) return;
    const int64_t j0 = c * bs, j1 = std::min(rows.n, j0 + bs);
    for (int64_t j = j0; j < j1; ++j) add_row(rows.row(j, h), rows.dtype, rows.s_dim, rows.d, out);
    const float inv = 1.f / float(j1 - j0);
    for (int64_t x = 0; x < rows.d; ++x) out[x] *= inv;
  });
}

// a . b over n floats (n a multiple of 16): 16 independent partial sums, so the compiler
// vectorises it at any SIMD width and the order is fixed.
float dot16(const float* a, const float* b, int64_t n) {
  float s[16] = {};
  for (int64_t x = 0; x < n; x += 16)
    for (int t = 0; t < 16; ++t) s[t] += a[x + t] * b[x + t];
  float r = 0.f;
  for (int t = 0; t < 16; ++t) r += s[t];
  return r;
}

}  // namespace

const char* Rows::row(int64_t j, int64_t h) const {
  const int64_t es = dtype_size(dtype);
  if (table == nullptr) return base + (j * s_row + h * s_head) * es;
  const int64_t c = j / page_size, e = c * table_s;
  const int64_t page = table64 ? reinterpret_cast<const int64_t*>(table)[e]
                               : int64_t(reinterpret_cast<const int32_t*>(table)[e]);
  return base + (page * s_page + (j % page_size) * s_row + h * s_head) * es;
}

Rows batch_rows(const TensorView& t, int64_t b, DType dtype) {
  Rows r;
  r.base = static_cast<const char*>(t.data) + b * t.strides[0] * dtype_size(dtype);
  r.n = t.shape[1];
  r.heads = t.shape[2];
  r.d = t.shape[3];
  r.s_row = t.strides[1];
  r.s_head = t.strides[2];
  r.s_dim = t.strides[3];
  r.dtype = dtype;
  return r;
}

BlockMask choose(const Pattern& topk, const Rows& q, const Rows& k) {
  const PatternNode& node = topk.node();
  if (node.kind != Pattern::Kind::TopKBlocks)
    throw ValueError("select: expected a TopKBlocks pattern, got " + topk.describe());
  const int64_t K = node.a, bq = node.b, bk = node.c;
  const bool causal = node.d != 0;
  const int64_t nq = q.n, nk = k.n, hq = q.heads, hkv = k.heads, G = hq / hkv;
  const int64_t off = nk - nq;
  BlockMask m;
  m.heads = hq;
  m.bq = bq;
  m.bk = bk;
  m.nbq = (nq + bq - 1) / bq;
  m.nbk = (nk + bk - 1) / bk;
  const int64_t nqb = m.nbq, nkb = m.nbk;
  m.bits.assign(size_t(hq * nqb * nkb), 0);
  if (nq == 0 || nk == 0) return m;

  // Query block a holds key positions p in [plo(a), phi(a)]; causal candidates are the blocks
  // entirely before plo(a): c < floor(plo / bk). The current blocks hold some p.
  auto plo = [&](int64_t a) { return a * bq + off; };
  auto phi = [&](int64_t a) { return std::min(nq, (a + 1) * bq) - 1 + off; };
  auto ncand = [&](int64_t a) {
    return causal ? std::clamp<int64_t>(detail::floor_div(plo(a), bk), 0, nkb) : nkb;
  };
  // Only query blocks with more candidates than k compare scores; the others keep them all.
  auto scored = [&](int64_t a) { return K > 0 && ncand(a) > K; };
  int64_t kmax = 0;  // key blocks any query block scores
  for (int64_t a = 0; a < nqb; ++a)
    if (scored(a)) kmax = std::max(kmax, ncand(a));

  const int64_t dp = (q.d + 15) / 16 * 16;
  std::vector<float> qm, km;
  if (kmax > 0) {
    qm.resize(size_t(hq * nqb * dp));
    km.resize(size_t(hkv * kmax * dp));
    pool(q, bq, nqb, dp, qm.data(), [&](int64_t, int64_t a) { return scored(a); });
    pool(k, bk, kmax, dp, km.data(), [](int64_t, int64_t) { return true; });
  }

  cpu::parallel_for(hq * nqb, [&](int64_t t, int) {
    const int64_t h = t / nqb, a = t % nqb, g = h / G;
    uint8_t* row = m.bits.data() + t * nkb;
    if (causal) {
      const int64_t lo = std::max<int64_t>(0, detail::floor_div(plo(a), bk));
      const int64_t hi = std::min(nkb - 1, detail::floor_div(phi(a), bk));
      for (int64_t c = lo; c <= hi; ++c) row[c] = 1;  // empty when every p < 0
    }
    const int64_t nc = ncand(a);
    if (nc <= K) {
      std::fill(row, row + nc, uint8_t(1));
      return;
    }
    if (K == 0) return;  // nothing beyond the current blocks
    const float* qa = qm.data() + t * dp;
    const float* kg = km.data() + g * kmax * dp;
    std::vector<float> s(static_cast<size_t>(nc));
    for (int64_t c = 0; c < nc; ++c) s[size_t(c)] = dot16(qa, kg + c * dp, dp);
    // Higher score first, ties to the lower block index; NaN (from NaN inputs) ranks last.
    std::vector<int32_t> idx(static_cast<size_t>(nc));
    std::iota(idx.begin(), idx.end(), 0);
    auto better = [&](int32_t x, int32_t y) {
      const float sx = s[size_t(x)], sy = s[size_t(y)];
      const bool nx = std::isnan(sx), ny = std::isnan(sy);
      if (nx != ny) return ny;
      if (!nx && sx != sy) return sx > sy;
      return x < y;
    };
    std::nth_element(idx.begin(), idx.begin() + (K - 1), idx.end(), better);
    for (int64_t x = 0; x < K; ++x) row[idx[size_t(x)]] = 1;
  });
  return m;
}

Pattern concrete(const Pattern& topk, BlockMask chosen) {
  const PatternNode& node = topk.node();
  Pattern p = Pattern::block_sparse(std::move(chosen));
  if (node.d) p = Pattern::intersection_of({p, Pattern::causal()});
  if (!node.children.empty()) p = Pattern::union_of({p, node.children[0]});
  return p;
}

}  // namespace spattn::select
