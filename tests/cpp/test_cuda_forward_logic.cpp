// The CUDA forward kernel's index, mask and scheduling logic, on the host. The kernel
// (cuda/src/fwd/forward_kernel.cuh) is built from the SPATTN_HD functions of
// spattn/cuda/forward_logic.hpp; this test runs the same functions in a scalar emulation of
// the kernel's loop structure:
//
//   for every CTA of the grid: cta_work -> (b, h, a); load the Q tile (rows >= Nq zero-filled)
//     RowWalk over the layout row: for each key block c (full or partial):
//       load K, V (keys >= Nk zero-filled); the mask bits exactly as the kernel computes them
//       (block_needs_mask, mask_by_interval / row_interval, element_kept); S = Q K^T;
//       score_scaled; online softmax (softmax_rescale / _max_safe / _p); O += P V
//     epilogue: softmax_inv_l / softmax_lse; store rows < Nq at o_offset / lse_offset
//
// on parameters produced by the launcher's own staging (stage_forward, relocated to the host
// blob, bind), and compares out and lse with a float64 reference built from Pattern::mask(),
// the pattern's dense definition: windows, causal, per-head block-sparse, unions (keeps()
// path), global tokens, BigBird, dilated, Nq != Nk both ways, odd sizes, GQA, strided views,
// empty rows, a negative scale. The sabotage cases check that the comparison catches a wrong
// mask, a skipped partial mask, a dropped block and an unmasked tail block.
//
// What this cannot check: the CuTe fragment layouts, ldmatrix / cp.async / mma.sync, the
// shared-memory pipeline and its barriers. Those need a GPU (tests/python/test_cuda_forward.py).
#include <spattn/cuda/forward.hpp>
#include <spattn/cuda/forward_logic.hpp>
#include <spattn/spattn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace spattn;
using spattn::cuda::FwdParams;
using spattn::cuda::kFwdBlockM;
using spattn::cuda::kFwdBlockN;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// Deliberate bugs, to show the comparison fails on them.
enum class Sabotage { None, WrongMask, NoPartialMask, DropLastBlock, NoTailMask };

// A [B, N, H, D] float tensor stored with padding and a permuted layout ([B, H, N, D] order
// plus 3 spare elements per row), so strides are not the compact ones.
struct Strided {
  int64_t shape[4];
  int64_t strides[4];
  std::vector<float> data;
  Strided(int64_t b, int64_t n, int64_t h, int64_t d, std::mt19937& rng, float fill = NAN,
          bool random = true) {
    shape[0] = b, shape[1] = n, shape[2] = h, shape[3] = d;
    const int64_t row = d + 3;
    strides[3] = 1;
    strides[1] = row;          // N
    strides[2] = row * n;      // H
    strides[0] = row * n * h;  // B
    data.assign(size_t(b * h * n * row + 1), fill);
    std::normal_distribution<float> nd(0.f, 1.f);
    if (random)
      for (int64_t x = 0; x < b; ++x)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t y = 0; y < h; ++y)
            for (int64_t z = 0; z < d; ++z) at(x, i, y, z) = nd(rng);
  }
  float& at(int64_t b, int64_t n, int64_t h, int64_t d) {
    return data[size_t(b * strides[0] + n * strides[1] + h * strides[2] + d * strides[3])];
  }
};

struct Visit {
  int64_t b, h, a, c;
  bool partial;
};

// The kernel's loop structure, scalar, in float32 (out and lse written through p's pointers,
// which here point to host memory; q, k, v, out are float), with key blocks of bn keys (the
// kernel's kBlockN = fwd_block_n(D)).
void emulate(const FwdParams& p, int bn, Sabotage sab, std::vector<Visit>* visits) {
  using namespace spattn::cuda;
  const float* q = static_cast<const float*>(p.q);
  const float* k = static_cast<const float*>(p.k);
  const float* v = static_cast<const float*>(p.v);
  float* o = static_cast<float*>(p.o);
  const int D = int(p.d), Dv = int(p.dv);
  std::vector<float> Q(size_t(kFwdBlockM) * D), K(size_t(bn) * D),
      V(size_t(bn) * Dv), S(size_t(kFwdBlockM) * bn),
      O(size_t(kFwdBlockM) * Dv);
  std::vector<float> m(kFwdBlockM), l(kFwdBlockM);
  std::vector<uint8_t> keep(size_t(kFwdBlockM) * bn);
  for (int64_t cta = 0; cta < fwd_grid_size(p); ++cta) {
    const CtaWork w = cta_work(p, cta);
    const int64_t g = kv_head(p, w.h);
    const int64_t i0 = w.a * kFwdBlockM;
    const int rows = tile_rows(p, w.a);
    for (int r = 0; r < kFwdBlockM; ++r)
      for (int d = 0; d < D; ++d)
        Q[size_t(r * D + d)] = r < rows ? q[q_offset(p, w.b, i0 + r, w.h) + d] : 0.f;
    std::fill(m.begin(), m.end(), neg_inf());
    std::fill(l.begin(), l.end(), 0.f);
    std::fill(O.begin(), O.end(), 0.f);
    const bool rule_exact = range_is_exact(p.pred, w.h);

    RowWalk walk(p, w.h, w.a);
    int64_t c;
    bool partial;
    std::vector<std::pair<int64_t, bool>> blocks;
    while (walk.next(p, &c, &partial)) blocks.push_back({c, partial});
    if (sab == Sabotage::DropLastBlock && !blocks.empty()) blocks.pop_back();
    for (const auto& blk : blocks) {
      c = blk.first;
      partial = blk.second;
      if (visits) visits->push_back({w.b, w.h, w.a, c, partial});
      const int64_t j0 = c * bn;
      const int keys = block_keys(p, c, bn);
      for (int x = 0; x < bn; ++x) {
        for (int d = 0; d < D; ++d)
          K[size_t(x * D + d)] = x < keys ? k[k_offset(p, w.b, j0 + x, g) + d] : 0.f;
        for (int d = 0; d < Dv; ++d)
          V[size_t(x * Dv + d)] = x < keys ? v[v_offset(p, w.b, j0 + x, g) + d] : 0.f;
      }
      // The mask, as the kernel builds it.
      bool masked = block_needs_mask(p, partial, c, bn);
      if (sab == Sabotage::NoPartialMask && partial) masked = false;
      if (sab == Sabotage::NoTailMask && !partial) masked = false;
      for (int r = 0; r < kFwdBlockM; ++r) {
        int64_t lo = 0, hi = -1;
        const bool by_interval = mask_by_interval(partial, rule_exact);
        if (masked && by_interval) row_interval(p, partial, w.h, i0 + r, &lo, &hi);
        for (int x = 0; x < bn; ++x) {
          bool kept = true;
          if (masked)
            kept = by_interval ? (j0 + x >= lo && j0 + x <= hi)
                               : element_kept(p, true, w.h, i0 + r, j0 + x);
          if (sab == Sabotage::WrongMask && masked && partial)
            kept = element_kept(p, true, w.h, i0 + r, j0 + x + 1);  // off by one key
          keep[size_t(r * bn + x)] = kept;
        }
      }
      for (int r = 0; r < kFwdBlockM; ++r) {
        for (int x = 0; x < bn; ++x) {
          float s = 0.f;
          for (int d = 0; d < D; ++d) s += Q[size_t(r * D + d)] * K[size_t(x * D + d)];
          S[size_t(r * bn + x)] = score_scaled(s, p.scale_log2, keep[size_t(r * bn + x)]);
          if (p.mods)  // softcap / ALiBi, as the kernels apply them
            S[size_t(r * bn + x)] =
                modified_score(p, w.h, i0 + r, j0 + x, S[size_t(r * bn + x)], nullptr);
        }
        float mx = m[size_t(r)];
        for (int x = 0; x < bn; ++x) mx = fmax_(mx, S[size_t(r * bn + x)]);
        const float alpha = softmax_rescale(m[size_t(r)], mx);
        const float ms = softmax_max_safe(mx);
        m[size_t(r)] = mx;
        float sum = 0.f;
        for (int x = 0; x < bn; ++x) {
          float& e = S[size_t(r * bn + x)];
          e = softmax_p(e, ms);
          sum += e;
        }
        l[size_t(r)] = l[size_t(r)] * alpha + sum;
        for (int d = 0; d < Dv; ++d) {
          float acc = O[size_t(r * Dv + d)] * alpha;
          for (int x = 0; x < bn; ++x)
            acc += S[size_t(r * bn + x)] * V[size_t(x * Dv + d)];
          O[size_t(r * Dv + d)] = acc;
        }
      }
    }
    for (int r = 0; r < rows; ++r) {
      float mr = m[size_t(r)], lr = l[size_t(r)];
      const float keep_o = sink_finish(p, w.h, &mr, &lr);  // the epilogue's sink
      const float inv = softmax_inv_l(lr) * keep_o;
      for (int d = 0; d < Dv; ++d) o[o_offset(p, w.b, i0 + r, w.h) + d] = O[size_t(r * Dv + d)] * inv;
      if (p.lse) p.lse[lse_offset(p, w.b, w.h, i0 + r)] = softmax_lse(mr, lr);
    }
  }
}

struct Case {
  std::string name;
  Pattern pattern;
  int64_t b, nq, nk, hq, hkv, d;
  float scale;
  // Score modifiers (empty: none): softcap (0: none), ALiBi slopes and sinks, one per head.
  float softcap = 0.f;
  std::vector<float> slopes, sinks;
};

// Runs one case through staging + emulation; returns the max error against the reference
// (and checks the structural properties along the way when sab == None).
double run_case(const Case& cs, Sabotage sab, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t B = cs.b, Nq = cs.nq, Nk = cs.nk, Hq = cs.hq, Hkv = cs.hkv, D = cs.d;
  Strided q(B, Nq, Hq, D, rng), k(B, Nk, Hkv, D, rng), v(B, Nk, Hkv, D, rng);
  Strided out(B, Nq, Hq, D, rng, NAN, false);  // poisoned: every stored element must be written
  std::vector<float> lse(size_t(B * Hq * Nq) + 1, NAN);
  const float kPoison = 12345.f;
  out.data.back() = kPoison;  // the spare element past the last row: never written
  lse.back() = kPoison;

  const CompiledPattern cp = cs.pattern.compile(Nq, Nk, Hq);
  // The layout of the kernel's tile, as the CUDA backend asks for it (128 x 32 above D = 128).
  const cuda::ForwardTile tile = cuda::forward_tile(D, D);
  check(tile.bq == kFwdBlockM && tile.bk == cuda::fwd_block_n(D), "forward_tile() is the kernel's tile");
  const int bn = int(tile.bk);
  const BlockLayout layout = cp.layout(tile.bq, tile.bk);
  const Predicate pred = cp.predicate();

  cuda::StagedForward st = cuda::stage_forward(layout, pred, Nq, Nk, Hq, tile.bq, tile.bk);
  check(st.bq == tile.bq && st.bk == tile.bk, "the staged layout records its tile");
  st.relocate_nodes(st.blob.data());  // the "device" is the blob itself
  FwdParams p;
  st.bind(st.blob.data(), &p);
  p.q = q.data.data();
  p.k = k.data.data();
  p.v = v.data.data();
  p.o = out.data.data();
  p.lse = lse.data();
  p.q_sb = q.strides[0], p.q_sn = q.strides[1], p.q_sh = q.strides[2];
  p.k_sb = k.strides[0], p.k_sn = k.strides[1], p.k_sh = k.strides[2];
  p.v_sb = v.strides[0], p.v_sn = v.strides[1], p.v_sh = v.strides[2];
  p.o_sb = out.strides[0], p.o_sn = out.strides[1], p.o_sh = out.strides[2];
  p.lse_sb = Hq * Nq, p.lse_sh = Nq, p.lse_sn = 1;
  p.b = B, p.nq = Nq, p.nk = Nk, p.hq = Hq, p.hkv = Hkv, p.d = D, p.dv = D;
  p.group = Hq / Hkv;
  p.scale = cs.scale;
  p.scale_log2 = cs.scale * 1.4426950408889634f;
  p.m.softcap_log2 = cs.softcap * 1.4426950408889634f;
  p.m.alibi = cs.slopes.empty() ? nullptr : cs.slopes.data();
  p.m.sinks = cs.sinks.empty() ? nullptr : cs.sinks.data();
  p.m.rel_base = Nk - Nq;
  p.mods = cs.softcap != 0.f || !cs.slopes.empty();

  std::vector<Visit> visits;
  emulate(p, bn, sab, &visits);

  const std::vector<uint8_t> mask = cs.pattern.mask(Nq, Nk, Hq);
  const std::string tag = cs.name;
  if (sab == Sabotage::None) {
    // The relocated predicate is the pattern's rule (Global / BlockMask / BigBird data moved).
    bool same = true;
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i)
        for (int64_t j = 0; j < Nk; ++j)
          same = same && keeps(p.pred, h, i, j) == (mask[size_t((h * Nq + i) * Nk + j)] != 0);
    check(same, tag + ": the staged (relocated) predicate equals Pattern::mask()");

    // Every (b, h, a) is computed by exactly one CTA; the schedule is longest-first.
    std::set<std::tuple<int64_t, int64_t, int64_t>> ctas;
    for (int64_t x = 0; x < cuda::fwd_grid_size(p); ++x) {
      const cuda::CtaWork w = cuda::cta_work(p, x);
      check(w.b >= 0 && w.b < B && w.h >= 0 && w.h < Hq && w.a >= 0 && w.a < layout.nqb,
            tag + ": cta_work in range");
      ctas.insert({w.b, w.h, w.a});
    }
    check(int64_t(ctas.size()) == B * Hq * layout.nqb &&
              cuda::fwd_grid_size(p) == B * Hq * layout.nqb,
          tag + ": every (batch, head, tile) exactly once");
    auto row_cost = [&](int64_t s) {
      const int64_t r = layout.row(s / layout.nqb, s % layout.nqb);
      int64_t cnt = 0;
      for (int64_t t = layout.full_ptr[size_t(r)]; t < layout.full_ptr[size_t(r + 1)]; ++t)
        cnt += 2 * (layout.full_hi[size_t(t)] - layout.full_lo[size_t(t)]);
      for (int64_t t = layout.part_ptr[size_t(r)]; t < layout.part_ptr[size_t(r + 1)]; ++t)
        cnt += 3 * (layout.part_hi[size_t(t)] - layout.part_lo[size_t(t)]);
      return cnt;
    };
    bool sorted = true;
    for (int64_t s = 1; s < p.sched_len; ++s)
      sorted = sorted && row_cost(p.sched[s - 1]) >= row_cost(p.sched[s]);
    check(sorted, tag + ": schedule longest rows first");

    // Walk: ascending, no repeats, within [0, nkb); full blocks are full (so skipping their
    // mask is right), every kept pair lies in a visited block.
    std::vector<uint8_t> covered(size_t(B * Hq * Nq * Nk), 0);
    bool asc = true, full_ok = true;
    for (size_t x = 0; x < visits.size(); ++x) {
      const Visit& vi = visits[x];
      if (x > 0 && visits[x - 1].b == vi.b && visits[x - 1].h == vi.h && visits[x - 1].a == vi.a)
        asc = asc && visits[x - 1].c < vi.c;
      asc = asc && vi.c >= 0 && vi.c < layout.nkb;
      for (int64_t i = vi.a * kFwdBlockM; i < std::min(Nq, (vi.a + 1) * kFwdBlockM); ++i)
        for (int64_t j = vi.c * bn; j < std::min(Nk, (vi.c + 1) * bn); ++j) {
          covered[size_t(((vi.b * Hq + vi.h) * Nq + i) * Nk + j)] = 1;
          if (!vi.partial) full_ok = full_ok && mask[size_t((vi.h * Nq + i) * Nk + j)] != 0;
        }
    }
    bool cover = true;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Nq; ++i)
          for (int64_t j = 0; j < Nk; ++j)
            if (mask[size_t((h * Nq + i) * Nk + j)])
              cover = cover && covered[size_t(((b * Hq + h) * Nq + i) * Nk + j)];
    check(asc, tag + ": the walk visits key blocks in ascending order, once each");
    check(full_ok, tag + ": full blocks keep every pair (no mask needed)");
    check(cover, tag + ": every kept pair lies in a visited block");

    // row_interval agrees with element_kept wherever the kernel uses it.
    bool agree = true;
    for (const Visit& vi : visits) {
      const bool exact = range_is_exact(p.pred, vi.h);
      if (!cuda::block_needs_mask(p, vi.partial, vi.c, bn) ||
          !cuda::mask_by_interval(vi.partial, exact))
        continue;
      for (int64_t i = vi.a * kFwdBlockM; i < (vi.a + 1) * kFwdBlockM; ++i) {
        int64_t lo, hi;
        cuda::row_interval(p, vi.partial, vi.h, i, &lo, &hi);
        for (int64_t j = vi.c * bn; j < (vi.c + 1) * bn; ++j)
          agree = agree && ((j >= lo && j <= hi) == cuda::element_kept(p, vi.partial, vi.h, i, j));
      }
    }
    check(agree, tag + ": row_interval() == element_kept() on interval-masked blocks");
    check(out.data.back() == kPoison && lse.back() == kPoison, tag + ": nothing written past the end");
    bool pad = true;  // the 3 spare elements after each row of out stay poisoned
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < Nq; ++i)
        for (int64_t h = 0; h < Hq; ++h)
          for (int64_t d = D; d < D + 3; ++d) pad = pad && std::isnan(out.at(b, i, h, d));
    check(pad, tag + ": nothing written between rows of out");
  }

  // Reference in float64 from the dense mask.
  double err = 0.0;
  bool exact_empty = true, all_written = true;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / (Hq / Hkv);
      for (int64_t i = 0; i < Nq; ++i) {
        std::vector<double> s(static_cast<size_t>(Nk));
        double mx = -INFINITY;
        for (int64_t j = 0; j < Nk; ++j) {
          if (!mask[size_t((h * Nq + i) * Nk + j)]) {
            s[size_t(j)] = -INFINITY;
            continue;
          }
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += double(q.at(b, i, h, d)) * k.at(b, j, g, d);
          s[size_t(j)] = acc * cs.scale;
          // the modifiers' definitions (spattn/options.hpp): softcap, then ALiBi
          if (cs.softcap != 0.f) s[size_t(j)] = cs.softcap * std::tanh(s[size_t(j)] / cs.softcap);
          if (!cs.slopes.empty()) s[size_t(j)] -= cs.slopes[size_t(h)] * double(std::llabs(i + Nk - Nq - j));
          mx = std::max(mx, s[size_t(j)]);
        }
        const double sink = cs.sinks.empty() ? -INFINITY : double(cs.sinks[size_t(h)]);
        mx = std::max(mx, sink);
        const float got_lse = lse[size_t((b * Hq + h) * Nq + i)];
        if (mx == -INFINITY) {  // a row that sees nothing
          for (int64_t d = 0; d < D; ++d) exact_empty = exact_empty && out.at(b, i, h, d) == 0.f;
          exact_empty = exact_empty && got_lse == -INFINITY;
          continue;
        }
        double l = std::exp(sink - mx);
        for (int64_t j = 0; j < Nk; ++j) l += std::exp(s[size_t(j)] - mx);
        const double ref_lse = mx + std::log(l);
        if (!(std::fabs(got_lse - ref_lse) <= 1e30)) all_written = false;
        err = std::max(err, std::fabs(double(got_lse) - ref_lse));
        for (int64_t d = 0; d < D; ++d) {
          double r = 0;
          for (int64_t j = 0; j < Nk; ++j) r += std::exp(s[size_t(j)] - mx) / l * v.at(b, j, g, d);
          const float got = out.at(b, i, h, d);
          if (!(got == got)) all_written = false;
          err = std::max(err, std::fabs(double(got) - r));
        }
      }
    }
  if (sab == Sabotage::None) {
    check(exact_empty, tag + ": rows that see no key: out exactly 0, lse -inf");
    check(all_written, tag + ": every out and lse element written, no NaN");
  }
  if (!all_written || !exact_empty) return INFINITY;
  return err;
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

void test_small_helpers() {
  FwdParams p;
  p.nq = 200;
  p.nk = 333;
  check(cuda::tile_rows(p, 0) == 128 && cuda::tile_rows(p, 1) == 72 && cuda::tile_rows(p, 2) == 0,
        "tile_rows: full, short last, none");
  check(cuda::block_keys(p, 4, 64) == 64 && cuda::block_keys(p, 5, 64) == 13 &&
            cuda::block_keys(p, 6, 64) == 0,
        "block_keys: full, short last, none");
  check(cuda::block_keys(p, 9, 32) == 32 && cuda::block_keys(p, 10, 32) == 13 &&
            cuda::block_keys(p, 11, 32) == 0,
        "block_keys of 32-key blocks (D = 256): full, short last, none");
  check(!cuda::block_needs_mask(p, false, 4, 64) && cuda::block_needs_mask(p, false, 5, 64) &&
            cuda::block_needs_mask(p, true, 0, 64),
        "block_needs_mask: full blocks only at the Nk tail, partial always");
  check(!cuda::block_needs_mask(p, false, 9, 32) && cuda::block_needs_mask(p, false, 10, 32),
        "block_needs_mask of 32-key blocks: only the Nk tail");
  p.nk = 320;
  check(!cuda::block_needs_mask(p, false, 4, 64), "block_needs_mask: no tail when Nk % 64 == 0");
  p.nk = 288;
  check(!cuda::block_needs_mask(p, false, 8, 32) && cuda::block_needs_mask(p, false, 4, 64),
        "block_needs_mask: Nk = 288 ends a 32-key block, not a 64-key one");

  // The kernels' tiles: 128 x 64 up to D = 128, 128 x 32 above (float16 / bfloat16); the
  // float32 SIMT kernel keeps 128 x 64. Without a device the sm80-style tile is the answer.
  for (int64_t d : {32, 64, 96, 128, 160, 256}) {
    const cuda::ForwardTile t = cuda::forward_tile(d, d);
    check(t.bq == 128 && t.bk == (d > 128 ? 32 : 64), "forward_tile(" + std::to_string(d) + ")");
    const cuda::ForwardTile tb = cuda::forward_tile(d, d, -1, DType::BFloat16);
    check(tb.bq == t.bq && tb.bk == t.bk, "forward_tile without a device, bfloat16");
    const cuda::ForwardTile tf = cuda::forward_tile(d, d, -1, DType::Float32);
    check(tf.bq == 128 && tf.bk == 64, "forward_tile, float32: the SIMT kernel's tile");
  }
  check(cuda::forward_tile(128, 256).bk == 32 && cuda::forward_tile(256, 64).bk == 32,
        "forward_tile: the larger of D and Dv decides");
  p.hq = 8;
  p.hkv = 2;
  p.group = 4;
  check(cuda::kv_head(p, 0) == 0 && cuda::kv_head(p, 3) == 0 && cuda::kv_head(p, 4) == 1 &&
            cuda::kv_head(p, 7) == 1,
        "kv_head: GQA groups of Hq / Hkv");
  p.q_sb = 1000000, p.q_sn = 1024, p.q_sh = 128;
  check(cuda::q_offset(p, 2, 3, 5) == 2000000 + 3 * 1024 + 5 * 128, "q_offset from strides");
  p.lse_sb = 8 * 200, p.lse_sh = 200, p.lse_sn = 1;
  check(cuda::lse_offset(p, 1, 2, 3) == 1600 + 400 + 3, "lse_offset [B, Hq, Nq]");

  // Online softmax steps, -inf safe.
  using namespace spattn::cuda;
  const float ninf = neg_inf();
  check(softmax_rescale(ninf, ninf) == 1.f, "rescale: nothing seen yet -> 1");
  check(softmax_rescale(ninf, 3.f) == 0.f, "rescale: first key -> 0");
  check(std::fabs(softmax_rescale(1.f, 3.f) - 0.25f) < 1e-6f, "rescale: exp2(m_old - m_new)");
  check(softmax_max_safe(ninf) == 0.f && softmax_max_safe(2.f) == 2.f, "max_safe");
  check(softmax_p(ninf, softmax_max_safe(ninf)) == 0.f, "p of a masked score is 0, not NaN");
  check(softmax_inv_l(0.f) == 0.f && softmax_lse(ninf, 0.f) == ninf, "empty row: 0 and -inf");
  check(std::fabs(softmax_lse(1.f, 2.f) - (0.6931472f + std::log(2.f))) < 1e-6f,
        "lse = m ln2 + ln l");
  check(score_scaled(5.f, -2.f, false) == ninf && score_scaled(5.f, -2.f, true) == -10.f,
        "score_scaled: a masked score is -inf even with a negative scale");

  // Staging refuses a layout for another tile or problem, and data it cannot copy.
  const Pattern pat = Pattern::causal();
  const CompiledPattern cp = pat.compile(300, 300, 2);
  bool threw = false;
  try {
    (void)cuda::stage_forward(cp.layout(64, 64), cp.predicate(), 300, 300, 2);
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "stage_forward refuses a 64x64 layout");
  threw = false;
  try {
    (void)cuda::stage_forward(cp.layout(kFwdBlockM, kFwdBlockN), cp.predicate(), 301, 300, 2);
  } catch (const ValueError&) {
    threw = true;
  }
  check(threw, "stage_forward refuses a layout for another Nq");
  PredNode odd;
  odd.kind = PredKind::Or;
  odd.data = &odd;
  threw = false;
  try {
    (void)cuda::pred_node_data_bytes(odd);
  } catch (const RuntimeError&) {
    threw = true;
  }
  check(threw, "a node with data of unknown size is refused");
}

void test_launcher_without_gpu() {
  // supports(): float32 / float16 / bfloat16, D == Dv, compiled dims.
  check(cuda::supports(DType::Float32, 128, 128) == (SPATTN_WITH_CUDA != 0),
        "supports: float32 D=128 (the SIMT kernel) is in every CUDA build");
  check(!cuda::supports(DType::Float64, 64, 64), "supports: no float64 kernel");
  check(!cuda::supports(DType::BFloat16, 128, 64), "supports: D != Dv refused");
  check(cuda::supports(DType::BFloat16, 128, 128) == (SPATTN_WITH_CUDA != 0),
        "supports: bfloat16 D=128 is in every CUDA build (reduced included)");
  check((cuda::forward_kernels().find("bfloat16:") != std::string::npos) == (SPATTN_WITH_CUDA != 0),
        "forward_kernels() lists the compiled set");
  // Host memory (and, here, no GPU): a clear RuntimeError, never a crash.
  std::vector<uint16_t> buf(2 * 128 * 128, 0);
  std::vector<float> l(128, 0.f);
  const CompiledPattern cp = Pattern::causal().compile(128, 128, 1);
  const BlockLayout layout = cp.layout(kFwdBlockM, kFwdBlockN);
  cuda::ForwardProblem fp;
  fp.dtype = DType::BFloat16;
  fp.q = fp.k = fp.v = buf.data();
  fp.out = buf.data() + 128 * 128;
  fp.lse = l.data();
  fp.b = 1, fp.nq = fp.nk = 128, fp.hq = fp.hkv = 1, fp.d = fp.dv = 128;
  const int64_t s[4] = {128 * 128, 128, 128, 1};
  for (int i = 0; i < 4; ++i) fp.q_strides[i] = fp.k_strides[i] = fp.v_strides[i] = fp.out_strides[i] = s[i];
  fp.lse_strides[0] = 128, fp.lse_strides[1] = 128, fp.lse_strides[2] = 1;
  fp.scale = 0.1f;
  const cuda::StagedForward st = cuda::stage_forward(layout, cp.predicate(), 128, 128, 1);
  fp.staged = &st;
  fp.staged_dev = st.blob.data();
  std::string msg;
  try {
    cuda::attention_forward(fp);
  } catch (const RuntimeError& e) {
    msg = e.what();
  }
  std::printf("attention_forward on host memory: %s\n", msg.c_str());
  check(!msg.empty(), "attention_forward on host pointers (no GPU here) throws RuntimeError");
}

}  // namespace

int main() {
  test_small_helpers();
  test_launcher_without_gpu();

  const int64_t H = 3;
  std::vector<Pattern> mixed;
  for (int64_t h = 0; h < 4; ++h)
    mixed.push_back(h % 2 ? Pattern::sliding_window(40, 0)
                          : Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}));
  const std::vector<Case> cases = {
      {"causal 300x300 GQA 4/2 B2", Pattern::causal(), 2, 300, 300, 4, 2, 16, 0.25f},
      {"window(99,0) Nq 200 < Nk 333", Pattern::sliding_window(99, 0), 1, 200, 333, 2, 1, 8, 0.3f},
      {"window(20,5) Nq 333 > Nk 150 (empty rows)", Pattern::sliding_window(20, 5), 1, 333, 150, 2, 2, 8, 0.3f},
      {"dense 130x70", Pattern::dense(), 1, 130, 70, 1, 1, 8, 0.2f},
      {"blocksparse 32x32 per head 10%", Pattern::block_sparse(random_block_mask(H, 257, 385, 32, 0.1, 7)),
       1, 257, 385, H, 1, 8, 0.3f},
      {"blocksparse 128x128 per head 30%", Pattern::block_sparse(random_block_mask(2, 384, 512, 128, 0.3, 9)),
       1, 384, 512, 2, 2, 8, 0.3f},
      {"sink(5) | window(70,3) (keeps() path)",
       Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}), 2, 261, 261, 2, 1, 8, 0.3f},
      {"per-head mix GQA", Pattern::per_head(mixed), 1, 190, 260, 4, 2, 8, 0.3f},
      {"global tokens", Pattern::global({0, 17, 200}), 1, 150, 230, 1, 1, 8, 0.3f},
      {"bigbird", Pattern::bigbird(32, 3, 1, 2, 5), 1, 300, 300, 2, 1, 8, 0.3f},
      {"dilated(10,0,3)", Pattern::dilated(10, 0, 3), 1, 200, 200, 1, 1, 8, 0.3f},
      {"causal, negative scale", Pattern::causal(), 1, 140, 140, 1, 1, 8, -0.35f},
      // score modifiers (softcap, ALiBi, sinks), alone and together
      {"causal + softcap", Pattern::causal(), 1, 200, 260, 2, 1, 8, 0.9f, 1.5f},
      {"window(40,3) + alibi GQA", Pattern::sliding_window(40, 3), 2, 150, 190, 4, 2, 8, 0.3f, 0.f,
       {0.5f, 0.25f, 0.125f, 0.0625f}},
      {"window(20,5) + sinks (empty rows: lse = sink)", Pattern::sliding_window(20, 5), 1, 333, 150, 2, 2, 8,
       0.3f, 0.f, {}, {0.7f, -1.2f}},
      {"sink(5)|window(70,3) + all three", Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}),
       1, 261, 261, 2, 1, 8, 0.5f, 2.f, {0.1f, 0.3f}, {0.2f, -INFINITY}},
      // D = 256: the kernel's 128 x 32 tile (forward_tile), Nk not a multiple of 32 or 64
      {"D=256 causal 300x300 GQA 4/2", Pattern::causal(), 1, 300, 300, 4, 2, 256, 0.06f},
      {"D=256 window(99,0) Nq 200 < Nk 333", Pattern::sliding_window(99, 0), 1, 200, 333, 2, 1, 256, 0.06f},
      {"D=256 blocksparse 32x32 per head 10%",
       Pattern::block_sparse(random_block_mask(2, 257, 385, 32, 0.1, 11)), 1, 257, 385, 2, 1, 256, 0.06f},
      {"D=256 sink(5)|window(70,3) + all three",
       Pattern::union_of({Pattern::sink(5), Pattern::sliding_window(70, 3)}), 1, 261, 261, 2, 1, 256,
       0.06f, 2.f, {0.1f, 0.3f}, {0.2f, -INFINITY}},
  };
  const double tol = 2e-4;
  uint32_t seed = 1;
  for (const Case& cs : cases) {
    const double err = run_case(cs, Sabotage::None, seed++);
    std::printf("%-45s max |err| = %.2e\n", cs.name.c_str(), err);
    check(err < tol, cs.name + ": out and lse match the float64 reference");
  }

  // The comparison must catch each of these bugs.
  struct Bad {
    const char* what;
    Sabotage sab;
    Case cs;
  };
  const std::vector<Bad> bad = {
      {"off-by-one mask on partial blocks", Sabotage::WrongMask,
       {"causal", Pattern::causal(), 1, 200, 200, 1, 1, 8, 0.3f}},
      {"partial blocks left unmasked", Sabotage::NoPartialMask,
       {"window", Pattern::sliding_window(99, 0), 1, 200, 333, 1, 1, 8, 0.3f}},
      {"last key block dropped", Sabotage::DropLastBlock,
       {"dense", Pattern::dense(), 1, 130, 130, 1, 1, 8, 0.3f}},
      {"full tail block (Nk % 64 != 0) left unmasked", Sabotage::NoTailMask,
       {"dense", Pattern::dense(), 1, 130, 100, 1, 1, 8, 0.3f}},
      {"D=256: full tail block (Nk % 32 != 0) left unmasked", Sabotage::NoTailMask,
       {"dense", Pattern::dense(), 1, 130, 100, 1, 1, 256, 0.06f}},
      {"D=256: last 32-key block dropped", Sabotage::DropLastBlock,
       {"window", Pattern::sliding_window(20, 0), 1, 130, 130, 1, 1, 256, 0.06f}},
  };
  for (const Bad& b : bad) {
    const double err = run_case(b.cs, b.sab, seed++);
    std::printf("sabotage: %-45s max |err| = %.2e (must be large)\n", b.what, err);
    check(!(err < tol), std::string("the test catches: ") + b.what);
  }

  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  else std::printf("all checks passed\n");
  return failures == 0 ? 0 : 1;
}
