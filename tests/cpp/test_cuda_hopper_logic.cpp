// The sm90a forward kernel's host-testable logic (cuda/src/sm90a/fwd90_kernel.cuh), on the host:
//
// 1. Its synchronisation protocol, as a model: mbarriers with phases and arrival counts, a
//    producer and two consumer warpgroups (4 warps each) stepping in random interleavings
//    through exactly the kernel's sequence of waits, TMA writes (completing later, at random)
//    and releases, with PipeState's stage and parity arithmetic and PersistentWork's items.
//    Every read must see the block the producer meant for it (no buffer reused before all 8
//    consumer warps released it, none read before its transaction completed), the Q buffer is
//    refilled only after the O store read it, and nothing deadlocks.
// 2. The persistent grid: every work item exactly once, each CTA starting on one of the
//    longest rows, items in ascending schedule order per CTA.
// 3. The tile: a layout compiled for (kHopperBlockM, hopper_block_n(D)) staged through
//    stage_forward(), walked by RowWalk, masked by the kernel's branches (block_needs_mask_n,
//    mask_by_interval / row_interval, element_kept) keeps exactly Pattern::mask(), for windows,
//    causal, block-sparse, unions, globals, BigBird, Nq != Nk, GQA-sized head counts. Visiting
//    blocks in any order changes nothing in the coordinates (c * bn).
// 4. Shared memory of each instantiation fits a Hopper CTA.
//
// What this cannot check: TMA, wgmma, the fragment layouts. Those need a GPU
// (tests/python/test_cuda_forward.py runs every compiled kernel).
#include <spattn/cuda/forward.hpp>
#include <spattn/cuda/forward_logic.hpp>
#include <spattn/cuda/hopper_logic.hpp>
#include <spattn/spattn.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace spattn;
using spattn::cuda::PipeState;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// An mbarrier: phase k (completed phases), arrivals still expected in this phase, and
// transaction bytes still expected. try_wait.parity(P) passes once the phase of parity P has
// completed, i.e. while the current phase's parity differs from P.
struct MBarrier {
  int count = 1;
  int pending = 1;
  int64_t tx = 0;
  int64_t phase = 0;
  void init(int c) { count = pending = c; }
  bool passes(uint32_t parity) const { return uint32_t(phase & 1) != parity; }
  void maybe_complete() {
    if (pending == 0 && tx == 0) {
      ++phase;
      pending = count;
    }
  }
  void arrive() {
    if (pending <= 0) throw std::runtime_error("mbarrier: more arrivals than expected");
    --pending;
    maybe_complete();
  }
  void arrive_expect_tx(int64_t bytes) {
    tx += bytes;
    arrive();
  }
  void complete_tx(int64_t bytes) {
    tx -= bytes;
    maybe_complete();
  }
};

// The kernel's protocol, one CTA. Work: per item, a list of key blocks. Buffers hold the
// (item, block index) they were last filled with; -1: never.
struct Model {
  int stages;
  std::vector<std::vector<int64_t>> items;  // blocks per item
  MBarrier q_full, q_empty;
  std::vector<MBarrier> k_full, k_empty, v_full, v_empty;
  std::vector<int64_t> kbuf, vbuf;  // tag = item * 1e6 + sequence index in the item
  int64_t qbuf = -1;
  struct Tx {
    int kind;  // 0 q, 1 k, 2 v
    int stage;
    int64_t tag;
  };
  std::vector<Tx> inflight;  // TMA loads issued, not yet landed
  std::string error;
  int64_t reads = 0;
  bool separate_o = false;
  int64_t store_pending = -1;  // the item whose O store still reads shared memory

  explicit Model(int s, std::vector<std::vector<int64_t>> it, bool sep_o, int empty_count = 8)
      : stages(s), items(std::move(it)), separate_o(sep_o) {
    q_full.init(1);
    q_empty.init(sep_o ? 8 : 1);
    k_full.resize(size_t(s));
    k_empty.resize(size_t(s));
    v_full.resize(size_t(s));
    v_empty.resize(size_t(s));
    for (int x = 0; x < s; ++x) {
      k_full[size_t(x)].init(1);
      v_full[size_t(x)].init(1);
      k_empty[size_t(x)].init(empty_count);  // the 8 consumer warps
      v_empty[size_t(x)].init(empty_count);
    }
    kbuf.assign(size_t(s), -1);
    vbuf.assign(size_t(s), -1);
  }
};

// The producer thread as a resumable state machine following fwd90_kernel.cuh's producer().
struct Producer {
  PipeState kv;
  uint32_t q_phase = 0;
  size_t item = 0, blk = 0;
  int step = 0;  // 0: wait q_empty + load Q; 1: wait k_empty + load K; 2: wait v_empty + load V
  bool done = false;
  bool wrong_parity = false;
  uint32_t empty_parity() const {
    return wrong_parity ? kv.consumer_wait_parity() : kv.producer_wait_parity();
  }
  bool try_step(Model& m) {
    if (done) return false;
    if (step == 0) {
      if (item >= m.items.size()) {
        done = true;
        return true;
      }
      if (!m.q_empty.passes(q_phase ^ 1u)) return false;
      m.q_full.arrive_expect_tx(1);
      m.inflight.push_back({0, 0, int64_t(item)});
      q_phase ^= 1u;
      blk = 0;
      step = m.items[item].empty() ? 0 : 1;
      if (step == 0) ++item;
      return true;
    }
    const int64_t tag = int64_t(item) * 1000000 + int64_t(blk);
    if (step == 1) {
      if (!m.k_empty[size_t(kv.stage)].passes(empty_parity())) return false;
      m.k_full[size_t(kv.stage)].arrive_expect_tx(1);
      m.inflight.push_back({1, kv.stage, tag});
      step = 2;
      return true;
    }
    if (!m.v_empty[size_t(kv.stage)].passes(empty_parity())) return false;
    m.v_full[size_t(kv.stage)].arrive_expect_tx(1);
    m.inflight.push_back({2, kv.stage, tag});
    kv.advance(m.stages);
    if (++blk == m.items[item].size()) {
      ++item;
      step = 0;
    } else {
      step = 1;
    }
    return true;
  }
};

// The consumer's sequence of barrier operations, generated exactly as consumer() walks its
// items: per item, wait Q; K(0); then per block n but the last, K(n+1) before V(n) (the next
// score product is issued before this block's P V), K(n+1) released before V(n); with a
// separate O buffer, Q released by every warp after the last score product; the last block's
// V; the epilogue (named barriers, O written to shared memory, the TMA store of warp 0).
struct Op {
  enum Kind { WaitQ, WaitK, WaitV, RelK, RelV, RelQ, Bar, StoreWait, WriteO, StoreIssue } kind;
  int stage;
  uint32_t parity;
  int64_t tag;        // the (item, block) the buffer must hold, or the item
  bool warp0 = false;  // only the warp of consumer thread 0 runs it
};
std::vector<Op> consumer_ops(const std::vector<std::vector<int64_t>>& items, int stages,
                             bool separate_o) {
  std::vector<Op> ops;
  PipeState kv;
  for (size_t i = 0; i < items.size(); ++i) {
    const int64_t m = int64_t(items[i].size()), it = int64_t(i);
    auto tag = [&](int64_t n) { return it * 1000000 + n; };
    ops.push_back({Op::WaitQ, 0, 0, it});
    if (m > 0) {
      ops.push_back({Op::WaitK, kv.stage, kv.consumer_wait_parity(), tag(0)});
      ops.push_back({Op::RelK, kv.stage, 0, tag(0)});
    }
    for (int64_t n = 0; n + 1 < m; ++n) {
      PipeState next = kv;
      next.advance(stages);
      ops.push_back({Op::WaitK, next.stage, next.consumer_wait_parity(), tag(n + 1)});
      ops.push_back({Op::WaitV, kv.stage, kv.consumer_wait_parity(), tag(n)});
      ops.push_back({Op::RelK, next.stage, 0, tag(n + 1)});
      ops.push_back({Op::RelV, kv.stage, 0, tag(n)});
      kv = next;
    }
    if (separate_o) ops.push_back({Op::RelQ, 0, 0, it});
    if (m > 0) {
      ops.push_back({Op::WaitV, kv.stage, kv.consumer_wait_parity(), tag(m - 1)});
      ops.push_back({Op::RelV, kv.stage, 0, tag(m - 1)});
      kv.advance(stages);
    }
    if (separate_o) {
      ops.push_back({Op::StoreWait, 0, 0, it, true});
      ops.push_back({Op::Bar, 0, 0, it});
      ops.push_back({Op::WriteO, 0, 0, it});
      ops.push_back({Op::Bar, 0, 0, it});
      ops.push_back({Op::StoreIssue, 0, 0, it, true});
    } else {
      ops.push_back({Op::WriteO, 0, 0, it});
      ops.push_back({Op::Bar, 0, 0, it});
      ops.push_back({Op::StoreIssue, 0, 0, it, true});
      ops.push_back({Op::StoreWait, 0, 0, it, true});
      ops.push_back({Op::RelQ, 0, 0, it, true});
    }
  }
  ops.push_back({Op::StoreWait, 0, 0, -1, true});
  return ops;
}

// One consumer warp (4 per warpgroup, 2 warpgroups) running those operations.
struct ConsumerWarp {
  int id;
  size_t pc = 0;
  uint32_t q_phase = 0;
  bool done = false;
  int64_t bar_gen = 0;
  bool at_barrier = false;
};

struct NamedBarrier {
  int arrived = 0;
  int64_t gen = 0;
};

bool consumer_step(Model& m, const std::vector<Op>& ops, ConsumerWarp& w, NamedBarrier& nb) {
  if (w.done) return false;
  if (w.pc == ops.size()) {
    w.done = true;
    return true;
  }
  const Op& op = ops[w.pc];
  if (op.warp0 && w.id != 0) {
    ++w.pc;
    return true;
  }
  auto held = [&](const std::vector<int64_t>& buf, const char* what) {
    if (buf[size_t(op.stage)] != op.tag)
      m.error = "warp " + std::to_string(w.id) + " found " +
                std::to_string(buf[size_t(op.stage)]) + " in " + what + " stage " +
                std::to_string(op.stage) + ", wanted " + std::to_string(op.tag);
  };
  switch (op.kind) {
    case Op::WaitQ:
      if (!m.q_full.passes(w.q_phase)) return false;
      if (m.qbuf != op.tag) m.error = "consumer read Q of another item";
      w.q_phase ^= 1u;
      break;
    case Op::WaitK:
    case Op::WaitV: {
      MBarrier& full = op.kind == Op::WaitK ? m.k_full[size_t(op.stage)] : m.v_full[size_t(op.stage)];
      if (!full.passes(op.parity)) return false;
      held(op.kind == Op::WaitK ? m.kbuf : m.vbuf, op.kind == Op::WaitK ? "K" : "V");
      if (op.kind == Op::WaitK && m.qbuf != op.tag / 1000000)
        m.error = "Q replaced while its item's scores are computed";
      ++m.reads;
      break;
    }
    case Op::RelK:  // the buffer must still hold the block until it is released
      held(m.kbuf, "K (at release)");
      m.k_empty[size_t(op.stage)].arrive();
      break;
    case Op::RelV:
      held(m.vbuf, "V (at release)");
      m.v_empty[size_t(op.stage)].arrive();
      break;
    case Op::RelQ:
      m.q_empty.arrive();
      break;
    case Op::Bar:
      if (!w.at_barrier) {
        w.at_barrier = true;
        w.bar_gen = nb.gen + 1;
        if (++nb.arrived == 8) {
          nb.arrived = 0;
          ++nb.gen;
        }
        return true;
      }
      if (nb.gen < w.bar_gen) return false;
      w.at_barrier = false;
      break;
    case Op::StoreWait:
      if (m.store_pending >= 0) return false;  // cp.async.bulk.wait_group.read 0
      break;
    case Op::WriteO:
      if (m.store_pending >= 0) m.error = "O written while the last store still reads it";
      if (!m.separate_o && m.qbuf != op.tag) m.error = "Q replaced before O was staged in it";
      break;
    case Op::StoreIssue:
      m.store_pending = op.tag;
      break;
  }
  ++w.pc;
  return true;
}

// Sabotage 1: empty barriers that complete after 4 warps (one warpgroup); 2: a producer that
// waits the consumers' parity on empty barriers; 3: no wait for the O store's read.
std::string run_model(int stages, bool separate_o,
                      const std::vector<std::vector<int64_t>>& items, uint32_t seed,
                      int sabotage = 0) {
  Model m(stages, items, separate_o, sabotage == 1 ? 4 : 8);
  std::vector<Op> ops = consumer_ops(items, stages, separate_o);
  if (sabotage == 3)  // O written before the previous store has read the buffer
    ops.erase(std::remove_if(ops.begin(), ops.end(),
                             [](const Op& o) { return o.kind == Op::StoreWait && o.tag >= 0; }),
              ops.end());
  Producer prod;
  prod.wrong_parity = sabotage == 2;
  std::vector<ConsumerWarp> warps(8);
  for (int x = 0; x < 8; ++x) warps[size_t(x)].id = x;
  NamedBarrier nb;
  std::mt19937 rng(seed);
  for (int64_t iter = 0; iter < 10000000; ++iter) {
    // Agents: 0 producer, 1..8 warps, 9 a TMA landing.
    bool all_done = prod.done && m.inflight.empty() && m.store_pending < 0;
    for (auto& w : warps) all_done = all_done && w.done;
    if (all_done) break;
    std::uniform_int_distribution<int> pick(0, 9);
    bool progressed = false;
    for (int attempt = 0; attempt < 40 && !progressed; ++attempt) {
      const int a = pick(rng);
      if (a == 0) {
        progressed = prod.try_step(m);
      } else if (a <= 8) {
        progressed = consumer_step(m, ops, warps[size_t(a - 1)], nb);
      } else if (m.store_pending >= 0 && (rng() % 2)) {
        m.store_pending = -1;  // the O store has read shared memory
        progressed = true;
      } else if (!m.inflight.empty()) {
        std::uniform_int_distribution<size_t> which(0, m.inflight.size() - 1);
        const size_t x = which(rng);
        const Model::Tx t = m.inflight[x];
        m.inflight.erase(m.inflight.begin() + long(x));
        if (t.kind == 0) {
          if (!m.separate_o && m.store_pending >= 0)
            return "Q refilled while the O store still reads its buffer";
          m.qbuf = t.tag;
          m.q_full.complete_tx(1);
        } else if (t.kind == 1) {
          m.kbuf[size_t(t.stage)] = t.tag;
          m.k_full[size_t(t.stage)].complete_tx(1);
        } else {
          m.vbuf[size_t(t.stage)] = t.tag;
          m.v_full[size_t(t.stage)].complete_tx(1);
        }
        progressed = true;
      }
      if (!m.error.empty()) return m.error;
    }
    if (!progressed) {
      // Try every agent once in order before declaring a deadlock.
      progressed = prod.try_step(m);
      for (auto& w : warps) progressed = consumer_step(m, ops, w, nb) || progressed;
      if (!m.inflight.empty() || m.store_pending >= 0) continue;
      if (!progressed) return "deadlock";
    }
  }
  int64_t blocks = 0;
  for (const auto& it : items) blocks += int64_t(it.size());
  if (m.reads != blocks * 2 * 8)
    return "not every block read by every warp (" + std::to_string(m.reads) + " of " +
           std::to_string(blocks * 16) + ")";
  return m.error;
}

void test_protocol() {
  std::mt19937 rng(7);
  for (int stages : {1, 2, 3, 4})
  for (bool separate_o : {true, false}) {
    for (int trial = 0; trial < 60; ++trial) {
      std::vector<std::vector<int64_t>> items;
      const int n = 1 + int(rng() % 5);
      for (int x = 0; x < n; ++x) {
        std::vector<int64_t> b(rng() % 9);  // empty rows included
        for (auto& c : b) c = int64_t(rng() % 100);
        items.push_back(b);
      }
      const std::string e = run_model(stages, separate_o, items, uint32_t(rng()));
      check(e.empty(), "protocol, " + std::to_string(stages) + " stages, separate O " +
                           std::to_string(separate_o) + ", trial " + std::to_string(trial) +
                           ": " + e);
    }
  }
  // PipeState: stage wraps, parity flips on each wrap; producer waits the other parity.
  PipeState s;
  check(s.stage == 0 && s.consumer_wait_parity() == 0 && s.producer_wait_parity() == 1,
        "PipeState starts at stage 0, consumers wait parity 0, producers 1");
  for (int x = 0; x < 3; ++x) s.advance(3);
  check(s.stage == 0 && s.phase == 1, "PipeState: one wrap flips the phase");
  for (int x = 0; x < 7; ++x) s.advance(3);
  check(s.stage == 1 && s.phase == 1, "PipeState: 10 steps of 3 = 3 wraps + 1");
  // Sabotage: the model catches a ring released by one warpgroup only and a producer waiting
  // for the wrong parity (the checks above can fail).
  for (bool separate_o : {true, false})
    for (int sab : {1, 2, 3}) {
      bool caught = false;
      for (uint32_t seed = 0; seed < 200 && !caught; ++seed)
        caught = !run_model(2, separate_o, {{1, 2, 3, 4, 5, 6}, {7, 8, 9}, {}, {1}}, seed, sab)
                      .empty();
      check(caught, "protocol sabotage " + std::to_string(sab) + " is caught (separate O " +
                        std::to_string(separate_o) + ")");
    }
  {
    Model m(2, {{1, 2, 3, 4, 5}}, true);
    // Fill stage 0 twice without any release: the second fill must not pass the empty wait.
    Producer p;
    check(p.try_step(m), "sabotage setup: Q issued");
    check(p.try_step(m) && p.try_step(m), "sabotage setup: K, V of block 0 issued");
    check(p.try_step(m) && p.try_step(m), "sabotage setup: K, V of block 1 issued");
    check(!p.try_step(m), "the producer blocks on a full ring (2 stages, nothing released)");
  }
}

void test_persistent() {
  for (int64_t items : {0, 1, 5, 132, 133, 1000, 4097}) {
    for (int64_t sms : {1, 7, 132}) {
      const int64_t grid = cuda::persistent_grid(items, sms);
      check(grid == std::min(items, sms), "persistent_grid = min(items, SMs)");
      std::vector<int> seen(size_t(items), 0);
      bool ascending = true, starts_long = true;
      for (int64_t cta = 0; cta < grid; ++cta) {
        int64_t prev = -1;
        bool first = true;
        for (cuda::PersistentWork w(cta, grid, items); w.valid(); w.advance()) {
          ++seen[size_t(w.item)];
          ascending = ascending && w.item > prev;
          if (first) starts_long = starts_long && w.item < grid;
          first = false;
          prev = w.item;
        }
      }
      check(std::all_of(seen.begin(), seen.end(), [](int x) { return x == 1; }),
            "persistent: every item exactly once (" + std::to_string(items) + " items, " +
                std::to_string(sms) + " SMs)");
      check(ascending && starts_long, "persistent: longest first per CTA");
    }
  }
  check(cuda::persistent_grid(10, 0) == 1, "persistent_grid: at least one CTA");
}

BlockMask random_block_mask(int64_t heads, int64_t nq, int64_t nk, int64_t bs, double keep,
                            uint32_t seed) {
  BlockMask m;
  m.heads = heads;
  m.bq = m.bk = bs;
  m.nbq = (nq + bs - 1) / bs;
  m.nbk = (nk + bs - 1) / bs;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  m.bits.resize(size_t(heads * m.nbq * m.nbk));
  for (auto& x : m.bits) x = u(rng) < keep ? 1 : 0;
  return m;
}

// The kernel's kept set for one layout row block, computed with its branches.
void kernel_keeps(const cuda::FwdParams& p, int bn, int64_t h, int64_t a, int64_t c, bool partial,
                  std::vector<uint8_t>& got) {
  using namespace spattn::cuda;
  const bool rule_exact = range_is_exact(p.pred, h);
  const bool masked = block_needs_mask_n(p.nk, bn, partial, c);
  const int64_t i0 = a * kHopperBlockM, j0 = c * bn;
  for (int r = 0; r < kHopperBlockM; ++r) {
    int64_t lo = 0, hi = -1;
    const bool by_interval = mask_by_interval(partial, rule_exact);
    if (masked && by_interval) row_interval(p, partial, h, i0 + r, &lo, &hi);
    for (int x = 0; x < bn; ++x) {
      const int64_t i = i0 + r, j = j0 + x;
      bool kept = true;
      if (masked)
        kept = by_interval ? (j >= lo && j <= hi) : element_kept(p, true, h, i, j);
      // Rows past Nq are never stored; keys past Nk must never count.
      if (i < p.nq && kept) {
        if (j >= p.nk) {
          got.clear();  // signals an error
          return;
        }
        got[size_t((h * p.nq + i) * p.nk + j)] += 1;
      }
    }
  }
}

void test_tiles() {
  struct Case {
    std::string name;
    Pattern pat;
    int64_t nq, nk, hq;
  };
  std::vector<Case> cases = {
      {"window", Pattern::sliding_window(100, 100), 700, 700, 2},
      {"causal Nq<Nk", Pattern::causal(), 300, 517, 2},
      {"causal Nq>Nk", Pattern::causal(), 517, 300, 1},
      {"global|sink+window", Pattern::union_of({Pattern::global({0, 3, 250}), Pattern::sink(5),
                                                  Pattern::sliding_window(40, 0)}),
       400, 400, 2},
      {"blocksparse 32 per head", Pattern::block_sparse(random_block_mask(2, 300, 450, 32, 0.1, 3)),
       300, 450, 2},
      {"bigbird", Pattern::bigbird(64, 3, 1, 2, 5), 640, 640, 2},
      {"dilated", Pattern::dilated(64, 0, 2), 500, 500, 1},
  };
  for (int d : {64, 128, 256}) {
    const int bn = cuda::hopper_block_n(d);
    check(cuda::hopper_smem_bytes(d, 2) <= 227 * 1024, "sm90a shared memory fits, D=" +
                                                           std::to_string(d));
    for (const Case& cs : cases) {
      const CompiledPattern cp = cs.pat.compile(cs.nq, cs.nk, cs.hq);
      const BlockLayout L = cp.layout(cuda::kHopperBlockM, bn);
      cuda::StagedForward st =
          cuda::stage_forward(L, cp.predicate(), cs.nq, cs.nk, cs.hq, cuda::kHopperBlockM, bn);
      st.relocate_nodes(st.blob.data());
      cuda::FwdParams p;
      st.bind(st.blob.data(), &p);
      p.nq = cs.nq, p.nk = cs.nk, p.hq = cs.hq, p.b = 1;
      std::vector<uint8_t> got(size_t(cs.hq * cs.nq * cs.nk), 0);
      bool ok = true;
      for (int64_t h = 0; h < cs.hq && ok; ++h)
        for (int64_t a = 0; a < L.nqb && ok; ++a) {
          // Walk order reversed: the kernel's coordinates depend on c only.
          cuda::RowWalk walk(p, h, a);
          int64_t c;
          bool partial;
          std::vector<std::pair<int64_t, bool>> blocks;
          while (walk.next(p, &c, &partial)) {
            ok = ok && c >= 0 && c < L.nkb;
            blocks.push_back({c, partial});
          }
          std::reverse(blocks.begin(), blocks.end());
          for (auto& b : blocks) {
            kernel_keeps(p, bn, h, a, b.first, b.second, got);
            if (got.empty()) {
              ok = false;
              break;
            }
          }
        }
      const std::vector<uint8_t> ref = cs.pat.mask(cs.nq, cs.nk, cs.hq);
      check(ok && got == ref, cs.name + ", D=" + std::to_string(d) + " (tile 128x" +
                                  std::to_string(bn) +
                                  "): the kernel's walk and masks keep exactly Pattern::mask()");
    }
  }
  // The sm80 tile is refused where the sm90a tile is expected (the layout follows the kernel).
  const CompiledPattern cp = Pattern::causal().compile(300, 300, 1);
  bool threw = false;
  try {
    (void)cuda::stage_forward(cp.layout(cuda::kFwdBlockM, cuda::kFwdBlockN), cp.predicate(), 300,
                              300, 1, cuda::kHopperBlockM, cuda::hopper_block_n(128));
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "stage_forward refuses a 128x64 layout for the 128x128 kernel");
  // Without a device, forward_tile falls back to the sm80-style kernel's tile.
  const cuda::ForwardTile t = cuda::forward_tile(128, 128, -1, DType::BFloat16);
  check(t.bq == cuda::kFwdBlockM && t.bk == cuda::kFwdBlockN,
        "forward_tile without a device: the sm80-style tile");
}

}  // namespace

int main() {
  test_protocol();
  test_persistent();
  test_tiles();
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("test_cuda_hopper_logic: all passed\n");
  return 0;
}
