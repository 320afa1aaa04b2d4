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

constexpr float kLog2e = 1.4426950408889634f;

// A row of tensor t ([B, N, H, D] view) at (b, i, h).
inline const char* row_at(const TensorView& t, int64_t b, int64_t i, int64_t h, int es) {
  return static_cast<const char*>(t.data) + (b * t.strides[0] + i * t.strides[1] + h * t.strides[2]) * es;
}

// The kernel's description of rows i0 .. i0 + n - 1 of head h, batch b (both passes): q, k, v
// (of h's kv head), key lists, scale and score modifiers. The output fields are the caller's.
SparseRows rows_of(const TensorView& q, const TensorView& k, const TensorView& v, DType dtype,
                   double scale, const backend::ScoreMods& m, int64_t b, int64_t h, int64_t i0,
                   int64_t n, const int64_t* ptr, const int64_t* keys) {
  SparseRows c;
  c.dtype = detail::code_of(dtype);
  const int es = c.dtype == kF32 ? 4 : 2;
  const int64_t nq = q.shape[1], nk = k.shape[1], g = h / (q.shape[2] / k.shape[2]);
  c.n = n;
  c.i0 = i0;
  c.D = q.shape[3], c.Dv = v.shape[3];
  c.Dp = (c.D + 15) & ~int64_t(15), c.Dvp = (c.Dv + 15) & ~int64_t(15);
  c.scale2 = float(scale) * kLog2e;
  c.q = row_at(q, b, i0, h, es);
  c.q_si = q.strides[1], c.q_sd = q.strides[3];
  c.k = row_at(k, b, 0, g, es);
  c.v = row_at(v, b, 0, g, es);
  c.k_sj = k.strides[1], c.k_sd = k.strides[3];
  c.v_sj = v.strides[1], c.v_sd = v.strides[3];
  c.ptr = ptr;
  c.keys = keys;
  c.softcap2 = m.softcap * kLog2e;
  if (m.alibi) c.alibi2 = m.alibi[h * m.alibi_stride] * kLog2e;
  c.rel_step = m.rel_shifted ? m.rel_step : 1;
  c.rel_base = m.rel_shifted ? m.rel_base : nk - nq;
  if (m.sinks) c.sink = true, c.sink2 = m.sinks[h * m.sinks_stride] * kLog2e;
  return c;
}

// Rows i0 .. i0 + n - 1's kept keys of head h into keys, offsets into ptr[0 .. n].
void list_keys(const Predicate& pred, int64_t h, int64_t i0, int64_t n, int64_t nk, int64_t* ptr,
               int64_t* keys) {
  ptr[0] = 0;
  for (int64_t r = 0; r < n; ++r) ptr[r + 1] = ptr[r] + row_key_list(pred, h, i0 + r, nk, keys + ptr[r]);
}

}  // namespace

bool forward_sparse_rows(const ForwardArgs& a) {
  using namespace detail;
  if (a.dtype == DType::Float64) return false;  // attention_f64.cpp has its own path
  const int64_t B = a.q.shape[0], nq = a.q.shape[1], hq = a.q.shape[2], D = a.q.shape[3];
  const int64_t nk = a.k.shape[1], Dv = a.v.shape[3];
  const int64_t bound = sparse_row_bound(a.pred, nk);
  if (bound < 0 || bound > kMaxSparseRowKeys) return false;
  const int64_t chunks = (nq + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = B * hq * chunks;
  if (tasks == 0 || Dv == 0) return true;

  const int dtype = code_of(a.dtype);
  const int es = dtype == kF32 ? 4 : 2;
  const int64_t Dp = (D + 15) & ~int64_t(15), Dvp = (Dv + 15) & ~int64_t(15);
  // Scratch per thread: the kernel's floats, then the rows' key lists and offsets (int64).
  const int64_t ws_floats = sparse_rows_ws_floats(bound, Dp, Dvp);
  const int64_t list_floats = 2 * (kRowsPerTask * bound + kRowsPerTask + 1);
  const int64_t per_thread = ws_floats + list_floats;
  const int nthreads = num_threads();
  Scratch ws = alloc_floats(per_thread * nthreads);

  const DecodeKernels* kern = decode_kernels();
  parallel_for(tasks, [&](int64_t task, int thread) {
    // Heads fastest, as the tiles (head-major measured ~1.4x slower: a key row's heads share
    // its cache lines' neighbourhood).
    const int64_t h = task % hq, chunk = (task / hq) % chunks, b = task / (hq * chunks);
    const int64_t i0 = chunk * kRowsPerTask, n = std::min(kRowsPerTask, nq - i0);
    float* base = ws.get() + thread * per_thread;
    int64_t* ptr = reinterpret_cast<int64_t*>(base + ws_floats);
    int64_t* keys = ptr + kRowsPerTask + 1;
    list_keys(a.pred, h, i0, n, nk, ptr, keys);
    SparseRows c = rows_of(a.q, a.k, a.v, a.dtype, a.scale, a.mods, b, h, i0, n, ptr, keys);
    c.out = const_cast<char*>(row_at(a.out, b, i0, h, es));
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
  // key block afterwards in segment order (deterministic). Segments only to feed the threads;
  // at most 4, so the private rows stay within 4x (float32) or 8x (16-bit) the size of K and V.
  const int64_t chunks = std::max<int64_t>(1, (nq + kRowsPerTask - 1) / kRowsPerTask);
  int64_t S = std::min<int64_t>(chunks, std::max<int64_t>(1, (2 * nthreads + BG - 1) / BG));
  S = std::max<int64_t>(1, std::min<int64_t>(S, kMaxSegments));
  const int64_t per_acc = nk * (Dp + Dvp);
  Scratch acc = alloc_floats(BG * S * per_acc);
  const int64_t ws_floats = sparse_rows_bwd_ws_floats(bound, Dp, Dvp);
  const int64_t list_floats = 2 * (kRowsPerTask * bound + kRowsPerTask + 1);
  const int64_t per_thread = ws_floats + list_floats;
  Scratch ws = alloc_floats(per_thread * nthreads);

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
        list_keys(a.pred, h, i0, n, nk, ptr, keys);
        SparseRowsBwd c;
        c.f = rows_of(a.q, a.k, a.v, a.dtype, a.scale, a.mods, b, h, i0, n, ptr, keys);
        c.dout = row_at(a.dout, b, i0, h, es);
        c.dout_si = a.dout.strides[1], c.dout_sd = a.dout.strides[3];
        c.o = row_at(a.out, b, i0, h, es);
        c.o_si = a.out.strides[1], c.o_sd = a.out.strides[3];
        c.lse = static_cast<const float*>(a.lse.data) + b * a.lse.strides[0] +
                h * a.lse.strides[1] + i0 * a.lse.strides[2];
        c.lse_si = a.lse.strides[2];
        c.exact_delta = a.rows_complete && a.dtype != DType::Float32;  // as the tiles (backward.cpp)
        c.scale = float(a.scale);
        c.dq = const_cast<char*>(row_at(a.dq, b, i0, h, es));
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
