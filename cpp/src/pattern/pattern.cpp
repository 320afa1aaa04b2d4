// The pattern tree: combinators (union, intersection, per-head, TopKBlocks), describe, checks,
// compiling to a predicate program, and the dense mask. Leaves are the kinds (kinds/<kind>/),
// reached only through their KindOps (kind.hpp).
#include "spattn/pattern.hpp"

#include <algorithm>
#include <sstream>

#include "pattern/kind.hpp"
#include "pattern/node.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"

namespace spattn {

namespace {
[[noreturn]] void bad(const std::string& what) { throw ValueError(what); }
}  // namespace

// ------------------------------------------------------------------------------------------
// construction

Pattern Pattern::topk_blocks(int64_t k, int64_t bq, int64_t bk, bool causal, Pattern always) {
  if (k < 0) bad("TopKBlocks: k must be >= 0, got " + std::to_string(k));
  if (bq < 1 || bk < 1)
    bad("TopKBlocks: block_size must be positive, got (" + std::to_string(bq) + ", " +
        std::to_string(bk) + ")");
  if (k > (int64_t(1) << 31)) bad("TopKBlocks: k is too large");
  auto n = std::make_shared<PatternNode>();
  n->op = PatternNode::Op::TopKBlocks;
  n->params = std::make_shared<const TopKParams>(TopKParams{k, bq, bk, causal});
  if (always.valid()) {
    if (always.data_dependent())
      bad("TopKBlocks: always must be a fixed pattern (Sink, SlidingWindow, ...), got " +
          always.describe());
    n->head_dependent = always.node().head_dependent;
    n->head_count = always.node().head_count;
    n->children.push_back(std::move(always));
  }
  return from_node(std::move(n));
}

namespace {
Pattern combine(PatternNode::Op kind, std::vector<Pattern> parts, const char* name) {
  if (parts.empty()) bad(std::string(name) + ": expected at least one pattern");
  auto n = std::make_shared<PatternNode>();
  n->op = kind;
  for (const Pattern& c : parts) {
    if (!c.valid()) bad(std::string(name) + ": an empty pattern");
    if (c.data_dependent())
      bad(std::string(name) + ": " + c.describe() +
          " chooses its blocks from the data and cannot be combined with other patterns; "
          "pass them as its always= argument instead (TopKBlocks(k, always=Sink(4) | ...))");
    if (c.node().head_dependent) {
      // head_count 0: the part's rule differs per head but fits any number of heads (LongNet)
      if (n->head_dependent && n->head_count != c.node().head_count && n->head_count != 0 &&
          c.node().head_count != 0 && kind != PatternNode::Op::PerHead) {
        std::ostringstream m;
        m << name << ": parts are made for different numbers of heads (" << n->head_count
          << " and " << c.node().head_count << ")";
        bad(m.str());
      }
      if (!n->head_dependent || n->head_count == 0) n->head_count = c.node().head_count;
      n->head_dependent = true;
    }
  }
  if (kind == PatternNode::Op::PerHead) {
    n->head_dependent = true;
    n->head_count = int64_t(parts.size());
  }
  n->children = std::move(parts);
  return Pattern::from_node(std::move(n));
}
}  // namespace

Pattern Pattern::union_of(std::vector<Pattern> parts) {
  return combine(PatternNode::Op::Union, std::move(parts), "Union");
}

Pattern Pattern::intersection_of(std::vector<Pattern> parts) {
  return combine(PatternNode::Op::Intersection, std::move(parts), "Intersection");
}

Pattern Pattern::per_head(std::vector<Pattern> parts) {
  if (parts.empty()) bad("PerHead: expected a list of one pattern per query head, got none");
  return combine(PatternNode::Op::PerHead, std::move(parts), "PerHead");
}

Pattern Pattern::from_node(std::shared_ptr<const PatternNode> n) {
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

// ------------------------------------------------------------------------------------------
// accessors

bool Pattern::data_dependent() const { return node_->op == PatternNode::Op::TopKBlocks; }
int64_t Pattern::heads() const {
  return node_->head_dependent && node_->head_count > 0 ? node_->head_count : 1;
}

namespace {
void describe_into(const PatternNode& n, std::ostream& s, bool nested) {
  using Op = PatternNode::Op;
  switch (n.op) {
    case Op::Leaf:
      n.kind->describe(n, s);
      break;
    case Op::Union:
    case Op::Intersection: {
      const char* op = n.op == Op::Union ? " | " : " & ";
      if (n.children.size() == 1) {
        s << (n.op == Op::Union ? "Union([" : "Intersection([");
        describe_into(n.children[0].node(), s, false);
        s << "])";
        break;
      }
      if (nested) s << "(";
      for (size_t x = 0; x < n.children.size(); ++x) {
        if (x) s << op;
        describe_into(n.children[x].node(), s, true);
      }
      if (nested) s << ")";
      break;
    }
    case Op::TopKBlocks: {
      const TopKParams& t = n.params_as<TopKParams>();
      s << "TopKBlocks(k=" << t.k << ", block_size=(" << t.bq << ", " << t.bk << ")";
      if (!t.causal) s << ", causal=False";
      if (!n.children.empty()) {
        s << ", always=";
        describe_into(n.children[0].node(), s, false);
      }
      s << ")";
      break;
    }
    case Op::PerHead:
      s << "PerHead([";
      for (size_t x = 0; x < n.children.size(); ++x) {
        if (x) s << ", ";
        describe_into(n.children[x].node(), s, false);
      }
      s << "])";
      break;
  }
}
}  // namespace

std::string Pattern::describe() const {
  std::ostringstream s;
  describe_into(*node_, s, false);
  return s.str();
}

// ------------------------------------------------------------------------------------------
// checks

namespace {
void check_node(const PatternNode& n, int64_t nq, int64_t nk, int64_t hq) {
  if (n.is_leaf()) {
    n.kind->check(n, nq, nk, hq);
    return;
  }
  if (n.op == PatternNode::Op::PerHead && int64_t(n.children.size()) != hq) {
    std::ostringstream s;
    s << "pattern: PerHead has " << n.children.size()
      << " patterns; expected one per query head, Hq=" << hq;
    throw ValueError(s.str());
  }
  // Union, Intersection, PerHead; TopKBlocks: its always pattern (the chosen blocks fit by
  // making).
  for (const Pattern& c : n.children) check_node(c.node(), nq, nk, hq);
}
}  // namespace

void Pattern::check(int64_t nq, int64_t nk, int64_t hq) const {
  if (nq < 0 || nk < 0 || hq < 1) {
    std::ostringstream s;
    s << "pattern: expected Nq >= 0, Nk >= 0 and Hq >= 1, got Nq=" << nq << ", Nk=" << nk
      << ", Hq=" << hq;
    throw ValueError(s.str());
  }
  check_node(*node_, nq, nk, hq);
}

// ------------------------------------------------------------------------------------------
// compile

namespace {

struct Compiler {
  const CompiledPattern::Internals* in;
  std::vector<PredNode>* out;

  // Emits head h's program for n; returns the stack depth it needs.
  int emit(const PatternNode& n, int64_t h) {
    using Op = PatternNode::Op;
    switch (n.op) {
      case Op::Leaf:
        out->push_back(n.kind->predicate(n, in->prepared_for(&n)));
        return 1;
      case Op::PerHead:
        return emit(n.children[size_t(h)].node(), h);
      case Op::TopKBlocks:  // compile() refuses it before emitting
        throw ValueError("pattern: TopKBlocks has no rule of its own; select(q, k) first");
      case Op::Union:
      case Op::Intersection: {
        int depth = emit(n.children[0].node(), h);
        PredNode op;
        op.kind = n.op == Op::Union ? PredKind::Or : PredKind::And;
        for (size_t c = 1; c < n.children.size(); ++c) {
          depth = std::max(depth, 1 + emit(n.children[c].node(), h));
          out->push_back(op);
        }
        return depth;
      }
    }
    return 0;
  }
};

// Data each leaf needs for this problem size (once per node, however often it appears).
void prepare_leaves(const PatternNode& n, int64_t nq, int64_t nk, CompiledPattern::Internals& in) {
  if (n.is_leaf()) {
    if (in.prepared_for(&n) != nullptr) return;
    std::shared_ptr<const void> data = n.kind->prepare(n, nq, nk);
    if (data) in.prepared.emplace_back(&n, std::move(data));
    return;
  }
  for (const Pattern& c : n.children) prepare_leaves(c.node(), nq, nk, in);
}

}  // namespace

CompiledPattern Pattern::compile(int64_t nq, int64_t nk, int64_t hq) const {
  check(nq, nk, hq);
  if (data_dependent())
    throw ValueError("pattern: " + describe() +
                     " chooses its key blocks from q and k, so it has no mask or block layout "
                     "of its own; select(q, k) gives the concrete pattern for given inputs");
  CompiledPattern cp;
  cp.pattern_ = *this;
  cp.nq_ = nq;
  cp.nk_ = nk;
  cp.hq_ = hq;
  cp.heads_ = node_->head_dependent ? hq : 1;
  CompiledPattern::Internals& in = *cp.in_;
  prepare_leaves(*node_, nq, nk, in);
  Compiler c{&in, &in.nodes};
  for (int64_t h = 0; h < cp.heads_; ++h) {
    in.head_begin.push_back(int32_t(in.nodes.size()));
    const int depth = c.emit(*node_, h);
    if (depth > kMaxPredDepth)
      throw ValueError("pattern nested too deeply: its rule needs a stack of " +
                       std::to_string(depth) + " (at most " + std::to_string(kMaxPredDepth) +
                       "); flatten unions and intersections");
    in.head_end.push_back(int32_t(in.nodes.size()));
  }
  return cp;
}

Predicate CompiledPattern::predicate() const {
  Predicate p;
  p.off = nk_ - nq_;
  p.nodes = in_->nodes.data();
  p.head_begin = in_->head_begin.data();
  p.head_end = in_->head_end.data();
  p.heads = heads_;
  return p;
}

std::vector<uint8_t> Pattern::mask(int64_t nq, int64_t nk, int64_t heads) const {
  if (nq < 0 || nk < 0 || heads < 1)
    throw ValueError("mask: expected Nq >= 0, Nk >= 0 and heads >= 1, got Nq=" +
                     std::to_string(nq) + ", Nk=" + std::to_string(nk) +
                     ", heads=" + std::to_string(heads));
  const CompiledPattern cp = compile(nq, nk, heads);
  const Predicate pred = cp.predicate();
  std::vector<uint8_t> out(size_t(heads * nq * nk));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < nq; ++i) {
      uint8_t* row = out.data() + (h * nq + i) * nk;
      for (int64_t j = 0; j < nk; ++j) row[j] = keeps(pred, h, i, j) ? 1 : 0;
    }
  return out;
}

std::vector<uint8_t> Pattern::mask_row(int64_t nq, int64_t nk, int64_t heads, int64_t h,
                                       int64_t i) const {
  if (nq < 0 || nk < 0 || heads < 1 || h < 0 || h >= heads || i < 0 || i >= nq)
    throw ValueError("mask_row: expected 0 <= head < heads and 0 <= i < Nq, got Nq=" +
                     std::to_string(nq) + ", Nk=" + std::to_string(nk) + ", heads=" +
                     std::to_string(heads) + ", head=" + std::to_string(h) + ", i=" +
                     std::to_string(i));
  const CompiledPattern cp = compile(nq, nk, heads);
  const Predicate pred = cp.predicate();
  std::vector<uint8_t> out(static_cast<size_t>(nk));
  for (int64_t j = 0; j < nk; ++j) out[size_t(j)] = keeps(pred, h, i, j) ? 1 : 0;
  return out;
}

}  // namespace spattn
