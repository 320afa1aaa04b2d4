// Patterns: which keys each query sees (docs/patterns.md). A Pattern is a small value: a shared pointer
// to an immutable tree of nodes (leaves such as windows, unions, intersections, per-head
// choices). Everything that depends on the problem size (the predicate program, BigBird's
// generated blocks, the per-head entry points) lives in a CompiledPattern made by compile().
//
// Only the public face is here: the nodes, the predicate program and the kinds' rules are
// private to the library (cpp/src/pattern/, cpp/internal/spattn/predicate.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace spattn {

// "No bound on this side" for window limits (SlidingWindow(None, ...)). Far from INT64_MAX so
// sums cannot overflow.
constexpr int64_t kUnbounded = int64_t(1) << 60;

struct BlockLayout;
struct Predicate;

// A user block layout: [heads, nbq, nbk] bytes (0 or 1), row-major, for bq x bk blocks.
struct BlockMask {
  int64_t heads = 1, nbq = 0, nbk = 0, bq = 1, bk = 1;
  std::vector<uint8_t> bits;
};

class CompiledPattern;
struct PatternNode;

namespace detail {
// The compiled forms of one pattern node, per problem size (pattern/cache.cpp).
struct CompileCache;
std::shared_ptr<CompileCache> new_compile_cache();
}  // namespace detail

class Pattern {
 public:
  // SlidingWindow(None, None): every key.
  static Pattern dense();
  // SlidingWindow(None, 0).
  static Pattern causal();
  // -right <= rel <= left; kUnbounded for "no bound". ValueError when the window is empty
  // (left < -right).
  static Pattern sliding_window(int64_t left, int64_t right);
  // ValueError for non-positive block sizes or a bits array of the wrong size.
  static Pattern block_sparse(BlockMask mask);
  // rel % dilation == 0 and -right*dilation <= rel <= left*dilation; left, right >= 0 or
  // kUnbounded; dilation >= 1.
  static Pattern dilated(int64_t left, int64_t right, int64_t dilation);
  // rel % stride == 0 (and rel >= 0 if causal); stride >= 1.
  static Pattern strided(int64_t stride, bool causal);
  // p // block == j // block or j % block >= block - summary (and rel >= 0 if causal);
  // 1 <= summary <= block.
  static Pattern fixed(int64_t block, int64_t summary, bool causal);
  // j in positions or p in positions; positions >= 0 (duplicates fine).
  static Pattern global(std::vector<int64_t> positions);
  // j < n; n >= 0.
  static Pattern sink(int64_t n);
  // BigBird's block layout, generated per problem size. Query block a = i // block, key block
  // c = j // block (no offset, like BlockSparse), diagonal d(a) = a + floor(off / block).
  // Row a keeps c when d(a) - (window-1)//2 <= c <= d(a) + window//2, or a < globals, or
  // c < globals, or c is one of `randoms` distinct blocks drawn for row a (splitmix64 seeded
  // from (seed, a)) among those not already kept (fewer if fewer remain).
  static Pattern bigbird(int64_t block, int64_t window, int64_t globals, int64_t randoms,
                         uint64_t seed);
  // Union / intersection of one or more patterns.
  static Pattern union_of(std::vector<Pattern> parts);
  static Pattern intersection_of(std::vector<Pattern> parts);
  // Head h uses parts[h]; the problem must have exactly parts.size() query heads.
  static Pattern per_head(std::vector<Pattern> parts);

  // TopKBlocks(k, block_size=(bq, bk), causal, always) (docs/patterns.md, learned pattern): for every
  // query block of every head, the top k key blocks by pooled score qm . km, plus (causal) the
  // current blocks, plus the `always` pattern (invalid Pattern: none) united in. The blocks
  // depend on the data: select.hpp turns it into a concrete pattern for given q and k, and
  // attention_forward / attention_backward / decode do so themselves. compile() and mask()
  // refuse it (ValueError). It cannot be nested inside other patterns (pass them as always).
  // ValueError for k < 0, non-positive block sizes, or an `always` that is itself learned.
  static Pattern topk_blocks(int64_t k, int64_t bq, int64_t bk, bool causal, Pattern always);

  // Wraps a node (used by the combinators).
  static Pattern from_node(std::shared_ptr<const PatternNode> n);
  bool valid() const { return bool(node_); }

  // The tree node (its definition is private to the library).
  const PatternNode& node() const { return *node_; }
  // True for TopKBlocks: the kept pairs depend on q and k, not only on the problem's sizes.
  bool data_dependent() const;

  // 1 when every head uses the same rule, else the number of heads the pattern was made for.
  int64_t heads() const;
  // Human-readable and constructor-like, e.g. "SlidingWindow(255, 0)", "Sink(4) | Causal()".
  std::string describe() const;

  // ValueError unless the pattern fits an Nq x Nk problem with Hq query heads (block layouts
  // sized for the problem with 1 or Hq heads, positions < Nk, PerHead lists of length Hq).
  void check(int64_t nq, int64_t nk, int64_t hq) const;
  // Everything an Nq x Nk problem with Hq heads needs (checks first).
  CompiledPattern compile(int64_t nq, int64_t nk, int64_t hq) const;
  // The same, made once and kept with the pattern (the last few problem sizes it was used
  // with), together with the layouts and device copies derived from it: a call on a pattern
  // seen before with these sizes does no work proportional to N on the host. Checks first.
  // Thread-safe.
  std::shared_ptr<const CompiledPattern> compiled(int64_t nq, int64_t nk, int64_t hq) const;
  // The dense mask [heads, Nq, Nk] as 0/1 bytes: the definition every backend is tested
  // against. Quadratic by nature; for tests and pictures.
  std::vector<uint8_t> mask(int64_t nq, int64_t nk, int64_t heads) const;
  // Row i of head h of that mask [Nk] (linear in Nk: pictures of one query).
  std::vector<uint8_t> mask_row(int64_t nq, int64_t nk, int64_t heads, int64_t h, int64_t i) const;

 private:
  std::shared_ptr<const PatternNode> node_;
  friend struct PatternNode;
  friend class CompiledPattern;
};

// A pattern compiled for one Nq x Nk problem with Hq heads: owns the predicate program and all
// generated data. Move-only; predicate() points into it, so keep it alive while using that.
class CompiledPattern {
 public:
  CompiledPattern(CompiledPattern&&) noexcept;
  CompiledPattern& operator=(CompiledPattern&&) noexcept;
  ~CompiledPattern();
  CompiledPattern(const CompiledPattern&) = delete;
  CompiledPattern& operator=(const CompiledPattern&) = delete;

  int64_t nq() const { return nq_; }
  int64_t nk() const { return nk_; }
  int64_t hq() const { return hq_; }
  // 1 when the rule is the same for every head, else Hq.
  int64_t heads() const { return heads_; }
  const Pattern& pattern() const { return pattern_; }

  // The element rule (spattn/predicate.hpp, private to the library).
  Predicate predicate() const;
  // The block layout for bq x bk tiles, in closed form for structured patterns.
  BlockLayout layout(int64_t bq, int64_t bk) const;
  // Kept (query, key) pairs summed over all Hq heads.
  double kept_pairs() const;

  // layout(bq, bk), computed on first use and kept (thread-safe; the reference stays valid as
  // long as this object).
  const BlockLayout& layout_for(int64_t bq, int64_t bk) const;
  // Data a backend derives from this compiled pattern (a staged or device copy of a layout,
  // say), made by `make` on the first request for `key` and kept as long as this object, which
  // then destroys it. Thread-safe; `make` runs under a lock and must not call back here.
  std::shared_ptr<void> attachment(const std::string& key,
                                   const std::function<std::shared_ptr<void>()>& make) const;

  // The compiled program and prepared data (pattern/node.hpp).
  struct Internals;
  const Internals& internals() const { return *in_; }

 private:
  CompiledPattern();
  friend class Pattern;
  Pattern pattern_;
  int64_t nq_ = 0, nk_ = 0, hq_ = 1, heads_ = 1;
  std::unique_ptr<Internals> in_;
  struct Derived;  // layout_for and attachment caches (pattern/cache.cpp)
  std::unique_ptr<Derived> derived_;
};

}  // namespace spattn

// Factories of the kinds added since (declared in each kind's folder, kinds/<kind>/api.hpp).
#include "spattn/pattern_kinds.hpp"
