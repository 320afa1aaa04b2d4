// The inside of a pattern: the node of a pattern tree (PatternNode) and what a compiled pattern
// holds. Private to the core (the public pattern.hpp only names these types).
//
// A node is a leaf of some kind (kinds/<kind>/, each kind in one folder, see kinds/README.md)
// or a combinator: union, intersection, per-head choice, or the learned TopKBlocks. A leaf
// holds its kind's typed parameters; only that kind's code reads them (params_of<K>()).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "spattn/pattern.hpp"
#include "spattn/predicate.hpp"

namespace spattn {

struct KindOps;  // pattern/kind.hpp

// TopKBlocks(k, block_size=(bq, bk), causal); its `always` pattern is the node's one child.
struct TopKParams {
  int64_t k = 0, bq = 1, bk = 1;
  bool causal = true;
};

struct PatternNode {
  enum class Op : uint8_t { Leaf, Union, Intersection, PerHead, TopKBlocks };
  Op op = Op::Leaf;
  const KindOps* kind = nullptr;         // Leaf: its kind
  std::shared_ptr<const void> params;    // Leaf: the kind's Params; TopKBlocks: TopKParams
  std::vector<Pattern> children;         // Union, Intersection, PerHead, TopKBlocks (always)
  bool head_dependent = false;           // some head differs from another
  int64_t head_count = 1;                // heads it was made for (1 when shared)
  // Pattern::compiled()'s cache: logically not part of the (immutable) pattern.
  std::shared_ptr<detail::CompileCache> cache = detail::new_compile_cache();

  bool is_leaf() const { return op == Op::Leaf; }
  // The parameters of a leaf of kind K (K::Params), or of TopKBlocks (TopKParams).
  template <class P>
  const P& params_as() const { return *static_cast<const P*>(params.get()); }
};

// What compile() made for one problem size: the predicate program, per head, and the data
// leaves prepared for that size (BigBird's random blocks, say), owned here.
struct CompiledPattern::Internals {
  std::vector<PredNode> nodes;
  std::vector<int32_t> head_begin, head_end;
  std::vector<std::pair<const PatternNode*, std::shared_ptr<const void>>> prepared;

  // The data prepared for leaf n (null when its kind prepares none).
  const void* prepared_for(const PatternNode* n) const {
    for (const auto& e : prepared)
      if (e.first == n) return e.second.get();
    return nullptr;
  }
};

}  // namespace spattn
