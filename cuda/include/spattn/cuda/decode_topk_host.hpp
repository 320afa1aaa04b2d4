// The host's part of TopKBlocks in the CUDA decode (decode_topk_logic.hpp): per sequence, from
// its host length, the checks the CPU decode makes before it chooses (the pattern fits the
// sequence; pooled_keys holds every block the choice scores), the geometry, the always
// pattern's decode layout and the concrete pattern's element rule. Used by the launcher
// (cuda/src/host/decode_topk.cpp) and the host test. Host only; reads the pattern tree.
#pragma once

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "pattern/length_rule.hpp"
#include "pattern/node.hpp"
#include "spattn/cuda/decode_topk_dev_logic.hpp"
#include "spattn/cuda/decode_topk_logic.hpp"
#include "spattn/error.hpp"
#include "spattn/pattern.hpp"
#include "spattn/test_hooks.hpp"

namespace spattn::cuda {

// What the staged call points at: kept alive until the blob is relocated.
struct DecTopkHost {
  std::vector<std::shared_ptr<const CompiledPattern>> keep;
  std::vector<TopkPredicate> preds;
  std::vector<DecTopkSeqIn> in;
  int64_t bq = 1, bk = 1;  // TopKBlocks' blocks
};

// lens: cache_len (host, checked against the capacity); pooled_blocks: the second dimension of
// the caller's pooled_keys, or -1 without them. ValueError with the CPU decode's messages, in
// its order (sequence by sequence: the pattern, then the pooled keys).
inline DecTopkHost dec_topk_inputs(const Pattern& topk, const int64_t* lens, int64_t B, int64_t nq,
                                   int64_t hq, int64_t hkv, int64_t d, int64_t bk,
                                   int64_t pooled_blocks) {
  static const Pattern causal = Pattern::causal();
  const PatternNode& node = topk.node();
  const TopKParams& tp = node.params_as<TopKParams>();
  const bool has_always = !node.children.empty();
  DecTopkHost r;
  r.bq = tp.bq, r.bk = tp.bk;
  r.in.resize(size_t(B));
  r.preds.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t nk = lens[b];
    DecTopkSeqIn& s = r.in[size_t(b)];
    s.g = topk_geom(nq, nk, hq, hkv, d, tp.k, tp.bq, tp.bk, tp.causal);
    if (nk == 0) continue;
    try {
      topk.check(nq, nk, hq);
    } catch (const ValueError& e) {
      std::ostringstream m;
      m << "pattern: does not fit sequence " << b << " (Nq=" << nq << ", cache_len=" << nk
        << "): " << e.what();
      throw ValueError(m.str());
    }
    if (pooled_blocks >= 0 && pooled_blocks < s.g.kmax)
      throw ValueError("pooled_keys: holds " + std::to_string(pooled_blocks) +
                       " key blocks, but the choice scores blocks 0.." +
                       std::to_string(s.g.kmax - 1) + " (blocks of " + std::to_string(tp.bk) +
                       " keys)");
    const auto ccp = causal.compiled(nq, nk, hq);
    const Predicate cp = ccp->predicate();
    if (cp.head_end[0] - cp.head_begin[0] != 1)
      throw RuntimeError("TopKBlocks' selection: Causal() did not compile to one rule");
    r.keep.push_back(ccp);
    Predicate ap;
    if (has_always) {
      const auto acp = node.children[0].compiled(nq, nk, hq);
      r.keep.push_back(acp);
      s.always = &acp->layout_for(nq, bk);
      ap = acp->predicate();
    }
    r.preds[size_t(b)] = topk_predicate(s.g, has_always ? &ap : nullptr, cp.nodes[cp.head_begin[0]]);
    s.pred = &r.preds[size_t(b)];
  }
  return r;
}

// The static part of a TopKBlocks decode planned from device lengths (decode_topk_dev_logic.hpp)
// for Nq queries, hq over hkv heads, head dim d, decode key blocks of bk and lengths up to
// `capacity`: the element rule's template (the chosen leaf's key blocks and mask left to each
// sequence), the always pattern's device program, the bounds at the capacity. False with *why
// when the pattern cannot be planned there: its always pattern's rule depends on the length or
// has no device block rule, or it does not fit these sizes at all (the host path then reports
// it as the CPU does, for the lengths that need it).
inline bool plan_dec_topk_program(const Pattern& topk, int64_t nq, int64_t hq, int64_t hkv,
                                  int64_t d, int64_t bk, int64_t capacity, DecTopkDevProgram* out,
                                  std::string* why) {
  static const Pattern causal = Pattern::causal();
  const PatternNode& node = topk.node();
  const TopKParams& tp = node.params_as<TopKParams>();
  DecTopkDevProgram& P = *out;
  P.has_always = !node.children.empty();
  if (P.has_always) {
    const LengthRule rule = length_rule(node.children[0]);
    if (!rule.free) {
      *why = "its always pattern's rule depends on the length: " + rule.why;
      return false;
    }
    P.min_keys = rule.min_keys;
  }
  P.k = tp.k, P.bq = tp.bq, P.bkt = tp.bk, P.causal = tp.causal;
  P.capacity = capacity, P.nq = nq, P.hq = hq, P.hkv = hkv, P.d = d, P.bk = bk;
  P.gcap = topk_geom(nq, capacity, hq, hkv, d, tp.k, tp.bq, tp.bk, tp.causal);
  P.nkb_cap = (capacity + bk - 1) / bk;
  // One length for which the pattern fits (its rule is the same for all of them).
  const int64_t nk_plan = std::max<int64_t>(std::max<int64_t>(capacity, P.min_keys), 1);
  const TopkGeom gplan = topk_geom(nq, nk_plan, hq, hkv, d, tp.k, tp.bq, tp.bk, tp.causal);
  try {
    const auto ccp = causal.compiled(nq, nk_plan, hq);
    const Predicate cp = ccp->predicate();
    if (cp.head_end[0] - cp.head_begin[0] != 1)
      throw RuntimeError("TopKBlocks' selection: Causal() did not compile to one rule");
    std::shared_ptr<const CompiledPattern> acp;
    Predicate ap;
    if (P.has_always) {
      acp = node.children[0].compiled(nq, nk_plan, hq);
      ap = acp->predicate();
    }
    const TopkPredicate pred =
        topk_predicate(gplan, P.has_always ? &ap : nullptr, cp.nodes[cp.head_begin[0]]);
    BlobWriter w;
    P.pred = stage_predicate(w, pred.view());
    P.chosen = w.put(pred.chosen.data(), pred.chosen.size() * sizeof(int32_t));
    P.nchosen = int64_t(pred.chosen.size());
    w.finish();
    P.blob = std::move(w.bytes);
    int64_t arow = 0;
    if (P.has_always) {
      const int64_t budget = spattn::detail::layout_row_budget(ap.heads);
      if (!plan_decode_program(ap, nq, hq, bk, capacity, budget, &P.always, why)) {
        *why = "its always pattern has no device plan: " + *why;
        return false;
      }
      arow = P.always.row_cap;
    }
    P.row_cap = dec_topk_dev_row_cap(P.gcap, nq, bk, arow);
  } catch (const ValueError& e) {
    *why = std::string("it does not fit these sizes: ") + e.what();
    return false;
  }
  if (P.nkb_cap >= INT32_MAX) {
    *why = "too many key blocks for 32-bit indices";
    return false;
  }
  return true;
}

}  // namespace spattn::cuda
