// TopKBlocks' selection: pool, score, keep the top k (see topk.hpp and docs/patterns.md).
//
// Cost: pooling reads every row of q and of the candidate key blocks once (the same bytes as one
// pass of attention over them); scoring is nqb * candidates * D multiply-adds per head, about
// 1/(bq * bk) of dense attention. Both run on the thread pool; each (head, block) is summed by
// one thread in a fixed order, so the choice never depends on the number of threads.
#include "select/topk.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "cpu/decode_kernel_api.hpp"
#include "cpu/kernel_api.hpp"
#include "cpu/thread_pool.hpp"
#include "spattn/error.hpp"
#include "pattern/node.hpp"
#include "spattn/predicate.hpp"

namespace spattn::select {

namespace {

// Rows per call of the SIMD row sum (pointers gathered first: rows may lie on any page).
constexpr int64_t kRowBatch = 64;

// One task per block, all heads in it: for the [N, H, D] layouts the block's rows of every
// head are one contiguous stretch of memory, read front to back.
template <class Want>
void pool_if(const Rows& rows, int64_t bs, int64_t nb, int64_t dp, float* dst, Want want) {
  const cpu::DecodeKernels* kern = cpu::decode_kernels();
  const int dtype = rows.dtype == DType::Float32   ? cpu::kF32
                    : rows.dtype == DType::Float16 ? cpu::kF16
                                                   : cpu::kBF16;
  cpu::parallel_for(nb, [&](int64_t c, int) {
    const int64_t j0 = c * bs, j1 = std::min(rows.n, j0 + bs);
    const void* ptrs[kRowBatch];
    alignas(64) float tmp[256];
    for (int64_t h = 0; h < rows.heads; ++h) {
      float* out = dst + (h * nb + c) * dp;
      std::fill(out, out + dp, 0.f);
      if (j0 >= j1 || !want(h, c)) continue;
      for (int64_t j = j0; j < j1; j += kRowBatch) {
        const int64_t n = std::min(kRowBatch, j1 - j);
        for (int64_t r = 0; r < n; ++r) ptrs[r] = rows.row(j + r, h);
        kern->sum_rows(ptrs, n, dtype, rows.s_dim, int(rows.d), int(dp), out, tmp);
      }
      const float inv = 1.f / float(j1 - j0);
      for (int64_t x = 0; x < rows.d; ++x) out[x] *= inv;
    }
  });
}

// a . b over n floats: 16 independent partial sums (the compiler vectorises them at any SIMD
// width), then the tail; a fixed order, so the same inputs give the same bits.
float dot(const float* a, const float* b, int64_t n) {
  float s[16] = {};
  int64_t x = 0;
  for (; x + 16 <= n; x += 16)
    for (int t = 0; t < 16; ++t) s[t] += a[x + t] * b[x + t];
  for (int t = 0; x < n; ++x, ++t) s[t] += a[x] * b[x];
  float r = 0.f;
  for (int t = 0; t < 16; ++t) r += s[t];
  return r;
}

}  // namespace

void expect_selectable(DType dtype, const char* name) {
  if (dtype == DType::Float64)
    throw TypeError(std::string(name) + ": expected float32, float16 or bfloat16, got float64 "
                    "(TopKBlocks' selection does not take float64)");
}

const char* Rows::row(int64_t j, int64_t h) const {
  const int64_t es = dtype_size(dtype);
  if (table == nullptr) return base + (j * s_row + h * s_head) * es;
  const int64_t c = j / page_size, e = c * table_s;
  const int64_t page = table64 ? reinterpret_cast<const int64_t*>(table)[e]
                               : int64_t(reinterpret_cast<const int32_t*>(table)[e]);
  return base + (page * s_page + (j % page_size) * s_row + h * s_head) * es;
}

void pool(const Rows& rows, int64_t bs, int64_t nb, int64_t dp, float* dst) {
  pool_if(rows, bs, nb, dp, dst, [](int64_t, int64_t) { return true; });
}

Rows batch_rows(const TensorView& t, int64_t b, DType dtype) {
  Rows r;
  // An empty tensor may have a null data pointer: no offset is applied to it.
  r.base = t.data == nullptr ? nullptr
                             : static_cast<const char*>(t.data) + b * t.strides[0] * dtype_size(dtype);
  r.n = t.shape[1];
  r.heads = t.shape[2];
  r.d = t.shape[3];
  r.s_row = t.strides[1];
  r.s_head = t.strides[2];
  r.s_dim = t.strides[3];
  r.dtype = dtype;
  return r;
}

BlockMask empty_mask(const Pattern& topk, int64_t nq, int64_t nk, int64_t hq) {
  const TopKParams& t = topk.node().params_as<TopKParams>();
  BlockMask m;
  m.heads = hq;
  m.bq = t.bq;
  m.bk = t.bk;
  m.nbq = nq <= 0 ? 0 : 1 + (nq - 1) / t.bq;  // no nq + bq: block sizes may be huge
  m.nbk = nk <= 0 ? 0 : 1 + (nk - 1) / t.bk;
  m.bits.assign(size_t(hq * m.nbq * m.nbk), 0);
  return m;
}

BlockMask choose(const Pattern& topk, const Rows& q, const Rows& k, const PooledKeys* given) {
  const PatternNode& node = topk.node();
  if (node.op != PatternNode::Op::TopKBlocks)
    throw ValueError("select: expected a TopKBlocks pattern, got " + topk.describe());
  const TopKParams& t = node.params_as<TopKParams>();
  const int64_t K = t.k, bq = t.bq, bk = t.bk;
  const bool causal = t.causal;
  const int64_t nq = q.n, nk = k.n, hq = q.heads, hkv = k.heads, G = hq / hkv;
  const int64_t off = nk - nq;
  BlockMask m = empty_mask(topk, nq, nk, hq);
  const int64_t nqb = m.nbq, nkb = m.nbk;
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
  // Key block c of kv head g: our own pooled buffer (rows dp apart, zero padded), or the
  // caller's pooled keys read in place when each row is contiguous.
  const float* kbase = nullptr;
  int64_t k_sg = 0, k_sc = 0;
  if (kmax > 0) {
    qm.resize(size_t(hq * nqb * dp));
    pool_if(q, bq, nqb, dp, qm.data(), [&](int64_t, int64_t a) { return scored(a); });
    if (given != nullptr && given->blocks < kmax)
      throw ValueError("pooled_keys: holds " + std::to_string(given->blocks) +
                       " key blocks, but the choice scores blocks 0.." + std::to_string(kmax - 1) +
                       " (blocks of " + std::to_string(bk) + " keys)");
    if (given != nullptr && given->s_dim == 1) {
      kbase = given->data;
      k_sg = given->s_head;
      k_sc = given->s_block;
    } else {
      km.resize(size_t(hkv * kmax * dp));
      if (given == nullptr)
        pool(k, bk, kmax, dp, km.data());
      else
        for (int64_t g = 0; g < hkv; ++g)
          for (int64_t c = 0; c < kmax; ++c)
            for (int64_t x = 0; x < q.d; ++x)
              km[size_t((g * kmax + c) * dp + x)] =
                  given->data[c * given->s_block + g * given->s_head + x * given->s_dim];
      kbase = km.data();
      k_sg = kmax * dp;
      k_sc = dp;
    }
  }

  // One task per (kv head, query block): the G query heads that share the kv head score
  // against each key block while its mean is in cache (decode over a long cache reads the
  // pooled keys once per kv head, not once per query head).
  cpu::parallel_for(hkv * nqb, [&](int64_t t, int) {
    const int64_t g = t / nqb, a = t % nqb;
    const int64_t nc = ncand(a);
    for (int64_t h = g * G; h < (g + 1) * G; ++h) {
      uint8_t* row = m.bits.data() + (h * nqb + a) * nkb;
      if (causal) {
        const int64_t lo = std::max<int64_t>(0, detail::floor_div(plo(a), bk));
        const int64_t hi = std::min(nkb - 1, detail::floor_div(phi(a), bk));
        for (int64_t c = lo; c <= hi; ++c) row[c] = 1;  // empty when every p < 0
      }
      if (nc <= K) std::fill(row, row + nc, uint8_t(1));
    }
    if (!scored(a)) return;  // every candidate kept, or k = 0: nothing beyond the current blocks
    std::vector<float> s(static_cast<size_t>(G * nc));
    const float* kg = kbase + g * k_sg;
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t hh = 0; hh < G; ++hh)
        s[size_t(hh * nc + c)] = dot(qm.data() + ((g * G + hh) * nqb + a) * dp, kg + c * k_sc, q.d);
    std::vector<int32_t> idx(static_cast<size_t>(nc));
    for (int64_t hh = 0; hh < G; ++hh) {
      // Higher score first, ties to the lower block index; NaN (from NaN inputs) ranks last.
      const float* sh = s.data() + hh * nc;
      auto better = [sh](int32_t x, int32_t y) {
        const float sx = sh[x], sy = sh[y];
        const bool nx = std::isnan(sx), ny = std::isnan(sy);
        if (nx != ny) return ny;
        if (!nx && sx != sy) return sx > sy;
        return x < y;
      };
      std::iota(idx.begin(), idx.end(), 0);
      std::nth_element(idx.begin(), idx.begin() + (K - 1), idx.end(), better);
      uint8_t* row = m.bits.data() + ((g * G + hh) * nqb + a) * nkb;
      for (int64_t x = 0; x < K; ++x) row[idx[size_t(x)]] = 1;
    }
  });
  return m;
}

Pattern concrete(const Pattern& topk, BlockMask chosen) {
  const PatternNode& node = topk.node();
  Pattern p = Pattern::block_sparse(std::move(chosen));
  if (node.params_as<TopKParams>().causal) p = Pattern::intersection_of({p, Pattern::causal()});
  if (!node.children.empty()) p = Pattern::union_of({p, node.children[0]});
  return p;
}

}  // namespace spattn::select
