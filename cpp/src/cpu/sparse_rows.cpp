// Sparse rows: patterns whose rows keep a few scattered keys (LogSparse: a short band and one
// key per power of two) run row by row over each row's list of keys, instead of walking 64 x 64
// blocks that each hold a diagonal of kept pairs. The rule lists a row's keys in closed form
// (predicate.hpp, row_key_list); the kernel is decode_rows.hpp's sparse_rows.
#include <algorithm>

#include "cpu/common.hpp"
#include "cpu/decode_kernel_api.hpp"
#include "cpu/thread_pool.hpp"

namespace spattn::cpu {

namespace {

// Rows keeping more keys than this run on the tiles: past it a row's band is long enough for
// the block kernels to be the faster way (and the key lists would grow large).
constexpr int64_t kMaxSparseRowKeys = 256;
constexpr int64_t kRowsPerTask = kSparseRowsMax;
constexpr int64_t kMaxSegments = 4;  // backward: row segments per (batch, kv head)

}  // namespace

bool forward_sparse_rows(const ForwardArgs& a) {
  using namespace detail;
  if (a.dtype == DType::Float64) return false;  // attention_f64.cpp has its own path
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t nk = a.k.shape[1], hkv = a.k.shape[2], Dv = a.v.shape[3];
  const int64_t bound = sparse_row_bound(a.pred, nk);
  if (bound < 0 || bound > kMaxSparseRowKeys) return false;
  const int64_t chunks = (nq + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = B * hq * chunks;
  if (tasks == 0 || Dv == 0) return true;

  const int dtype = code_of(a.dtype);
  const int es = dtype == kF32 ? 4 : 2;
  const int64_t Dp = (D + 15) & ~int64_t(15), Dvp = (Dv + 15) & ~int64_t(15);
  const int64_t group = hq / hkv;
  // Scratch per thread: the kernel's floats, then the rows' key lists and offsets (int64).
  const int64_t ws_floats = sparse_rows_ws_floats(bound, Dp, Dvp);
  const int64_t list_floats = 2 * (kRowsPerTask * bound + kRowsPerTask + 1);
  const int64_t per_thread = ws_floats + list_floats;
  const int nthreads = num_threads();
  Scratch ws = alloc_floats(per_thread * nthreads);

  constexpr float kLog2e = 1.4426950408889634f;
  const backend::ScoreMods& m = a.mods;
  const DecodeKernels* kern = decode_kernels();
  parallel_for(tasks, [&](int64_t task, int thread) {
    // Heads fastest, as the tiles (head-major measured ~1.4x slower: a key row's heads share
    // its cache lines' neighbourhood).
    const int64_t h = task % hq, chunk = (task / hq) % chunks, b = task / (hq * chunks);
    const int64_t g = h / group, i0 = chunk * kRowsPerTask;
    const int64_t n = std::min(kRowsPerTask, nq - i0);
    float* base = ws.get() + thread * per_thread;
    int64_t* ptr = reinterpret_cast<int64_t*>(base + ws_floats);
    int64_t* keys = ptr + kRowsPerTask + 1;
    ptr[0] = 0;
    for (int64_t r = 0; r < n; ++r)
      ptr[r + 1] = ptr[r] + row_key_list(a.pred, h, i0 + r, nk, keys + ptr[r]);

    SparseRows c;
    c.dtype = dtype;
    c.n = n;
    c.i0 = i0;
    c.D = D, c.Dv = Dv, c.Dp = Dp, c.Dvp = Dvp;
    c.scale2 = float(a.scale) * kLog2e;
    c.q = static_cast<const char*>(a.q.data) + (b * a.q.strides[0] + i0 * a.q.strides[1] + h * a.q.strides[2]) * es;
    c.q_si = a.q.strides[1], c.q_sd = a.q.strides[3];
    c.k = static_cast<const char*>(a.k.data) + (b * a.k.strides[0] + g * a.k.strides[2]) * es;
    c.v = static_cast<const char*>(a.v.data) + (b * a.v.strides[0] + g * a.v.strides[2]) * es;
    c.k_sj = a.k.strides[1], c.k_sd = a.k.strides[3];
    c.v_sj = a.v.strides[1], c.v_sd = a.v.strides[3];
    c.ptr = ptr;
    c.keys = keys;
    c.softcap2 = m.softcap * kLog2e;
    if (m.alibi) c.alibi2 = m.alibi[h * m.alibi_stride] * kLog2e;
    c.rel_step = m.rel_shifted ? m.rel_step : 1;
    c.rel_base = m.rel_shifted ? m.rel_base : nk - nq;
    if (m.sinks) c.sink = true, c.sink2 = m.sinks[h * m.sinks_stride] * kLog2e;
    c.out = static_cast<char*>(a.out.data) +
            (b * a.out.strides[0] + i0 * a.out.strides[1] + h * a.out.strides[2]) * es;
    c.out_si = a.out.strides[1], c.out_sd = a.out.strides[3];
    if (a.lse.data) {
      c.lse = static_cast<float*>(a.lse.data) + b * a.lse.strides[0] + h * a.lse.strides[1] +
              i0 * a.lse.strides[2];
      c.lse_si = a.lse.strides[2];
    }
    kern->sparse_rows(c, base);
  });
  return true;
}

bool backward_sparse_rows(const BackwardArgs& a) {
  using namespace detail;
  if (a.dtype == DType::Float64) return false;
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t nk = a.k.shape[1], hkv = a.k.shape[2], Dv = a.v.shape[3];
  const int64_t bound = sparse_row_bound(a.pred, nk);
  if (bound < 0 || bound > kMaxSparseRowKeys) return false;
  if (B == 0 || hkv == 0) return true;

  const int dtype = code_of(a.dtype);
  const int es = dtype == kF32 ? 4 : 2;
  const int64_t Dp = (D + 15) & ~int64_t(15), Dvp = (Dv + 15) & ~int64_t(15);
  const int64_t group = hq / hkv, BG = B * hkv;
  const int nthreads = num_threads();
  // Tasks are (b, kv head, segment of rows): each owns its rows' dq and accumulates dK / dV
  // of every key into private float32 rows (keys are shared by far-apart rows), summed per
  // key block afterwards in segment order (deterministic). Segments only to feed the threads,
  // within 4x the size of K and V in private rows.
  const int64_t chunks = std::max<int64_t>(1, (nq + kRowsPerTask - 1) / kRowsPerTask);
  int64_t S = std::min<int64_t>(chunks, std::max<int64_t>(1, (2 * nthreads + BG - 1) / BG));
  S = std::max<int64_t>(1, std::min<int64_t>(S, kMaxSegments));
  const int64_t per_acc = nk * (Dp + Dvp);
  Scratch acc = alloc_floats(BG * S * per_acc);
  const int64_t ws_floats = sparse_rows_bwd_ws_floats(bound, Dp, Dvp);
  const int64_t list_floats = 2 * (kRowsPerTask * bound + kRowsPerTask + 1);
  const int64_t per_thread = ws_floats + list_floats;
  Scratch ws = alloc_floats(per_thread * nthreads);

  constexpr float kLog2e = 1.4426950408889634f;
  const backend::ScoreMods& m = a.mods;
  const DecodeKernels* kern = decode_kernels();
  parallel_for(BG * S, [&](int64_t task, int thread) {
    const int64_t s = task % S, bg = task / S, b = bg / hkv, g = bg % hkv;
    float* dk_acc = acc.get() + task * per_acc;
    float* dv_acc = dk_acc + nk * Dp;
    std::fill(dk_acc, dk_acc + per_acc, 0.f);
    float* base = ws.get() + thread * per_thread;
    int64_t* ptr = reinterpret_cast<int64_t*>(base + ws_floats);
    int64_t* keys = ptr + kRowsPerTask + 1;
    const int64_t c0 = s * chunks / S, c1 = (s + 1) * chunks / S;
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t i0 = chunk * kRowsPerTask, n = std::min(kRowsPerTask, nq - i0);
      for (int64_t h = g * group; h < (g + 1) * group && n > 0; ++h) {
        ptr[0] = 0;
        for (int64_t r = 0; r < n; ++r)
          ptr[r + 1] = ptr[r] + row_key_list(a.pred, h, i0 + r, nk, keys + ptr[r]);
        SparseRowsBwd c;
        SparseRows& f = c.f;
        f.dtype = dtype;
        f.n = n;
        f.i0 = i0;
        f.D = D, f.Dv = Dv, f.Dp = Dp, f.Dvp = Dvp;
        f.scale2 = float(a.scale) * kLog2e;
        auto row_of = [&](const TensorView& t, int64_t i) {
          return static_cast<const char*>(t.data) +
                 (b * t.strides[0] + i * t.strides[1] + h * t.strides[2]) * es;
        };
        f.q = row_of(a.q, i0);
        f.q_si = a.q.strides[1], f.q_sd = a.q.strides[3];
        f.k = static_cast<const char*>(a.k.data) + (b * a.k.strides[0] + g * a.k.strides[2]) * es;
        f.v = static_cast<const char*>(a.v.data) + (b * a.v.strides[0] + g * a.v.strides[2]) * es;
        f.k_sj = a.k.strides[1], f.k_sd = a.k.strides[3];
        f.v_sj = a.v.strides[1], f.v_sd = a.v.strides[3];
        f.ptr = ptr;
        f.keys = keys;
        f.softcap2 = m.softcap * kLog2e;
        if (m.alibi) f.alibi2 = m.alibi[h * m.alibi_stride] * kLog2e;
        f.rel_step = m.rel_shifted ? m.rel_step : 1;
        f.rel_base = m.rel_shifted ? m.rel_base : nk - nq;
        c.dout = row_of(a.dout, i0);
        c.dout_si = a.dout.strides[1], c.dout_sd = a.dout.strides[3];
        c.o = row_of(a.out, i0);
        c.o_si = a.out.strides[1], c.o_sd = a.out.strides[3];
        c.lse = static_cast<const float*>(a.lse.data) + b * a.lse.strides[0] +
                h * a.lse.strides[1] + i0 * a.lse.strides[2];
        c.lse_si = a.lse.strides[2];
        c.exact_delta = a.rows_complete && a.dtype != DType::Float32;  // as the tiles (backward.cpp)
        c.scale = float(a.scale);
        c.dq = const_cast<char*>(row_of(a.dq, i0));
        c.dq_si = a.dq.strides[1], c.dq_sd = a.dq.strides[3];
        c.dk_acc = dk_acc;
        c.dv_acc = dv_acc;
        kern->sparse_rows_bwd(c, base);
      }
    }
  });

  // dk, dv: each key block's S private rows summed (dK times scale), by the tile kernels' store.
  Problem p;
  p.dtype = dtype;
  p.Nk = nk, p.D = D, p.Dv = Dv, p.Dp = Dp, p.Dvp = Dvp;
  p.scale = float(a.scale);
  p.dk = t4(a.dk);
  p.dv = t4(a.dv);
  const KernelTable* kt = kernels_for(dtype);
  const int64_t nkb = (nk + kTile - 1) / kTile;
  parallel_for(BG * nkb, [&](int64_t task, int) {
    const int64_t c = task % nkb, bg = task / nkb, b = bg / hkv, g = bg % hkv;
    const float* dk_src[kMaxSegments];
    const float* dv_src[kMaxSegments];
    for (int64_t s = 0; s < S; ++s) {
      const float* dk = acc.get() + (bg * S + s) * per_acc;
      dk_src[s] = dk + c * kTile * Dp;
      dv_src[s] = dk + nk * Dp + c * kTile * Dvp;
    }
    kt->bwd_store(p, b, g, c, dk_src, dv_src, int(S));
  });
  return true;
}

}  // namespace spattn::cpu
