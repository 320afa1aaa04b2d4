// Residue classes rebuild a dilated/strided mask exactly: for every query, the keys its class's
// window keeps (mapped back to rows) are the keys the rule rel = d*m, lo <= m <= hi keeps.
#include <cstdio>
#include <vector>

#include "plan/residue.hpp"

using namespace spattn;

static bool rule(const plan::ResidueWindow& rw, int64_t i, int64_t j, int64_t off) {
  const int64_t rel = i + off - j;
  if (rel % rw.d != 0) return false;
  const int64_t m = rel / rw.d;
  return m >= rw.lo && m <= rw.hi;
}

int main() {
  int passes = 0, failures = 0;
  const int64_t U = kUnbounded;
  const plan::ResidueWindow windows[] = {{1, -2, 3}, {3, 0, 4}, {4, -2, 2}, {5, 0, U},
                                          {2, -U, U}, {7, -1, 0}, {16, 0, 3}, {100, 0, U}};
  const int64_t sizes[] = {0, 1, 5, 17, 40};
  for (const auto& rw : windows)
    for (int64_t nq : sizes)
      for (int64_t nk : sizes) {
        const int64_t off = nk - nq;
        std::vector<int> got(size_t(nq * nk), 0), covered(size_t(nq), 0), kcov(size_t(nk), 0);
        for (const auto& c : plan::residue_classes(rw, nq, nk)) {
          const std::vector<uint8_t> m = c.window.mask(c.nq, c.nk, 1);
          for (int64_t u = 0; u < c.nk; ++u) kcov[size_t(c.k0 + u * rw.d)] += 1;
          for (int64_t t = 0; t < c.nq; ++t) {
            covered[size_t(c.q0 + t * rw.d)] += 1;
            for (int64_t u = 0; u < c.nk; ++u)
              got[size_t((c.q0 + t * rw.d) * nk + c.k0 + u * rw.d)] += m[size_t(t * c.nk + u)];
          }
        }
        bool ok = true;
        for (int64_t j = 0; j < nk; ++j)
          if (kcov[size_t(j)] != 1) ok = false;
        for (int64_t i = 0; i < nq; ++i) {
          if (covered[size_t(i)] != 1) ok = false;
          for (int64_t j = 0; j < nk; ++j)
            if (got[size_t(i * nk + j)] != (rule(rw, i, j, off) ? 1 : 0)) ok = false;
        }
        if (ok) {
          ++passes;
        } else {
          ++failures;
          std::printf("FAIL d=%lld lo=%lld hi=%lld nq=%lld nk=%lld\n", (long long)rw.d,
                      (long long)rw.lo, (long long)rw.hi, (long long)nq, (long long)nk);
        }
      }
  std::printf("%d passed, %d failed\n", passes, failures);
  return failures ? 1 : 0;
}
