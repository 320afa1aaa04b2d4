// Residue classes: running a dilated or strided pattern as ordinary window problems.
//
// A pattern that keeps rel = d * m for m in [lo, hi] (Dilated(left, right, d): m in [-right,
// left]; Strided(s, causal): m >= 0 or any m) has no full blocks in a plain block walk. But
// query i only ever sees keys j with j = i + off (mod d): the queries with (i + off) % d == r
// and the keys with j % d == r form an ordinary problem on row-strided views (stride d rows, no
// copy), in which the pattern is a sliding window. Every query and every key belongs to exactly
// one class, so the classes' outputs and gradients are disjoint: no merge is needed.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "pattern/kind.hpp"
#include "spattn/pattern.hpp"
#include "spattn/tensor.hpp"

namespace spattn::plan {

// Keeps rel = d * m for lo <= m <= hi (either bound may be -/+kUnbounded); a kind's
// rel_lattice (pattern/kind.hpp).
using spattn::ResidueWindow;

// The residue form of a leaf whose kind keeps a lattice of rels with d > 1 (Dilated with
// dilation > 1, Strided with stride > 1); none for every other pattern (unions, per-head patterns and the rest walk their block layout).
std::optional<ResidueWindow> residue_form(const Pattern& p);

// Whether running the classes beats the block walk for an Nq-query problem: each class must
// hold enough queries to fill tiles, else the walk (which skips blocks with no kept pair) wins.
bool residue_split_pays(const ResidueWindow& rw, int64_t nq);

// Window | residue pattern (the Sparse Transformer's "local + strided" heads, say): the union
// splits into disjoint parts, the window walked as usual and the residue pattern's pairs
// outside the window, which are again at most two residue windows. Results merge exactly
// through their logsumexps (spattn/merge.hpp).
struct WindowResidueUnion {
  Pattern window;
  std::vector<ResidueWindow> rest;  // the residue pattern minus the window: 0 to 2 parts
};
// For a two-part union of a window (a lattice with d = 1) and a residue leaf; none otherwise.
std::optional<WindowResidueUnion> window_residue_union(const Pattern& p);

// One class: queries q0, q0 + d, ... (nq of them), keys k0, k0 + d, ... (nk), and the window
// the pattern becomes in the class's own (bottom-right aligned) coordinates.
struct ResidueClass {
  int64_t q0 = 0, nq = 0, k0 = 0, nk = 0;
  Pattern window;
};

// The classes of an Nq x Nk problem: one per residue holding a query, then one with nq = 0 per
// residue whose keys no query sees. Together they cover every query and every key once.
std::vector<ResidueClass> residue_classes(const ResidueWindow& rw, int64_t nq, int64_t nk);

// rows count of t along dimension dim, starting at row start, every step-th row: a view.
TensorView strided_rows(const TensorView& t, int dim, int64_t start, int64_t count, int64_t step);

}  // namespace spattn::plan
