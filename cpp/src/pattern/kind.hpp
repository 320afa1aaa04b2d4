// A pattern kind, host side: how the tree code (pattern.cpp, layout.cpp, plan/residue.cpp)
// reaches a leaf's kind without naming it.
//
// A kind is a struct K in its own folder (kinds/<kind>/kind.cpp; README.md there says how to
// add one) with
//   static constexpr const char* kName;     its name in messages
//   struct Params { ... };                  its typed parameters (kept in the tree node)
//   static void describe(const Params&, std::ostream&);     constructor-like text
//   static PredNode predicate(const Params&, const void* prepared);  its element rule, as a
//       leaf of the predicate program (pred_leaf(rules::<rule>{...}))
//   static void block_row(blocks::RowCtx&, const Params&, const void* prepared, int64_t h,
//                         blocks::Row&);    its closed-form block rule for the current row
// and, where it has them (KindDefaults supplies "none"):
//   static void check(const Params&, int64_t nq, int64_t nk, int64_t hq);  fit to a problem
//   static std::shared_ptr<const void> prepare(const Params&, int64_t nq, int64_t nk);
//       data generated per problem size, handed to predicate() and block_row()
//   static double kept_pairs(const Params&, int64_t nq, int64_t nk, int64_t hq);  closed form
//   static bool rel_lattice(const Params&, ResidueWindow*);  kept rels = d * m, m in [lo, hi]
//   static int64_t min_keys(const Params&);  check() depends on Nk only as "Nk >= min_keys"
//       (Global: its largest position + 1), so that a decode whose lengths live on a device
//       can be planned there (length_free below)
// Its factory makes a leaf with make_leaf<K>(params) after checking the arguments.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>

#include "pattern/block_rows.hpp"
#include "pattern/node.hpp"
#include "spattn/error.hpp"

namespace spattn {

// Keeps rel = d * m for lo <= m <= hi (either bound may be -/+kUnbounded): windows (d = 1),
// and the dilated and strided kinds, which the planner runs by residue class (plan/residue).
struct ResidueWindow {
  int64_t d = 1, lo = -kUnbounded, hi = kUnbounded;
};

// A kind's hooks, type-erased: one static table per kind (kind_ops<K>()).
struct KindOps {
  const char* name;
  void (*describe)(const PatternNode&, std::ostream&);
  void (*check)(const PatternNode&, int64_t nq, int64_t nk, int64_t hq);
  std::shared_ptr<const void> (*prepare)(const PatternNode&, int64_t nq, int64_t nk);
  PredNode (*predicate)(const PatternNode&, const void* prepared);
  void (*block_row)(blocks::RowCtx&, const PatternNode&, const void* prepared, int64_t h,
                    blocks::Row&);
  double (*kept_pairs)(const PatternNode&, int64_t nq, int64_t nk, int64_t hq);  // < 0: none
  bool (*rel_lattice)(const PatternNode&, ResidueWindow*);
  // The rule compiled for one Nk is the rule of every Nk (no prepare), and the fit to a problem
  // depends on Nk at most as Nk >= min_keys: a decode can then be planned on the device from
  // lengths the host never reads (cuda decode; pattern/length_rule.hpp). Detected, not declared.
  bool length_free;
  int64_t (*min_keys)(const PatternNode&);  // 0 without the hook
};

// The optional hooks' defaults (a kind derives from this and declares what it has).
struct KindDefaults {
  template <class P>
  static void check(const P&, int64_t, int64_t, int64_t) {}
  template <class P>
  static std::shared_ptr<const void> prepare(const P&, int64_t, int64_t) {
    return nullptr;
  }
  template <class P>
  static double kept_pairs(const P&, int64_t, int64_t, int64_t) {
    return -1;
  }
  template <class P>
  static bool rel_lattice(const P&, ResidueWindow*) {
    return false;
  }
};

namespace detail {
// Whether K declares its own prepare / check (else the name is KindDefaults' template), and
// whether it has min_keys.
template <class K, class = void>
struct own_prepare : std::true_type {};
template <class K>
struct own_prepare<K, std::void_t<decltype(&K::template prepare<typename K::Params>)>>
    : std::false_type {};
template <class K, class = void>
struct own_check : std::true_type {};
template <class K>
struct own_check<K, std::void_t<decltype(&K::template check<typename K::Params>)>>
    : std::false_type {};
template <class K, class = void>
struct has_min_keys : std::false_type {};
template <class K>
struct has_min_keys<K, std::void_t<decltype(&K::min_keys)>> : std::true_type {};
}  // namespace detail

template <class K>
const KindOps* kind_ops() {
  using P = typename K::Params;
  static const KindOps ops{
      K::kName,
      [](const PatternNode& n, std::ostream& s) { K::describe(n.params_as<P>(), s); },
      [](const PatternNode& n, int64_t nq, int64_t nk, int64_t hq) {
        K::check(n.params_as<P>(), nq, nk, hq);
      },
      [](const PatternNode& n, int64_t nq, int64_t nk) {
        return K::prepare(n.params_as<P>(), nq, nk);
      },
      [](const PatternNode& n, const void* prepared) {
        return K::predicate(n.params_as<P>(), prepared);
      },
      [](blocks::RowCtx& x, const PatternNode& n, const void* prepared, int64_t h,
         blocks::Row& out) { K::block_row(x, n.params_as<P>(), prepared, h, out); },
      [](const PatternNode& n, int64_t nq, int64_t nk, int64_t hq) {
        return K::kept_pairs(n.params_as<P>(), nq, nk, hq);
      },
      [](const PatternNode& n, ResidueWindow* r) { return K::rel_lattice(n.params_as<P>(), r); },
      !detail::own_prepare<K>::value &&
          (!detail::own_check<K>::value || detail::has_min_keys<K>::value),
      [](const PatternNode& n) -> int64_t {
        if constexpr (detail::has_min_keys<K>::value) {
          return K::min_keys(n.params_as<P>());
        } else {
          (void)n;
          return 0;
        }
      },
  };
  return &ops;
}

// A leaf of kind K. head_count > 1: the rule differs per head and is made for that many.
template <class K>
std::shared_ptr<const PatternNode> make_leaf_node(typename K::Params params,
                                                  int64_t head_count = 1) {
  auto n = std::make_shared<PatternNode>();
  n->op = PatternNode::Op::Leaf;
  n->kind = kind_ops<K>();
  n->params = std::make_shared<const typename K::Params>(std::move(params));
  n->head_dependent = head_count != 1;
  n->head_count = head_count;
  return n;
}
template <class K>
Pattern make_leaf(typename K::Params params, int64_t head_count = 1) {
  return Pattern::from_node(make_leaf_node<K>(std::move(params), head_count));
}

// K's parameters when n is a leaf of kind K, else null.
template <class K>
const typename K::Params* params_if(const PatternNode& n) {
  return n.kind == kind_ops<K>() ? &n.params_as<typename K::Params>() : nullptr;
}

// "None" for an unbounded window bound, else the number.
inline std::string bound_str(int64_t x) { return x >= kUnbounded ? "None" : std::to_string(x); }

[[noreturn]] inline void bad_argument(const std::string& what) { throw ValueError(what); }

}  // namespace spattn
