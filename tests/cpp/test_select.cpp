// TopKBlocks through the C++ API alone (no Python): select_blocks keeps the causal current
// blocks and k of the past ones, ties go to the lower block index, and attention_forward with
// the TopKBlocks pattern equals attention_forward with selected_pattern(...) bit for bit;
// select_blocks_varlen chooses each sequence as select_blocks does alone.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "spattn/spattn.hpp"

using namespace spattn;

static int failures = 0;
#define CHECK(c)                                               \
  do {                                                         \
    if (!(c)) {                                                \
      ++failures;                                              \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c); \
    }                                                          \
  } while (0)

// A float32 [1, n, h, d] tensor over `data` (row-major).
struct Host {
  std::vector<float> data;
  int64_t shape[4];
  DLTensor t{};
  Host(int64_t n, int64_t h, int64_t d) : data(size_t(n * h * d)), shape{1, n, h, d} {
    t.data = data.data();
    t.device = {kDLCPU, 0};
    t.ndim = 4;
    t.dtype = {kDLFloat, 32, 1};
    t.shape = shape;
  }
};

int main() {
  const int64_t N = 128, H = 2, D = 8, B = 16;  // 8 blocks of 16
  Host q(N, H, D), k(N, 1, D), v(N, 1, D);
  for (size_t i = 0; i < q.data.size(); ++i) q.data[i] = 1.f;
  for (int64_t j = 0; j < N; ++j)
    for (int64_t x = 0; x < D; ++x) {
      // Every block's mean is 1 (ties), except block 5, whose mean is 4.
      k.data[size_t(j * D + x)] = (j / B == 5) ? 4.f : ((j % 2) ? 1.5f : 0.5f);
      v.data[size_t(j * D + x)] = std::sin(0.37f * float(j) + float(x));
    }
  const Pattern topk = Pattern::topk_blocks(2, B, B, true, Pattern::sink(1));

  const std::vector<BlockMask> chosen = select_blocks(q.t, k.t, topk);
  CHECK(chosen.size() == 1);
  const BlockMask& m = chosen[0];
  CHECK(m.heads == H && m.nbq == 8 && m.nbk == 8);
  auto kept = [&](int64_t h, int64_t a, int64_t c) { return m.bits[size_t((h * 8 + a) * 8 + c)] != 0; };
  for (int64_t h = 0; h < H; ++h)
    for (int64_t a = 0; a < 8; ++a) {
      // Current block a; the past: block 5 when it is in the past, then the lowest indices.
      std::vector<int64_t> want;
      if (a > 5) want.push_back(5);
      for (int64_t c = 0; c < a && int64_t(want.size()) < 2; ++c)
        if (c != 5) want.push_back(c);
      want.push_back(a);
      int64_t n = 0;
      for (int64_t c = 0; c < 8; ++c) n += kept(h, a, c);
      CHECK(n == int64_t(want.size()));
      for (int64_t c : want) CHECK(kept(h, a, c));
    }

  // attention with the learned pattern == attention with the pattern it selected.
  Host o1(N, H, D), o2(N, H, D);
  attention_forward(q.t, k.t, v.t, topk, o1.t, nullptr);
  attention_forward(q.t, k.t, v.t, selected_pattern(topk, m), o2.t, nullptr);
  CHECK(std::memcmp(o1.data.data(), o2.data.data(), o1.data.size() * sizeof(float)) == 0);

  // The learned pattern has no mask of its own.
  bool refused = false;
  try {
    (void)topk.mask(N, N, 1);
  } catch (const ValueError&) {
    refused = true;
  }
  CHECK(refused);

  // Varlen: the rows split into sequences [0, 48) and [48, 128) of q and k; each sequence's
  // mask equals select_blocks on that sequence alone (the planner's problems, in order).
  {
    const int64_t cuts[3] = {0, 48, N};
    int64_t shape_q[3] = {N, H, D}, shape_k[3] = {N, 1, D}, shape_cu[1] = {3};
    DLTensor pq = q.t, pk = k.t, cu{};
    pq.ndim = pk.ndim = 3;
    pq.shape = shape_q;
    pk.shape = shape_k;
    cu.data = const_cast<int64_t*>(cuts);
    cu.device = {kDLCPU, 0};
    cu.ndim = 1;
    cu.dtype = {kDLInt, 64, 1};
    cu.shape = shape_cu;
    const std::vector<BlockMask> per_seq = select_blocks_varlen(pq, pk, cu, cu, topk);
    CHECK(per_seq.size() == 2);
    for (int s = 0; s < 2 && per_seq.size() == 2; ++s) {
      const int64_t n = cuts[s + 1] - cuts[s];
      int64_t sq[4] = {1, n, H, D}, sk[4] = {1, n, 1, D};
      DLTensor vq = q.t, vk = k.t;
      vq.shape = sq;
      vk.shape = sk;
      vq.data = q.data.data() + cuts[s] * H * D;
      vk.data = k.data.data() + cuts[s] * D;
      const BlockMask alone = select_blocks(vq, vk, topk)[0];
      CHECK(per_seq[size_t(s)].nbq == alone.nbq && per_seq[size_t(s)].nbk == alone.nbk);
      CHECK(per_seq[size_t(s)].bits == alone.bits);
    }
    // Options reach the selection: a negative thread count is refused as elsewhere.
    Options bad;
    bad.num_threads = -1;
    bool threads_refused = false;
    try {
      (void)select_blocks(q.t, k.t, topk, bad);
    } catch (const ValueError&) {
      threads_refused = true;
    }
    CHECK(threads_refused);
  }

  if (failures) std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
