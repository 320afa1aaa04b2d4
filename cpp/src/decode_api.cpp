// spattn::decode and spattn::pool_keys (docs/api.md): every argument is checked here with the shared
// checks (plan/checks.hpp), before anything is read past the shapes or written; the backend of
// the tensors' device then plans the split-K work, checking the pattern per sequence and every
// block-table entry it will use (backend::Decode).
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "cpu/thread_pool.hpp"  // the host thread budget of the call
#include "plan/checks.hpp"
#include "select/topk.hpp"
#include "plan/modifiers.hpp"
#include "spattn/spattn.hpp"

namespace spattn {

namespace {

using plan::expect_rank;
using plan::expect_same_device;

constexpr int64_t kMaxDecodeQueries = 64;

[[noreturn]] void fail_value(const std::ostringstream& m) { throw ValueError(m.str()); }

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
  expect_same_device(t, name, ref, ref_name);
}

// The lengths and the table, checked up to their values: cache_len int32 (or int64) [B] and for
// paged caches the block_table int32 (or int64) [B, max_pages] (its entries are checked where
// they are used).
struct CacheArgs {
  TensorView cl, table;  // table data null for contiguous caches
  bool on_host = true;   // cache_len is host memory
  int64_t capacity = 0;
  std::string cap_what;  // for the message of a length past the capacity
};

CacheArgs check_cache(const TensorView& q, const TensorView& k, const DLTensor& cache_len_,
                      const DLTensor* block_table_, int64_t B, const char* ref_name) {
  const bool paged = block_table_ != nullptr;
  const TensorView cl = view_of(cache_len_, "cache_len");
  if (!plan::is_index_dtype(cl))
    throw TypeError("cache_len: expected int32 lengths [B], got dtype " + describe(cl.dtype));
  if (cl.ndim != 1 || cl.shape[0] != B) {
    std::ostringstream m;
    m << "cache_len: expected shape [" << B << "] (one length per sequence of " << ref_name
      << "), got " << cl.shape_str();
    fail_value(m);
  }
  const bool on_host = cl.device.device_type == kDLCPU || cl.device.device_type == kDLCUDAHost;
  if (!on_host) expect_same_device(cl, "cache_len", q, ref_name);
  TensorView table;
  int64_t capacity = k.shape[1];
  const char* cap_what = "Ncap, the cache's second dimension";
  if (paged) {
    table = view_of(*block_table_, "block_table");
    if (!plan::is_index_dtype(table))
      throw TypeError("block_table: expected int32 page indices [B, max_pages], got dtype " +
                      describe(table.dtype));
    if (table.ndim != 2 || table.shape[0] != B) {
      std::ostringstream m;
      m << "block_table: expected 2 dimensions [B=" << B << ", max_pages], got shape "
        << table.shape_str();
      fail_value(m);
    }
    expect_same_device(table, "block_table", q, ref_name);
    capacity = table.shape[1] * k.shape[1];
    cap_what = "max_pages * page_size";
  }
  if (B > 1 && cl.strides[0] < 0) throw ValueError("cache_len: negative strides are not supported");
  CacheArgs c;
  c.cl = cl;
  c.table = table;
  c.on_host = on_host;
  c.capacity = capacity;
  c.cap_what = cap_what;
  if (paged)
    c.cap_what += " = " + std::to_string(table.shape[1]) + " * " + std::to_string(k.shape[1]) +
                  "; block_table has too few columns for this length";
  return c;
}

// The lengths, each 0 <= value <= capacity. cache_len may live on the CPU (no synchronisation)
// or on the cache's device (copied to the host: one synchronisation of the call's stream).
std::vector<int64_t> read_lengths(backend::Backend& be, const backend::Call& call,
                                  const CacheArgs& c, int64_t B) {
  const TensorView& cl = c.cl;
  const bool on_host = c.on_host;
  const int64_t capacity = c.capacity;
  const int64_t es = cl.dtype.bits / 8, step = cl.strides[0];
  std::vector<unsigned char> raw;
  const unsigned char* base = static_cast<const unsigned char*>(cl.data);
  if (!on_host && B > 0) {
    raw.resize(size_t(((B - 1) * step + 1) * es));
    be.read_to_host(cl, raw.data(), raw.size(), call);
    base = raw.data();
  }
  std::vector<int64_t> lens(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = es == 8 ? reinterpret_cast<const int64_t*>(base)[b * step]
                              : int64_t(reinterpret_cast<const int32_t*>(base)[b * step]);
    if (n < 0 || n > capacity) {
      std::ostringstream m;
      m << "cache_len: cache_len[" << b << "] = " << n << " is outside 0.." << capacity << " ("
        << c.cap_what << ")";
      fail_value(m);
    }
    lens[size_t(b)] = n;
  }
  return lens;
}

}  // namespace

void decode(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
            const DLTensor& cache_len_, const Pattern& pattern, const DLTensor* block_table_,
            const DLTensor& out_, const DLTensor* lse_, const Options& options,
            const DLTensor* pooled_keys_) {
  const bool paged = block_table_ != nullptr;
  const TensorView q = view_of(q_, "q"), k = view_of(k_, "k_cache"), v = view_of(v_, "v_cache");
  expect_rank(q, "q", 4, "[B, Nq, Hq, D]");
  expect_rank(k, "k_cache", 4, paged ? "[pages, page_size, Hkv, D] (paged)" : "[B, Ncap, Hkv, D]");
  expect_rank(v, "v_cache", 4, paged ? "[pages, page_size, Hkv, Dv] (paged)" : "[B, Ncap, Hkv, Dv]");
  const DType dtype = float_dtype(q, "q");
  plan::expect_dtype(k, "k_cache", dtype);
  plan::expect_dtype(v, "v_cache", dtype);
  expect_same_device(k, "k_cache", q);
  expect_same_device(v, "v_cache", q);
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
    else if (D < 1 || D > plan::kMaxHeadDim)
      m << "q: head dim D=" << D << " is outside 1.." << plan::kMaxHeadDim;
    else if (Dv < 1 || Dv > plan::kMaxHeadDim)
      m << "v_cache: head dim Dv=" << Dv << " is outside 1.." << plan::kMaxHeadDim;
    else if (nq > kMaxDecodeQueries)
      m << "q: decode takes at most " << kMaxDecodeQueries << " new queries per sequence, got "
        << "Nq=" << nq << " (shape " << q.shape_str() << "); use spattn.attention for longer "
        << "blocks";
    else if (paged && k.shape[1] < 1)
      m << "k_cache: paged caches need page_size >= 1, got shape " << k.shape_str();
    if (!m.str().empty()) fail_value(m);
  }
  const plan::CallOptions o = plan::resolve(options, D);
  backend::Call call;
  backend::Backend& be = plan::backend_for(q, backend::Op::Decode, dtype, D, Dv, options, &call);
  if (pattern.data_dependent()) {  // TopKBlocks' selection must run on q's device too
    select::expect_selectable(dtype, "q");
    const std::string why = be.unsupported(backend::Op::DecodeSelect, dtype, D, Dv, call);
    if (!why.empty()) throw RuntimeError("pattern: " + why);
  }
  const backend::ScoreMods mods = plan::check_modifiers(options.modifiers, q, dtype, hq, false, nullptr);
  plan::expect_modifiers_supported(mods, be, backend::Op::Decode, call, q);

  const CacheArgs cache = check_cache(q, k, cache_len_, block_table_, B, "q");
  const TensorView& table = cache.table;
  // Host lengths are checked here, before the outputs (as always); lengths on a device below.
  std::vector<int64_t> lens;
  if (cache.on_host) lens = read_lengths(be, call, cache, B);

  const TensorView out = view_of(out_, "out");
  plan::check_output(out, "out", {B, nq, hq, Dv}, "[B, Nq, Hq, Dv]", q, dtype);
  TensorView lse;
  if (lse_) {
    lse = view_of(*lse_, "lse");
    plan::expect_lse(lse, "lse", dtype, {B, hq, nq}, "[B, Hq, Nq]", q);
    plan::expect_writable_layout(lse, "lse");
  }
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
  const cpu::ThreadLimit limit(o.num_threads);
  backend::Decode a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  a.table = table;
  a.paged = paged;
  a.lengths = cache.cl;
  a.capacity = cache.capacity;
  a.defer_errors = options.decode_defer_errors;
  a.dtype = dtype;
  a.scale = o.scale;
  a.pattern = &pattern;
  a.pooled = pooled;
  a.mods = mods;
  // Lengths on the device stay there when the backend plans from them (no host read, no
  // synchronisation); else they are read here and checked against the capacity.
  bool lengths_on_host = cache.on_host;
  if (!lengths_on_host && !be.device_lengths_refusal(a, call).empty()) {
    lens = read_lengths(be, call, cache, B);
    lengths_on_host = true;
  }
  if (lengths_on_host) a.cache_len = lens.data();
  be.decode(a, call);
}

void check_decode_errors(const DLDevice& device) {
  if (device.device_type == kDLCPU || device.device_type == kDLCUDAHost) return;
  backend::Backend* be = backend::find(device.device_type);
  if (be == nullptr) return;  // a build without this device's backend: no call could defer
  backend::Call call;
  call.device = device;
  be->raise_deferred_decode_errors(call);
}

void pool_keys(const DLTensor& k_, const DLTensor& cache_len_, int64_t block,
               const DLTensor* block_table_, const DLTensor& out_, const Options& options) {
  const bool paged = block_table_ != nullptr;
  const TensorView k = view_of(k_, "k_cache");
  expect_rank(k, "k_cache", 4, paged ? "[pages, page_size, Hkv, D] (paged)" : "[B, Ncap, Hkv, D]");
  const DType dtype = float_dtype(k, "k_cache");
  select::expect_selectable(dtype, "k_cache");  // pooled keys feed TopKBlocks' selection
  if (block < 1) throw ValueError("block: expected a block size >= 1, got " + std::to_string(block));
  if (paged && k.shape[1] < 1)
    throw ValueError("k_cache: paged caches need page_size >= 1, got shape " + k.shape_str());
  backend::Call call;
  backend::Backend& be =
      plan::backend_for(k, backend::Op::PoolKeys, dtype, k.shape[3], k.shape[3], options, &call);
  int64_t B = k.shape[0];
  if (paged) {
    const TensorView t = view_of(*block_table_, "block_table");
    B = t.ndim == 2 ? t.shape[0] : -1;  // check_cache reports a wrong rank
  }
  const CacheArgs cache = check_cache(k, k, cache_len_, block_table_, std::max<int64_t>(B, 0),
                                      "k_cache");
  const TensorView& table = cache.table;
  // Lengths on the device stay there when the backend reads them there (it checks them);
  // else they are read and checked here, before anything is written.
  const bool lengths_on_host = cache.on_host || !be.pool_keys_device_lengths(call);
  std::vector<int64_t> lens;
  if (lengths_on_host) lens = read_lengths(be, call, cache, B);
  const TensorView out = view_of(out_, "out");
  check_pooled(out, "out", B, k.shape[2], k.shape[3], k, "k_cache");
  plan::expect_writable_layout(out, "out");
  expect_disjoint_outputs({{&out, "out"}}, {{&k, "k_cache"}, {&table, "block_table"}});
  for (size_t b = 0; b < lens.size(); ++b)
    if (out.shape[1] * block < lens[b]) {
      std::ostringstream m;
      m << "out: " << out.shape[1] << " blocks of " << block << " keys hold fewer than cache_len["
        << b << "] = " << lens[b] << " keys";
      fail_value(m);
    }
  backend::PoolKeys a;
  a.k = k;
  a.table = table;
  a.out = out;
  a.paged = paged;
  a.cache_len = lengths_on_host ? lens.data() : nullptr;
  a.lengths = cache.cl;
  a.capacity = cache.capacity;
  a.defer_errors = options.decode_defer_errors;
  a.dtype = dtype;
  a.block = block;
  be.pool_keys(a, call);
}

}  // namespace spattn
