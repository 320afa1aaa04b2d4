// Patterns: which keys each query sees (SPEC §2). A Pattern is a small value: a shared pointer
// to an immutable tree of nodes (leaves such as windows, unions, intersections, per-head
// choices). Everything that depends on the problem size (the predicate program, BigBird's
// generated blocks, the per-head entry points) lives in a CompiledPattern made by compile().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "spattn/predicate.hpp"

namespace spattn {

struct BlockLayout;

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
  enum class Kind : uint8_t {
    Window,        // Dense, Causal, SlidingWindow
    BlockSparse,
    Dilated,
    Strided,
    Fixed,
    Global,
    Sink,
    BigBird,
    Union,
    Intersection,
    PerHead,
    TopKBlocks,    // learned: key blocks chosen from q and k at run time (select.hpp)
    Neighborhood,  // NATTEN over a row-major grid (grid_rules.hpp)
    SlidingTile,   // whole-tile windows over a tile-major grid
    LongNet,       // LongNet's dilated segments (per head)
  };

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

  // TopKBlocks(k, block_size=(bq, bk), causal, always) (SPEC §2, learned pattern): for every
  // query block of every head, the top k key blocks by pooled score qm . km, plus (causal) the
  // current blocks, plus the `always` pattern (invalid Pattern: none) united in. The blocks
  // depend on the data: select.hpp turns it into a concrete pattern for given q and k, and
  // attention_forward / attention_backward / decode do so themselves. compile() and mask()
  // refuse it (ValueError). It cannot be nested inside other patterns (pass them as always).
  // ValueError for k < 0, non-positive block sizes, or an `always` that is itself learned.
  static Pattern topk_blocks(int64_t k, int64_t bq, int64_t bk, bool causal, Pattern always);

  // Neighborhood(grid, window, dilation, causal, start) (grid_rules.hpp): 1 to 3 dims, one
  // window / dilation / causal flag per dim, window * dilation <= extent, start >= 0.
  static Pattern neighborhood(std::vector<int64_t> grid, std::vector<int64_t> window,
                              std::vector<int64_t> dilation, std::vector<bool> causal,
                              int64_t start);
  // SlidingTile(grid, tile, window_tiles, start): 2 or 3 dims, tile divides grid, window_tiles
  // <= grid / tile per dim.
  static Pattern sliding_tile(std::vector<int64_t> grid, std::vector<int64_t> tile,
                              std::vector<int64_t> window_tiles, int64_t start);
  // LongNet(segments, dilations, causal): as many dilations as segments, each segment a
  // multiple of its dilation; Nq == Nk (checked with the problem).
  static Pattern longnet(std::vector<int64_t> segments, std::vector<int64_t> dilations,
                         bool causal);

  // Wraps a node (used by the combinators).
  static Pattern from_node(std::shared_ptr<const PatternNode> n);
  bool valid() const { return bool(node_); }

  Kind kind() const;
  int64_t left() const;   // Window: bounds
  int64_t right() const;
  const BlockMask* block_mask() const;  // BlockSparse only, else nullptr
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

// One node of a pattern tree (immutable once made).
struct PatternNode {
  Pattern::Kind kind = Pattern::Kind::Window;
  // Window: a = left, b = right. Dilated: a = left, b = right (in keys of the dilated grid,
  // kUnbounded = None), c = dilation. Strided: a = stride, b = causal. Fixed: a = block,
  // b = summary, c = causal. Sink: a = n. BigBird: a = block, b = window, c = globals,
  // d = randoms, e = seed. TopKBlocks: a = k, b = bq, c = bk, d = causal; children: the
  // `always` pattern, or none.
  int64_t a = 0, b = 0, c = 0, d = 0, e = 0;
  std::vector<int64_t> positions;          // Global: sorted, distinct. LongNet: w0, r0, w1, ...
  GridRule grid;                           // Neighborhood, SlidingTile
  LongNetRule longnet;                     // LongNet (its segments in positions)
  std::shared_ptr<const BlockMask> mask;   // BlockSparse
  std::vector<Pattern> children;           // Union, Intersection, PerHead
  bool head_dependent = false;             // some head differs from another
  int64_t head_count = 1;                  // heads it was made for (1 when shared; 0: any)
  // Pattern::compiled()'s cache: logically not part of the (immutable) pattern.
  std::shared_ptr<detail::CompileCache> cache = detail::new_compile_cache();
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

  struct BigBirdData {
    int64_t block, globals, wlo, whi, doff, randoms, nbq, nbk;
    std::vector<int32_t> rnd;  // [nbq, randoms], sorted per row, -1 padding
  };
  const BigBirdData* bigbird(const PatternNode* n) const;

 private:
  CompiledPattern();
  friend class Pattern;
  Pattern pattern_;
  int64_t nq_ = 0, nk_ = 0, hq_ = 1, heads_ = 1;
  std::vector<PredNode> nodes_;
  std::vector<int32_t> head_begin_, head_end_;
  std::vector<std::pair<const PatternNode*, std::unique_ptr<BigBirdData>>> bigbird_;
  struct Derived;  // layout_for and attachment caches (pattern/cache.cpp)
  std::unique_ptr<Derived> derived_;
};

}  // namespace spattn
