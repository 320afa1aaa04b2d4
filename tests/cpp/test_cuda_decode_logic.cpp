// The CUDA decode kernels' plan, index and merge logic, on the host. The kernels
// (cuda/src/kernels/decode.cu) are built from the SPATTN_HD functions of
// spattn/cuda/decode_logic.hpp; this test runs the same functions in a scalar emulation of the
// kernels' loop structure:
//
//   stage_decode -> relocate/bind onto the host blob (as the launcher does onto the device)
//   decode_kernel: for every CTA (task, row group): dec_split -> its block positions; for every
//     lane group (slot) of the CTA: keys base = slot * U, step SLOTS * U, kDecUnroll keys each:
//     dec_block_at, dec_table_entry / dec_page_ok (bad page: error key, atomicMin emulated),
//     dec_block_status, dec_key_kept, dec_k_offset / dec_v_offset; online softmax per group;
//     the groups merged (dec_merge_weight) into the CTA's partial slot (dec_slot)
//   finish_kernel: dec_merge_max / dec_merge_weight over the row's tasks, dec_sink, dec_inv,
//     dec_lse; the error entry read back through dec_error_where
//
// against a float64 reference built from Pattern::mask() per sequence (Nk = cache_len[b],
// bottom-right alignment) with the score modifiers: contiguous and paged caches (pages in a
// random order, int32 and int64 tables, unused pages NaN), GQA, Nq 1 / 7 / 64, empty caches,
// caches shorter than Nq, windows, dense, causal, unions, per-head mixes, block-sparse, D != Dv.
// Also: splits cover each visited block exactly once, a window over a long cache visits only its
// blocks, bad table entries are found (the smallest in the CPU's order) and unvisited ones are
// not, and sabotaged emulations (a dropped split, the partial rule skipped) are caught.
//
// Every case whose pattern is length-free runs twice: with the host plan (stage_decode) and with
// the plan made on the device from device lengths (decode_plan_logic.hpp, emulated by
// decode_plan_emulation.hpp), whose results must be the same bits.
//
// What this cannot check: shuffles, shared memory, 16-byte loads, atomics. Those need a GPU
// (tests/python/test_cuda_decode.py).
#include <spattn/cuda/decode_logic.hpp>
#include <spattn/spattn.hpp>

#include "decode_plan_emulation.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace spattn;
using namespace spattn::cuda;

namespace {

int failures = 0;
int device_cases = 0;  // cases also run with the device plan
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

enum class Sabotage { None, DropSplit, NoPartialRule };

struct Case {
  std::string name;
  Pattern pattern;
  std::vector<int64_t> lens;
  int64_t nq, hq, hkv, d, dv;
  bool paged;
  int64_t page;  // paged: page size
  bool table64 = false;
  float softcap = 0.f;
  bool alibi = false, sinks = false;
  int64_t sms = 4;
};

struct Problem {
  int64_t B = 0, ncap = 0, nq = 0, hq = 0, hkv = 0, d = 0, dv = 0, bk = 0, pages = 0, max_pages = 0;
  std::vector<float> q;       // [B, nq, hq, d]
  std::vector<float> ck, cv;  // contiguous caches [B, ncap, hkv, d / dv]: the reference's
  std::vector<float> k, v;    // what the kernel reads: ck / cv, or the paged copies
  std::vector<int32_t> t32;   // [B, max_pages]
  std::vector<int64_t> t64;
  std::vector<float> alibi, sinks;  // [hq] natural units (empty: none)
};

Problem make(const Case& c, std::mt19937& rng) {
  Problem P;
  P.B = int64_t(c.lens.size());
  P.ncap = 1;
  for (int64_t n : c.lens) P.ncap = std::max(P.ncap, n);
  P.nq = c.nq, P.hq = c.hq, P.hkv = c.hkv, P.d = c.d, P.dv = c.dv;
  P.bk = c.paged ? c.page : kDecContigBlock;
  std::normal_distribution<float> nd(0.f, 1.f);
  P.q.resize(size_t(P.B * P.nq * P.hq * P.d));
  for (auto& x : P.q) x = nd(rng);
  P.ck.resize(size_t(P.B * P.ncap * P.hkv * P.d));
  P.cv.resize(size_t(P.B * P.ncap * P.hkv * P.dv));
  for (auto& x : P.ck) x = nd(rng);
  for (auto& x : P.cv) x = nd(rng);
  if (c.alibi)
    for (int64_t h = 0; h < P.hq; ++h) P.alibi.push_back(0.05f * float(h + 1));
  if (c.sinks)
    for (int64_t h = 0; h < P.hq; ++h) P.sinks.push_back(h % 3 == 2 ? -INFINITY : 0.5f * float(h));
  if (!c.paged) {
    P.k = P.ck;
    P.v = P.cv;
    return P;
  }
  P.max_pages = (P.ncap + c.page - 1) / c.page + 1;  // one spare column
  P.pages = P.B * P.max_pages + 2;
  P.k.assign(size_t(P.pages * c.page * P.hkv * P.d), NAN);  // unused rows must never be read
  P.v.assign(size_t(P.pages * c.page * P.hkv * P.dv), NAN);
  std::vector<int64_t> order(static_cast<size_t>(P.pages));
  for (int64_t x = 0; x < P.pages; ++x) order[size_t(x)] = x;
  std::shuffle(order.begin(), order.end(), rng);
  P.t64.assign(size_t(P.B * P.max_pages), -7);  // columns past a length: never read
  int64_t next = 0;
  for (int64_t b = 0; b < P.B; ++b) {
    const int64_t n = c.lens[size_t(b)];
    for (int64_t col = 0; col * c.page < n; ++col) {
      const int64_t pg = order[size_t(next++)];
      P.t64[size_t(b * P.max_pages + col)] = pg;
      for (int64_t x = 0; x < c.page && col * c.page + x < n; ++x)
        for (int64_t g = 0; g < P.hkv; ++g) {
          const int64_t j = col * c.page + x;
          for (int64_t e = 0; e < P.d; ++e)
            P.k[size_t(((pg * c.page + x) * P.hkv + g) * P.d + e)] =
                P.ck[size_t(((b * P.ncap + j) * P.hkv + g) * P.d + e)];
          for (int64_t e = 0; e < P.dv; ++e)
            P.v[size_t(((pg * c.page + x) * P.hkv + g) * P.dv + e)] =
                P.cv[size_t(((b * P.ncap + j) * P.hkv + g) * P.dv + e)];
        }
    }
  }
  P.t32.assign(P.t64.begin(), P.t64.end());
  return P;
}

// float64 reference: per sequence, Pattern::mask() for (nq, nk, hq), modifiers as documented.
void reference(const Case& c, const Problem& P, float scale, std::vector<double>* out,
               std::vector<double>* lse) {
  out->assign(size_t(P.B * P.nq * P.hq * P.dv), 0.0);
  lse->assign(size_t(P.B * P.hq * P.nq), -INFINITY);
  for (int64_t b = 0; b < P.B; ++b) {
    const int64_t nk = c.lens[size_t(b)];
    std::vector<uint8_t> mask;
    if (nk > 0) mask = c.pattern.mask(P.nq, nk, P.hq);
    for (int64_t h = 0; h < P.hq; ++h)
      for (int64_t i = 0; i < P.nq; ++i) {
        const int64_t g = h / (P.hq / P.hkv);
        std::vector<double> s;
        std::vector<int64_t> js;
        for (int64_t j = 0; j < nk; ++j) {
          if (!mask[size_t((h * P.nq + i) * nk + j)]) continue;
          double x = 0;
          for (int64_t e = 0; e < P.d; ++e)
            x += double(P.q[size_t(((b * P.nq + i) * P.hq + h) * P.d + e)]) *
                 P.ck[size_t(((b * P.ncap + j) * P.hkv + g) * P.d + e)];
          x *= scale;
          if (c.softcap != 0.f) x = c.softcap * std::tanh(x / c.softcap);
          if (!P.alibi.empty()) x -= P.alibi[size_t(h)] * std::fabs(double(i + nk - P.nq - j));
          s.push_back(x);
          js.push_back(j);
        }
        double m = -INFINITY;
        for (double x : s) m = std::max(m, x);
        const double sink = P.sinks.empty() ? -INFINITY : double(P.sinks[size_t(h)]);
        m = std::max(m, sink);
        if (m == -INFINITY) continue;
        double l = sink == -INFINITY ? 0.0 : std::exp(sink - m);
        for (size_t t = 0; t < s.size(); ++t) {
          const double w = std::exp(s[t] - m);
          l += w;
          for (int64_t e = 0; e < P.dv; ++e)
            (*out)[size_t(((b * P.nq + i) * P.hq + h) * P.dv + e)] +=
                w * P.cv[size_t(((b * P.ncap + js[t]) * P.hkv + g) * P.dv + e)];
        }
        for (int64_t e = 0; e < P.dv; ++e) (*out)[size_t(((b * P.nq + i) * P.hq + h) * P.dv + e)] /= l;
        (*lse)[size_t((b * P.hq + h) * P.nq + i)] = m + std::log(l);
      }
  }
}

struct Emulated {
  std::vector<float> out, lse;
  unsigned long long error = ~0ull, entry = 0, err_nk = 0;
  bool keys_once = true;  // every key position of every bg's blocks walked exactly once (rg 0)
  int64_t total_keys = 0, ntasks = 0;
};

// The capacity of the problem's cache (the largest valid length).
int64_t capacity_of(const Case& c, const Problem& P) {
  return c.paged ? P.max_pages * c.page : P.ncap;
}

// The kernels' loops (decode.cu), scalar, float32. device_plan: the plan made from device
// lengths (decode_plan_emulation.hpp) instead of stage_decode's.
Emulated emulate(const Case& c, Problem& P, float scale, Sabotage sab, bool device_plan = false) {
  Emulated E;
  const int64_t B = P.B, G = P.hq / P.hkv;
  std::vector<std::shared_ptr<const CompiledPattern>> cps(static_cast<size_t>(B));
  std::vector<DecodeSeqIn> ins(static_cast<size_t>(B));
  StagedDecode plan;
  std::vector<int32_t> lens32(c.lens.begin(), c.lens.end());
  auto dev = std::make_unique<decode_emu::DevicePlan>();
  if (device_plan) {
    if (!decode_emu::device_plan(c.pattern, lens32.data(), false, 1, B, P.nq, P.hq, P.hkv, P.bk,
                                 capacity_of(c, P), c.sms, dev.get()))
      throw std::runtime_error("no device plan: " + dev->why);
  } else {
    for (int64_t b = 0; b < B; ++b) {
      ins[size_t(b)].nk = c.lens[size_t(b)];
      if (ins[size_t(b)].nk == 0) continue;
      cps[size_t(b)] = c.pattern.compiled(P.nq, ins[size_t(b)].nk, P.hq);
      ins[size_t(b)].layout = &cps[size_t(b)]->layout_for(P.nq, P.bk);
      ins[size_t(b)].pred = cps[size_t(b)]->predicate();
    }
    plan = stage_decode(ins, P.hkv, G, P.nq, P.bk, c.sms);
    E.total_keys = plan.total_keys;
    E.ntasks = plan.ntasks;
    plan.relocate(plan.blob.data());
  }
  const int64_t dmax = dec_dim_max(P.d, P.dv);
  const int64_t ntasks = device_plan ? B * P.hkv * dev->pp.ns_max : plan.ntasks;
  const int64_t rgroups = dec_row_groups(G, P.nq);
  const int64_t slots_n = ntasks * rgroups * kDecRows;
  std::vector<float> pm(static_cast<size_t>(slots_n)), pl(static_cast<size_t>(slots_n)), pa(static_cast<size_t>(slots_n * dmax));
  E.out.assign(size_t(B * P.nq * P.hq * P.dv), -123.f);
  E.lse.assign(size_t(B * P.hq * P.nq), -123.f);
  unsigned long long err[kDecErrorWords] = {~0ull, 0, 0};

  DecodeParams p;
  if (device_plan) {
    dec_bind_device_plan(dev->pp, &p);
    err[0] = dev->error[0];  // the plan's own errors (lengths) come first
  } else {
    plan.bind(plan.blob.data(), &p);
  }
  p.q = P.q.data();
  p.q_sd = 1, p.q_sh = P.d, p.q_sn = P.hq * P.d, p.q_sb = P.nq * P.hq * P.d;
  p.out = E.out.data();
  p.o_sd = 1, p.o_sh = P.dv, p.o_sn = P.hq * P.dv, p.o_sb = P.nq * P.hq * P.dv;
  p.lse = E.lse.data();
  p.lse_sn = 1, p.lse_sh = P.nq, p.lse_sb = P.hq * P.nq;
  p.k = P.k.data();
  p.v = P.v.data();
  p.paged = c.paged;
  p.bk = P.bk;
  p.k_sd = 1, p.k_sh = P.d, p.v_sd = 1, p.v_sh = P.dv;
  p.k_sn = P.hkv * P.d, p.v_sn = P.hkv * P.dv;
  if (c.paged) {
    p.k_sp = c.page * P.hkv * P.d, p.v_sp = c.page * P.hkv * P.dv;
    p.pages = P.pages;
    p.table = c.table64 ? static_cast<const void*>(P.t64.data()) : P.t32.data();
    p.table64 = c.table64;
    p.table_sb = P.max_pages, p.table_sc = 1, p.max_pages = P.max_pages;
  } else {
    p.k_sp = P.ncap * P.hkv * P.d, p.v_sp = P.ncap * P.hkv * P.dv;
    p.max_pages = (P.ncap + P.bk - 1) / P.bk;
  }
  p.b = B, p.nq = P.nq, p.hq = P.hq, p.hkv = P.hkv, p.group = G, p.d = P.d, p.dv = P.dv;
  p.scale_log2 = scale * 1.4426950408889634f;
  p.softcap_log2 = c.softcap * 1.4426950408889634f;
  p.alibi = P.alibi.empty() ? nullptr : P.alibi.data();
  p.sinks = P.sinks.empty() ? nullptr : P.sinks.data();
  p.part_m = pm.data(), p.part_l = pl.data(), p.part_acc = pa.data(), p.dvp = dmax;
  p.error = err;

  // Key positions walked, per bg (position pos * bk + x of its block list).
  int64_t max_blocks = 1;
  for (int64_t bg = 0; bg < B * P.hkv; ++bg) max_blocks = std::max(max_blocks, p.ublocks[bg]);
  const int64_t per_bg = max_blocks * p.bk;
  std::vector<int32_t> walked(size_t(B * P.hkv * per_bg), 0);

  const int KL = int(dmax / kDecVec), GPW = 32 / KL, SLOTS = kDecWarps * GPW, U = kDecUnroll;
  const int64_t R = dec_rows(p);
  const bool mods = p.softcap_log2 != 0.f || p.alibi != nullptr;
  for (int64_t task = 0; task < p.ntasks; ++task) {
    int64_t bg, split, ns;
    dec_task(p, task, &bg, &split, &ns);
    if (split >= ns) continue;  // device plan: a task the length does not need exits
    if (sab == Sabotage::DropSplit && split == 1) continue;
    for (int64_t rg = 0; rg < p.rgroups; ++rg) {
      const int64_t b = bg / p.hkv, g = bg - b * p.hkv;
      const DecodeSeq& seq = p.seqs[b];
      int64_t pos0, pos1;
      dec_split(p.ublocks[bg], ns, split, &pos0, &pos1);
      int64_t rh[kDecRows], ri[kDecRows];
      std::vector<float> qf(static_cast<size_t>(kDecRows * P.d));
      ScoreMod mod[kDecRows];
      for (int rr = 0; rr < kDecRows; ++rr) {
        const int64_t r = rg * kDecRows + rr;
        dec_row(p, g, r < R ? r : 0, &rh[rr], &ri[rr]);
        if (r >= R) rh[rr] = -1;
        for (int64_t e = 0; e < P.d; ++e)
          qf[size_t(rr * P.d + e)] =
              rh[rr] >= 0 ? P.q[size_t(b * p.q_sb + ri[rr] * p.q_sn + rh[rr] * p.q_sh + e)] * p.scale_log2 : 0.f;
        mod[rr] = dec_score_mod(p, rh[rr] < 0 ? 0 : rh[rr]);
      }
      // Per lane group: m, l, acc, nan.
      std::vector<float> gm(size_t(SLOTS * kDecRows), neg_inf()), gl(size_t(SLOTS * kDecRows), 0.f),
          ga(size_t(SLOTS * kDecRows * dmax), 0.f);
      std::vector<uint8_t> gnan(size_t(SLOTS * kDecRows), 0);
      const int64_t nkeys = (pos1 - pos0) * p.bk;
      for (int slot = 0; slot < SLOTS; ++slot) {
        int64_t cur_pos = -1, cur_c = 0, cur_page = 0;
        int32_t klo[kDecRows], khi[kDecRows];
        bool gen[kDecRows] = {};
        for (int rr = 0; rr < kDecRows; ++rr) klo[rr] = 0, khi[rr] = -1;
        const int warp = slot / GPW, grp = slot % GPW;
        for (int64_t wbase = int64_t(warp) * GPW * U; wbase < nkeys; wbase += int64_t(SLOTS) * U) {
          const int64_t base = wbase + int64_t(grp) * U;
          int64_t pos = pos0 + base / p.bk, x = base - (pos - pos0) * p.bk;
          float s[kDecUnroll][kDecRows];
          const float* vrow[kDecUnroll] = {};
          for (int u = 0; u < U; ++u) {
            for (int rr = 0; rr < kDecRows; ++rr) s[u][rr] = neg_inf();
            if (base + u < nkeys) {
              if (pos != cur_pos) {
                cur_pos = pos;
                cur_c = dec_block_at(p, bg, pos);
                cur_page = dec_table_entry(p, b, cur_c);
                const bool ok = dec_page_ok(p, cur_page);
                if (!ok) err[0] = std::min(err[0], dec_error_key(p, b, g, cur_c));
                for (int rr = 0; rr < kDecRows; ++rr) {
                  int st = ok && rh[rr] >= 0 ? dec_block_status(seq, rh[rr], cur_c) : 0;
                  if (sab == Sabotage::NoPartialRule && st == 2) st = 1;
                  dec_row_block(seq.nk, seq.pred, st, rh[rr], ri[rr], cur_c, p.bk, &klo[rr], &khi[rr], &gen[rr]);
                }
              }
              const int64_t j = cur_c * p.bk + x;
              if (rg == 0) ++walked[size_t(bg * per_bg + pos * p.bk + x)];
              bool any = false;
              bool kept[kDecRows];
              for (int rr = 0; rr < kDecRows; ++rr) {
                kept[rr] = dec_key_kept(klo[rr], khi[rr], gen[rr], seq.pred, rh[rr], ri[rr], x, j);
                any = any || kept[rr];
              }
              if (any) {
                const float* kr = P.k.data() + dec_k_offset(p, b, cur_page, x, g);
                vrow[u] = P.v.data() + dec_v_offset(p, b, cur_page, x, g);
                for (int rr = 0; rr < kDecRows; ++rr) {
                  if (!kept[rr]) continue;
                  float t = 0.f;
                  for (int64_t e = 0; e < P.d; ++e) t += qf[size_t(rr * P.d + e)] * kr[e];
                  if (mods) t = apply_mod(mod[rr], t, dec_rel(p, seq.nk, ri[rr], j), nullptr);
                  s[u][rr] = t;
                }
              }
            }
            if (++x == p.bk) {
              x = 0;
              ++pos;
            }
          }
          for (int rr = 0; rr < kDecRows; ++rr) {
            float& m = gm[size_t(slot * kDecRows + rr)];
            float& l = gl[size_t(slot * kDecRows + rr)];
            float* acc = ga.data() + (slot * kDecRows + rr) * dmax;
            float mt = neg_inf();
            bool has_nan = false;
            for (int u = 0; u < U; ++u) {
              has_nan = has_nan || s[u][rr] != s[u][rr];
              mt = fmax_(mt, s[u][rr]);
            }
            if (has_nan) gnan[size_t(slot * kDecRows + rr)] = 1;
            if (gnan[size_t(slot * kDecRows + rr)] || mt == neg_inf()) continue;
            const float mn = fmax_(m, mt);
            const float alpha = softmax_rescale(m, mn);
            m = mn;
            float sum = 0.f, pu[kDecUnroll];
            for (int u = 0; u < U; ++u) sum += (pu[u] = softmax_p(s[u][rr], mn));
            l = l * alpha + sum;
            for (int64_t e = 0; e < dmax; ++e) acc[e] *= alpha;
            for (int u = 0; u < U; ++u)
              if (pu[u] != 0.f)
                for (int64_t e = 0; e < P.dv; ++e) acc[e] += pu[u] * vrow[u][e];
          }
        }
      }
      for (int rr = 0; rr < kDecRows; ++rr) {
        for (int t = 0; t < SLOTS; ++t)
          if (gnan[size_t(t * kDecRows + rr)]) dec_mark_nan(&gm[size_t(t * kDecRows + rr)], &gl[size_t(t * kDecRows + rr)]);
        float M = neg_inf();
        for (int t = 0; t < SLOTS; ++t) M = fmax_(M, gm[size_t(t * kDecRows + rr)]);
        const int64_t so = dec_slot(p, task, rg, rr);
        float L = 0.f;
        for (int t = 0; t < SLOTS; ++t) L += dec_merge_weight(gm[size_t(t * kDecRows + rr)], M) * gl[size_t(t * kDecRows + rr)];
        for (int64_t e = 0; e < dmax; ++e) {
          float a = 0.f;
          for (int t = 0; t < SLOTS; ++t)
            a += dec_merge_weight(gm[size_t(t * kDecRows + rr)], M) * ga[size_t((t * kDecRows + rr) * dmax + e)];
          p.part_acc[so * p.dvp + e] = a;
        }
        p.part_m[so] = M;
        p.part_l[so] = L;
      }
    }
  }
  if (sab == Sabotage::DropSplit)  // the dropped split's slots: as if never written (zeros)
    for (int64_t task = 0; task < p.ntasks; ++task) {
      int64_t bg, split, ns;
      dec_task(p, task, &bg, &split, &ns);
      if (split == 1)
        for (int64_t rg = 0; rg < p.rgroups; ++rg)
          for (int rr = 0; rr < kDecRows; ++rr) {
            p.part_m[dec_slot(p, task, rg, rr)] = neg_inf();
            p.part_l[dec_slot(p, task, rg, rr)] = 0.f;
          }
    }

  if (sab == Sabotage::None)
    for (int64_t bg = 0; bg < B * P.hkv; ++bg)
      for (int64_t x = 0; x < per_bg; ++x)
        if (walked[size_t(bg * per_bg + x)] != (x < p.ublocks[bg] * p.bk ? 1 : 0)) E.keys_once = false;

  // finish_kernel.
  if (err[0] != ~0ull) {
    unsigned long long rec[kDecErrorWords];
    dec_error_complete(p, err[0], rec);
    err[1] = rec[1];
    err[2] = rec[2];
  }
  for (int64_t w = 0; w < B * P.hq * P.nq; ++w) {
    const int64_t i = w % p.nq, h = (w / p.nq) % p.hq, b = w / (p.nq * p.hq);
    const int64_t g = h / p.group, r = (h - g * p.group) * p.nq + i;
    const int64_t rg = r / kDecRows, rr = r - rg * kDecRows, bg = b * p.hkv + g;
    int64_t t0, t1;
    dec_bg_tasks(p, bg, &t0, &t1);
    float M = dec_merge_max(p, t0, t1, rg, rr);
    float L = 0.f;
    for (int64_t t = t0; t < t1; ++t)
      L += dec_merge_weight(p.part_m[dec_slot(p, t, rg, rr)], M) * p.part_l[dec_slot(p, t, rg, rr)];
    const float M0 = M;  // the partials' weights are relative to it; the sink moves M
    const float keep = dec_sink(p, h, &M, &L);
    const float inv = dec_inv(keep, L);
    for (int64_t e = 0; e < p.dv; ++e) {
      float a = 0.f;
      if (M0 != neg_inf())
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t sl = dec_slot(p, t, rg, rr);
          a += dec_merge_weight(p.part_m[sl], M0) * p.part_acc[sl * p.dvp + e];
        }
      static_cast<float*>(p.out)[b * p.o_sb + i * p.o_sn + h * p.o_sh + e * p.o_sd] = a * inv;
    }
    p.lse[b * p.lse_sb + h * p.lse_sh + i * p.lse_sn] = dec_lse(M, L);
  }
  E.error = err[0];
  E.entry = err[1];
  E.err_nk = err[2];
  if (device_plan) E.ntasks = ntasks;
  return E;
}

// Max |out - ref| and whether lse agrees (same -inf rows, finite ones within tol).
bool compare(const Emulated& E, const std::vector<double>& ro, const std::vector<double>& rl,
             double tol, double* worst) {
  double w = 0;
  bool ok = true;
  for (size_t x = 0; x < ro.size(); ++x) {
    const double d = std::fabs(double(E.out[x]) - ro[x]);
    if (!(d <= tol) && ok && std::getenv("SPATTN_TEST_VERBOSE"))
      std::fprintf(stderr, "  out[%zu] = %g, want %g\n", x, double(E.out[x]), ro[x]);
    if (!(d <= tol)) ok = false;
    w = std::max(w, d != d ? 1e30 : d);
  }
  for (size_t x = 0; x < rl.size(); ++x) {
    bool bad = false;
    if (std::isinf(rl[x]) != std::isinf(E.lse[x])) bad = true;
    else if (!std::isinf(rl[x]) && !(std::fabs(double(E.lse[x]) - rl[x]) <= tol)) bad = true;
    if (bad && ok && std::getenv("SPATTN_TEST_VERBOSE"))
      std::fprintf(stderr, "  lse[%zu] = %g, want %g\n", x, double(E.lse[x]), rl[x]);
    ok = ok && !bad;
  }
  *worst = w;
  return ok;
}

BlockMask decode_block_mask(int64_t heads, int64_t nq, int64_t nk, int64_t bk, double keep,
                            uint32_t seed) {
  BlockMask m;
  m.heads = heads;
  m.bq = nq;
  m.bk = bk;
  m.nbq = 1;
  m.nbk = (nk + bk - 1) / bk;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  m.bits.resize(size_t(heads * m.nbk));
  for (auto& x : m.bits) x = u(rng) < keep ? 1 : 0;
  return m;
}

void run_case(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem P = make(c, rng);
  const float scale = 1.f / std::sqrt(float(c.d));
  std::vector<double> ro, rl;
  reference(c, P, scale, &ro, &rl);
  const Emulated E = emulate(c, P, scale, Sabotage::None);
  double worst = 0;
  const bool same = compare(E, ro, rl, 2e-4, &worst);
  check(same, c.name + ": emulated kernels match the reference (max err " +
                                              std::to_string(worst) + ")");
  check(E.error == ~0ull, c.name + ": no bad table entry reported");
  check(E.keys_once, c.name + ": every key of the visited blocks is walked exactly once");
  // The device plan, where the pattern allows it: the same bits.
  if (!length_rule(c.pattern).free) return;
  const Emulated D = emulate(c, P, scale, Sabotage::None, true);
  check(D.out.size() == E.out.size() &&
            std::memcmp(D.out.data(), E.out.data(), E.out.size() * sizeof(float)) == 0 &&
            std::memcmp(D.lse.data(), E.lse.data(), E.lse.size() * sizeof(float)) == 0,
        c.name + ": the device plan gives the host plan's bits");
  check(D.error == ~0ull && D.keys_once, c.name + ": device plan: no error, every key once");
  ++device_cases;
}

Case mk(std::string name, Pattern pat, std::vector<int64_t> lens, int64_t nq, int64_t hq,
        int64_t hkv, int64_t d, int64_t dv, bool paged, int64_t page = 16) {
  Case c{std::move(name), std::move(pat), std::move(lens), nq, hq, hkv, d, dv, paged, page};
  return c;
}

void test_cases() {
  std::vector<Pattern> mixed;
  for (int h = 0; h < 8; ++h)
    mixed.push_back(h % 3 == 0   ? Pattern::sliding_window(30, 0)
                    : h % 3 == 1 ? Pattern::dense()
                                 : Pattern::union_of({Pattern::sink(3), Pattern::sliding_window(10, 0)}));
  const std::vector<int64_t> lens = {300, 0, 5, 129, 64};
  std::vector<Case> cases;
  for (bool paged : {false, true})
    for (int64_t nq : {1, 7, 64}) {
      const std::string t = std::string(paged ? "paged" : "contiguous") + " nq=" + std::to_string(nq);
      std::vector<int64_t> ls = lens;
      for (auto& n : ls)
        if (n > 0 && n < nq) n = nq + 3;
      cases.push_back(mk(t + " dense GQA 8/2", Pattern::dense(), ls, nq, 8, 2, 32, 32, paged));
      cases.push_back(mk(t + " window(40,0) GQA 4/1", Pattern::sliding_window(40, 0), ls, nq, 4, 1, 64, 64, paged, 48));
      cases.push_back(mk(t + " causal MHA 2/2, D 16 Dv 24", Pattern::causal(), ls, nq, 2, 2, 16, 24, paged, 64));
      cases.push_back(mk(t + " sink|window per-head mix", Pattern::per_head(mixed), ls, nq, 8, 4, 32, 32, paged));
    }
  // Caches shorter than Nq: the first rows see nothing.
  cases.push_back(mk("paged nq=7, cache_len 3 < Nq", Pattern::causal(), {3, 40}, 7, 4, 2, 32, 32, true));
  // Block-sparse per head over a single query block.
  cases.push_back(mk("paged block-sparse 30%", Pattern::block_sparse(decode_block_mask(8, 4, 900, 100, 0.3, 5)),
                     {900, 900}, 4, 8, 2, 32, 32, true, 48));
  cases.push_back(mk("contiguous dilated(6,0,3)", Pattern::dilated(6, 0, 3), {200, 77}, 3, 4, 2, 32, 32, false));
  cases.push_back(mk("paged strided(5) int64 table", Pattern::strided(5, true), {200, 77}, 2, 4, 2, 32, 32, true, 16));
  cases.back().table64 = true;
  cases.push_back(mk("head dim 256", Pattern::sliding_window(70, 0), {180}, 2, 2, 1, 256, 256, true, 16));
  // Score modifiers.
  Case sc = mk("paged causal + softcap + alibi + sinks", Pattern::causal(), {300, 0, 40}, 7, 8, 2, 32, 32, true, 16);
  sc.softcap = 2.f;
  sc.alibi = sc.sinks = true;
  cases.push_back(sc);
  for (int which = 0; which < 3; ++which) {
    Case one = mk(which == 0 ? "softcap only" : which == 1 ? "alibi only" : "sinks only", Pattern::causal(),
                  {300, 0, 40}, 7, 8, 2, 32, 32, true, 16);
    one.softcap = which == 0 ? 2.f : 0.f;
    one.alibi = which == 1;
    one.sinks = which == 2;
    cases.push_back(one);
  }
  Case many = mk("many splits (sms 64)", Pattern::dense(), {5000, 1000}, 1, 8, 2, 32, 32, true, 16);
  many.sms = 64;
  cases.push_back(many);
  uint32_t seed = 1;
  for (const Case& c : cases) run_case(c, seed++);
}

void test_sabotage() {
  Case c = mk("sabotage", Pattern::union_of({Pattern::sink(4), Pattern::sliding_window(1000, 0)}), {3000}, 1, 4, 1, 32, 32, true, 16);
  c.sms = 64;
  std::mt19937 rng(9);
  Problem P = make(c, rng);
  std::vector<double> ro, rl;
  reference(c, P, 0.2f, &ro, &rl);
  double w;
  check(compare(emulate(c, P, 0.2f, Sabotage::None), ro, rl, 2e-4, &w), "sabotage baseline passes");
  check(emulate(c, P, 0.2f, Sabotage::None).ntasks > 1, "sabotage case has several splits");
  check(!compare(emulate(c, P, 0.2f, Sabotage::DropSplit), ro, rl, 2e-4, &w), "a dropped split is caught");
  Case c2 = mk("sabotage causal", Pattern::sliding_window(20, 0), {300}, 7, 4, 2, 32, 32, true, 16);
  std::mt19937 rng2(10);
  Problem P2 = make(c2, rng2);
  reference(c2, P2, 0.2f, &ro, &rl);
  check(!compare(emulate(c2, P2, 0.2f, Sabotage::NoPartialRule), ro, rl, 2e-4, &w),
        "skipping the partial-block rule is caught");
}

void test_window_visits_only_its_blocks() {
  // 1M-token paged cache, window 4096, pages of 16: the plan visits 4096 / 16 + 1 blocks per kv
  // head (the window's first block may be partial), never the rest.
  const int64_t nk = 1 << 20, page = 16;
  const Pattern w = Pattern::sliding_window(4095, 0);
  auto cp = w.compiled(1, nk, 32);
  std::vector<DecodeSeqIn> ins(1);
  ins[0].nk = nk;
  ins[0].layout = &cp->layout_for(1, page);
  ins[0].pred = cp->predicate();
  const StagedDecode s = stage_decode(ins, 8, 4, 1, page, 132);
  check(s.total_keys <= 8 * (4096 + page), "window 4096 over 1M keys: only the window's keys (got " +
                                               std::to_string(s.total_keys) + ")");
  check(s.total_keys >= 8 * 4096, "window 4096: every window key is visited");
  check(s.ntasks >= 8 && s.ntasks <= 8 * 4096 / kDecMinSplitKeys, "window 4096: split count in bounds");
  // Dense over the same cache: every key, split to fill the device.
  const Pattern d = Pattern::dense();
  auto cd = d.compiled(1, nk, 32);
  ins[0].layout = &cd->layout_for(1, page);
  ins[0].pred = cd->predicate();
  const StagedDecode sd = stage_decode(ins, 8, 4, 1, page, 132);
  check(sd.total_keys == 8 * nk, "dense: every key once per kv head");
  check(sd.ntasks * sd.rgroups >= 132 * kDecCtasPerSm - 8, "dense: enough CTAs to fill 132 SMs");
}

void test_helpers() {
  // dec_split: every position in exactly one split, splits ascending.
  for (int64_t T : {1, 2, 7, 64, 1000})
    for (int64_t ns = 1; ns <= std::min<int64_t>(T, 40); ++ns) {
      int64_t prev = 0;
      bool ok = true;
      for (int64_t s = 0; s < ns; ++s) {
        int64_t lo, hi;
        dec_split(T, ns, s, &lo, &hi);
        ok = ok && lo == prev && hi >= lo;
        prev = hi;
      }
      check(ok && prev == T, "dec_split covers [0, T) for T=" + std::to_string(T) + " ns=" + std::to_string(ns));
    }
  // dec_num_splits bounds.
  check(dec_num_splits(0, 16, 8, 1000) == 1, "no blocks: one split");
  check(dec_num_splits(4, 16, 1, 1000) == 1, "64 keys: below the minimum split, one split");
  check(dec_num_splits(10000, 16, 8, 1056) == 132, "dense fill: target / cells");
  check(dec_num_splits(1000, 16, 8, 1056) == 125, "splits of at least kDecMinSplitKeys keys");
  check(dec_num_splits(3, 1024, 1, 1000) == 3, "never more splits than blocks");
  // dec_dim_max.
  check(dec_dim_max(16, 24) == 32 && dec_dim_max(64, 64) == 64 && dec_dim_max(128, 96) == 128 &&
            dec_dim_max(200, 256) == 256 && dec_dim_max(257, 1) == 0,
        "dec_dim_max");
  // Error keys round-trip and order like the CPU's check (sequence, kv head, column).
  DecodeParams p;
  p.hkv = 3;
  p.max_pages = 10;
  int64_t b, g, c;
  dec_error_where(p, dec_error_key(p, 2, 1, 7), &b, &g, &c);
  check(b == 2 && g == 1 && c == 7, "dec_error_key round trip");
  check(dec_error_key(p, 0, 2, 9) < dec_error_key(p, 1, 0, 0) &&
            dec_error_key(p, 1, 0, 9) < dec_error_key(p, 1, 1, 0),
        "error keys order by (b, g, c)");
}

void test_bad_pages() {
  // A visited entry out of range is reported (the smallest (b, g, c)); entries outside a window
  // are never read, so a bad one there is not.
  Case c = mk("bad pages", Pattern::sliding_window(31, 0), {400, 400}, 1, 4, 2, 32, 32, true, 16);
  std::mt19937 rng(4);
  Problem P = make(c, rng);
  const int64_t col_far = 3, col_window = 400 / 16 - 1;
  P.t32[size_t(1 * P.max_pages + col_far)] = -1;  // outside the window: never read
  P.t64[size_t(1 * P.max_pages + col_far)] = -1;
  Emulated E = emulate(c, P, 0.2f, Sabotage::None);
  check(E.error == ~0ull, "a bad entry outside the window is not read");
  P.t32[size_t(1 * P.max_pages + col_window)] = int32_t(P.pages);
  P.t32[size_t(0 * P.max_pages + col_window)] = -5;
  E = emulate(c, P, 0.2f, Sabotage::None);
  DecodeParams p;
  p.hkv = P.hkv;
  p.max_pages = P.max_pages;
  int64_t b = -1, g = -1, col = -1;
  if (E.error != ~0ull) dec_error_where(p, E.error, &b, &g, &col);
  check(b == 0 && g == 0 && col == col_window && int64_t(E.entry) == -5,
        "the first bad visited entry is reported with its value");
  const Emulated ED = emulate(c, P, 0.2f, Sabotage::None, true);
  check(ED.error == E.error && ED.entry == E.entry && ED.err_nk == 400,
        "device plan: the same bad entry, with its sequence's length");
  // Dense reads every page: the far one is then reported for sequence 1.
  c.pattern = Pattern::dense();
  P.t32[size_t(0 * P.max_pages + col_window)] = int32_t(P.t64[size_t(0 * P.max_pages + col_window)]);
  E = emulate(c, P, 0.2f, Sabotage::None);
  b = g = col = -1;
  if (E.error != ~0ull) dec_error_where(p, E.error, &b, &g, &col);
  check(b == 1 && g == 0 && col == col_far && int64_t(E.entry) == -1, "dense: the far bad entry is reported");
  // pool_key_offset rejects bad entries and addresses good ones.
  PoolParams pp;
  pp.paged = true;
  pp.page_size = 16;
  pp.pages = P.pages;
  pp.table = P.t32.data();
  pp.table_sb = P.max_pages;
  pp.k_sp = 16 * P.hkv * P.d, pp.k_sn = P.hkv * P.d, pp.k_sh = P.d;
  bool ok;
  int64_t entry = 0;
  (void)pool_key_offset(pp, 1, col_far * 16 + 3, 1, &ok, &entry);
  check(!ok && entry == -1, "pool_key_offset: bad entry");
  const int64_t off = pool_key_offset(pp, 0, 5 * 16 + 3, 1, &ok, &entry);
  check(ok && off == P.t32[5] * pp.k_sp + 3 * pp.k_sn + pp.k_sh, "pool_key_offset: address");
}

}  // namespace

int main() {
  test_helpers();
  test_cases();
  test_sabotage();
  test_window_visits_only_its_blocks();
  test_bad_pages();
  check(device_cases >= 20, "the device plan ran on most cases (" + std::to_string(device_cases) + ")");
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_cuda_decode_logic: all checks passed (%d cases also with the device plan)\n",
              device_cases);
  return 0;
}
