// Decode over a KV cache: plan, check, split-K, merge.
//
// Per sequence b (Nk = cache_len[b], bottom-right alignment) the pattern is compiled once (a
// TopKBlocks pattern first chooses its blocks from the sequence's q and cached keys) and
// its block layout taken with ONE query block of all Nq rows and key blocks of the page size
// (paged caches) or kContigBlock keys (contiguous caches). For each kv head g, the key blocks
// that any of its G = Hq / Hkv query heads visits are merged into sorted ranges: the only
// blocks (pages) ever touched. Those ranges are cut into chunks of about equal key counts,
// sized so that all (sequence, kv head, chunk) tasks together give every thread several;
// each task reads each K and V row of its chunk once for the G * Nq query rows (the kernel,
// decode_rows.hpp) and leaves an unnormalised partial (m, l, acc). A second pass merges the
// chunks of each (sequence, kv head) exactly (decode_finish) into out and lse.
#include <algorithm>
#include <cstring>
#include <memory>
#include <sstream>
#include <utility>
#include <vector>

#include "cpu/attention_f64.hpp"
#include "cpu/common.hpp"
#include "cpu/decode_cpu.hpp"
#include "cpu/decode_kernel_api.hpp"
#include "spattn/visited_blocks.hpp"
#include "cpu/kernel_api.hpp"
#include "cpu/thread_pool.hpp"
#include "select/topk.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"

namespace spattn::cpu {

int64_t decode_ws_floats(int64_t rows, int64_t G, int64_t Dp, int64_t Dvp) {
  // qf + one score row + K and V tiles + cursors (2G int64) + status bytes (G), rounded.
  return rows * Dp + kDecodeTile + kDecodeTile * (Dp + Dvp) + 4 * G + (G + 3) / 4 + 16;
}

const DecodeKernels* decode_kernels() {
  static const DecodeKernels* const t = [] {
    const char* name = kernels()->name;  // the same level as the attention kernels
#if defined(__x86_64__) || defined(_M_X64)
    // Prefixes: "avx512bf16" and the like are AVX-512 machines too.
    if (std::strncmp(name, "avx512", 6) == 0) return decode_kernels_avx512();
    if (std::strncmp(name, "avx2", 4) == 0) return decode_kernels_avx2();
#endif
    (void)name;
    return decode_kernels_portable();
  }();
  return t;
}

namespace {

using detail::alloc_floats;  // scratch, large blocks from the buffer cache (cpu/common.hpp)
using detail::code_of;
using detail::Scratch;

constexpr int64_t kContigBlock = 64;   // key block of contiguous caches
constexpr int64_t kMinChunkKeys = 512;  // below this a chunk costs more to merge than it saves
constexpr int64_t kTasksPerThread = 4;

struct Seq {
  int64_t nk = 0;
  Pattern pattern;  // the caller's, or for TopKBlocks the one chosen for this sequence
  std::unique_ptr<CompiledPattern> cp;
  BlockLayout layout;
};

struct Task {
  int64_t b, g;
  int64_t r0, nr;  // ranges [r0, r0 + nr) of the chunk range arrays
  int64_t slot;    // partial index
};

int64_t table_entry(const TensorView& t, int64_t b, int64_t c) {
  const int64_t off = b * t.strides[0] + c * t.strides[1];
  return t.dtype.bits == 64 ? t.ptr<const int64_t>()[off] : int64_t(t.ptr<const int32_t>()[off]);
}

// ValueError unless block_table[b, c] names a page of k (0 <= entry < pages).
void check_table_entry(const TensorView& k, const TensorView& table, int64_t b, int64_t c,
                       int64_t nk) {
  const int64_t pages = k.shape[0];
  const int64_t e = table_entry(table, b, c);
  if (e < 0 || e >= pages) {
    std::ostringstream m;
    m << "block_table: entry [" << b << ", " << c << "] = " << e
      << " is not a page index in [0, " << pages << ") (sequence " << b << " has cache_len "
      << nk << " and reads its page " << c << ")";
    throw ValueError(m.str());
  }
}

// All nk key rows of sequence b as the TopKBlocks choice reads them: through block_table when
// paged (every page below nk is checked first, since pooling may read any of them).
select::Rows cache_key_rows(const TensorView& k, const TensorView& table, bool paged,
                            DType dtype, int64_t b, int64_t nk) {
  if (!paged) {
    select::Rows r = select::batch_rows(k, b, dtype);
    r.n = nk;
    return r;
  }
  const int64_t ps = k.shape[1];
  for (int64_t c = 0; c < (nk + ps - 1) / ps; ++c) check_table_entry(k, table, b, c, nk);
  select::Rows r;
  r.base = static_cast<const char*>(k.data);
  r.n = nk;
  r.heads = k.shape[2];
  r.d = k.shape[3];
  r.s_row = k.strides[1];
  r.s_head = k.strides[2];
  r.s_dim = k.strides[3];
  r.dtype = dtype;
  r.table = static_cast<const char*>(table.data) + b * table.strides[0] * (table.dtype.bits / 8);
  r.table64 = table.dtype.bits == 64;
  r.table_s = table.strides[1];
  r.page_size = ps;
  r.s_page = k.strides[0];
  return r;
}

// TopKBlocks: the pattern sequence b runs, chosen from its q and keys (or the caller's pooled
// keys, when given: then no key row is read for the choice).
Pattern chosen_pattern(const DecodeArgs& a, int64_t b, int64_t nk) {
  const select::Rows q = select::batch_rows(a.q, b, a.dtype);
  if (a.pooled.data == nullptr)
    return select::concrete(
        *a.pattern,
        select::choose(*a.pattern, q, cache_key_rows(a.k, a.table, a.paged, a.dtype, b, nk)));
  select::Rows k;  // sizes only
  k.n = nk;
  k.heads = a.k.shape[2];
  k.d = a.k.shape[3];
  const TensorView& p = a.pooled;
  select::PooledKeys given;
  given.data = p.ptr<const float>() + b * p.strides[0];
  given.blocks = p.shape[1];
  given.s_block = p.strides[1];
  given.s_head = p.strides[2];
  given.s_dim = p.strides[3];
  return select::concrete(*a.pattern, select::choose(*a.pattern, q, k, &given));
}

}  // namespace

void decode(const DecodeArgs& a) {
  const TensorView &q = a.q, &k = a.k, &v = a.v;
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3], G = hq / hkv;
  const int64_t bk = a.paged ? k.shape[1] : kContigBlock;
  const int64_t Dp = (D + 15) / 16 * 16, Dvp = (Dv + 15) / 16 * 16;
  if (B == 0 || nq == 0) return;

  // 1. Compile the pattern per sequence (all checks before any work).
  std::vector<Seq> seqs(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    Seq& s = seqs[size_t(b)];
    s.nk = a.cache_len[b];
    if (s.nk == 0) continue;
    try {
      a.pattern->check(nq, s.nk, hq);
    } catch (const ValueError& e) {
      std::ostringstream m;
      m << "pattern: does not fit sequence " << b << " (Nq=" << nq << ", cache_len=" << s.nk
        << "): " << e.what();
      throw ValueError(m.str());
    }
    s.pattern = *a.pattern;
    if (s.pattern.data_dependent()) s.pattern = chosen_pattern(a, b, s.nk);
    s.cp = std::make_unique<CompiledPattern>(s.pattern.compile(nq, s.nk, hq));
    s.layout = s.cp->layout(nq, bk);
  }

  // 2. Per (sequence, kv head): the union of the key-block ranges of its query heads.
  std::vector<std::vector<std::pair<int32_t, int32_t>>> uni(static_cast<size_t>(B * hkv));
  int64_t total_keys = 0;
  for (int64_t b = 0; b < B; ++b) {
    const Seq& s = seqs[size_t(b)];
    if (s.nk == 0) continue;
    const BlockLayout& L = s.layout;
    const int64_t nkb = (s.nk + bk - 1) / bk;
    for (int64_t g = 0; g < hkv; ++g) {
      auto& u = uni[size_t(b * hkv + g)];
      u = visited_block_union(L, g * G, G, nkb);
      for (auto [lo, hi] : u) total_keys += std::min<int64_t>(int64_t(hi) * bk, s.nk) - int64_t(lo) * bk;
    }
  }

  // 3. Paged: every table entry of a visited page must name a page (read nothing else).
  if (a.paged)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t g = 0; g < hkv; ++g)
        for (auto [lo, hi] : uni[size_t(b * hkv + g)])
          for (int64_t c = lo; c < hi; ++c) check_table_entry(k, a.table, b, c, seqs[size_t(b)].nk);

  if (a.dtype == DType::Float64) {  // the plain float64 kernel (attention_f64.cpp)
    std::vector<DecodeSeqF64> s64(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      const Seq& s = seqs[size_t(b)];
      s64[size_t(b)] = {s.nk, s.nk ? &s.layout : nullptr, s.nk ? s.cp->predicate() : Predicate{}};
    }
    return decode_f64(a, s64);
  }

  // 4. Split-K chunks.
  const int nthreads = num_threads();
  const int64_t chunk_keys =
      std::max(kMinChunkKeys, (total_keys + nthreads * kTasksPerThread - 1) /
                                  std::max<int64_t>(1, nthreads * kTasksPerThread));
  std::vector<int32_t> clo, chi;
  std::vector<Task> tasks;
  std::vector<int64_t> first_slot(size_t(B * hkv + 1), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < hkv; ++g) {
      const int64_t bg = b * hkv + g, nk = seqs[size_t(b)].nk;
      first_slot[size_t(bg)] = int64_t(tasks.size());
      int64_t keys = 0;
      bool open = false;
      for (auto [lo, hi] : uni[size_t(bg)]) {
        int64_t c = lo;
        while (c < hi) {
          if (!open) {
            tasks.push_back(Task{b, g, int64_t(clo.size()), 0, int64_t(tasks.size())});
            keys = 0;
            open = true;
          }
          const int64_t want = std::max<int64_t>(1, (chunk_keys - keys + bk - 1) / bk);
          const int64_t e = std::min<int64_t>(hi, c + want);
          clo.push_back(int32_t(c));
          chi.push_back(int32_t(e));
          ++tasks.back().nr;
          keys += std::min(e * bk, nk) - c * bk;
          c = e;
          if (keys >= chunk_keys) open = false;
        }
      }
    }
  first_slot[size_t(B * hkv)] = int64_t(tasks.size());

  const DecodeKernels* kern = decode_kernels();
  const int dtype = code_of(a.dtype);
  const int es = dtype_size(a.dtype);
  const int64_t R = G * nq;
  const int64_t part_floats = R * (Dvp + 2);
  Scratch partials = alloc_floats(part_floats * int64_t(tasks.size()));
  const int64_t ws_floats = (decode_ws_floats(R, G, Dp, Dvp) + 15) / 16 * 16;
  Scratch ws = alloc_floats(std::max(ws_floats, Dvp) * nthreads);
  const float scale2 = a.scale * 1.4426950408889634f;
  // Score modifiers in base-2 units, per query head: ALiBi slopes [hq], sinks [hq].
  const backend::ScoreMods& mods = a.mods;
  std::vector<float> alibi2, sink2;
  if (mods.alibi) {
    alibi2.resize(size_t(hq));
    for (int64_t h = 0; h < hq; ++h) alibi2[size_t(h)] = mods.alibi[h * mods.alibi_stride] * 1.4426950408889634f;
  }
  if (mods.sinks) {
    sink2.resize(size_t(hq));
    for (int64_t h = 0; h < hq; ++h) sink2[size_t(h)] = mods.sinks[h * mods.sinks_stride] * 1.4426950408889634f;
  }

  parallel_for(int64_t(tasks.size()), [&](int64_t ti, int thread) {
    const Task& t = tasks[size_t(ti)];
    const Seq& s = seqs[size_t(t.b)];
    const BlockLayout& L = s.layout;
    DecodeChunk c;
    c.dtype = dtype;
    c.nq = nq;
    c.nk = s.nk;
    c.G = G;
    c.h0 = t.g * G;
    c.D = D;
    c.Dv = Dv;
    c.Dp = Dp;
    c.Dvp = Dvp;
    c.scale2 = scale2;
    c.q = static_cast<const char*>(q.data) + (t.b * q.strides[0] + c.h0 * q.strides[2]) * es;
    c.q_si = q.strides[1];
    c.q_sh = q.strides[2];
    c.q_sd = q.strides[3];
    if (a.paged) {
      c.k = static_cast<const char*>(k.data) + t.g * k.strides[2] * es;
      c.v = static_cast<const char*>(v.data) + t.g * v.strides[2] * es;
      c.k_sp = k.strides[0];
      c.v_sp = v.strides[0];
      c.table = static_cast<const char*>(a.table.data) +
                t.b * a.table.strides[0] * (a.table.dtype.bits / 8);
      c.table64 = a.table.dtype.bits == 64;
      c.table_s = a.table.strides[1];
    } else {
      c.k = static_cast<const char*>(k.data) + (t.b * k.strides[0] + t.g * k.strides[2]) * es;
      c.v = static_cast<const char*>(v.data) + (t.b * v.strides[0] + t.g * v.strides[2]) * es;
      c.k_sp = bk * k.strides[1];
      c.v_sp = bk * v.strides[1];
    }
    c.k_sr = k.strides[1];
    c.k_sd = k.strides[3];
    c.v_sr = v.strides[1];
    c.v_sd = v.strides[3];
    c.bk = bk;
    c.blo = clo.data() + t.r0;
    c.bhi = chi.data() + t.r0;
    c.nranges = t.nr;
    c.lheads = L.heads;
    c.full_ptr = L.full_ptr.data();
    c.part_ptr = L.part_ptr.data();
    c.full_lo = L.full_lo.data();
    c.full_hi = L.full_hi.data();
    c.part_lo = L.part_lo.data();
    c.part_hi = L.part_hi.data();
    c.pred = s.cp->predicate();
    c.softcap2 = mods.softcap * 1.4426950408889634f;
    c.alibi2 = mods.alibi ? alibi2.data() + c.h0 : nullptr;
    float* p = partials.get() + t.slot * part_floats;
    c.acc = p;
    c.m = p + R * Dvp;
    c.l = c.m + R;
    kern->chunk(c, ws.get() + thread * ws_floats);
  });

  // 5. Merge per (sequence, kv head).
  parallel_for(B * hkv, [&](int64_t bg, int thread) {
    const int64_t b = bg / hkv, g = bg % hkv;
    const int64_t s0 = first_slot[size_t(bg)], n = first_slot[size_t(bg + 1)] - s0;
    std::vector<const float*> acc(static_cast<size_t>(n)), m(static_cast<size_t>(n)), l(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const float* p = partials.get() + (s0 + t) * part_floats;
      acc[size_t(t)] = p;
      m[size_t(t)] = p + R * Dvp;
      l[size_t(t)] = p + R * Dvp + R;
    }
    DecodeFinish f;
    f.dtype = dtype;
    f.nq = nq;
    f.G = G;
    f.Dv = Dv;
    f.Dvp = Dvp;
    f.nparts = n;
    f.acc = acc.data();
    f.m = m.data();
    f.l = l.data();
    const TensorView& o = a.out;
    f.out = static_cast<char*>(o.data) + (b * o.strides[0] + g * G * o.strides[2]) * es;
    f.out_si = o.strides[1];
    f.out_sh = o.strides[2];
    f.out_sd = o.strides[3];
    if (a.lse.data) {
      const TensorView& ls = a.lse;
      f.lse = ls.ptr<float>() + b * ls.strides[0] + g * G * ls.strides[1];
      f.lse_sh = ls.strides[1];
      f.lse_si = ls.strides[2];
    }
    f.sink2 = mods.sinks ? sink2.data() + g * G : nullptr;
    kern->finish(f, ws.get() + thread * ws_floats);
  });
}

void pool_keys(const PoolKeysArgs& a) {
  const TensorView& o = a.out;
  const int64_t B = o.shape[0], nb = o.shape[1], hkv = o.shape[2], D = o.shape[3];
  const int64_t dp = (D + 15) / 16 * 16;
  std::vector<float> means;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t nk = a.cache_len[b];
    const select::Rows rows = cache_key_rows(a.k, a.table, a.paged, a.dtype, b, nk);
    means.assign(size_t(hkv * nb * dp), 0.f);
    select::pool(rows, a.block, nb, dp, means.data());  // blocks past nk stay zero
    float* out = o.ptr<float>() + b * o.strides[0];
    for (int64_t g = 0; g < hkv; ++g)
      for (int64_t c = 0; c < nb; ++c)
        for (int64_t x = 0; x < D; ++x)
          out[c * o.strides[1] + g * o.strides[2] + x * o.strides[3]] =
              means[size_t((g * nb + c) * dp + x)];
  }
}

}  // namespace spattn::cpu
