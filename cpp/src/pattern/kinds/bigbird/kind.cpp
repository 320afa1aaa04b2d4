// BigBird(block, window, globals, randoms, seed): BigBird's block layout, generated per
// problem size (docs/patterns.md; the exact rule is at Pattern::bigbird in pattern.hpp).
#include <algorithm>

#include "pattern/kind.hpp"

namespace spattn {

namespace {

using namespace blocks;

uint64_t splitmix_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// splitmix64 stream seeded from (seed, row).
struct SplitMix {
  uint64_t s;
  SplitMix(uint64_t seed, uint64_t row) : s(splitmix_mix(seed ^ splitmix_mix(row + 0x9E3779B97F4A7C15ull))) {}
  uint64_t next() {
    s += 0x9E3779B97F4A7C15ull;
    return splitmix_mix(s);
  }
};

// The layout for one problem size: window bounds in blocks, diagonal offset, and each row's
// random blocks.
struct Generated {
  int64_t block, globals, wlo, whi, doff, randoms, nbq, nbk;
  std::vector<int32_t> rnd;  // [nbq, randoms], sorted per row, -1 padding
};

// Its generated rows mapped onto the tile grid, as runs.
void bigbird_row(const RowCtx& x, const Generated& g, Row& out) {
  const int64_t B = g.block;
  const int64_t u0 = x.r0 / B, u1 = x.r1 / B;
  std::vector<std::pair<int64_t, int64_t>> iv, merged;
  std::vector<std::pair<int64_t, int64_t>> acc;  // (kernel block, kept BigBird cells)
  for (int64_t u = u0; u <= u1; ++u) {
    iv.clear();
    if (u < g.globals) {
      iv.push_back({0, g.nbk - 1});
    } else {
      if (g.globals > 0) iv.push_back({0, std::min(g.globals, g.nbk) - 1});
      const int64_t dg = u + g.doff;
      const int64_t a = std::max<int64_t>(0, dg - g.wlo), b = std::min(g.nbk - 1, dg + g.whi);
      if (a <= b) iv.push_back({a, b});
      for (int64_t t = 0; t < g.randoms; ++t) {
        const int32_t w = g.rnd[size_t(u * g.randoms + t)];
        if (w >= 0) iv.push_back({w, w});
      }
      std::sort(iv.begin(), iv.end());
    }
    merged.clear();
    for (auto& s : iv) {
      if (s.first > s.second) continue;
      if (!merged.empty() && s.first <= merged.back().second + 1)
        merged.back().second = std::max(merged.back().second, s.second);
      else
        merged.push_back(s);
    }
    for (auto& s : merged) {
      const int64_t key_lo = s.first * B, key_hi = std::min(x.nk, (s.second + 1) * B) - 1;
      for (int64_t c = key_lo / x.bk; c <= key_hi / x.bk; ++c) {
        const int64_t w0 = x.k0(c) / B, w1 = x.k1(c) / B;
        const int64_t n = std::min(w1, s.second) - std::max(w0, s.first) + 1;
        if (n > 0) acc.push_back({c, n});
      }
    }
  }
  std::sort(acc.begin(), acc.end());
  for (size_t t = 0; t < acc.size();) {
    const int64_t c = acc[t].first;
    int64_t n = 0;
    while (t < acc.size() && acc[t].first == c) n += acc[t++].second;
    const int64_t w0 = x.k0(c) / B, w1 = x.k1(c) / B;
    put(out, c, c + 1, n == (u1 - u0 + 1) * (w1 - w0 + 1) ? kFull : kPartial);
  }
}

struct BigBird : KindDefaults {
  static constexpr const char* kName = "BigBird";
  struct Params {
    int64_t block, window, globals, randoms;
    uint64_t seed;
  };

  static void describe(const Params& p, std::ostream& s) {
    s << "BigBird(block=" << p.block << ", window=" << p.window << ", globals=" << p.globals
      << ", randoms=" << p.randoms << ", seed=" << p.seed << ")";
  }
  static std::shared_ptr<const void> prepare(const Params& p, int64_t nq, int64_t nk);
  static PredNode predicate(const Params&, const void* prepared) {
    const Generated& g = *static_cast<const Generated*>(prepared);
    PredNode n = pred_leaf(rules::bigbird{g.block, g.globals, g.wlo, g.whi, g.doff, g.randoms});
    n.data = g.rnd.data();
    n.data_bytes = int64_t(g.rnd.size() * sizeof(int32_t));
    return n;
  }
  static void block_row(RowCtx& x, const Params&, const void* prepared, int64_t, Row& out) {
    bigbird_row(x, *static_cast<const Generated*>(prepared), out);
  }
};

std::shared_ptr<const Generated> make_bigbird(const BigBird::Params& n, int64_t nq, int64_t nk) {
  auto g = std::make_shared<Generated>();
  const int64_t B = n.block;
  g->block = B;
  g->globals = n.globals;
  g->wlo = (n.window - 1) >= 0 ? (n.window - 1) / 2 : -1;  // Python's (window - 1) // 2
  g->whi = n.window / 2;
  g->doff = detail::floor_div(nk - nq, B);
  g->nbq = ceil_div(nq, B);
  g->nbk = ceil_div(nk, B);
  // A row draws at most nbk distinct blocks: more randoms change nothing but the table's
  // size (randoms = 2^24 on a small problem would ask for gigabytes and loop over them).
  g->randoms = std::min(n.randoms, g->nbk);
  const int64_t R = g->randoms, nbk = g->nbk;
  g->rnd.assign(size_t(g->nbq * R), -1);
  std::vector<int64_t> pick, avail;
  for (int64_t u = 0; u < g->nbq && R > 0; ++u) {
    if (u < g->globals) continue;  // a global row keeps every block already
    const int64_t dg = u + g->doff;
    const int64_t wl = std::max<int64_t>(dg - g->wlo, 0), wh = std::min<int64_t>(dg + g->whi, nbk - 1);
    auto kept = [&](int64_t w) { return w < g->globals || (w >= dg - g->wlo && w <= dg + g->whi); };
    int64_t nkept = std::min(g->globals, nbk);
    const int64_t wl2 = std::max(wl, g->globals);
    if (wh >= wl2) nkept += wh - wl2 + 1;
    const int64_t navail = nbk - nkept;
    pick.clear();
    SplitMix rng(n.seed, uint64_t(u));
    if (navail <= R) {
      for (int64_t w = 0; w < nbk; ++w)
        if (!kept(w)) pick.push_back(w);
    } else {
      // Rejection sampling; falls back to a partial shuffle of the free blocks when unlucky.
      int64_t tries = 0;
      while (int64_t(pick.size()) < R && tries < 64 * R) {
        ++tries;
        const int64_t w = int64_t(rng.next() % uint64_t(nbk));
        if (kept(w) || std::find(pick.begin(), pick.end(), w) != pick.end()) continue;
        pick.push_back(w);
      }
      if (int64_t(pick.size()) < R) {
        avail.clear();
        for (int64_t w = 0; w < nbk; ++w)
          if (!kept(w) && std::find(pick.begin(), pick.end(), w) == pick.end()) avail.push_back(w);
        while (int64_t(pick.size()) < R) {
          const size_t t = size_t(rng.next() % uint64_t(avail.size()));
          pick.push_back(avail[t]);
          avail[t] = avail.back();
          avail.pop_back();
        }
      }
    }
    std::sort(pick.begin(), pick.end());
    for (size_t t = 0; t < pick.size(); ++t) g->rnd[size_t(u * R) + t] = int32_t(pick[t]);
  }
  return g;
}

std::shared_ptr<const void> BigBird::prepare(const Params& p, int64_t nq, int64_t nk) {
  return make_bigbird(p, nq, nk);
}

}  // namespace

Pattern Pattern::bigbird(int64_t block, int64_t window, int64_t globals, int64_t randoms,
                         uint64_t seed) {
  if (block < 1) bad_argument("BigBird: block must be >= 1, got " + std::to_string(block));
  if (window < 0) bad_argument("BigBird: window must be >= 0, got " + std::to_string(window));
  if (globals < 0) bad_argument("BigBird: globals must be >= 0, got " + std::to_string(globals));
  if (randoms < 0) bad_argument("BigBird: randoms must be >= 0, got " + std::to_string(randoms));
  if (randoms > (int64_t(1) << 24)) bad_argument("BigBird: randoms is too large");
  return make_leaf<BigBird>({block, window, globals, randoms, seed});
}

}  // namespace spattn
