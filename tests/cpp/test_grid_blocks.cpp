// The closed-form block rules of Neighborhood / SlidingTile and LongNet
// (pattern/kinds/neighborhood/grid_blocks.hpp, pattern/kinds/longnet/blocks.hpp) against brute
// force over their element rules (the kinds' rule.hpp): for every tile and block size tried, a
// block meets K exactly when it keeps some pair, and lies in F exactly when every pair is kept.
// Also the per-row counts and the row intervals.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "pattern/kinds/longnet/blocks.hpp"
#include "pattern/kinds/neighborhood/grid_blocks.hpp"

using namespace spattn;
using detail::KeyIv;

namespace {

int failures = 0;

#define EXPECT(c, ...)                        \
  do {                                        \
    if (!(c)) {                               \
      std::fprintf(stderr, __VA_ARGS__);      \
      std::fprintf(stderr, "  [%s]\n", #c);   \
      if (++failures > 20) std::exit(1);      \
    }                                         \
  } while (0)

bool in(const std::vector<KeyIv>& v, int64_t j) {
  for (const KeyIv& x : v)
    if (x.lo <= j && j <= x.hi) return true;
  return false;
}

// rows_keys(p0, p1, bk, K, F) against keeps(p, j) on an n x n problem.
void check_rule(const char* what, int64_t n, int64_t bq, int64_t bk,
                const std::function<void(int64_t, int64_t, int64_t, std::vector<KeyIv>&,
                                         std::vector<KeyIv>&)>& tile_keys,
                const std::function<bool(int64_t, int64_t)>& keeps, bool f_exact) {
  std::vector<KeyIv> K, F;
  for (int64_t p0 = 0; p0 < n; p0 += bq) {
    const int64_t p1 = std::min(n, p0 + bq) - 1;
    tile_keys(p0, p1, bk, K, F);
    for (int64_t c0 = 0; c0 < n; c0 += bk) {
      const int64_t c1 = std::min(n, c0 + bk) - 1;
      bool any = false, all = true, meets = false, inside = true;
      for (int64_t j = c0; j <= c1; ++j) {
        meets = meets || in(K, j);
        inside = inside && in(F, j);
        for (int64_t p = p0; p <= p1; ++p) {
          const bool k = keeps(p, j);
          any = any || k;
          all = all && k;
        }
      }
      EXPECT(meets == any, "%s n=%lld b=%lldx%lld rows %lld..%lld keys %lld..%lld: K meets %d, kept %d",
             what, (long long)n, (long long)bq, (long long)bk, (long long)p0, (long long)p1,
             (long long)c0, (long long)c1, meets, any);
      EXPECT(!inside || all, "%s rows %lld..%lld keys %lld..%lld: in F but not full", what,
             (long long)p0, (long long)p1, (long long)c0, (long long)c1);
      if (f_exact)
        EXPECT(inside == all, "%s rows %lld..%lld keys %lld..%lld: full but not in F", what,
               (long long)p0, (long long)p1, (long long)c0, (long long)c1);
    }
  }
}

using GridRule = rules::neighborhood;

bool grid_keeps(const GridRule& g, int64_t p, int64_t j) { return g.keeps(nullptr, 0, 0, j, p); }

GridRule grid(std::vector<int> n, std::vector<int> w, std::vector<int> d, int causal, int64_t start,
              int64_t tile = 1) {
  GridRule g{};
  for (int t = 0; t < 3; ++t) g.n[t] = g.w[t] = g.d[t] = 1;
  g.ndim = int32_t(n.size());
  g.causal = causal;
  g.start = start;
  g.tile = tile;
  g.size = tile;
  for (size_t t = 0; t < n.size(); ++t) {
    g.n[t] = n[t];
    g.w[t] = w[t];
    g.d[t] = d[t];
    g.size *= n[t];
  }
  return g;
}

void check_grid(const char* what, const GridRule& g, int64_t n) {
  for (auto [bq, bk] : {std::pair<int64_t, int64_t>{1, 1}, {4, 4}, {16, 16}, {8, 3}, {5, 13}, {64, 64}}) {
    check_rule(
        what, n, bq, bk,
        [&](int64_t p0, int64_t p1, int64_t b, std::vector<KeyIv>& K, std::vector<KeyIv>& F) {
          detail::grid_tile_keys(g, p0, p1, n, b, K, F);
        },
        [&](int64_t p, int64_t j) { return grid_keeps(g, p, j); }, true);
  }
  // grid_row_interval: when it answers, exactly the kept keys of the block
  int answered = 0;
  for (int64_t bk : {1, 3, 7, 16, 64})
    for (int64_t j0 = 0; j0 < n; j0 += bk)
      for (int64_t p = 0; p < n; ++p) {
        const int64_t j1 = std::min(n, j0 + bk) - 1;
        int64_t lo, hi;
        if (!g.row_interval(nullptr, 0, p, j0, j1, &lo, &hi)) continue;
        ++answered;
        for (int64_t j = j0; j <= j1; ++j)
          EXPECT(grid_keeps(g, p, j) == (j >= lo && j <= hi),
                 "%s row %lld keys %lld..%lld: interval [%lld, %lld] wrong at %lld", what,
                 (long long)p, (long long)j0, (long long)j1, (long long)lo, (long long)hi, (long long)j);
      }
  EXPECT(answered > 0 || g.d[g.ndim - 1] != 1, "%s: grid_row_interval never answered", what);
  // rows_interval (a tile's rows at once, walking coordinates): row_interval's answers, for
  // runs of rows starting anywhere (before the grid too) and blocks of any size
  for (int64_t bk : {1, 5, 16, 64})
    for (int64_t j0 = 0; j0 < n; j0 += bk)
      for (int rows : {1, 7, 16, 64})
        for (int64_t p0 = -3; p0 < n; p0 += 5) {
          const int64_t j1 = std::min(n, j0 + bk) - 1;
          int64_t lo[64], hi[64];
          const bool all = g.rows_interval(nullptr, 0, p0, rows, j0, j1, lo, hi);
          bool each = true;
          for (int r = 0; r < rows; ++r) {
            int64_t l, h;
            if (!g.row_interval(nullptr, 0, p0 + r, j0, j1, &l, &h)) {
              each = false;
              continue;
            }
            if (!all) continue;
            const bool empty = l > h, got_empty = lo[r] > hi[r];
            EXPECT(empty == got_empty && (empty || (l == lo[r] && h == hi[r])),
                   "%s rows_interval row %lld keys %lld..%lld: [%lld, %lld], row_interval [%lld, %lld]",
                   what, (long long)(p0 + r), (long long)j0, (long long)j1, (long long)lo[r],
                   (long long)hi[r], (long long)l, (long long)h);
          }
          EXPECT(all == each, "%s rows_interval from %lld (%d rows) keys %lld..%lld: answered %d, rows %d",
                 what, (long long)p0, rows, (long long)j0, (long long)j1, all, each);
        }
  for (int64_t p = 0; p < n; ++p) {
    int64_t c = 0;
    for (int64_t j = 0; j < n; ++j) c += grid_keeps(g, p, j);
    EXPECT(c == detail::grid_row_count(g, p, n), "%s row %lld: count %lld, closed form %lld", what,
           (long long)p, (long long)c, (long long)detail::grid_row_count(g, p, n));
  }
}

void check_longnet(const char* what, std::vector<int64_t> wr, bool causal, int64_t n, int64_t heads) {
  rules::longnet l{};
  l.count = int32_t(wr.size() / 2);
  l.causal = causal;
  auto longnet_keeps = [](const rules::longnet& r, const int64_t* w, int64_t h, int64_t p, int64_t j) {
    return r.keeps(w, h, 0, j, p);
  };
  for (int64_t h = 0; h < heads; ++h)
    for (auto [bq, bk] : {std::pair<int64_t, int64_t>{1, 1}, {4, 4}, {16, 16}, {8, 3}, {2, 32}, {64, 64}})
      check_rule(
          what, n, bq, bk,
          [&](int64_t p0, int64_t p1, int64_t b, std::vector<KeyIv>& K, std::vector<KeyIv>& F) {
            detail::longnet_tile_keys(l, wr.data(), h, p0, p1, n, b, K, F);
          },
          [&](int64_t p, int64_t j) { return longnet_keeps(l, wr.data(), h, p, j); }, bq == 1);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t p = 0; p < n; ++p) {
      int64_t c = 0;
      for (int64_t j = 0; j < n; ++j) c += longnet_keeps(l, wr.data(), h, p, j);
      const int64_t got = detail::longnet_row_count(l, wr.data(), h, p, n);
      EXPECT(c == got, "%s head %lld row %lld: count %lld, closed form %lld", what, (long long)h,
             (long long)p, (long long)c, (long long)got);
    }
}

}  // namespace

int main() {
  check_grid("1d", grid({13}, {5}, {1}, 0, 0), 13);
  check_grid("1d even", grid({13}, {4}, {1}, 0, 0), 13);
  check_grid("1d dil", grid({13}, {4}, {3}, 0, 0), 13);
  check_grid("1d causal dil", grid({14}, {3}, {2}, 1, 0), 14);
  check_grid("2d", grid({9, 11}, {3, 3}, {1, 1}, 0, 0), 99);
  check_grid("2d dil", grid({9, 11}, {3, 4}, {2, 1}, 0, 0), 99);
  check_grid("2d dil last", grid({8, 9}, {2, 4}, {1, 2}, 0, 0), 72);
  check_grid("2d causal", grid({7, 10}, {3, 3}, {1, 1}, 1, 0), 70);
  check_grid("2d causal both", grid({8, 8}, {4, 4}, {1, 1}, 3, 0), 64);
  check_grid("3d", grid({4, 5, 6}, {3, 3, 3}, {1, 1, 1}, 0, 0), 120);
  check_grid("3d mixed", grid({5, 4, 7}, {2, 3, 3}, {2, 1, 2}, 1, 0), 140);
  check_grid("2d offset", grid({4, 5}, {3, 3}, {1, 1}, 0, 17), 50);
  check_grid("tiles 2d", grid({2, 3}, {1, 3}, {1, 1}, 0, 0, 16), 96);
  check_grid("tiles 3d", grid({2, 3, 2}, {1, 2, 2}, {1, 1, 1}, 0, 5, 8), 110);
  check_longnet("longnet", {8, 1, 16, 2}, true, 64, 2);
  check_longnet("longnet 3", {4, 1, 16, 4, 32, 8}, true, 97, 8);
  check_longnet("longnet bidir", {6, 2, 12, 3}, false, 50, 6);
  check_longnet("longnet odd", {12, 3, 24, 4}, true, 61, 4);
  check_longnet("longnet unnested", {10, 2, 12, 3, 30, 5}, false, 67, 6);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("test_grid_blocks: ok\n");
  return 0;
}
