// The table of the text syntax: every name, its parameters (kind, default), aliases and help
// line. Kinds declare theirs in their folder's syntax.inc (gathered by the build into
// spattn/kind_syntax.inc), the combinators in combinators.inc here; `rank` orders them.
#include "syntax/names.hpp"

#include <algorithm>
#include <unordered_map>
#include <utility>

namespace spattn {
namespace syntax {

namespace {

using K = ParamKind;

Param req(const char* name, ParamKind kind) { return Param{name, kind}; }
Param opt_int(const char* name, ParamKind kind, int64_t v) {
  return Param{name, kind, true, Value::Int, v, 0};
}
Param opt_bool(const char* name, ParamKind kind, bool v) {
  return Param{name, kind, true, Value::Bool, v ? 1 : 0, 0};
}
Param opt_none(const char* name, ParamKind kind) { return Param{name, kind, true, Value::None}; }

std::vector<NameSpec> make_table() {
  std::vector<NameSpec> t = {
#include "spattn/kind_syntax.inc"
#include "syntax/combinators.inc"
  };
  std::stable_sort(t.begin(), t.end(),
                   [](const NameSpec& a, const NameSpec& b) { return a.rank < b.rank; });
  return t;
}

struct Index {
  std::unordered_map<std::string_view, const NameSpec*> by_name;  // names and aliases
  std::vector<std::string_view> candidates;  // names in rank order, then aliases (difflib's list)
  std::string known;
};

const Index& index() {
  static const Index ix = [] {
    Index x;
    for (const NameSpec& s : known_names()) {
      x.by_name.emplace(s.name, &s);
      x.candidates.push_back(s.name);
      x.known += (x.known.empty() ? "" : ", ") + std::string(s.name);
    }
    for (const NameSpec& s : known_names())
      for (const char* a : s.aliases) {
        x.by_name.emplace(a, &s);
        x.candidates.push_back(a);
      }
    return x;
  }();
  return ix;
}

// The characters of a and b that difflib's SequenceMatcher matches (no junk): the longest
// common block (earliest in a, then in b), then the same on each side of it.
size_t matched(std::string_view a, std::string_view b) {
  if (a.empty() || b.empty()) return 0;
  size_t best = 0, bi = 0, bj = 0;
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t j = 0; j < b.size(); ++j) {
      cur[j + 1] = a[i] == b[j] ? prev[j] + 1 : 0;
      const size_t k = cur[j + 1];
      // a block ending at (i, j) starts at (i - k + 1, j - k + 1): keep the longest, and of
      // equal ones the earliest start in a, then in b
      if (k > best || (k == best && k > 0 &&
                       (i + 1 - k < bi || (i + 1 - k == bi && j + 1 - k < bj)))) {
        best = k;
        bi = i + 1 - k;
        bj = j + 1 - k;
      }
    }
    std::swap(prev, cur);
  }
  if (best == 0) return 0;
  return best + matched(a.substr(0, bi), b.substr(0, bj)) +
         matched(a.substr(bi + best), b.substr(bj + best));
}

}  // namespace

const std::vector<NameSpec>& known_names() {
  static const std::vector<NameSpec> table = make_table();
  return table;
}

const NameSpec* find_name(std::string_view lower) {
  const auto& m = index().by_name;
  auto it = m.find(lower);
  return it == m.end() ? nullptr : it->second;
}

const std::string& known_list() { return index().known; }

std::string closest_name(std::string_view word) {
  // ratio = 2 * matched / (len(a) + len(b)) >= 0.6 needs len(word) < 2.4 * len(candidate):
  // a longer word matches nothing (and is not worth the quadratic match).
  if (word.size() > 64) return "";
  std::string_view best;
  double best_ratio = 0;
  for (std::string_view c : index().candidates) {
    const double r = 2.0 * double(matched(c, word)) / double(c.size() + word.size());
    // difflib keeps the largest (ratio, candidate) pair
    if (r >= 0.6 && (best.empty() || r > best_ratio || (r == best_ratio && c > best))) {
      best = c;
      best_ratio = r;
    }
  }
  return std::string(best);
}

}  // namespace syntax
}  // namespace spattn
