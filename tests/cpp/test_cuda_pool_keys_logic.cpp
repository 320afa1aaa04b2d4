// pool_keys' CUDA kernels (cuda/src/kernels/decode.cu: pool_kernel, pool_error_kernel) on the
// host: the SPATTN_HD rules of spattn/cuda/decode_logic.hpp (pool_len, pool_key_offset,
// pool_table_key, pool_error_complete, pool_sticky_words) in a scalar emulation of the grid
// (every CTA (block c, sequence b), atomicMin as min), against the CPU's spattn::pool_keys:
//
//   - good lengths: the means equal the CPU's, with the lengths given as the host copy (int64
//     [B], the planner's) and as the caller's device array (int32 or int64, element stride 1
//     or 3): the same bits either way;
//   - bad lengths (outside [0, capacity]), lengths past out's blocks, bad table entries (also
//     several at once): the record holds the error the CPU raises first (its class, sequence,
//     value; the table entry and its column), and the words raise_decode_error formats the
//     message from (decode_errors.cpp) give the CPU's message;
//   - a sabotaged emulation (table errors recorded without their column) is caught.
//
// What this cannot check: atomics, the deferred record's claim, a graph replay. Those need a
// GPU (tests/python/test_cuda_decode_graph.py).
#include <spattn/cuda/decode_logic.hpp>
#include <spattn/spattn.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

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

// A host DLTensor over a vector.
template <class T>
struct Arr {
  std::vector<T> v;
  std::vector<int64_t> shape, strides;
  DLTensor t{};
  Arr(std::vector<int64_t> s, DLDataType dt, std::vector<int64_t> st = {}) : shape(std::move(s)) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    strides = st;
    if (strides.empty()) {
      strides.assign(shape.size(), 1);
      for (int i = int(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
      v.assign(size_t(n), T(0));
    } else {
      int64_t span = 1;
      for (size_t i = 0; i < shape.size(); ++i) span += (shape[i] - 1) * strides[i];
      v.assign(size_t(n == 0 ? 0 : span), T(0));
    }
    t.data = v.data();
    t.device = {kDLCPU, 0};
    t.ndim = int(shape.size());
    t.dtype = dt;
    t.shape = shape.data();
    t.strides = strides.data();
  }
};
const DLDataType kF32{kDLFloat, 32, 1}, kI32{kDLInt, 32, 1}, kI64{kDLInt, 64, 1};

struct Case {
  int64_t B, hkv, d, block;
  bool paged;
  int64_t ncap;       // contiguous: Ncap
  int64_t page_size;  // paged
  int64_t pages, max_pages;
  int64_t out_blocks;  // out's second dimension
};

// The record the kernels leave (pool_kernel over the grid, then pool_error_kernel), and out.
struct Emulated {
  unsigned long long rec[kDecErrorWords];
  unsigned long long words[kDecStickyWords];
};

enum class Sabotage { None, TableColumnLost };

Emulated emulate(const PoolParams& p0, Sabotage sabotage) {
  PoolParams p = p0;
  unsigned long long err[kDecErrorWords] = {~0ull, ~0ull, ~0ull};
  p.error = err;
  auto record = [&](unsigned long long key) {
    if (key < err[0]) err[0] = key;
  };
  const float* k = static_cast<const float*>(p.k);
  for (int64_t b = 0; b < p.b; ++b)
    for (int64_t c = 0; c < (p.blocks > 0 ? p.blocks : 1); ++c) {
      unsigned long long len_key;
      const int64_t nk = pool_len(p, b, &len_key);
      if (c == 0 && len_key != ~0ull) record(len_key);
      if (c >= p.blocks) continue;
      const int64_t j0 = c * p.block, j1 = j0 + p.block < nk ? j0 + p.block : nk;
      const float inv = j1 > j0 ? 1.f / float(j1 - j0) : 0.f;
      for (int64_t w = 0; w < p.hkv * p.d; ++w) {
        const int64_t g = w / p.d, d = w - g * p.d;
        float a = 0.f;
        for (int64_t j = j0; j < j1; ++j) {
          bool ok;
          int64_t entry = 0;
          const int64_t off = pool_key_offset(p, b, j, g, &ok, &entry);
          if (!ok) {
            record(sabotage == Sabotage::TableColumnLost ? pool_table_key(p, b, 0)
                                                         : pool_table_key(p, b, j / p.page_size));
            continue;
          }
          a += k[off + d * p.k_sd];
        }
        p.out[b * p.o_sb + c * p.o_sc + g * p.o_sh + d * p.o_sd] = a * inv;
      }
    }
  Emulated r;
  for (int x = 0; x < kDecErrorWords; ++x) r.rec[x] = err[x];
  if (err[0] != ~0ull) {
    pool_error_complete(p, err[0], r.rec);
    pool_sticky_words(p, r.rec, r.words);
  }
  return r;
}

// raise_decode_error's message for pool_keys' classes (decode_errors.cpp), from the words.
std::string message_of(const unsigned long long* w) {
  const unsigned long long cls = dec_error_class(w[0]);
  const int64_t index = dec_error_index(w[0]), value = int64_t(w[1]), nk = int64_t(w[2]);
  const int64_t hkv = int64_t(w[3]), max_pages = int64_t(w[4]), pages = int64_t(w[5]);
  const int64_t capacity = int64_t(w[6]), out_blocks = int64_t(w[7]), block = int64_t(w[8]);
  std::ostringstream m;
  if (cls == kDecErrLength) {
    m << "cache_len: cache_len[" << index << "] = " << value << " is outside 0.." << capacity;
    if (pages > 0)
      m << " (max_pages * page_size = " << max_pages << " * "
        << (max_pages > 0 ? capacity / max_pages : 0)
        << "; block_table has too few columns for this length)";
    else
      m << " (Ncap, the cache's second dimension)";
  } else if (cls == kDecErrBlocks) {
    m << "out: " << out_blocks << " blocks of " << block << " keys hold fewer than cache_len["
      << index << "] = " << value << " keys";
  } else if (cls == kDecErrTable) {
    const int64_t bg = index / max_pages, c = index - bg * max_pages, b = bg / hkv;
    m << "block_table: entry [" << b << ", " << c << "] = " << value
      << " is not a page index in [0, " << pages << ") (sequence " << b << " has cache_len "
      << nk << " and reads its page " << c << ")";
  } else {
    m << "class " << cls;
  }
  return m.str();
}

// One case: lengths `lens`, a table with bad entries at `bad` (b, c) when paged.
void run_case(const Case& cs, const std::vector<int64_t>& lens,
              const std::vector<std::pair<int64_t, int64_t>>& bad, std::mt19937& rng,
              const std::string& name) {
  const int64_t capacity = cs.paged ? cs.max_pages * cs.page_size : cs.ncap;
  std::normal_distribution<float> nd;
  Arr<float> k(cs.paged ? std::vector<int64_t>{cs.pages, cs.page_size, cs.hkv, cs.d}
                        : std::vector<int64_t>{cs.B, cs.ncap, cs.hkv, cs.d},
               kF32);
  for (float& x : k.v) x = nd(rng);
  Arr<int32_t> table({cs.paged ? cs.B : 0, cs.paged ? cs.max_pages : 0}, kI32);
  if (cs.paged) {
    for (int32_t& e : table.v) e = int32_t(rng() % uint32_t(cs.pages));
    for (auto [b, c] : bad) table.v[size_t(b * cs.max_pages + c)] = (rng() % 2) ? -1 - int32_t(rng() % 3) : int32_t(cs.pages + rng() % 3);
  }
  Arr<int64_t> cl({cs.B}, kI64);
  for (int64_t b = 0; b < cs.B; ++b) cl.v[size_t(b)] = lens[size_t(b)];

  // The CPU: its means, or its error.
  Arr<float> cpu_out({cs.B, cs.out_blocks, cs.hkv, cs.d}, kF32);
  std::string cpu_error;
  try {
    pool_keys(k.t, cl.t, cs.block, cs.paged ? &table.t : nullptr, cpu_out.t);
  } catch (const ValueError& e) {
    cpu_error = e.what();
  }

  // The kernels, with device lengths in each form the caller may give them.
  for (int form = 0; form < 3; ++form) {
    const int64_t stride = form == 2 ? 3 : 1;
    Arr<int32_t> l32({cs.B}, kI32, {stride});
    Arr<int64_t> l64({cs.B}, kI64, {stride});
    for (int64_t b = 0; b < cs.B; ++b) {
      l32.v[size_t(b * stride)] = int32_t(lens[size_t(b)]);
      l64.v[size_t(b * stride)] = lens[size_t(b)];
    }
    Arr<float> out({cs.B, cs.out_blocks, cs.hkv, cs.d}, kF32);
    for (float& x : out.v) x = NAN;
    PoolParams p;
    p.k = k.v.data();
    p.k_sp = k.strides[0], p.k_sn = k.strides[1], p.k_sh = k.strides[2], p.k_sd = k.strides[3];
    p.paged = cs.paged;
    if (cs.paged) {
      p.page_size = cs.page_size;
      p.pages = cs.pages;
      p.table = table.v.data();
      p.table_sb = cs.max_pages;
      p.table_sc = 1;
      p.max_pages = cs.max_pages;
    }
    if (form == 0) {
      p.lens = l32.v.data();
    } else {
      p.lens = l64.v.data();
      p.lens64 = true;
    }
    p.lens_s = stride;
    p.capacity = capacity;
    p.out = out.v.data();
    p.o_sb = out.strides[0], p.o_sc = out.strides[1], p.o_sh = out.strides[2], p.o_sd = out.strides[3];
    p.b = cs.B, p.blocks = cs.out_blocks, p.hkv = cs.hkv, p.d = cs.d, p.block = cs.block;
    const Emulated e = emulate(p, Sabotage::None);
    const std::string what = name + " (lengths form " + std::to_string(form) + ")";
    if (cpu_error.empty()) {
      check(e.rec[0] == ~0ull, what + ": an error recorded where the CPU has none: " +
                                   (e.rec[0] == ~0ull ? "" : message_of(e.words)));
      check(out.v.empty() ||
                std::memcmp(out.v.data(), cpu_out.v.data(), out.v.size() * sizeof(float)) == 0,
            what + ": means differ from the CPU's");
      // The host lengths' path (the planner's int64 copy, no checks) writes the same bits.
      PoolParams h = p;
      h.lens = nullptr;
      h.cache_len = cl.v.data();
      Arr<float> out_h({cs.B, cs.out_blocks, cs.hkv, cs.d}, kF32);
      h.out = out_h.v.data();
      const Emulated eh = emulate(h, Sabotage::None);
      check(eh.rec[0] == ~0ull, what + ": host lengths: an error recorded");
      check(out.v.empty() ||
                std::memcmp(out_h.v.data(), out.v.data(), out.v.size() * sizeof(float)) == 0,
            what + ": host and device lengths differ");
    } else {
      check(e.rec[0] != ~0ull, what + ": no error recorded; the CPU raises " + cpu_error);
      if (e.rec[0] != ~0ull)
        check(message_of(e.words) == cpu_error,
              what + ": the device reports \"" + message_of(e.words) + "\", the CPU \"" + cpu_error + "\"");
    }
    // Sabotage: a table error recorded at the wrong column must be caught (when one exists).
    if (form == 1 && cs.paged && !bad.empty() && cpu_error.find("block_table") == 0) {
      const Emulated s = emulate(p, Sabotage::TableColumnLost);
      bool caught = s.rec[0] == ~0ull || message_of(s.words) != cpu_error;
      const bool col0 = cpu_error.find(", 0] =") != std::string::npos;
      check(caught || col0, what + ": the sabotaged emulation was not caught");
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  int cases = 0;
  for (int it = 0; it < 400; ++it) {
    Case cs;
    cs.B = 1 + int64_t(rng() % 4);
    cs.hkv = 1 + int64_t(rng() % 3);
    cs.d = 1 + int64_t(rng() % 24);
    cs.block = 1 + int64_t(rng() % 20);
    cs.paged = rng() % 2;
    cs.ncap = int64_t(rng() % 90);
    cs.page_size = 1 + int64_t(rng() % 16);
    cs.pages = 1 + int64_t(rng() % 12);
    cs.max_pages = 1 + int64_t(rng() % 7);  // (no columns: the record loses the page size)
    const int64_t capacity = cs.paged ? cs.max_pages * cs.page_size : cs.ncap;
    const int64_t need = capacity == 0 ? 0 : 1 + (capacity - 1) / cs.block;
    cs.out_blocks = need;
    const int kind = int(rng() % 6);  // 0-2 good, 3 bad length, 4 out too short, 5 bad entries
    std::vector<int64_t> lens(size_t(cs.B));
    for (int64_t& n : lens) n = capacity == 0 ? 0 : int64_t(rng() % uint32_t(capacity + 1));
    std::vector<std::pair<int64_t, int64_t>> bad;
    std::string name = "case " + std::to_string(it);
    if (kind == 3) {
      const int64_t b = int64_t(rng() % uint32_t(cs.B));
      lens[size_t(b)] = (rng() % 2) ? capacity + 1 + int64_t(rng() % 5) : -1 - int64_t(rng() % 5);
      name += " (bad length)";
    } else if (kind == 4) {
      if (need == 0) continue;
      cs.out_blocks = need - 1;
      lens[size_t(rng() % uint32_t(cs.B))] = capacity;
      name += " (out too short)";
    } else if (kind == 5) {
      if (!cs.paged || capacity == 0) continue;
      for (int x = 0; x < 3; ++x) {
        const int64_t b = int64_t(rng() % uint32_t(cs.B)), c = int64_t(rng() % uint32_t(cs.max_pages));
        bad.push_back({b, c});
        lens[size_t(b)] = std::max<int64_t>(lens[size_t(b)], (c + 1) * cs.page_size - int64_t(rng() % uint32_t(cs.page_size)));
      }
      name += " (bad entries)";
    }
    run_case(cs, lens, bad, rng, name);
    ++cases;
  }
  std::printf("pool_keys emulation: %d cases, %d failure(s)\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
