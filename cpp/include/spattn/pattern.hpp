// Patterns: which keys each query sees (SPEC §2). A Pattern is a small value (cheap to copy;
// a user block layout is shared, not copied) that answers three questions: its element rule
// (predicate), its compiled block layout (layout.hpp) and its dense mask (for tests).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "spattn/predicate.hpp"

namespace spattn {

// A user block layout: [heads, nbq, nbk] bytes (0 or 1), row-major, for bq x bk blocks.
struct BlockMask {
  int64_t heads = 1, nbq = 0, nbk = 0, bq = 1, bk = 1;
  std::vector<uint8_t> bits;
};

class Pattern {
 public:
  enum class Kind : uint8_t { Window, BlockSparse };

  // SlidingWindow(None, None): every key.
  static Pattern dense();
  // SlidingWindow(None, 0).
  static Pattern causal();
  // -right <= rel <= left; kUnbounded for "no bound". ValueError when the window is empty
  // (left < -right).
  static Pattern sliding_window(int64_t left, int64_t right);
  // ValueError for non-positive block sizes or a bits array of the wrong size.
  static Pattern block_sparse(BlockMask mask);

  Kind kind() const { return kind_; }
  int64_t left() const { return left_; }
  int64_t right() const { return right_; }
  const BlockMask* block_mask() const { return mask_.get(); }

  // 1 when every head uses the same rule, else the number of heads the pattern was made for.
  int64_t heads() const;
  // Human-readable, e.g. "SlidingWindow(255, 0)".
  std::string describe() const;

  // ValueError unless the pattern fits an Nq x Nk problem with Hq query heads (a block
  // layout must cover ceil(Nq/bq) x ceil(Nk/bk) blocks and have 1 or Hq heads).
  void check(int64_t nq, int64_t nk, int64_t hq) const;
  // The element rule for an Nq x Nk problem. Points into this pattern's data: keep the
  // pattern alive while the predicate is used.
  Predicate predicate(int64_t nq, int64_t nk) const;
  // The dense mask [heads, Nq, Nk] as 0/1 bytes: the definition every backend is tested
  // against. Quadratic by nature; for tests and pictures.
  std::vector<uint8_t> mask(int64_t nq, int64_t nk, int64_t heads) const;

 private:
  Kind kind_ = Kind::Window;
  int64_t left_ = kUnbounded, right_ = kUnbounded;
  std::shared_ptr<const BlockMask> mask_;
};

}  // namespace spattn
