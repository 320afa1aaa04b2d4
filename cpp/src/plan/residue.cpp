#include "plan/residue.hpp"

#include "pattern/kind.hpp"
#include "pattern/node.hpp"

#include <algorithm>

namespace spattn::plan {

namespace {

int64_t floor_mod(int64_t a, int64_t b) {
  const int64_t r = a % b;
  return r < 0 ? r + b : r;
}

// x - delta, keeping "unbounded" unbounded.
int64_t shift(int64_t x, int64_t delta) {
  if (x >= kUnbounded || x <= -kUnbounded) return x;
  return std::clamp(x - delta, -kUnbounded + 1, kUnbounded - 1);
}

}  // namespace

// The rels a leaf keeps, when its kind keeps a lattice d * m, m in [lo, hi].
std::optional<ResidueWindow> lattice(const Pattern& p) {
  const PatternNode& n = p.node();
  ResidueWindow r;
  if (n.is_leaf() && n.kind->rel_lattice(n, &r)) return r;
  return std::nullopt;
}

std::optional<ResidueWindow> residue_form(const Pattern& p) {
  std::optional<ResidueWindow> r = lattice(p);
  if (r && r->d > 1) return r;
  return std::nullopt;
}

namespace {

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

}  // namespace

std::optional<WindowResidueUnion> window_residue_union(const Pattern& p) {
  const PatternNode& n = p.node();
  if (n.op != PatternNode::Op::Union || n.children.size() != 2) return std::nullopt;
  for (int w = 0; w < 2; ++w) {
    const Pattern& win = n.children[size_t(w)];
    const std::optional<ResidueWindow> r = residue_form(n.children[size_t(1 - w)]);
    const std::optional<ResidueWindow> wl = lattice(win);
    if (!wl || wl->d != 1 || !r) continue;
    // The window keeps rel in [-right, left], i.e. the multiples d*m with m in [a, b].
    const int64_t left = wl->hi, right = wl->lo <= -kUnbounded ? kUnbounded : -wl->lo;
    const int64_t a = right >= kUnbounded ? -kUnbounded : -floor_div(right, r->d);
    const int64_t b = left >= kUnbounded ? kUnbounded : floor_div(left, r->d);
    WindowResidueUnion u{win, {}};
    if (r->lo <= std::min(r->hi, a - 1)) u.rest.push_back({r->d, r->lo, std::min(r->hi, a - 1)});
    if (std::max(r->lo, b + 1) <= r->hi) u.rest.push_back({r->d, std::max(r->lo, b + 1), r->hi});
    return u;
  }
  return std::nullopt;
}

bool residue_split_pays(const ResidueWindow& rw, int64_t nq) {
  constexpr int64_t kMinQueriesPerClass = 32;  // half a 64-row tile
  return nq / kMinQueriesPerClass >= rw.d;  // nq >= 32 d, without overflow for a huge d
}

std::vector<ResidueClass> residue_classes(const ResidueWindow& rw, int64_t nq, int64_t nk) {
  std::vector<ResidueClass> out;
  const int64_t off = nk - nq, d = rw.d;
  // One class per residue that holds a query (rows q0 < d)...
  std::vector<char> has_query(size_t(std::min(d, nk)), 0);
  for (int64_t q0 = 0; q0 < std::min(d, nq); ++q0) {
    const int64_t r = floor_mod(q0 + off, d);
    if (r < nk) has_query[size_t(r)] = 1;
    ResidueClass c;
    c.q0 = q0;
    c.nq = (nq - 1 - c.q0) / d + 1;
    c.k0 = r;
    c.nk = r < nk ? (nk - 1 - r) / d + 1 : 0;
    // Query t is row q0 + t*d, key u is row r + u*d: rel = (q0 + off - r) + (t - u) * d, so
    // m = rel / d = base + t - u, while the class's own rel' = t + off' - u = m - delta.
    const int64_t base = (c.q0 + off - r) / d;
    const int64_t delta = base - (c.nk - c.nq);
    // lo <= m <= hi  <=>  lo - delta <= rel' <= hi - delta: SlidingWindow(left=hi', right=-lo').
    const int64_t lo = shift(rw.lo, delta), hi = shift(rw.hi, delta);
    c.window = Pattern::sliding_window(hi, lo <= -kUnbounded ? kUnbounded : -lo);
    out.push_back(c);
  }
  // ...and one without queries for each residue of keys that no query sees (their gradients
  // are zero; a backward pass over the class writes them).
  for (int64_t r = 0; r < std::min(d, nk); ++r)
    if (!has_query[size_t(r)]) {
      ResidueClass c;
      c.k0 = r;
      c.nk = (nk - 1 - r) / d + 1;
      c.window = Pattern::dense();
      out.push_back(c);
    }
  return out;
}

TensorView strided_rows(const TensorView& t, int dim, int64_t start, int64_t count, int64_t step) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + start * t.strides[dim] * ((t.dtype.bits * t.dtype.lanes + 7) / 8);
  v.shape[dim] = count;
  v.strides[dim] = t.strides[dim] * step;
  return v;
}

}  // namespace spattn::plan
