// The decode plan made on the device from device lengths (spattn/cuda/decode_plan_logic.hpp),
// emulated on the host (decode_plan_emulation.hpp), against the host plan of today
// (decode_logic.hpp's stage_decode over CompiledPattern::layout_for per sequence), structure
// by structure, on many random cases: contiguous and paged caches (page sizes 1 to 64),
// lengths 0 to the capacity, Nq 1 to 64, MHA and GQA, windows, sinks, globals, causal, dense,
// dilated, strided, fixed, prefix-LM, unions, intersections and per-head mixes:
//   - every sequence's layout rows (full and partial ranges of each layout head);
//   - every (sequence, kv head)'s union of visited blocks, blocks before each range, total;
//   - every (sequence, kv head)'s split count (the host's task list), within the task bound;
//   - no error recorded (a bound exceeded would be one).
// And the errors only the device plan can meet: lengths outside [0, capacity], a length below a
// Global position (min_keys), in the CPU's order; patterns whose rule depends on the length
// refused. test_cuda_decode_logic.cpp runs the decode kernels' emulation on both plans and
// compares the outputs bit for bit.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "decode_plan_emulation.hpp"

using namespace spattn;
using namespace spattn::cuda;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

struct Case {
  std::string name;
  Pattern pattern;
  std::vector<int64_t> lens;
  int64_t nq, hq, hkv, bk, capacity, sms;
};

std::string describe(const Case& c) {
  std::string s = c.name + " (nq=" + std::to_string(c.nq) + " hq=" + std::to_string(c.hq) +
                  " hkv=" + std::to_string(c.hkv) + " bk=" + std::to_string(c.bk) +
                  " cap=" + std::to_string(c.capacity) + " lens=";
  for (int64_t n : c.lens) s += std::to_string(n) + ",";
  return s + ")";
}

// Ranges [lo[t], hi[t]) for t in [b, e).
std::vector<std::pair<int32_t, int32_t>> ranges(const int32_t* lo, const int32_t* hi, int64_t b,
                                                int64_t e) {
  std::vector<std::pair<int32_t, int32_t>> r;
  for (int64_t t = b; t < e; ++t) r.emplace_back(lo[t], hi[t]);
  return r;
}

// Compares the device plan of c with the host plan; returns false (and reports) on a mismatch.
bool compare_plans(const Case& c, bool lens64) {
  const int64_t B = int64_t(c.lens.size()), G = c.hq / c.hkv;
  const std::string what = describe(c);
  // Host plan.
  std::vector<std::shared_ptr<const CompiledPattern>> cps(static_cast<size_t>(B));
  std::vector<DecodeSeqIn> ins(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    ins[size_t(b)].nk = c.lens[size_t(b)];
    if (c.lens[size_t(b)] == 0) continue;
    cps[size_t(b)] = c.pattern.compiled(c.nq, c.lens[size_t(b)], c.hq);
    ins[size_t(b)].layout = &cps[size_t(b)]->layout_for(c.nq, c.bk);
    ins[size_t(b)].pred = cps[size_t(b)]->predicate();
  }
  StagedDecode hs = stage_decode(ins, c.hkv, G, c.nq, c.bk, c.sms);
  hs.relocate(hs.blob.data());
  DecodeParams hp;
  hs.bind(hs.blob.data(), &hp);
  hp.hkv = c.hkv;
  // Device plan, lengths as int32 or int64 with a stride of 2 (a strided view).
  std::vector<int32_t> l32(size_t(2 * B), -99);
  std::vector<int64_t> l64(size_t(2 * B), -99);
  for (int64_t b = 0; b < B; ++b) l32[size_t(2 * b)] = int32_t(c.lens[size_t(b)]), l64[size_t(2 * b)] = c.lens[size_t(b)];
  auto d = std::make_unique<decode_emu::DevicePlan>();
  if (!decode_emu::device_plan(c.pattern, lens64 ? static_cast<const void*>(l64.data()) : l32.data(),
                               lens64, 2, B, c.nq, c.hq, c.hkv, c.bk, c.capacity, c.sms, d.get())) {
    check(false, what + ": no device plan: " + d->why);
    return false;
  }
  DecodeParams dp;
  dec_bind_device_plan(d->pp, &dp);
  dp.hkv = c.hkv;
  bool ok = true;
  auto expect = [&](bool x, const std::string& m) {
    if (!x && ok) check(false, what + ": " + m);
    ok = ok && x;
  };
  expect(d->error[0] == ~0ull, "no error recorded");
  for (int64_t b = 0; b < B && ok; ++b) {
    const DecodeSeq& ds = dp.seqs[b];
    expect(ds.nk == c.lens[size_t(b)], "sequence " + std::to_string(b) + ": length");
    const int64_t lheads = d->pp.lheads;
    for (int64_t r = 0; r < lheads && ok; ++r) {
      std::vector<std::pair<int32_t, int32_t>> hf, hpart;
      if (c.lens[size_t(b)] > 0) {
        const BlockLayout& L = *ins[size_t(b)].layout;
        expect(L.heads == lheads, "layout heads");
        hf = ranges(L.full_lo.data(), L.full_hi.data(), L.full_ptr[size_t(r)], L.full_ptr[size_t(r + 1)]);
        hpart = ranges(L.part_lo.data(), L.part_hi.data(), L.part_ptr[size_t(r)], L.part_ptr[size_t(r + 1)]);
      }
      expect(ranges(ds.full_lo, ds.full_hi, ds.full_ptr[r], ds.full_end[r]) == hf,
             "sequence " + std::to_string(b) + " layout head " + std::to_string(r) + ": full ranges");
      expect(ranges(ds.part_lo, ds.part_hi, ds.part_ptr[r], ds.part_end[r]) == hpart,
             "sequence " + std::to_string(b) + " layout head " + std::to_string(r) + ": partial ranges");
    }
  }
  for (int64_t bg = 0; bg < B * c.hkv && ok; ++bg) {
    const std::string at = "bg " + std::to_string(bg);
    expect(ranges(dp.ulo, dp.uhi, dp.uptr[bg], dec_union_end(dp, bg)) ==
               ranges(hp.ulo, hp.uhi, hp.uptr[bg], dec_union_end(hp, bg)),
           at + ": union of visited blocks");
    bool before_same = true;
    for (int64_t t = 0; t < hp.uptr[bg + 1] - hp.uptr[bg]; ++t)
      before_same = before_same && dp.ubefore[dp.uptr[bg] + t] == hp.ubefore[hp.uptr[bg] + t];
    expect(before_same, at + ": blocks before each range");
    expect(dp.ublocks[bg] == hp.ublocks[bg], at + ": visited blocks");
    int64_t h0, h1, d0, d1;
    dec_bg_tasks(hp, bg, &h0, &h1);
    dec_bg_tasks(dp, bg, &d0, &d1);
    expect(h1 - h0 == d1 - d0, at + ": split count (host " + std::to_string(h1 - h0) + ", device " +
                                   std::to_string(d1 - d0) + ")");
    expect(d1 - d0 <= dp.ns_max && d0 == bg * dp.ns_max, at + ": tasks within the bound");
  }
  return ok;
}

Pattern random_pattern(std::mt19937& rng, int64_t hq, std::string* name) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::vector<std::pair<std::string, Pattern>> base = {
      {"dense", Pattern::dense()},
      {"causal", Pattern::causal()},
      {"window", Pattern::sliding_window(pick(0, 300), pick(0, 1) ? 0 : pick(0, 20))},
      {"sink", Pattern::sink(pick(1, 40))},
      {"global", Pattern::global({pick(0, 3), pick(4, 9)})},
      {"dilated", Pattern::dilated(pick(1, 40), pick(0, 3), pick(1, 7))},
      {"strided", Pattern::strided(pick(1, 50), pick(0, 1) == 1)},
      {"fixed", Pattern::fixed(pick(4, 80), 2, pick(0, 1) == 1)},
      {"prefix_lm", prefix_lm(pick(1, 100))},
  };
  const int kind = int(pick(0, 5));
  auto one = [&]() { return base[size_t(pick(0, int64_t(base.size()) - 1))]; };
  if (kind <= 1) {
    auto [n, p] = one();
    *name = n;
    return p;
  }
  if (kind == 2) {
    auto [n1, p1] = one();
    auto [n2, p2] = one();
    *name = n1 + "|" + n2;
    return Pattern::union_of({p1, p2});
  }
  if (kind == 3) {
    auto [n1, p1] = one();
    auto [n2, p2] = one();
    auto [n3, p3] = one();
    *name = n1 + "|" + n2 + "|" + n3;
    return Pattern::union_of({p1, p2, p3});
  }
  if (kind == 4) {
    auto [n1, p1] = one();
    auto [n2, p2] = one();
    *name = n1 + "&" + n2;
    return Pattern::intersection_of({p1, p2});
  }
  std::vector<Pattern> parts;
  *name = "per_head(";
  for (int64_t h = 0; h < hq; ++h) {
    auto [n, p] = one();
    parts.push_back(p);
    *name += n + ",";
  }
  *name += ")";
  return Pattern::per_head(parts);
}

void test_random_cases() {
  std::mt19937 rng(2024);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  int ran = 0, passed = 0;
  for (int it = 0; it < 400; ++it) {
    Case c;
    const bool paged = pick(0, 2) > 0;
    const int64_t pages[] = {1, 3, 16, 16, 64};
    c.bk = paged ? pages[pick(0, 4)] : kDecContigBlock;
    c.hkv = std::vector<int64_t>{1, 2, 4}[size_t(pick(0, 2))];
    c.hq = c.hkv * std::vector<int64_t>{1, 2, 4, 8}[size_t(pick(0, 3))];
    c.nq = pick(0, 3) == 0 ? 1 : pick(1, 64);
    c.capacity = paged ? c.bk * pick(1, 40) : pick(1, 900);
    c.sms = pick(1, 132);
    c.pattern = random_pattern(rng, c.hq, &c.name);
    c.name = std::string(paged ? "paged " : "contiguous ") + c.name;
    const int64_t B = pick(1, 4);
    // Globals need every nonzero length past their positions (else the host raises: tested
    // below as an error).
    const int64_t min_len = c.name.find("global") != std::string::npos ? 10 : 1;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r = pick(0, 5);
      int64_t n = r == 0 ? 0 : r == 1 ? c.capacity : pick(0, c.capacity);
      if (n > 0 && n < min_len) n = std::min<int64_t>(c.capacity, min_len);
      if (n > 0 && n < min_len) n = 0;
      c.lens.push_back(n);
    }
    ++ran;
    if (compare_plans(c, it % 2 == 1)) ++passed;
  }
  std::printf("  random cases: %d of %d plans equal the host's\n", passed, ran);
}

void test_named_cases() {
  // The long-cache serving case: a window of 4096 over 1M tokens, pages of 16, GQA 32/8.
  Case w{"window 4096 over 1M", Pattern::sliding_window(4095, 0), {1 << 20, 5000, 0, 4096}, 1, 32, 8,
         16, 1 << 20, 132};
  compare_plans(w, false);
  Case d{"dense over 64K", Pattern::dense(), {65536, 1, 300}, 4, 8, 2, 16, 65536, 132};
  compare_plans(d, true);
  Case u{"sink|window|global", Pattern::union_of({Pattern::sink(4), Pattern::sliding_window(100, 0),
                                                    Pattern::global({7, 700})}),
         {800, 701, 2000}, 64, 4, 1, 64, 2048, 8};
  compare_plans(u, false);
}

// The error key the device plan recorded for c (UINT64_MAX: none).
unsigned long long plan_error(const Case& c) {
  auto d = std::make_unique<decode_emu::DevicePlan>();
  std::vector<int64_t> l64 = c.lens;
  if (!decode_emu::device_plan(c.pattern, l64.data(), true, 1, int64_t(c.lens.size()), c.nq, c.hq,
                               c.hkv, c.bk, c.capacity, c.sms, d.get()))
    return 0;
  // A bad sequence is planned as empty.
  for (size_t b = 0; b < c.lens.size(); ++b)
    if (c.lens[b] < 0 || c.lens[b] > c.capacity) check(d->pp.seqs[b].nk == 0, "a bad length plans as 0");
  return d->error[0];
}

unsigned long long key(unsigned long long cls, int64_t index) {
  return (cls << kDecErrClassShift) | (unsigned long long)index;
}

void test_errors() {
  Case c{"window", Pattern::sliding_window(50, 0), {100, -1, 300}, 1, 4, 2, 16, 256, 8};
  check(plan_error(c) == key(kDecErrLength, 1), "a negative length is recorded (class, sequence)");
  c.lens = {100, 50, 257};
  check(plan_error(c) == key(kDecErrLength, 2), "a length past the capacity is recorded");
  c.lens = {0, 256, 1};
  check(plan_error(c) == ~0ull, "0 and the capacity are valid lengths");
  // Global(30): a nonzero length must exceed 30 (the host check's rule, min_keys).
  Case g{"global", Pattern::union_of({Pattern::global({3, 30}), Pattern::sliding_window(8, 0)}),
         {100, 0, 31, 12}, 1, 4, 2, 16, 256, 8};
  check(plan_error(g) == key(kDecErrPattern, 3), "a length below a Global position is recorded");
  bool threw = false;
  try {
    (void)g.pattern.compiled(1, 12, 4);
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "... where the host plan raises too");
  g.lens = {100, 0, 31, 40};
  check(plan_error(g) == ~0ull, "lengths past the Global positions are fine");
  // The CPU checks every length's range before the pattern: the range error wins.
  g.lens = {12, 1000};
  check(plan_error(g) == key(kDecErrLength, 1), "a range error comes before a pattern error");
  // Global positions past the capacity: every nonzero length is an error, 0 is fine.
  Case far{"far global", Pattern::global({500}), {0, 0}, 1, 2, 1, 16, 256, 8};
  check(plan_error(far) == ~0ull, "far Global, empty caches: no error");
  far.lens = {0, 3};
  check(plan_error(far) == key(kDecErrPattern, 1), "far Global, a nonzero length: an error");
}

void test_refusals() {
  // Patterns whose rule depends on the length keep the host plan.
  BlockMask m;
  m.heads = 1, m.nbq = 1, m.nbk = 4, m.bq = 1, m.bk = 16;
  m.bits.assign(4, 1);
  for (const auto& [name, p] : std::vector<std::pair<std::string, Pattern>>{
           {"block_sparse", Pattern::block_sparse(m)},
           {"bigbird", Pattern::bigbird(16, 3, 1, 1, 7)},
           {"document", document({0, 30, 64})},
           {"topk", Pattern::topk_blocks(2, 16, 16, true, Pattern())},
           {"union with bigbird", Pattern::union_of({Pattern::sink(2), Pattern::bigbird(16, 3, 1, 1, 7)})}})
    check(!length_rule(p).free, name + ": not length-free");
  for (const Pattern& p : {Pattern::causal(), Pattern::global({4}), Pattern::sink(3), prefix_lm(5),
                           Pattern::union_of({Pattern::dilated(3, 0, 2), Pattern::fixed(8, 2, true)})})
    check(length_rule(p).free, p.describe() + ": length-free");
  check(length_rule(Pattern::union_of({Pattern::global({4}), Pattern::global({9, 2})})).min_keys == 10,
        "min_keys is the largest leaf's");
  // Length-free but without a device block rule (LogSparse): the device plan says why.
  auto d = std::make_unique<decode_emu::DevicePlan>();
  int64_t lens[1] = {100};
  check(!decode_emu::device_plan(log_sparse(0), lens, true, 1, 1, 1, 2, 1, 16, 256, 8, d.get()) &&
            !d->why.empty(),
        "LogSparse: no device plan, with a reason (" + d->why + ")");
}

}  // namespace

int main() {
  test_named_cases();
  test_random_cases();
  test_errors();
  test_refusals();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_cuda_decode_plan: all checks passed\n");
  return 0;
}
