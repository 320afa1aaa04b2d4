// TopKBlocks in the CUDA decode (spattn/cuda/decode_topk_logic.hpp), its logic on the host. The
// kernels (cuda/src/kernels/decode_topk.cu) are built from the SPATTN_HD functions of that
// header and topk_logic.hpp; this test runs the same functions in a scalar emulation of the
// kernels' launches, in launch order, over the blob and workspace the launcher stages
// (stage_dec_topk over dec_topk_inputs, relocated to a host buffer):
//   qpool   dec_topk_query_mean per (sequence, head, query block, feature)
//   pages   dec_topk_check_page per (sequence, page)
//   kpool   dec_topk_key_mean per (sequence, kv head, scored block, feature)
//   choose  topk_emulation.hpp's emulate_choose per sequence (the attention choose kernel's
//           steps: fixed bits, 16-lane dot products, radix select, ties to the lowest index)
//   rows    dec_topk_row per (sequence, head);   union  dec_plan_union per (sequence, kv head)
// and compares, over many random cases (contiguous and paged caches, page sizes 1 to 64,
// Nq 1 to 64, MHA and GQA, causal and not, with and without an always pattern, pooled_keys
// given or not, cache_len 0, 1, the capacity and between, k from 0 past the candidates, ties):
//   - each sequence's chosen mask, bit for bit, with the CPU decode's select::choose (cache rows
//     read through the block table, or the given pooled keys);
//   - each sequence's layout rows with CompiledPattern::layout(Nq, bk) of the concrete pattern
//     select::concrete(...) (what cpu/decode.cpp and the host plan use), range by range;
//   - each (sequence, kv head)'s union, blocks before each range, total and split count with the
//     host plan (decode_logic.hpp's stage_decode over those layouts);
//   - what the decode kernels read of each sequence (DecodeSeq): every block's status
//     (dec_block_status) as the host layout's, and the element rule (the chosen leaf pointed at
//     the sequence's mask) with the concrete pattern's dense mask;
//   - no error recorded; and with a bad block-table entry below some cache_len, the recorded
//     error is the CPU's (the first bad page of the first such sequence).
// Sabotage: ties sent to the highest index, and rows planned with the causal flag flipped,
// must be caught.
// Device lengths (decode_topk_dev_logic.hpp): every case is planned again from cache_len "on
// the device" (int32 or int64, strided; the program planned for the capacity, the workspace
// sized from it, then the always and seq launches and the six above) and must equal the
// host-lengths plan (so select::choose and stage_decode) in geometry, chosen blocks, rows,
// unions, splits, block status and element rule; then with lengths made bad (negative, past
// the capacity, too short for the always pattern) the recorded error must be the CPU's first
// and the other sequences' plan the host plan's; a bad table entry is recorded as the CPU's
// too. Sabotage: lengths read one off, and chosen leaves left at the capacity's key blocks,
// must be caught.
//
// What this cannot check: shuffles, shared memory, atomics, the device's float arithmetic and
// the decode kernels on this plan (tests/python/test_cuda_decode.py, on a GPU).
#include <spattn/cuda/decode_topk_host.hpp>
#include <spattn/spattn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "select/topk.hpp"
#include "spattn/predicate.hpp"
#include "topk_emulation.hpp"

using namespace spattn;
using namespace spattn::cuda;

namespace {

int failures = 0;
int pattern_errors = 0;  // bad-length cases whose first error is a pattern misfit
void check(bool ok, const std::string& what) {
  if (!ok) {
    if (failures < 30) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

struct Case {
  int64_t B, nq, hq, hkv, d, k, bq, bkt, bk, cap;
  bool causal, paged, pooled;
  Pattern always;
  std::vector<int64_t> lens;
  int values;  // 0 normal, 1 small integers (ties)
  std::string name;
};

struct Data {
  std::vector<float> q, kc, pooled;  // q [B, nq, hq, d]; cache; pooled [B, pb, hkv, d]
  std::vector<int32_t> table;        // [B, max_pages]
  int64_t pages = 0, max_pages = 0, pb = 0;
};

Data make_data(const Case& c, std::mt19937_64& rng) {
  Data x;
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> small(-1, 1);
  auto fill = [&](std::vector<float>& v) {
    for (float& e : v) e = c.values == 0 ? normal(rng) : float(small(rng));
  };
  x.q.resize(size_t(c.B * c.nq * c.hq * c.d));
  fill(x.q);
  if (c.paged) {
    x.max_pages = (c.cap + c.bk - 1) / c.bk;
    x.pages = c.B * x.max_pages + 3;
    std::vector<int32_t> perm(size_t(x.pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    x.table.assign(perm.begin(), perm.begin() + c.B * x.max_pages);
    x.kc.resize(size_t(x.pages * c.bk * c.hkv * c.d));
  } else {
    x.kc.resize(size_t(c.B * c.cap * c.hkv * c.d));
  }
  fill(x.kc);
  if (c.pooled) {
    x.pb = (c.cap + c.bkt - 1) / c.bkt;
    x.pooled.resize(size_t(c.B * x.pb * c.hkv * c.d));
    fill(x.pooled);
  }
  return x;
}

// The CPU decode's rows of sequence b (cpu/decode.cpp, cache_key_rows).
select::Rows key_rows(const Case& c, const Data& x, int64_t b) {
  select::Rows r;
  r.n = c.lens[size_t(b)];
  r.heads = c.hkv, r.d = c.d;
  r.s_head = c.d, r.s_dim = 1, r.s_row = c.hkv * c.d;
  r.dtype = DType::Float32;
  if (c.paged) {
    r.base = reinterpret_cast<const char*>(x.kc.data());
    r.table = reinterpret_cast<const char*>(x.table.data() + b * x.max_pages);
    r.table_s = 1, r.page_size = c.bk, r.s_page = c.bk * c.hkv * c.d;
  } else {
    r.base = reinterpret_cast<const char*>(x.kc.data() + b * c.cap * c.hkv * c.d);
  }
  return r;
}

BlockMask cpu_choice(const Case& c, const Data& x, const Pattern& topk, int64_t b) {
  select::Rows q;
  q.base = reinterpret_cast<const char*>(x.q.data() + b * c.nq * c.hq * c.d);
  q.n = c.nq, q.heads = c.hq, q.d = c.d, q.s_row = c.hq * c.d, q.s_head = c.d, q.s_dim = 1;
  q.dtype = DType::Float32;
  select::Rows k = key_rows(c, x, b);
  if (!c.pooled) return select::choose(topk, q, k);
  select::PooledKeys given;
  given.data = x.pooled.data() + b * x.pb * c.hkv * c.d;
  given.blocks = x.pb, given.s_block = c.hkv * c.d, given.s_head = c.d, given.s_dim = 1;
  return select::choose(topk, q, k, &given);
}

struct Emulated {
  StagedDecTopk st;
  std::vector<uint64_t> ws;
  DecTopkParams p;
  unsigned char* base() { return reinterpret_cast<unsigned char*>(ws.data()); }
};

// The launcher's staging and the kernels' launches on the host. flip_causal: the sabotaged
// rows (the geometry's causal flag flipped before the rows step).
using Ranges = std::vector<std::pair<int32_t, int32_t>>;
Ranges ranges(const int32_t* lo, const int32_t* hi, int64_t b, int64_t e) {
  Ranges r;
  for (int64_t t = b; t < e; ++t) r.emplace_back(lo[t], hi[t]);
  return r;
}

// The launcher's fill_decode_params for the test's tensors.
void fill_dp(const Case& c, const Data& x, DecTopkParams& p) {
  const int64_t G = c.hq / c.hkv;
  DecodeParams& dp = p.dp;
  dp.q = x.q.data();
  dp.q_sb = c.nq * c.hq * c.d, dp.q_sn = c.hq * c.d, dp.q_sh = c.d, dp.q_sd = 1;
  dp.k = x.kc.data();
  dp.k_sn = c.hkv * c.d, dp.k_sh = c.d, dp.k_sd = 1;
  dp.k_sp = c.paged ? c.bk * c.hkv * c.d : c.cap * c.hkv * c.d;
  dp.paged = c.paged;
  dp.bk = c.bk;
  if (c.paged) {
    dp.pages = x.pages;
    dp.table = x.table.data();
    dp.table_sb = x.max_pages, dp.table_sc = 1, dp.max_pages = x.max_pages;
  } else {
    dp.max_pages = (c.cap + c.bk - 1) / c.bk;
  }
  dp.b = c.B, dp.nq = c.nq, dp.hq = c.hq, dp.hkv = c.hkv, dp.group = G, dp.d = c.d, dp.dv = c.d;
  if (c.pooled) {
    p.pooled = x.pooled.data();
    p.pk_sb = x.pb * c.hkv * c.d, p.pk_sc = c.hkv * c.d, p.pk_sh = c.d, p.pk_sd = 1;
  }
}

// The six launches both paths share (qpool, pages, kpool, choose, rows, union), in order.
void run_steps(const Case& c, DecTopkParams& p, bool sabotage_ties, bool flip_causal) {
  const DecodeParams& dp = p.dp;
  auto load = [&](int64_t b, int64_t j, int64_t h, int64_t f, bool key, int64_t page) -> float {
    if (!key) return *dec_topk_q<float>(p, b, j, h, f);
    return static_cast<const float*>(dp.k)[dec_topk_k_offset(p, b, page, j, h, f)];
  };
  const int64_t nqb = p.nqb;
  for (int64_t b = 0; b < c.B; ++b)  // qpool
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t a = 0; a < nqb; ++a)
        for (int64_t f = 0; f < c.d; ++f)
          p.qm[((b * c.hq + h) * nqb + a) * c.d + f] = dec_topk_query_mean(p, b, h, a, f, load);
  for (int64_t b = 0; b < c.B; ++b)  // pages
    for (int64_t pg = 0; pg < dp.max_pages; ++pg) dec_topk_check_page(p, b, pg);
  for (int64_t b = 0; b < c.B; ++b) {  // kpool, choose
    const DecTopkSeq& s = p.seqs[b];
    if (s.g.nk == 0) continue;
    for (int64_t g = 0; g < c.hkv; ++g)
      for (int64_t cb = 0; cb < s.g.kmax; ++cb)
        for (int64_t f = 0; f < c.d; ++f)
          s.km[(g * s.g.kmax + cb) * c.d + f] = dec_topk_key_mean(p, b, g, cb, f, load);
    const std::vector<float> qm(p.qm + b * c.hq * nqb * c.d, p.qm + (b + 1) * c.hq * nqb * c.d);
    const std::vector<float> km(s.km, s.km + c.hkv * s.g.kmax * c.d);
    const std::vector<uint8_t> mask = topk_emu::emulate_choose(s.g, qm, km, sabotage_ties);
    std::memcpy(s.mask, mask.data(), mask.size());
  }
  if (flip_causal)
    for (int64_t b = 0; b < c.B; ++b) {
      DecTopkSeq* s = const_cast<DecTopkSeq*>(p.seqs + b);
      s->g.causal = !s->g.causal;
    }
  for (int64_t r = 0; r < c.B * c.hq; ++r) dec_topk_row(p, r);  // rows
  for (int64_t bg = 0; bg < c.B * c.hkv; ++bg) dec_plan_union(p.pp, bg);  // union
}

void emulate(const Case& c, const Data& x, const Pattern& topk, bool sabotage_ties,
             bool flip_causal, Emulated* e) {
  const DecTopkHost in = dec_topk_inputs(topk, c.lens.data(), c.B, c.nq, c.hq, c.hkv, c.d, c.bk,
                                         c.pooled ? x.pb : -1);
  e->st = stage_dec_topk(in.in, c.nq, c.hq, c.hkv, c.d, in.bq, in.bk, c.bk, 32, 7);
  StagedDecTopk& st = e->st;
  e->ws.assign(st.total / 8 + 1, 0xdeadbeefdeadbeefull);  // garbage, as a fresh allocation
  std::memcpy(e->base(), st.blob.data(), st.blob.size());
  st.relocate(e->base());
  std::memcpy(e->base(), st.blob.data(), st.blob.size());  // the relocated blob, "uploaded"
  DecTopkParams& p = e->p;
  p = DecTopkParams{};
  fill_dp(c, x, p);
  st.bind(e->base(), &p);
  unsigned long long* err = p.pp.error;
  for (int w = 0; w < kDecErrorWords; ++w) err[w] = ~0ull;
  run_steps(c, p, sabotage_ties, flip_causal);
}

// The device-lengths path (decode_topk_dev_logic.hpp): the program planned once for the
// capacity and "uploaded" (relocated to host buffers), the workspace from the capacity, then
// the always and seq launches and the six shared ones. cache_len as int32 or int64 with element
// stride lens_s (garbage between). stale_leaf: the sabotaged seq step (each sequence's chosen
// leaf keeps the capacity's key blocks).
struct EmulatedDev {
  DecTopkDevProgram prog;
  DecTopkDevSpace space;
  std::vector<uint64_t> ws, pblob, ablob, lens;
  DecTopkParams p;
  DecTopkDev v;
};

bool emulate_dev(const Case& c, const Data& x, const Pattern& topk,
                 const std::vector<int64_t>& lens, bool lens64, int64_t lens_s, bool stale_leaf,
                 EmulatedDev* e) {
  std::string why;
  if (!plan_dec_topk_program(topk, c.nq, c.hq, c.hkv, c.d, c.bk, c.cap, &e->prog, &why)) {
    check(false, c.name + ": no device-lengths plan: " + why);
    return false;
  }
  DecTopkDevProgram& P = e->prog;
  e->pblob.assign(P.blob.size() / 8 + 1, 0);
  e->ablob.assign(P.always.blob.size() / 8 + 1, 0);
  P.relocate(e->pblob.data(), e->ablob.data());
  std::memcpy(e->pblob.data(), P.blob.data(), P.blob.size());
  if (P.has_always) std::memcpy(e->ablob.data(), P.always.blob.data(), P.always.blob.size());
  e->space = plan_dec_topk_space(P, c.B, 32, 7);
  e->ws.assign(e->space.total / 8 + 1, 0xdeadbeefdeadbeefull);
  e->lens.assign(size_t(c.B * lens_s + 1), 0x5a5a5a5a5a5a5a5aull);
  for (int64_t b = 0; b < c.B; ++b) {
    if (lens64)
      reinterpret_cast<int64_t*>(e->lens.data())[b * lens_s] = lens[size_t(b)];
    else
      reinterpret_cast<int32_t*>(e->lens.data())[b * lens_s] = int32_t(lens[size_t(b)]);
  }
  DecTopkParams& p = e->p;
  p = DecTopkParams{};
  fill_dp(c, x, p);
  e->space.bind(e->ws.data(), P, e->pblob.data(), e->ablob.data(), e->lens.data(), lens64,
                lens_s, &p, &e->v);
  for (int w = 0; w < kDecErrorWords; ++w) p.pp.error[w] = ~0ull;
  const DecTopkDev& v = e->v;
  if (v.has_always)  // always
    for (int64_t r = 0; r < c.B * v.ap.lheads; ++r) dec_plan_row(v.ap, r);
  for (int64_t b = 0; b < c.B; ++b) dec_topk_dev_seq(p, v, b);  // seq
  if (stale_leaf)
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t t = 0; t < v.nchosen; ++t)
        v.nodes[b * v.nnodes + v.chosen[t]].u.block_sparse.nbk = P.gcap.nkb;
  run_steps(c, p, false, false);
  return true;
}

// Whether the device-lengths plan d equals the host-lengths plan h (of the same call with the
// lengths h was given): geometry, chosen masks, layout rows, unions, splits, what the decode
// kernels read of each sequence (block status, element rule).
bool same_plans(const Case& c, const std::vector<int64_t>& hlens, Emulated& h, EmulatedDev& d,
                bool report) {
  bool same = true;
  auto expect = [&](bool ok, const std::string& what) {
    same = same && ok;
    if (report) check(ok, c.name + " (device lengths): " + what);
  };
  const DecTopkParams &a = h.p, &b = d.p;
  for (int64_t s = 0; s < c.B; ++s) {
    const std::string sb = "sequence " + std::to_string(s);
    const DecTopkSeq &x = a.seqs[s], &y = b.seqs[s];
    const int64_t nk = hlens[size_t(s)];
    expect(y.g.nk == nk && x.g.nk == nk, sb + ": length");
    if (nk == 0) {
      expect(b.pp.seqs[s].nk == 0, sb + ": DecodeSeq of an empty sequence");
      continue;
    }
    expect(y.g.nkb == x.g.nkb && y.g.kmax == x.g.kmax && y.g.off == x.g.off &&
               y.g.nqb == x.g.nqb && y.nkb == x.nkb,
           sb + ": geometry");
    const int64_t mbytes = c.hq * x.g.nqb * x.g.nkb;
    expect(std::equal(x.mask, x.mask + mbytes, y.mask), sb + ": chosen blocks");
    for (int64_t hh = 0; hh < c.hq; ++hh) {
      const int64_t r = s * c.hq + hh;
      expect(ranges(a.pp.full_lo, a.pp.full_hi, a.pp.full_beg[r], a.pp.full_end[r]) ==
                     ranges(b.pp.full_lo, b.pp.full_hi, b.pp.full_beg[r], b.pp.full_end[r]) &&
                 ranges(a.pp.part_lo, a.pp.part_hi, a.pp.part_beg[r], a.pp.part_end[r]) ==
                     ranges(b.pp.part_lo, b.pp.part_hi, b.pp.part_beg[r], b.pp.part_end[r]),
             sb + " head " + std::to_string(hh) + ": layout rows");
    }
    const DecodeSeq &u = a.dp.seqs[s], &w = b.dp.seqs[s];
    expect(u.nk == w.nk && u.lheads == w.lheads, sb + ": DecodeSeq sizes");
    const int64_t nkb = (nk + c.bk - 1) / c.bk;
    int64_t bad = 0;
    for (int64_t hh = 0; hh < c.hq; ++hh) {
      for (int64_t cb = 0; cb < nkb; ++cb) bad += dec_block_status(u, hh, cb) != dec_block_status(w, hh, cb);
      for (int64_t i = 0; i < c.nq; ++i)
        for (int64_t j = 0; j < nk; ++j) bad += keeps(u.pred, hh, i, j) != keeps(w.pred, hh, i, j);
    }
    expect(bad == 0, sb + ": block status or element rule differ in " + std::to_string(bad) +
                         " places");
  }
  for (int64_t bg = 0; bg < c.B * c.hkv; ++bg) {
    const std::string sb = "bg " + std::to_string(bg);
    const int64_t a0 = a.pp.ubeg[bg], a1 = a.pp.uend[bg], b0 = b.pp.ubeg[bg], b1 = b.pp.uend[bg];
    bool ok = ranges(a.pp.ulo, a.pp.uhi, a0, a1) == ranges(b.pp.ulo, b.pp.uhi, b0, b1);
    for (int64_t t = 0; ok && t < a1 - a0; ++t) ok = a.pp.ubefore[a0 + t] == b.pp.ubefore[b0 + t];
    expect(ok && a.pp.ublocks[bg] == b.pp.ublocks[bg], sb + ": union");
    expect(a.pp.bg_ns[bg] == b.pp.bg_ns[bg] && b.pp.bg_ns[bg] <= b.pp.ns_max, sb + ": splits");
  }
  return same;
}

// Returns whether everything matched (sabotage runs report, the real one checks).
bool run_case(const Case& c, std::mt19937_64& rng, bool sabotage_ties, bool flip_causal) {
  const Data x = make_data(c, rng);
  const Pattern topk = Pattern::topk_blocks(c.k, c.bq, c.bkt, c.causal, c.always);
  const bool real = !sabotage_ties && !flip_causal;
  Emulated e;
  emulate(c, x, topk, sabotage_ties, flip_causal, &e);
  const DecTopkParams& p = e.p;
  bool same = true;
  auto expect = [&](bool ok, const std::string& what) {
    same = same && ok;
    if (real) check(ok, c.name + ": " + what);
  };
  expect(p.pp.error[0] == ~0ull, "an error was recorded");

  // The CPU decode's choice and plan.
  const int64_t G = c.hq / c.hkv;
  // The concrete patterns outlive the loop: their predicates read the chosen masks the
  // patterns own (stage_decode below copies them).
  std::vector<Pattern> concs(size_t(c.B));
  std::vector<std::shared_ptr<const CompiledPattern>> cps(size_t(c.B));
  std::vector<DecodeSeqIn> ins(size_t(c.B));
  std::vector<BlockLayout> layouts(size_t(c.B));
  for (int64_t b = 0; b < c.B; ++b) {
    const int64_t nk = c.lens[size_t(b)];
    ins[size_t(b)].nk = nk;
    if (nk == 0) continue;
    const BlockMask chosen = cpu_choice(c, x, topk, b);
    const DecTopkSeq& s = p.seqs[b];
    const std::string sb = "sequence " + std::to_string(b);
    expect(chosen.bits.size() == size_t(c.hq * s.g.nqb * s.g.nkb) &&
               std::equal(chosen.bits.begin(), chosen.bits.end(), s.mask),
           sb + ": the chosen blocks differ from select::choose");
    const Pattern& conc = concs[size_t(b)] = select::concrete(topk, chosen);
    cps[size_t(b)] = conc.compiled(c.nq, nk, c.hq);
    layouts[size_t(b)] = cps[size_t(b)]->layout(c.nq, c.bk);
    ins[size_t(b)].layout = &layouts[size_t(b)];
    ins[size_t(b)].pred = cps[size_t(b)]->predicate();
    const BlockLayout& L = layouts[size_t(b)];
    for (int64_t h = 0; h < c.hq; ++h) {
      const int64_t hr = L.heads == 1 ? 0 : h, r = b * c.hq + h;
      const Ranges wf = ranges(L.full_lo.data(), L.full_hi.data(), L.full_ptr[size_t(hr)],
                               L.full_ptr[size_t(hr + 1)]);
      const Ranges wp = ranges(L.part_lo.data(), L.part_hi.data(), L.part_ptr[size_t(hr)],
                               L.part_ptr[size_t(hr + 1)]);
      expect(ranges(p.pp.full_lo, p.pp.full_hi, p.pp.full_beg[r], p.pp.full_end[r]) == wf,
             sb + " head " + std::to_string(h) + ": full ranges differ from the host layout");
      expect(ranges(p.pp.part_lo, p.pp.part_hi, p.pp.part_beg[r], p.pp.part_end[r]) == wp,
             sb + " head " + std::to_string(h) + ": partial ranges differ from the host layout");
    }
    if (!real) continue;
    // What the decode kernels read (DecodeSeq): every block's status as the host layout's, and
    // the element rule against the concrete pattern's dense mask.
    const DecodeSeq& ds = p.dp.seqs[b];
    expect(ds.nk == nk && ds.lheads == c.hq, sb + ": DecodeSeq sizes");
    const int64_t nkb = (nk + c.bk - 1) / c.bk;
    int64_t bad_status = 0;
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t cb = 0; cb < nkb; ++cb) {
        const int64_t hr = L.heads == 1 ? 0 : h;
        int want_status = 0;
        for (int64_t t = L.full_ptr[size_t(hr)]; t < L.full_ptr[size_t(hr + 1)]; ++t)
          if (L.full_lo[size_t(t)] <= cb && cb < L.full_hi[size_t(t)]) want_status = 1;
        for (int64_t t = L.part_ptr[size_t(hr)]; t < L.part_ptr[size_t(hr + 1)]; ++t)
          if (L.part_lo[size_t(t)] <= cb && cb < L.part_hi[size_t(t)]) want_status = 2;
        bad_status += dec_block_status(ds, h, cb) != want_status;
      }
    expect(bad_status == 0, sb + ": dec_block_status differs from the host layout in " +
                                std::to_string(bad_status) + " blocks");
    const std::vector<uint8_t> want = conc.mask(c.nq, nk, c.hq);
    int64_t bad = 0;
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t i = 0; i < c.nq; ++i)
        for (int64_t j = 0; j < nk; ++j)
          bad += keeps(ds.pred, h, i, j) != (want[size_t((h * c.nq + i) * nk + j)] != 0);
    expect(bad == 0, sb + ": the device element rule differs from the concrete mask in " +
                         std::to_string(bad) + " pairs");
  }
  const StagedDecode host = stage_decode(ins, c.hkv, G, c.nq, c.bk, 7);
  const int64_t* uptr = reinterpret_cast<const int64_t*>(host.blob.data() + host.uptr);
  const int32_t* ulo = reinterpret_cast<const int32_t*>(host.blob.data() + host.ulo);
  const int32_t* uhi = reinterpret_cast<const int32_t*>(host.blob.data() + host.uhi);
  const int64_t* ubefore = reinterpret_cast<const int64_t*>(host.blob.data() + host.ubefore);
  const int64_t* ublocks = reinterpret_cast<const int64_t*>(host.blob.data() + host.ublocks);
  const int32_t* task0 = reinterpret_cast<const int32_t*>(host.blob.data() + host.bg_task0);
  for (int64_t bg = 0; bg < c.B * c.hkv; ++bg) {
    const std::string sb = "bg " + std::to_string(bg);
    const int64_t b0 = p.pp.ubeg[bg], b1 = p.pp.uend[bg];
    expect(ranges(p.pp.ulo, p.pp.uhi, b0, b1) == ranges(ulo, uhi, uptr[bg], uptr[bg + 1]),
           sb + ": union differs from the host plan");
    bool before_ok = b1 - b0 == uptr[bg + 1] - uptr[bg];
    for (int64_t t = 0; before_ok && t < b1 - b0; ++t)
      before_ok = p.pp.ubefore[b0 + t] == ubefore[uptr[bg] + t];
    expect(before_ok, sb + ": blocks before each range differ");
    expect(p.pp.ublocks[bg] == ublocks[bg], sb + ": visited blocks differ");
    expect(p.pp.bg_ns[bg] == task0[bg + 1] - task0[bg] && p.pp.bg_ns[bg] <= p.pp.ns_max,
           sb + ": split count differs from the host plan's");
  }
  return same;
}

// A bad table entry below some cache_len: the recorded error must be the CPU's first.
void run_bad_table(const Case& c, std::mt19937_64& rng) {
  Data x = make_data(c, rng);
  const Pattern topk = Pattern::topk_blocks(c.k, c.bq, c.bkt, c.causal, c.always);
  std::vector<std::pair<int64_t, int64_t>> below;  // (b, page) pairs the CPU checks
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t pg = 0; pg < (c.lens[size_t(b)] + c.bk - 1) / c.bk; ++pg) below.emplace_back(b, pg);
  if (below.empty()) return;
  const int nbad = 1 + int(rng() % 2);
  for (int t = 0; t < nbad; ++t) {
    const auto [b, pg] = below[size_t(rng() % below.size())];
    x.table[size_t(b * x.max_pages + pg)] = rng() % 2 ? -1 : int32_t(x.pages + 2);
  }
  // The CPU: the first sequence in order with a bad page below its length, its first bad page.
  int64_t wb = -1, wc = -1;
  for (auto [b, pg] : below) {
    const int32_t e = x.table[size_t(b * x.max_pages + pg)];
    if (e < 0 || e >= x.pages) {
      wb = b, wc = pg;
      break;
    }
  }
  Emulated e;
  emulate(c, x, topk, false, false, &e);
  EmulatedDev ed;
  if (!emulate_dev(c, x, topk, c.lens, true, 1, false, &ed)) return;
  for (const DecodeParams* dp : {&e.p.dp, &ed.p.dp}) {
    const unsigned long long key = dp->error[0];
    int64_t b, g, pg;
    dec_error_where(*dp, key, &b, &g, &pg);
    check(dec_error_class(key) == kDecErrTable && b == wb && pg == wc && g == 0,
          c.name + (dp == &e.p.dp ? "" : " (device lengths)") + ": bad table entry [" +
              std::to_string(wb) + ", " + std::to_string(wc) + "] recorded as class " +
              std::to_string(dec_error_class(key)) + " [" + std::to_string(b) + ", " +
              std::to_string(pg) + "]");
  }
}

// The device-lengths plan against the host-lengths plan of the same call (lengths as int32 or
// int64, strided), then with some lengths made bad: outside [0, capacity], or below what the
// always pattern needs. The error recorded must be the CPU's first (decode_api.cpp checks every
// length first, then cpu/decode.cpp each sequence's fit in order), and the other sequences'
// plan the host plan's with the bad ones empty. Returns whether the sabotaged runs were caught
// (lengths one more where below the capacity; chosen leaves left at the capacity's blocks).
struct DevCaught {
  bool shifted = false, stale = false;
};
DevCaught run_dev_case(const Case& c, std::mt19937_64& rng, int* bad_cases) {
  DevCaught caught;
  const Data x = make_data(c, rng);
  const Pattern topk = Pattern::topk_blocks(c.k, c.bq, c.bkt, c.causal, c.always);
  Emulated h;
  emulate(c, x, topk, false, false, &h);
  const bool lens64 = rng() % 2 == 0;
  const int64_t lens_s = 1 + int64_t(rng() % 2);
  EmulatedDev d;
  if (!emulate_dev(c, x, topk, c.lens, lens64, lens_s, false, &d)) return caught;
  check(d.p.pp.error[0] == ~0ull, c.name + " (device lengths): an error was recorded");
  same_plans(c, c.lens, h, d, true);

  std::vector<int64_t> shifted = c.lens;
  bool any = false;
  for (int64_t& n : shifted)
    if (n > 0 && n < c.cap) ++n, any = true;
  if (any) {
    EmulatedDev s;
    emulate_dev(c, x, topk, shifted, lens64, lens_s, false, &s);
    caught.shifted = !same_plans(c, c.lens, h, s, false);
  }
  EmulatedDev st;
  emulate_dev(c, x, topk, c.lens, lens64, lens_s, true, &st);
  caught.stale = !same_plans(c, c.lens, h, st, false);

  // Bad lengths.
  std::vector<int64_t> bad = c.lens;
  const int nbad = 1 + int(rng() % 2);
  for (int t = 0; t < nbad; ++t) {
    const int64_t b = int64_t(rng() % uint64_t(c.B));
    switch (rng() % 3) {
      case 0: bad[size_t(b)] = -1 - int64_t(rng() % 5); break;
      case 1: bad[size_t(b)] = c.cap + 1 + int64_t(rng() % 3); break;
      default: bad[size_t(b)] = 1 + int64_t(rng() % uint64_t(std::max<int64_t>(c.nq, 12)));
    }
  }
  if (!lens64)
    for (int64_t& n : bad) n = int64_t(int32_t(n));
  unsigned long long want = ~0ull;
  std::vector<int64_t> fixed = bad;  // what the other sequences are planned with
  for (int64_t b = 0; b < c.B; ++b)
    if (bad[size_t(b)] < 0 || bad[size_t(b)] > c.cap) {
      if (want == ~0ull) want = (kDecErrLength << kDecErrClassShift) | uint64_t(b);
      fixed[size_t(b)] = 0;
    }
  for (int64_t b = 0; b < c.B; ++b) {
    const int64_t n = fixed[size_t(b)];
    if (n == 0) continue;
    try {
      topk.check(c.nq, n, c.hq);
    } catch (const ValueError&) {
      if (want == ~0ull) want = (kDecErrPattern << kDecErrClassShift) | uint64_t(b);
      fixed[size_t(b)] = 0;
    }
  }
  if (fixed == c.lens && bad == c.lens) return caught;  // no bad length after all
  ++*bad_cases;
  pattern_errors += dec_error_class(want) == kDecErrPattern;
  EmulatedDev e;
  emulate_dev(c, x, topk, bad, lens64, lens_s, false, &e);
  check(e.p.pp.error[0] == want,
        c.name + " (device lengths " + [&] {
          std::string t;
          for (int64_t n : bad) t += std::to_string(n) + ",";
          return t;
        }() + "): recorded error " + std::to_string(e.p.pp.error[0]) + ", the CPU's " +
            std::to_string(want));
  Case cf = c;
  cf.lens = fixed;
  Emulated hf;
  emulate(cf, x, topk, false, false, &hf);
  same_plans(cf, fixed, hf, e, true);
  return caught;
}

}  // namespace

int main() {
  std::mt19937_64 rng(20261129);
  auto pick = [&](std::initializer_list<int64_t> v) {
    return *(v.begin() + int64_t(rng() % v.size()));
  };
  int cases = 0, ties_caught = 0, ties_tried = 0, causal_caught = 0, bad_tables = 0;
  int dev_cases = 0, dev_bad = 0, shifted_caught = 0, stale_caught = 0;
  for (int it = 0; it < 400; ++it) {
    Case c;
    c.B = pick({1, 2, 3, 4});
    c.nq = pick({1, 1, 2, 5, 16, 33, 64});
    c.hkv = pick({1, 2});
    c.hq = c.hkv * pick({1, 2, 3});
    c.d = pick({1, 4, 16, 20});
    c.k = pick({0, 1, 2, 3, 5, 1000});
    c.bq = pick({1, 4, 16, 64, 100});
    c.bkt = pick({8, 16, 24, 64});
    c.causal = rng() % 3 != 0;
    c.paged = rng() % 2 == 0;
    c.bk = c.paged ? pick({1, 3, 16, 64}) : kDecContigBlock;
    c.cap = c.nq + int64_t(rng() % 400);
    c.pooled = rng() % 3 == 0;
    switch (rng() % 6) {
      case 0: case 1: c.always = Pattern(); break;
      case 2: c.always = Pattern::sink(3); break;
      case 3: c.always = Pattern::sliding_window(20, 0); break;
      case 4:  // fits only cache_len >= 10 (Global's min_keys)
        c.always = Pattern::union_of({Pattern::global({1, 9}), Pattern::sliding_window(8, 0)});
        break;
      default:
        c.always = Pattern::union_of({Pattern::sink(2), Pattern::sliding_window(5, 5)});
    }
    c.lens.clear();
    for (int64_t b = 0; b < c.B; ++b) {
      const int r = int(rng() % 6);
      c.lens.push_back(r == 0 ? 0 : r == 1 ? std::min<int64_t>(1, c.cap) : r == 2 ? c.cap
                                                  : std::min(c.cap, c.nq + int64_t(rng() % c.cap)));
    }
    // Lengths below Nq make a causal pattern ask for keys before the cache: the CPU refuses
    // such sequences (pattern check); keep lengths >= Nq where the pattern needs it.
    bool fits = true;
    const Pattern topk = Pattern::topk_blocks(c.k, c.bq, c.bkt, c.causal, c.always);
    for (int64_t n : c.lens) {
      if (n == 0) continue;
      try {
        topk.check(c.nq, n, c.hq);
      } catch (const ValueError&) {
        fits = false;
      }
    }
    if (!fits) continue;
    c.values = it % 2;
    c.name = "case " + std::to_string(it) + " (B=" + std::to_string(c.B) + " nq=" +
             std::to_string(c.nq) + " hq=" + std::to_string(c.hq) + " hkv=" +
             std::to_string(c.hkv) + " d=" + std::to_string(c.d) + " k=" + std::to_string(c.k) +
             " bq=" + std::to_string(c.bq) + " bkt=" + std::to_string(c.bkt) + " bk=" +
             std::to_string(c.bk) + (c.paged ? " paged" : " contiguous") + " cap=" +
             std::to_string(c.cap) + (c.causal ? " causal" : "") + (c.pooled ? " pooled" : "") +
             " always=" + (c.always.valid() ? c.always.describe() : "none") + " lens=";
    for (int64_t n : c.lens) c.name += std::to_string(n) + ",";
    c.name += ")";
    const uint64_t seed = rng();
    std::mt19937_64 r1(seed), r2(seed), r3(seed);
    run_case(c, r1, false, false);
    ++cases;
    if (c.values == 1) {
      ++ties_tried;
      if (!run_case(c, r2, true, false)) ++ties_caught;
    }
    if (!run_case(c, r3, false, true)) ++causal_caught;
    if (c.paged && !c.pooled) {
      run_bad_table(c, rng);
      ++bad_tables;
    }
    std::mt19937_64 r4(seed);
    const DevCaught dc = run_dev_case(c, r4, &dev_bad);
    ++dev_cases;
    shifted_caught += dc.shifted;
    stale_caught += dc.stale;
  }
  check(shifted_caught > 0, "device lengths read one off were never caught");
  check(stale_caught > 0, "chosen leaves left at the capacity's key blocks were never caught");
  check(dev_bad > 50 && pattern_errors > 4,
        "too few bad-length cases ran: " + std::to_string(dev_bad) + ", " +
            std::to_string(pattern_errors) + " of them misfits");
  check(ties_caught > 0, "ties sent to the highest index were never caught");
  check(causal_caught > 0, "rows planned with the causal flag flipped were never caught");
  check(cases >= 200, "too few cases ran: " + std::to_string(cases));
  std::printf("%d cases (%d bad-table cases); sabotage caught: ties %d of %d, flipped causal "
              "%d; device lengths: %d cases, %d with bad lengths (%d misfits), sabotage caught: lengths one "
              "off %d, stale chosen leaf %d: %s\n",
              cases, bad_tables, ties_caught, ties_tried, causal_caught, dev_cases, dev_bad, pattern_errors,
              shifted_caught, stale_caught, failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
