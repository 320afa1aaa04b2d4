// Turning the checked arguments into the plain Problem the kernels read (see kernel_api.hpp),
// and the per-tile predicate helpers shared by the forward and the backward pass.
#include <string>

#include "spattn/error.hpp"

#include "cpu/common.hpp"

namespace spattn::cpu {
namespace detail {

namespace {
// Rows whose kept keys in the block are one interval (row_block_range) are filled from it;
// the others key by key.
void mask_keeps(const void* ctx, int64_t h, int64_t i0, int mq, int64_t j0, int nk, uint8_t* m) {
  const Predicate& pred = *static_cast<const Predicate*>(ctx);
  for (int q = 0; q < mq; ++q) {
    int64_t lo, hi;
    if (row_block_range(pred, h, i0 + q, j0, j0 + nk - 1, &lo, &hi)) {
      for (int k = 0; k < nk; ++k) m[k * kTile + q] = (j0 + k >= lo && j0 + k <= hi) ? 1 : 0;
    } else {
      for (int k = 0; k < nk; ++k) m[k * kTile + q] = keeps(pred, h, i0 + q, j0 + k) ? 1 : 0;
    }
  }
}
bool row_ranges(const void* ctx, int64_t h, int64_t i0, int mq, int ncol, int64_t j0, int nk,
                int32_t* rlo, int32_t* rhi) {
  const Predicate& pred = *static_cast<const Predicate*>(ctx);
  int64_t lo[kTile], hi[kTile];
  if (!rows_block_range(pred, h, i0, mq, j0, j0 + nk - 1, lo, hi)) return false;
  for (int q = 0; q < ncol; ++q) {
    if (q >= mq) {
      rlo[q] = 0;
      rhi[q] = kTile;
      continue;
    }
    rlo[q] = lo[q] > hi[q] ? 0 : int32_t(lo[q] - j0);
    rhi[q] = lo[q] > hi[q] ? -1 : int32_t(hi[q] - j0);
  }
  return true;
}

}  // namespace

Problem make_problem(const TensorView& q, const TensorView& k, const TensorView& v,
                     DType dtype, float scale, const BlockLayout& layout, const Predicate& pred) {
  Problem p;
  p.dtype = code_of(dtype);
  p.B = q.shape[0];
  p.Nq = q.shape[1];
  p.Hq = q.shape[2];
  p.D = q.shape[3];
  p.Nk = k.shape[1];
  p.Hkv = k.shape[2];
  p.Dv = v.shape[3];
  p.group = p.Hkv > 0 ? p.Hq / p.Hkv : 1;
  p.Dp = (p.D + 15) & ~int64_t(15);
  p.Dvp = (p.Dv + 15) & ~int64_t(15);
  p.scale = scale;
  p.scale2 = scale * 1.4426950408889634f;
  p.lheads = layout.heads;
  p.nqb = layout.nqb;
  p.nkb = layout.nkb;
  p.full_ptr = layout.full_ptr.data();
  p.part_ptr = layout.part_ptr.data();
  p.full_lo = layout.full_lo.data();
  p.full_hi = layout.full_hi.data();
  p.part_lo = layout.part_lo.data();
  p.part_hi = layout.part_hi.data();
  p.window = true;  // every head's rule is one window: rows get exact key intervals
  for (int64_t h = 0; h < p.Hq; ++h) p.window = p.window && range_is_exact(pred, h);
  p.mask_fn = mask_keeps;
  p.mask_ctx = &pred;
  bool ranges = !p.window;
  for (int64_t h = 0; h < p.Hq && ranges; ++h) ranges = has_row_intervals(pred, h);
  if (ranges) p.range_fn = row_ranges;
  p.q = t4(q);
  p.k = t4(k);
  p.v = t4(v);
  p.kc = cpu_blocking().head_chunk;
  return p;
}

void set_modifiers(Problem& p, const backend::ScoreMods& m, bool with_sinks,
                   std::vector<float>* store) {
  constexpr float kLog2e = 1.4426950408889634f;
  const bool sinks = with_sinks && m.sinks != nullptr;
  p.mods = m.scores();
  if (!p.mods && !sinks) return;
  store->assign(size_t(2 * p.Hq), 0.f);
  p.softcap2 = m.softcap * kLog2e;
  if (m.alibi) {
    for (int64_t h = 0; h < p.Hq; ++h) (*store)[size_t(h)] = m.alibi[h * m.alibi_stride] * kLog2e;
    p.alibi2 = store->data();
  }
  if (sinks) {
    for (int64_t h = 0; h < p.Hq; ++h)
      (*store)[size_t(p.Hq + h)] = m.sinks[h * m.sinks_stride] * kLog2e;  // -inf stays -inf
    p.sink2 = store->data() + p.Hq;
  }
  p.rel_step = m.rel_shifted ? m.rel_step : 1;
  p.rel_base = m.rel_shifted ? m.rel_base : p.Nk - p.Nq;
}

void check_layout(const Problem& p, const BlockLayout& L) {
  const int64_t nqb = (p.Nq + kTile - 1) / kTile, nkb = (p.Nk + kTile - 1) / kTile;
  const int64_t rows = (L.heads == 1 ? 1 : p.Hq) * nqb;
  if (L.bq != kTile || L.bk != kTile || L.nqb != nqb || L.nkb != nkb ||
      (L.heads != 1 && L.heads != p.Hq) || int64_t(L.full_ptr.size()) != rows + 1 ||
      int64_t(L.part_ptr.size()) != rows + 1 || L.full_hi.size() != L.full_lo.size() ||
      L.part_hi.size() != L.part_lo.size() || L.full_ptr[size_t(rows)] != int64_t(L.full_lo.size()) ||
      L.part_ptr[size_t(rows)] != int64_t(L.part_lo.size()))
    throw ValueError("cpu attention: the block layout does not match the problem (expected " +
                     std::to_string(kTile) + "x" + std::to_string(kTile) + " tiles, " +
                     std::to_string(nqb) + " x " + std::to_string(nkb) + " blocks, 1 or " +
                     std::to_string(p.Hq) + " heads)");
}

void tile_ranges(const Predicate& pred, int64_t h, int64_t nq, int64_t a, int64_t* lo,
                 int64_t* hi) {
  if (!range_is_exact(pred, h)) return;
  const int64_t i0 = a * kTile;
  for (int64_t q = 0; q < kTile && i0 + q < nq; ++q) key_range(pred, h, i0 + q, &lo[q], &hi[q]);
}

}  // namespace detail

}  // namespace spattn::cpu
