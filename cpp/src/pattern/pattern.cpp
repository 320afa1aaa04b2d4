// Pattern construction, checks against a problem, compiling to a predicate program (and
// BigBird's generated blocks), and the dense mask.
#include "spattn/pattern.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>

#include "pattern/grid_kinds.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"

namespace spattn {

namespace {

int64_t clamp_bound(int64_t x) { return std::min(x, kUnbounded); }

std::string bound_str(int64_t x) { return x >= kUnbounded ? "None" : std::to_string(x); }

// (a + b - 1) / b for b >= 1, without forming a + b when a > 0 (b may be as large as int64
// allows).
int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? 1 + (a - 1) / b : (a + b - 1) / b; }

[[noreturn]] void bad(const std::string& what) { throw ValueError(what); }

uint64_t splitmix_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// splitmix64 stream seeded from (seed, row).
struct SplitMix {
  uint64_t s;
  SplitMix(uint64_t seed, uint64_t row) : s(splitmix_mix(seed ^ splitmix_mix(row + 0x9E3779B97F4A7C15ull))) {}
  uint64_t next() {
    s += 0x9E3779B97F4A7C15ull;
    return splitmix_mix(s);
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------
// construction

namespace {
Pattern::Kind kWindow = Pattern::Kind::Window;
}

Pattern Pattern::dense() { return sliding_window(kUnbounded, kUnbounded); }

Pattern Pattern::causal() { return sliding_window(kUnbounded, 0); }

Pattern Pattern::sliding_window(int64_t left, int64_t right) {
  left = clamp_bound(left);
  right = clamp_bound(right);
  if (left < -kUnbounded || right < -kUnbounded || left < -right) {
    std::ostringstream m;
    m << "SlidingWindow: the window -right <= rel <= left is empty for left=" << bound_str(left)
      << ", right=" << bound_str(right) << "; expected left >= -right";
    throw ValueError(m.str());
  }
  // Windows are interned: every SlidingWindow(left, right) alive in the process is one node, so
  // they share one compile cache (pattern/cache.cpp). That is what lets the planner's own
  // windows (residue classes, made anew on every call) and a `Causal()` written inline in a
  // model's forward find their layouts already compiled and uploaded.
  static std::mutex intern_mutex;
  static std::map<std::pair<int64_t, int64_t>, std::weak_ptr<const PatternNode>> interned;
  std::lock_guard<std::mutex> lock(intern_mutex);
  if (interned.size() > 4096)  // drop the windows nobody holds any more
    for (auto it = interned.begin(); it != interned.end();)
      it = it->second.expired() ? interned.erase(it) : std::next(it);
  std::weak_ptr<const PatternNode>& slot = interned[{left, right}];
  std::shared_ptr<const PatternNode> found = slot.lock();
  if (!found) {
    auto n = std::make_shared<PatternNode>();
    n->kind = kWindow;
    n->a = left;
    n->b = right;
    found = std::move(n);
    slot = found;
  }
  Pattern p;
  p.node_ = std::move(found);
  return p;
}

Pattern Pattern::block_sparse(BlockMask mask) {
  std::ostringstream m;
  if (mask.bq <= 0 || mask.bk <= 0) {
    m << "BlockSparse: block_size must be positive, got (" << mask.bq << ", " << mask.bk << ")";
    throw ValueError(m.str());
  }
  if (mask.heads <= 0 || mask.nbq < 0 || mask.nbk < 0) {
    m << "BlockSparse: layout must be [heads >= 1, query blocks, key blocks], got [" << mask.heads
      << ", " << mask.nbq << ", " << mask.nbk << "]";
    throw ValueError(m.str());
  }
  if (int64_t(mask.bits.size()) != mask.heads * mask.nbq * mask.nbk) {
    m << "BlockSparse: layout holds " << mask.bits.size() << " entries, expected "
      << mask.heads * mask.nbq * mask.nbk;
    throw ValueError(m.str());
  }
  for (auto& b : mask.bits) b = b ? 1 : 0;
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::BlockSparse;
  n->head_dependent = mask.heads != 1;
  n->head_count = mask.heads;
  n->mask = std::make_shared<const BlockMask>(std::move(mask));
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::dilated(int64_t left, int64_t right, int64_t dilation) {
  left = clamp_bound(left);
  right = clamp_bound(right);
  if (left < 0) bad("Dilated: left must be >= 0 or None, got " + std::to_string(left));
  if (right < 0) bad("Dilated: right must be >= 0 or None, got " + std::to_string(right));
  if (dilation < 1) bad("Dilated: dilation must be >= 1, got " + std::to_string(dilation));
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::Dilated;
  n->a = left;
  n->b = right;
  n->c = dilation;
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::strided(int64_t stride, bool causal) {
  if (stride < 1) bad("Strided: stride must be >= 1, got " + std::to_string(stride));
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::Strided;
  n->a = stride;
  n->b = causal ? 1 : 0;
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::fixed(int64_t block, int64_t summary, bool causal) {
  if (block < 1) bad("Fixed: block must be >= 1, got " + std::to_string(block));
  if (summary < 1 || summary > block)
    bad("Fixed: summary must be in 1..block=" + std::to_string(block) + ", got " +
        std::to_string(summary));
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::Fixed;
  n->a = block;
  n->b = summary;
  n->c = causal ? 1 : 0;
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::global(std::vector<int64_t> positions) {
  for (int64_t x : positions)
    if (x < 0) bad("Global: positions must be >= 0, got " + std::to_string(x));
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::Global;
  n->positions = std::move(positions);
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::sink(int64_t count) {
  if (count < 0) bad("Sink: n must be >= 0, got " + std::to_string(count));
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::Sink;
  n->a = count;
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::bigbird(int64_t block, int64_t window, int64_t globals, int64_t randoms,
                         uint64_t seed) {
  if (block < 1) bad("BigBird: block must be >= 1, got " + std::to_string(block));
  if (window < 0) bad("BigBird: window must be >= 0, got " + std::to_string(window));
  if (globals < 0) bad("BigBird: globals must be >= 0, got " + std::to_string(globals));
  if (randoms < 0) bad("BigBird: randoms must be >= 0, got " + std::to_string(randoms));
  if (randoms > (int64_t(1) << 24)) bad("BigBird: randoms is too large");
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::BigBird;
  n->a = block;
  n->b = window;
  n->c = globals;
  n->d = randoms;
  n->e = int64_t(seed);
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

Pattern Pattern::topk_blocks(int64_t k, int64_t bq, int64_t bk, bool causal, Pattern always) {
  if (k < 0) bad("TopKBlocks: k must be >= 0, got " + std::to_string(k));
  if (bq < 1 || bk < 1)
    bad("TopKBlocks: block_size must be positive, got (" + std::to_string(bq) + ", " +
        std::to_string(bk) + ")");
  if (k > (int64_t(1) << 31)) bad("TopKBlocks: k is too large");
  auto n = std::make_shared<PatternNode>();
  n->kind = Kind::TopKBlocks;
  n->a = k;
  n->b = bq;
  n->c = bk;
  n->d = causal ? 1 : 0;
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
Pattern combine(Pattern::Kind kind, std::vector<Pattern> parts, const char* name) {
  if (parts.empty()) bad(std::string(name) + ": expected at least one pattern");
  auto n = std::make_shared<PatternNode>();
  n->kind = kind;
  for (const Pattern& c : parts) {
    if (!c.valid()) bad(std::string(name) + ": an empty pattern");
    if (c.data_dependent())
      bad(std::string(name) + ": " + c.describe() +
          " chooses its blocks from the data and cannot be combined with other patterns; "
          "pass them as its always= argument instead (TopKBlocks(k, always=Sink(4) | ...))");
    if (c.node().head_dependent) {
      // head_count 0: the part's rule differs per head but fits any number of heads
      if (n->head_dependent && n->head_count != c.node().head_count && n->head_count != 0 &&
          c.node().head_count != 0 && kind != Pattern::Kind::PerHead) {
        std::ostringstream m;
        m << name << ": parts are made for different numbers of heads (" << n->head_count
          << " and " << c.node().head_count << ")";
        bad(m.str());
      }
      if (!n->head_dependent || n->head_count == 0) n->head_count = c.node().head_count;
      n->head_dependent = true;
    }
  }
  if (kind == Pattern::Kind::PerHead) {
    n->head_dependent = true;
    n->head_count = int64_t(parts.size());
  }
  n->children = std::move(parts);
  return Pattern::from_node(std::move(n));
}
}  // namespace

Pattern Pattern::union_of(std::vector<Pattern> parts) {
  return combine(Kind::Union, std::move(parts), "Union");
}

Pattern Pattern::intersection_of(std::vector<Pattern> parts) {
  return combine(Kind::Intersection, std::move(parts), "Intersection");
}

Pattern Pattern::per_head(std::vector<Pattern> parts) {
  if (parts.empty()) bad("PerHead: expected a list of one pattern per query head, got none");
  return combine(Kind::PerHead, std::move(parts), "PerHead");
}

Pattern Pattern::from_node(std::shared_ptr<const PatternNode> n) {
  Pattern p;
  p.node_ = std::move(n);
  return p;
}

// ------------------------------------------------------------------------------------------
// accessors

Pattern::Kind Pattern::kind() const { return node_->kind; }
bool Pattern::data_dependent() const { return node_->kind == Kind::TopKBlocks; }
int64_t Pattern::left() const { return node_->a; }
int64_t Pattern::right() const { return node_->b; }
const BlockMask* Pattern::block_mask() const { return node_->mask.get(); }
int64_t Pattern::heads() const {
  return node_->head_dependent && node_->head_count > 0 ? node_->head_count : 1;
}

namespace {
void describe_into(const PatternNode& n, std::ostream& s, bool nested) {
  switch (n.kind) {
    case Pattern::Kind::Window:
      if (n.a >= kUnbounded && n.b >= kUnbounded)
        s << "Dense()";
      else if (n.a >= kUnbounded && n.b == 0)
        s << "Causal()";
      else
        s << "SlidingWindow(" << bound_str(n.a) << ", " << bound_str(n.b) << ")";
      break;
    case Pattern::Kind::BlockSparse:
      s << "BlockSparse(layout=[" << n.mask->heads << ", " << n.mask->nbq << ", " << n.mask->nbk
        << "], block_size=(" << n.mask->bq << ", " << n.mask->bk << "))";
      break;
    case Pattern::Kind::Dilated:
      s << "Dilated(" << bound_str(n.a) << ", " << bound_str(n.b) << ", dilation=" << n.c << ")";
      break;
    case Pattern::Kind::Strided:
      s << "Strided(" << n.a << (n.b ? "" : ", causal=False") << ")";
      break;
    case Pattern::Kind::Fixed:
      s << "Fixed(block=" << n.a << ", summary=" << n.b << (n.c ? "" : ", causal=False") << ")";
      break;
    case Pattern::Kind::Global: {
      s << "Global([";
      const size_t show = std::min<size_t>(n.positions.size(), 8);
      for (size_t x = 0; x < show; ++x) s << (x ? ", " : "") << n.positions[x];
      if (n.positions.size() > show) s << ", ... (" << n.positions.size() << " positions)";
      s << "])";
      break;
    }
    case Pattern::Kind::Sink:
      s << "Sink(" << n.a << ")";
      break;
    case Pattern::Kind::BigBird:
      s << "BigBird(block=" << n.a << ", window=" << n.b << ", globals=" << n.c
        << ", randoms=" << n.d << ", seed=" << uint64_t(n.e) << ")";
      break;
    case Pattern::Kind::Union:
    case Pattern::Kind::Intersection: {
      const char* op = n.kind == Pattern::Kind::Union ? " | " : " & ";
      if (n.children.size() == 1) {
        s << (n.kind == Pattern::Kind::Union ? "Union([" : "Intersection([");
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
    case Pattern::Kind::TopKBlocks:
      s << "TopKBlocks(k=" << n.a << ", block_size=(" << n.b << ", " << n.c << ")";
      if (!n.d) s << ", causal=False";
      if (!n.children.empty()) {
        s << ", always=";
        describe_into(n.children[0].node(), s, false);
      }
      s << ")";
      break;
    case Pattern::Kind::Neighborhood:
    case Pattern::Kind::SlidingTile:
      detail::describe_grid_kind(n, s);
      break;
    case Pattern::Kind::LongNet:
      detail::describe_longnet(n, s);
      break;
    case Pattern::Kind::PerHead:
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
  switch (n.kind) {
    case Pattern::Kind::BlockSparse: {
      const BlockMask& m = *n.mask;
      const int64_t want_q = ceil_div(nq, m.bq), want_k = ceil_div(nk, m.bk);
      if (m.nbq != want_q || m.nbk != want_k) {
        std::ostringstream s;
        s << "pattern: BlockSparse layout has " << m.nbq << " x " << m.nbk << " blocks of ("
          << m.bq << ", " << m.bk << "); an Nq=" << nq << " x Nk=" << nk << " problem needs "
          << want_q << " x " << want_k;
        throw ValueError(s.str());
      }
      if (m.heads != 1 && m.heads != hq) {
        std::ostringstream s;
        s << "pattern: BlockSparse layout has " << m.heads << " heads; expected 1 or Hq=" << hq;
        throw ValueError(s.str());
      }
      break;
    }
    case Pattern::Kind::Global:
      if (!n.positions.empty() && n.positions.back() >= nk) {
        std::ostringstream s;
        s << "pattern: Global position " << n.positions.back()
          << " is not a key position of an Nk=" << nk << " problem (expected 0 <= position < "
          << nk << ")";
        throw ValueError(s.str());
      }
      break;
    case Pattern::Kind::PerHead:
      if (int64_t(n.children.size()) != hq) {
        std::ostringstream s;
        s << "pattern: PerHead has " << n.children.size()
          << " patterns; expected one per query head, Hq=" << hq;
        throw ValueError(s.str());
      }
      for (const Pattern& c : n.children) check_node(c.node(), nq, nk, hq);
      break;
    case Pattern::Kind::Neighborhood:
    case Pattern::Kind::SlidingTile:
      detail::check_grid_kind(n, nq, nk);
      break;
    case Pattern::Kind::LongNet:
      detail::check_longnet(n, nq, nk);
      break;
    case Pattern::Kind::Union:
    case Pattern::Kind::Intersection:
    case Pattern::Kind::TopKBlocks:  // its always pattern; the chosen blocks fit by making
      for (const Pattern& c : n.children) check_node(c.node(), nq, nk, hq);
      break;
    default:
      break;
  }
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
  CompiledPattern::BigBirdData* (*find)(void*, const PatternNode*);
  void* ctx;
  int64_t off;
  std::vector<PredNode>* out;

  // Emits head h's program for n; returns the stack depth it needs.
  int emit(const PatternNode& n, int64_t h) {
    PredNode x;
    switch (n.kind) {
      case Pattern::Kind::Window:
        x.kind = PredKind::Window;
        x.a = n.a;
        x.b = n.b;
        break;
      case Pattern::Kind::Dilated:
        x.kind = PredKind::Dilated;
        // Bounds in keys, saturating at kUnbounded; checked before multiplying (a huge
        // dilation times a bound would overflow int64).
        x.a = n.a >= kUnbounded / n.c ? kUnbounded : n.a * n.c;
        x.b = n.b >= kUnbounded / n.c ? kUnbounded : n.b * n.c;
        x.c = n.c;
        break;
      case Pattern::Kind::Strided:
        x.kind = PredKind::Dilated;
        x.a = kUnbounded;
        x.b = n.b ? 0 : kUnbounded;
        x.c = n.a;
        break;
      case Pattern::Kind::Fixed:
        x.kind = PredKind::Fixed;
        x.a = n.a;
        x.b = n.b;
        x.c = n.c;
        break;
      case Pattern::Kind::Global:
        x.kind = PredKind::Global;
        x.data = n.positions.data();
        x.len = int64_t(n.positions.size());
        break;
      case Pattern::Kind::Sink:
        x.kind = PredKind::Sink;
        x.a = n.a;
        break;
      case Pattern::Kind::BlockSparse:
        x.kind = PredKind::BlockMask;
        x.a = n.mask->bq;
        x.b = n.mask->bk;
        x.c = n.mask->nbq;
        x.d = n.mask->nbk;
        x.e = n.mask->heads;
        x.data = n.mask->bits.data();
        break;
      case Pattern::Kind::BigBird: {
        const CompiledPattern::BigBirdData* g = find(ctx, &n);
        x.kind = PredKind::BigBird;
        x.a = g->block;
        x.b = g->globals;
        x.c = g->wlo;
        x.d = g->whi;
        x.e = g->doff;
        x.f = g->randoms;
        x.data = g->rnd.data();
        x.len = g->nbq;
        break;
      }
      case Pattern::Kind::Neighborhood:
      case Pattern::Kind::SlidingTile:
        x.kind = PredKind::Grid;
        x.data = &n.grid;  // the node outlives the compiled pattern (which holds the pattern)
        break;
      case Pattern::Kind::LongNet:
        x.kind = PredKind::LongNet;
        x.a = n.longnet.count;
        x.b = n.longnet.causal;
        x.data = n.positions.data();
        x.len = int64_t(n.positions.size());
        break;
      case Pattern::Kind::PerHead:
        return emit(n.children[size_t(h)].node(), h);
      case Pattern::Kind::TopKBlocks:  // compile() refuses it before emitting
        throw ValueError("pattern: TopKBlocks has no rule of its own; select(q, k) first");
      case Pattern::Kind::Union:
      case Pattern::Kind::Intersection: {
        int depth = emit(n.children[0].node(), h);
        PredNode op;
        op.kind = n.kind == Pattern::Kind::Union ? PredKind::Or : PredKind::And;
        for (size_t c = 1; c < n.children.size(); ++c) {
          depth = std::max(depth, 1 + emit(n.children[c].node(), h));
          out->push_back(op);
        }
        return depth;
      }
    }
    out->push_back(x);
    return 1;
  }
};

void collect_bigbird(const PatternNode& n, std::vector<const PatternNode*>& v) {
  if (n.kind == Pattern::Kind::BigBird) {
    if (std::find(v.begin(), v.end(), &n) == v.end()) v.push_back(&n);
  }
  for (const Pattern& c : n.children) collect_bigbird(c.node(), v);
}

std::unique_ptr<CompiledPattern::BigBirdData> make_bigbird(const PatternNode& n, int64_t nq,
                                                           int64_t nk) {
  auto g = std::make_unique<CompiledPattern::BigBirdData>();
  const int64_t B = n.a;
  g->block = B;
  g->globals = n.c;
  g->wlo = (n.b - 1) >= 0 ? (n.b - 1) / 2 : -1;  // Python's (window - 1) // 2
  g->whi = n.b / 2;
  g->doff = detail::floor_div(nk - nq, B);
  g->nbq = ceil_div(nq, B);
  g->nbk = ceil_div(nk, B);
  // A row draws at most nbk distinct blocks: more randoms change nothing but the table's
  // size (randoms = 2^24 on a small problem would ask for gigabytes and loop over them).
  g->randoms = std::min(n.d, g->nbk);
  const int64_t R = g->randoms, nbk = g->nbk;
  g->rnd.assign(size_t(g->nbq * R), -1);
  std::vector<int64_t> pick, avail;
  for (int64_t u = 0; u < g->nbq && R > 0; ++u) {
    if (u < g->globals) continue;  // a global row keeps every block already
    const int64_t dg = u + g->doff;
    const int64_t wl = std::max<int64_t>(dg - g->wlo, 0), wh = std::min<int64_t>(dg + g->whi, nbk - 1);
    auto kept = [&](int64_t w) { return w < g->globals || (w >= dg - g->wlo && w <= dg + g->whi); };
    int64_t nkept = std::min(g->globals, nbk);
    const int64_t wl2 = std::max(wl, g->globals);
    if (wh >= wl2) nkept += wh - wl2 + 1;
    const int64_t navail = nbk - nkept;
    pick.clear();
    SplitMix rng(uint64_t(n.e), uint64_t(u));
    if (navail <= R) {
      for (int64_t w = 0; w < nbk; ++w)
        if (!kept(w)) pick.push_back(w);
    } else {
      // Rejection sampling; falls back to a partial shuffle of the free blocks when unlucky.
      int64_t tries = 0;
      while (int64_t(pick.size()) < R && tries < 64 * R) {
        ++tries;
        const int64_t w = int64_t(rng.next() % uint64_t(nbk));
        if (kept(w) || std::find(pick.begin(), pick.end(), w) != pick.end()) continue;
        pick.push_back(w);
      }
      if (int64_t(pick.size()) < R) {
        avail.clear();
        for (int64_t w = 0; w < nbk; ++w)
          if (!kept(w) && std::find(pick.begin(), pick.end(), w) == pick.end()) avail.push_back(w);
        while (int64_t(pick.size()) < R) {
          const size_t t = size_t(rng.next() % uint64_t(avail.size()));
          pick.push_back(avail[t]);
          avail[t] = avail.back();
          avail.pop_back();
        }
      }
    }
    std::sort(pick.begin(), pick.end());
    for (size_t t = 0; t < pick.size(); ++t) g->rnd[size_t(u * R) + t] = int32_t(pick[t]);
  }
  return g;
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
  std::vector<const PatternNode*> bb;
  collect_bigbird(*node_, bb);
  for (const PatternNode* n : bb) cp.bigbird_.emplace_back(n, make_bigbird(*n, nq, nk));
  Compiler c;
  c.find = [](void* ctx, const PatternNode* n) {
    return const_cast<CompiledPattern::BigBirdData*>(
        static_cast<const CompiledPattern*>(ctx)->bigbird(n));
  };
  c.ctx = &cp;
  c.off = nk - nq;
  c.out = &cp.nodes_;
  for (int64_t h = 0; h < cp.heads_; ++h) {
    cp.head_begin_.push_back(int32_t(cp.nodes_.size()));
    const int depth = c.emit(*node_, h);
    if (depth > kMaxPredDepth)
      throw ValueError("pattern nested too deeply: its rule needs a stack of " +
                       std::to_string(depth) + " (at most " + std::to_string(kMaxPredDepth) +
                       "); flatten unions and intersections");
    cp.head_end_.push_back(int32_t(cp.nodes_.size()));
  }
  return cp;
}

const CompiledPattern::BigBirdData* CompiledPattern::bigbird(const PatternNode* n) const {
  for (const auto& e : bigbird_)
    if (e.first == n) return e.second.get();
  return nullptr;
}

Predicate CompiledPattern::predicate() const {
  Predicate p;
  p.off = nk_ - nq_;
  p.nodes = nodes_.data();
  p.head_begin = head_begin_.data();
  p.head_end = head_end_.data();
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
