// spattn::decode: attention of a few new queries against a KV cache (SPEC §3). Every argument
// is checked here, before anything is read past the shapes or written; the CPU planner
// (cpu/decode.cpp) then checks the pattern per sequence and the block-table entries it will use.
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/decode_cpu.hpp"
#include "cpu/thread_pool.hpp"
#include "spattn/spattn.hpp"

namespace spattn {

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxDecodeQueries = 64;

[[noreturn]] void fail_value(const std::ostringstream& m) { throw ValueError(m.str()); }

void rank4(const TensorView& t, const char* name, const char* layout) {
  if (t.ndim != 4) {
    std::ostringstream m;
    m << name << ": expected 4 dimensions " << layout << ", got " << t.ndim << " with shape "
      << t.shape_str();
    fail_value(m);
  }
}

void same_dtype(const TensorView& t, const char* name, DType want) {
  const DType got = float_dtype(t, name);
  if (got != want)
    throw TypeError(std::string(name) + ": dtype " + dtype_name(got) + " does not match q's " +
                    dtype_name(want));
}

void same_device(const TensorView& t, const char* name, const TensorView& ref,
                 const char* ref_name = "q") {
  if (t.device.device_type != ref.device.device_type || t.device.device_id != ref.device.device_id)
    throw ValueError(std::string(name) + ": on device " + describe(t.device) + ", but " +
                     ref_name + " is on " + describe(ref.device) +
                     "; all tensors must be on one device");
}

// A float32 [B, blocks, Hkv, D] array of pooled keys (decode's pooled_keys, pool_keys' out).
void check_pooled(const TensorView& t, const char* name, int64_t B, int64_t hkv, int64_t D,
                  const TensorView& ref, const char* ref_name) {
  if (!(t.dtype.code == kDLFloat && t.dtype.bits == 32 && t.dtype.lanes == 1))
    throw TypeError(std::string(name) + ": expected float32 mean keys [B, blocks, Hkv, D], got " +
                    describe(t.dtype));
  if (t.ndim != 4 || t.shape[0] != B || t.shape[2] != hkv || t.shape[3] != D) {
    std::ostringstream m;
    m << name << ": expected shape [B=" << B << ", blocks, Hkv=" << hkv << ", D=" << D
      << "], got " << t.shape_str();
    fail_value(m);
  }
  same_device(t, name, ref, ref_name);
}

bool is_int(const TensorView& t) {
  return t.dtype.code == kDLInt && (t.dtype.bits == 32 || t.dtype.bits == 64) &&
         t.dtype.lanes == 1;
}

void writable(const TensorView& t, const char* name) {
  expect_no_self_overlap(t, name);  // tensor.hpp: broadcast or overlapping strides; empty passes
}

void shape_is(const TensorView& t, const char* name, std::vector<int64_t> want,
              const char* layout) {
  bool ok = t.ndim == int(want.size());
  for (size_t d = 0; ok && d < want.size(); ++d) ok = t.shape[d] == want[d];
  if (!ok) {
    std::ostringstream m;
    m << name << ": expected shape [";
    for (size_t d = 0; d < want.size(); ++d) m << (d ? ", " : "") << want[d];
    m << "] " << layout << ", got " << t.shape_str();
    fail_value(m);
  }
}

// cache_len int32 (or int64) [B], each 0 <= value <= capacity, and for paged caches the
// block_table int32 (or int64) [B, max_pages] (its entries are checked where they are used).
// Returns the lengths; *table gets the table's view (data null for contiguous caches).
std::vector<int64_t> read_cache(const TensorView& q, const TensorView& k,
                                const DLTensor& cache_len_, const DLTensor* block_table_,
                                int64_t B, TensorView* table_out, const char* ref_name = "q") {
  const bool paged = block_table_ != nullptr;
  // cache_len: int32 (or int64) [B], 0 <= value <= capacity.
  const TensorView cl = view_of(cache_len_, "cache_len");
  if (!is_int(cl))
    throw TypeError("cache_len: expected int32 lengths [B], got dtype " + describe(cl.dtype));
  if (cl.ndim != 1 || cl.shape[0] != B) {
    std::ostringstream m;
    m << "cache_len: expected shape [" << B << "] (one length per sequence of " << ref_name
      << "), got "
      << cl.shape_str();
    fail_value(m);
  }
  same_device(cl, "cache_len", q, ref_name);
  TensorView table;
  int64_t capacity = k.shape[1];
  const char* cap_what = "Ncap, the cache's second dimension";
  if (paged) {
    table = view_of(*block_table_, "block_table");
    if (!is_int(table))
      throw TypeError("block_table: expected int32 page indices [B, max_pages], got dtype " +
                      describe(table.dtype));
    if (table.ndim != 2 || table.shape[0] != B) {
      std::ostringstream m;
      m << "block_table: expected 2 dimensions [B=" << B << ", max_pages], got shape "
        << table.shape_str();
      fail_value(m);
    }
    same_device(table, "block_table", q, ref_name);
    capacity = table.shape[1] * k.shape[1];
    cap_what = "max_pages * page_size";
  }
  std::vector<int64_t> lens(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t off = b * cl.strides[0];
    const int64_t n = cl.dtype.bits == 64 ? cl.ptr<const int64_t>()[off]
                                          : int64_t(cl.ptr<const int32_t>()[off]);
    if (n < 0 || n > capacity) {
      std::ostringstream m;
      m << "cache_len: cache_len[" << b << "] = " << n << " is outside 0.." << capacity << " ("
        << cap_what;
      if (paged)
        m << " = " << table.shape[1] << " * " << k.shape[1]
          << "; block_table has too few columns for this length";
      m << ")";
      fail_value(m);
    }
    lens[size_t(b)] = n;
  }
  *table_out = table;
  return lens;
}

}  // namespace

void decode(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
            const DLTensor& cache_len_, const Pattern& pattern, const DLTensor* block_table_,
            const DLTensor& out_, const DLTensor* lse_, const Options& options,
            const DLTensor* pooled_keys_) {
  const bool paged = block_table_ != nullptr;
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k_cache"), v = view_of(v_, "v_cache");
  rank4(q, "q", "[B, Nq, Hq, D]");
  const char* klayout = paged ? "[pages, page_size, Hkv, D] (paged)" : "[B, Ncap, Hkv, D]";
  const char* vlayout = paged ? "[pages, page_size, Hkv, Dv] (paged)" : "[B, Ncap, Hkv, Dv]";
  rank4(k, "k_cache", klayout);
  rank4(v, "v_cache", vlayout);
  const DType dtype = float_dtype(q, "q");
  same_dtype(k, "k_cache", dtype);
  same_dtype(v, "v_cache", dtype);
  same_device(k, "k_cache", q);
  same_device(v, "v_cache", q);
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], D = q.shape[3];
  const int64_t hkv = k.shape[2], Dv = v.shape[3];
  {
    std::ostringstream m;
    if (!paged && (k.shape[0] != B || v.shape[0] != B))
      m << "k_cache, v_cache: batch sizes " << k.shape[0] << " and " << v.shape[0]
        << " must equal q's B=" << B << " (contiguous caches [B, Ncap, Hkv, D]; pass "
        << "block_table for paged caches)";
    else if (k.shape[0] != v.shape[0] || k.shape[1] != v.shape[1])
      m << "v_cache: expected " << (paged ? "[pages, page_size]" : "[B, Ncap]") << " = ["
        << k.shape[0] << ", " << k.shape[1] << "] like k_cache " << k.shape_str() << ", got "
        << v.shape_str();
    else if (v.shape[2] != hkv)
      m << "v_cache: expected Hkv=" << hkv << " heads like k_cache " << k.shape_str()
        << ", got " << v.shape_str();
    else if (k.shape[3] != D)
      m << "k_cache: head dim " << k.shape[3] << " must equal q's D=" << D << " (q "
        << q.shape_str() << ", k_cache " << k.shape_str() << ")";
    else if (hq < 1 || hkv < 1)
      m << "q, k_cache: expected at least one head, got Hq=" << hq << ", Hkv=" << hkv;
    else if (hq % hkv != 0)
      m << "q, k_cache: Hq=" << hq << " query heads must be a multiple of Hkv=" << hkv
        << " key/value heads (GQA)";
    else if (D < 1 || D > kMaxHeadDim)
      m << "q: head dim D=" << D << " is outside 1.." << kMaxHeadDim;
    else if (Dv < 1 || Dv > kMaxHeadDim)
      m << "v_cache: head dim Dv=" << Dv << " is outside 1.." << kMaxHeadDim;
    else if (nq > kMaxDecodeQueries)
      m << "q: decode takes at most " << kMaxDecodeQueries << " new queries per sequence, got "
        << "Nq=" << nq << " (shape " << q.shape_str() << "); use spattn.attention for longer "
        << "blocks";
    else if (paged && k.shape[1] < 1)
      m << "k_cache: paged caches need page_size >= 1, got shape " << k.shape_str();
    if (!m.str().empty()) fail_value(m);
  }
  if (!(q.device.device_type == kDLCPU || q.device.device_type == kDLCUDAHost))
    throw RuntimeError("q: decode runs on the CPU only in this version; the tensors are on " +
                       describe(q.device));

  TensorView table;
  const std::vector<int64_t> lens = read_cache(q, k, cache_len_, block_table_, B, &table);

  const TensorView out = view_of(out_, "out");
  shape_is(out, "out", {B, nq, hq, Dv}, "[B, Nq, Hq, Dv]");
  same_dtype(out, "out", dtype);
  same_device(out, "out", q);
  writable(out, "out");
  TensorView lse;
  if (lse_) {
    lse = view_of(*lse_, "lse");
    shape_is(lse, "lse", {B, hq, nq}, "[B, Hq, Nq]");
    if (!(lse.dtype.code == kDLFloat && lse.dtype.bits == 32 && lse.dtype.lanes == 1))
      throw TypeError("lse: expected float32, got " + describe(lse.dtype));
    same_device(lse, "lse", q);
    writable(lse, "lse");
  }
  if (!std::isfinite(options.scale)) {
    std::ostringstream m;
    m << "scale: expected a finite number, got " << options.scale;
    fail_value(m);
  }
  const float scale =
      options.scale == 0.0 ? float(1.0 / std::sqrt(double(D))) : float(options.scale);
  if (options.num_threads < 0)
    throw ValueError("num_threads: expected 0 (all) or a positive count, got " +
                     std::to_string(options.num_threads));
  const cpu::ThreadLimit limit(options.num_threads);

  TensorView pooled;
  if (pooled_keys_) {
    if (!pattern.data_dependent())
      throw ValueError("pooled_keys: only a TopKBlocks pattern scores key blocks; the pattern is " +
                       pattern.describe());
    pooled = view_of(*pooled_keys_, "pooled_keys");
    check_pooled(pooled, "pooled_keys", B, hkv, D, q, "q");
  }
  expect_disjoint_outputs({{&out, "out"}, {&lse, "lse"}},
                          {{&q, "q"}, {&k, "k_cache"}, {&v, "v_cache"}, {&table, "block_table"},
                           {&pooled, "pooled_keys"}});

  cpu::DecodeArgs a;
  a.pooled = pooled;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  a.table = table;
  a.paged = paged;
  a.cache_len = lens.data();
  a.dtype = dtype;
  a.scale = scale;
  a.pattern = &pattern;
  cpu::decode(a);
}

void pool_keys(const DLTensor& k_, const DLTensor& cache_len_, int64_t block,
               const DLTensor* block_table_, const DLTensor& out_) {
  const bool paged = block_table_ != nullptr;
  const TensorView k = view_of(k_, "k_cache");
  rank4(k, "k_cache", paged ? "[pages, page_size, Hkv, D] (paged)" : "[B, Ncap, Hkv, D]");
  const DType dtype = float_dtype(k, "k_cache");
  if (block < 1) throw ValueError("block: expected a block size >= 1, got " + std::to_string(block));
  if (paged && k.shape[1] < 1)
    throw ValueError("k_cache: paged caches need page_size >= 1, got shape " + k.shape_str());
  if (!(k.device.device_type == kDLCPU || k.device.device_type == kDLCUDAHost))
    throw RuntimeError("k_cache: pool_keys runs on the CPU only in this version; the cache is on " +
                       describe(k.device));
  int64_t B = k.shape[0];
  if (paged) {
    const TensorView t = view_of(*block_table_, "block_table");
    B = t.ndim == 2 ? t.shape[0] : -1;  // read_cache reports a wrong rank
  }
  TensorView table;
  const std::vector<int64_t> lens =
      read_cache(k, k, cache_len_, block_table_, std::max<int64_t>(B, 0), &table, "k_cache");
  const TensorView out = view_of(out_, "out");
  check_pooled(out, "out", B, k.shape[2], k.shape[3], k, "k_cache");
  writable(out, "out");
  expect_disjoint_outputs({{&out, "out"}}, {{&k, "k_cache"}, {&table, "block_table"}});
  for (int64_t b = 0; b < B; ++b)
    if (out.shape[1] * block < lens[size_t(b)]) {
      std::ostringstream m;
      m << "out: " << out.shape[1] << " blocks of " << block << " keys hold fewer than cache_len["
        << b << "] = " << lens[size_t(b)] << " keys";
      fail_value(m);
    }
  cpu::PoolKeysArgs a;
  a.k = k;
  a.table = table;
  a.out = out;
  a.paged = paged;
  a.cache_len = lens.data();
  a.dtype = dtype;
  a.block = block;
  cpu::pool_keys(a);
}

}  // namespace spattn
