// length_rule (length_rule.hpp): a walk over the pattern tree.
#include "pattern/length_rule.hpp"

#include <algorithm>

#include "pattern/kind.hpp"
#include "pattern/node.hpp"

namespace spattn {

namespace {

void walk(const PatternNode& n, LengthRule& r) {
  if (!r.free) return;
  if (n.is_leaf()) {
    if (!n.kind->length_free) {
      r.free = false;
      r.why = std::string("its ") + n.kind->name +
              " leaf depends on the cache length (data made per length, or a fit to one length)";
      return;
    }
    r.min_keys = std::max(r.min_keys, n.kind->min_keys(n));
    return;
  }
  if (n.op == PatternNode::Op::TopKBlocks) {
    r.free = false;
    r.why = "TopKBlocks chooses its blocks from q and k";
    return;
  }
  for (const Pattern& c : n.children) walk(c.node(), r);
}

}  // namespace

LengthRule length_rule(const Pattern& p) {
  LengthRule r;
  r.free = true;
  walk(p.node(), r);
  if (!r.free) r.min_keys = 0;
  return r;
}

}  // namespace spattn
