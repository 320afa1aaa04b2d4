// Compiled patterns kept with their pattern (Pattern::compiled), and what is derived from them
// (CompiledPattern::layout_for, ::attachment).
//
// Why: a model calls attention with the same pattern and sizes thousands of times. Compiling the
// predicate, the block layout (O(blocks kept) host work) and, on a GPU, staging and uploading it
// each time cost more than the kernel for sparse patterns (12.5 ms against 0.87 ms at 16K for a
// random block layout, before this cache). Now the first call pays and later ones look up.
//
// Bounds: each pattern keeps its last kEntries problem sizes (a varlen batch of many lengths
// cycles through them, recompiling as before, never growing). An entry lives as long as its
// pattern or until it is pushed out; device memory it owns is freed then (attachments own it).
#include <algorithm>
#include <mutex>
#include <utility>

#include "spattn/layout.hpp"
#include "spattn/pattern.hpp"
#include "pattern/node.hpp"

namespace spattn {

namespace detail {

struct CompileCache {
  static constexpr size_t kEntries = 32;
  struct Entry {
    int64_t nq, nk, hq;
    std::shared_ptr<const CompiledPattern> cp;
  };
  std::mutex m;
  std::vector<Entry> entries;  // most recently used last
};

std::shared_ptr<CompileCache> new_compile_cache() { return std::make_shared<CompileCache>(); }

}  // namespace detail

struct CompiledPattern::Derived {
  std::mutex m;
  std::vector<std::pair<std::pair<int64_t, int64_t>, std::unique_ptr<BlockLayout>>> layouts;
  std::vector<std::pair<std::string, std::shared_ptr<void>>> attachments;
};

CompiledPattern::CompiledPattern()
    : in_(std::make_unique<Internals>()), derived_(std::make_unique<Derived>()) {}
CompiledPattern::CompiledPattern(CompiledPattern&&) noexcept = default;
CompiledPattern& CompiledPattern::operator=(CompiledPattern&&) noexcept = default;
CompiledPattern::~CompiledPattern() {
  // Attachments may hold device memory that reads the predicate data: free them first.
  if (derived_) derived_->attachments.clear();
}

std::shared_ptr<const CompiledPattern> Pattern::compiled(int64_t nq, int64_t nk,
                                                         int64_t hq) const {
  check(nq, nk, hq);
  detail::CompileCache& c = *node_->cache;
  {
    std::lock_guard<std::mutex> lock(c.m);
    for (size_t i = 0; i < c.entries.size(); ++i) {
      const auto& e = c.entries[i];
      if (e.nq == nq && e.nk == nk && e.hq == hq) {
        std::rotate(c.entries.begin() + i, c.entries.begin() + i + 1, c.entries.end());
        return c.entries.back().cp;
      }
    }
  }
  // Compile outside the lock: other sizes of this pattern need not wait. Two threads compiling
  // the same size at once both succeed; the second insert finds the first and uses it.
  CompiledPattern made = compile(nq, nk, hq);
  // The cache lives in this pattern's node, and a compiled pattern holds its pattern: an owning
  // reference would be a cycle (node -> cache -> compiled -> node) that is never freed. The
  // cached one refers to the node without owning it; every user of it holds the pattern.
  made.pattern_.node_ = std::shared_ptr<const PatternNode>(std::shared_ptr<const PatternNode>(),
                                                           node_.get());
  auto cp = std::make_shared<const CompiledPattern>(std::move(made));
  std::lock_guard<std::mutex> lock(c.m);
  for (const auto& e : c.entries)
    if (e.nq == nq && e.nk == nk && e.hq == hq) return e.cp;
  if (c.entries.size() == detail::CompileCache::kEntries) c.entries.erase(c.entries.begin());
  c.entries.push_back({nq, nk, hq, cp});
  return cp;
}

const BlockLayout& CompiledPattern::layout_for(int64_t bq, int64_t bk) const {
  std::lock_guard<std::mutex> lock(derived_->m);
  for (const auto& e : derived_->layouts)
    if (e.first.first == bq && e.first.second == bk) return *e.second;
  derived_->layouts.emplace_back(std::make_pair(bq, bk),
                                 std::make_unique<BlockLayout>(layout(bq, bk)));
  return *derived_->layouts.back().second;
}

std::shared_ptr<void> CompiledPattern::attachment(
    const std::string& key, const std::function<std::shared_ptr<void>()>& make) const {
  std::lock_guard<std::mutex> lock(derived_->m);
  for (const auto& e : derived_->attachments)
    if (e.first == key) return e.second;
  std::shared_ptr<void> v = make();
  derived_->attachments.emplace_back(key, v);
  return v;
}

}  // namespace spattn
