// libFuzzer target over the C++ core's boundaries: pattern trees built from arbitrary
// constructor arguments (then checked, compiled, laid out and masked), and DLPack tensors with
// arbitrary metadata (ndim, shape, strides, dtype, device, byte offset, data pointer) and
// arbitrary integer payloads (cu_seqlens, cache_len, block_table) handed to every entry point.
//
// The rule checked: every call either throws one of spattn's errors (ValueError, TypeError,
// RuntimeError) or succeeds; anything else (another exception, a crash, a sanitizer report)
// is a finding. Unmutated float32 forward problems are also compared with a float64 reference.
//
// The harness keeps the DLPack contract that a producer describes real memory: a tensor whose
// metadata is valid (so spattn may read it) must address only bytes inside the arena, else the
// entry points are not called with it (view_of still is: it never reads data). Tensors with
// invalid metadata (negative sizes, null shape, too many dimensions, ...) are passed as they
// are: spattn must refuse them without reading. Work is capped so that no input can turn into
// a legitimately huge computation (a broadcast view with 2^40 rows, say).
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/tensor.hpp"  // private: TensorView, view_of (the fuzz target tests the internals)
#include "spattn/spattn.hpp"

namespace {

using spattn::Pattern;

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_core finding: %s\n", what);
  std::abort();
}

// Runs f; spattn's errors are expected answers, anything else is a finding.
template <class F>
bool answered(F&& f) {
  try {
    f();
    return true;
  } catch (const spattn::ValueError&) {
  } catch (const spattn::TypeError&) {
  } catch (const spattn::RuntimeError&) {
  } catch (const std::bad_alloc&) {  // a request that cannot fit: allowed, the process goes on
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    finding("an exception that is not one of spattn's errors");
  }
  return false;
}

int64_t edge_int(FuzzedDataProvider& f, int64_t lo, int64_t hi) {
  switch (f.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return -1;
    case 1: return 0;
    case 2: return INT64_MAX;
    case 3: return INT64_MIN;
    case 4: return int64_t(1) << f.ConsumeIntegralInRange<int>(0, 62);
    case 5: return f.ConsumeIntegral<int64_t>();
    default: return f.ConsumeIntegralInRange<int64_t>(lo, hi);
  }
}

// ------------------------------------------------------------------------------------------
// Patterns

Pattern make_pattern(FuzzedDataProvider& f, int depth, int64_t hq_hint) {
  auto arg = [&](int64_t lo, int64_t hi) { return edge_int(f, lo, hi); };
  const int kind = f.ConsumeIntegralInRange<int>(0, depth > 2 ? 9 : 12);
  switch (kind) {
    case 0: return Pattern::dense();
    case 1: return Pattern::causal();
    case 2: return Pattern::sliding_window(arg(-3, 40), arg(-3, 40));
    case 3: return Pattern::dilated(arg(0, 10), arg(0, 10), arg(1, 5));
    case 4: return Pattern::strided(arg(1, 9), f.ConsumeBool());
    case 5: return Pattern::fixed(arg(1, 12), arg(1, 12), f.ConsumeBool());
    case 6: {
      std::vector<int64_t> pos(f.ConsumeIntegralInRange<size_t>(0, 4));
      for (auto& p : pos) p = arg(0, 50);
      return Pattern::global(pos);
    }
    case 7: return Pattern::sink(arg(0, 40));
    case 8: return Pattern::bigbird(arg(1, 16), arg(0, 5), arg(0, 3), arg(0, 3),
                                    f.ConsumeIntegral<uint64_t>());
    case 9: {
      spattn::BlockMask m;
      m.heads = f.ConsumeBool() ? 1 : hq_hint;
      m.nbq = f.ConsumeIntegralInRange<int64_t>(0, 12);
      m.nbk = f.ConsumeIntegralInRange<int64_t>(0, 12);
      m.bq = arg(1, 16);
      m.bk = arg(1, 16);
      size_t want = size_t(m.heads * m.nbq * m.nbk);
      if (f.ConsumeIntegralInRange<int>(0, 15) == 0) want += f.ConsumeIntegralInRange<size_t>(0, 3);
      m.bits.resize(want);
      for (auto& b : m.bits) b = f.ConsumeBool();
      return Pattern::block_sparse(std::move(m));
    }
    case 10:
    case 11: {
      std::vector<Pattern> parts(f.ConsumeIntegralInRange<size_t>(0, 3));
      for (auto& p : parts) p = make_pattern(f, depth + 1, hq_hint);
      return kind == 10 ? Pattern::union_of(parts) : Pattern::intersection_of(parts);
    }
    default: {
      std::vector<Pattern> parts(size_t(f.ConsumeIntegralInRange<int64_t>(0, 4)));
      for (auto& p : parts) p = make_pattern(f, depth + 1, 1);
      if (f.ConsumeIntegralInRange<int>(0, 3) == 0)
        return Pattern::topk_blocks(arg(0, 4), arg(1, 16), arg(1, 16), f.ConsumeBool(),
                                    parts.empty() ? Pattern() : parts[0]);
      return Pattern::per_head(parts);
    }
  }
}

// Pattern invariants for small problems: the layout visits exactly the blocks the mask keeps
// pairs in, full blocks are full, partial blocks are not (periodic leaves may over-list partial
// blocks only past their range budget, which these sizes never reach).
void check_pattern(const Pattern& p, int64_t nq, int64_t nk, int64_t heads, int64_t bq,
                   int64_t bk) {
  const std::vector<uint8_t> m = p.mask(nq, nk, heads);
  if (int64_t(m.size()) != heads * nq * nk) finding("mask size");
  const spattn::BlockLayout l = spattn::compile_layout(p, nq, nk, bq, bk, heads);
  if (l.nqb != (nq + bq - 1) / bq || l.nkb != (nk + bk - 1) / bk) finding("layout block counts");
  if (l.heads != 1 && l.heads != heads) finding("layout heads");
  std::vector<int8_t> kind(size_t(l.nkb));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t a = 0; a < l.nqb; ++a) {
      std::fill(kind.begin(), kind.end(), 0);
      const int64_t r = l.row(h, a);
      auto mark = [&](const std::vector<int64_t>& ptr, const std::vector<int32_t>& lo,
                      const std::vector<int32_t>& hi, int8_t k) {
        for (int64_t t = ptr[size_t(r)]; t < ptr[size_t(r) + 1]; ++t) {
          if (lo[size_t(t)] < 0 || hi[size_t(t)] > l.nkb || lo[size_t(t)] >= hi[size_t(t)])
            finding("layout range out of bounds");
          for (int32_t c = lo[size_t(t)]; c < hi[size_t(t)]; ++c) {
            if (kind[size_t(c)] != 0) finding("a block listed twice");
            kind[size_t(c)] = k;
          }
        }
      };
      mark(l.full_ptr, l.full_lo, l.full_hi, 1);
      mark(l.part_ptr, l.part_lo, l.part_hi, 2);
      for (int64_t c = 0; c < l.nkb; ++c) {
        int64_t kept = 0, size = 0;
        for (int64_t i = a * bq; i < std::min(nq, (a + 1) * bq); ++i)
          for (int64_t j = c * bk; j < std::min(nk, (c + 1) * bk); ++j) {
            kept += m[size_t((h * nq + i) * nk + j)];
            ++size;
          }
        const int8_t k = kind[size_t(c)];
        if (kept == 0 && k != 0) finding("layout visits a block the mask keeps nothing in");
        if (kept > 0 && k == 0) finding("layout skips a block the mask keeps pairs in");
        if (k == 1 && kept != size) finding("a full block is not full");
        if (k == 2 && kept == size) finding("a partial block is full");
      }
    }
}

void fuzz_pattern(FuzzedDataProvider& f) {
  const int64_t heads = f.ConsumeIntegralInRange<int64_t>(1, 4);
  Pattern p;
  if (!answered([&] { p = make_pattern(f, 0, heads); })) return;
  const int64_t nq = f.ConsumeIntegralInRange<int64_t>(0, 48);
  const int64_t nk = f.ConsumeIntegralInRange<int64_t>(0, 48);
  const int64_t bq = f.ConsumeIntegralInRange<int64_t>(1, 20);
  const int64_t bk = f.ConsumeIntegralInRange<int64_t>(1, 20);
  (void)p.describe();
  if (f.ConsumeBool()) {  // arbitrary problem sizes: refused or compiled, never a crash
    const int64_t hnq = edge_int(f, 0, 1 << 20), hnk = edge_int(f, 0, 1 << 20);
    answered([&] { p.check(hnq, hnk, heads); });
  }
  if (!answered([&] { p.check(nq, nk, heads); })) return;
  if (p.data_dependent()) return;
  answered([&] { check_pattern(p, nq, nk, heads, bq, bk); });
  answered([&] { (void)spattn::kept_pairs(p, nq, nk, heads); });
}

// ------------------------------------------------------------------------------------------
// Tensors

constexpr size_t kArena = size_t(1) << 20;
constexpr int kDims = 16;  // room beyond kMaxDims, so that a lying ndim reads owned memory

struct Tensor {
  int64_t shape[kDims] = {};
  int64_t strides[kDims] = {};
  DLTensor dl{};
  bool null_shape = false, null_strides = false;

  DLTensor& get() {
    dl.shape = null_shape ? nullptr : shape;
    dl.strides = null_strides ? nullptr : strides;
    return dl;
  }
};

struct Arena {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(kArena);
  size_t used = 0;
  // A compact tensor (row-major, or with its two middle dimensions swapped, a transposed view),
  // 64-byte aligned.
  uint8_t* take(Tensor& t, std::initializer_list<int64_t> shape, DLDataType dt, bool swap12) {
    t.dl.ndim = int32_t(shape.size());
    t.dl.dtype = dt;
    t.dl.device = DLDevice{kDLCPU, 0};
    t.dl.byte_offset = 0;
    int i = 0;
    for (int64_t n : shape) t.shape[i++] = n;
    const int nd = t.dl.ndim;
    int order[kDims];
    for (int d = 0; d < nd; ++d) order[d] = d;
    if (swap12 && nd == 4) std::swap(order[1], order[2]);
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; --d) {
      t.strides[order[d]] = s;
      s *= std::max<int64_t>(1, t.shape[order[d]]);
    }
    const size_t need = size_t(s) * std::max(1, dt.bits / 8);
    used = (used + 63) / 64 * 64;
    if (used + need > kArena) return nullptr;
    uint8_t* p = bytes.data() + used;
    used += need;
    t.dl.data = p;
    return p;
  }
};

// May spattn read this tensor? Then it must lie in the arena (the producer's promise); the
// harness only calls entry points with tensors that keep it. Invalid metadata is kept too: it
// must be refused before any read.
bool honest(const Tensor& t, const Arena& a, int64_t* numel_out) {
  const DLTensor& d = t.dl;
  *numel_out = 0;
  if (d.ndim < 0 || d.ndim > spattn::kMaxDims) return true;
  if (d.ndim > 0 && t.null_shape) return true;
  __int128 numel = 1;
  for (int i = 0; i < d.ndim; ++i) {
    if (t.shape[i] < 0) return true;
    numel *= t.shape[i];
    if (numel > (__int128(1) << 62)) {  // more than any harness buffer: work is capped below
      *numel_out = INT64_MAX;
      return true;
    }
  }
  if (numel == 0) return true;
  if (d.data == nullptr) return true;
  *numel_out = int64_t(numel);
  const int64_t es = std::max(1, (int(d.dtype.bits) * std::max(1, int(d.dtype.lanes)) + 7) / 8);
  __int128 lo = 0, hi = 0;
  int64_t compact = 1;
  for (int i = d.ndim - 1; i >= 0; --i) {
    const __int128 s = t.null_strides ? compact : t.strides[i];
    compact = int64_t(std::min<__int128>(__int128(compact) * std::max<int64_t>(1, t.shape[i]),
                                         INT64_MAX / 4));
    const __int128 span = s * (t.shape[i] - 1);
    (span < 0 ? lo : hi) += span;
  }
  const __int128 base = __int128(reinterpret_cast<uintptr_t>(d.data)) + d.byte_offset;
  const __int128 begin = base + lo * es, end = base + (hi + 1) * es;
  const __int128 a0 = reinterpret_cast<uintptr_t>(a.bytes.data());
  return begin >= a0 && end <= a0 + __int128(kArena);
}

// One field of one tensor changed to an arbitrary or edge value.
void mutate(FuzzedDataProvider& f, Tensor& t, Arena& a) {
  const int nd = std::max(1, std::min(int(t.dl.ndim), kDims));
  switch (f.ConsumeIntegralInRange<int>(0, 11)) {
    case 0: t.shape[f.ConsumeIntegralInRange<int>(0, nd - 1)] = edge_int(f, -2, 70); break;
    case 1: t.strides[f.ConsumeIntegralInRange<int>(0, nd - 1)] = edge_int(f, -70, 70); break;
    case 2: t.null_strides = true; break;
    case 3: t.dl.ndim = f.ConsumeIntegralInRange<int32_t>(-2, 12); break;
    case 4: t.null_shape = true; break;
    case 5:
      t.dl.dtype = DLDataType{f.ConsumeIntegral<uint8_t>(), f.ConsumeIntegral<uint8_t>(),
                              f.ConsumeIntegralInRange<uint16_t>(0, 4)};
      break;
    case 6: {
      t.dl.device = DLDevice{static_cast<DLDeviceType>(f.ConsumeIntegralInRange<int>(0, 18)),
                             f.ConsumeIntegralInRange<int32_t>(-1, 3)};
      if (f.ConsumeBool()) {  // any int a producer may write, in or out of the enum's range
        const int32_t raw = f.ConsumeIntegral<int32_t>();
        std::memcpy(&t.dl.device.device_type, &raw, sizeof(raw));
      }
      break;
    }
    case 7: t.dl.byte_offset = uint64_t(edge_int(f, 0, 256)); break;
    case 8: t.dl.data = nullptr; break;
    case 9:  // misaligned (integer arithmetic: the pointer may be null)
      t.dl.data = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(t.dl.data) +
                                          uintptr_t(f.ConsumeIntegralInRange<int>(1, 3)));
      break;
    case 10:  // another tensor's memory, or the arena's start: outputs overlapping inputs
      t.dl.data = a.bytes.data() + 64 * f.ConsumeIntegralInRange<size_t>(0, 64);
      break;
    default: {  // raw bytes over the data: NaN, Inf, wild integers
      const uintptr_t p = reinterpret_cast<uintptr_t>(t.dl.data);
      const uintptr_t a0 = reinterpret_cast<uintptr_t>(a.bytes.data());
      if (p < a0 || p >= a0 + kArena) break;
      const size_t room = size_t(a0 + kArena - p);
      const std::vector<uint8_t> raw = f.ConsumeBytes<uint8_t>(std::min<size_t>(room, 64));
      if (!raw.empty())
        std::memcpy(a.bytes.data() + (p - a0) +
                        std::min(room - raw.size(), f.ConsumeIntegralInRange<size_t>(0, 512)),
                    raw.data(), raw.size());
      break;
    }
  }
}

float half_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    uint32_t u = uint32_t(h) << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  }
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 31, man = h & 1023;
  float v = exp == 0 ? std::ldexp(float(man), -24)
            : exp == 31 ? (man ? NAN : INFINITY)
                        : std::ldexp(float(man | 1024), int(exp) - 25);
  return sign ? -v : v;
}

void fill_floats(FuzzedDataProvider& f, Tensor& t, DLDataType dt) {
  int64_t n = 1;
  for (int i = 0; i < t.dl.ndim; ++i) n *= t.shape[i];
  uint32_t seed = f.ConsumeIntegral<uint32_t>() | 1;
  for (int64_t e = 0; e < n; ++e) {
    seed = seed * 1664525u + 1013904223u;
    const float x = float(int32_t(seed >> 8) % 4096) / 1024.f;  // [-4, 4)
    if (dt.bits == 32) {
      std::memcpy(static_cast<float*>(t.dl.data) + e, &x, 4);
    } else {
      uint32_t u;
      std::memcpy(&u, &x, 4);
      uint16_t h;
      if (dt.code == kDLBfloat) {
        h = uint16_t(u >> 16);
      } else {  // exact: x is a multiple of 2^-10 below 4
        const float ax = std::fabs(x);
        int ex = 0;
        const float mn = std::frexp(ax, &ex);  // ax = mn * 2^ex, mn in [0.5, 1)
        if (ax == 0.f) h = 0;
        else if (ex - 1 + 15 <= 0) h = uint16_t(std::ldexp(ax, 24));
        else h = uint16_t(((ex - 1 + 15) << 10) | (uint32_t(std::ldexp(mn, 11)) & 1023));
        if (x < 0) h |= 0x8000;
      }
      std::memcpy(static_cast<uint16_t*>(t.dl.data) + e, &h, 2);
    }
  }
}

float read_float(const Tensor& t, int64_t off, DLDataType dt) {
  if (dt.bits == 32) return static_cast<const float*>(t.dl.data)[off];
  return half_to_float(static_cast<const uint16_t*>(t.dl.data)[off], dt.code == kDLBfloat);
}

// float64 attention for q [B, Nq, Hq, D] etc. (strided), against the pattern's mask.
void check_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Pattern& p, DLDataType dt, double scale) {
  const int64_t B = q.shape[0], nq = q.shape[1], hq = q.shape[2], d = q.shape[3];
  const int64_t nk = k.shape[1], hkv = k.shape[2], dv = v.shape[3];
  if (p.data_dependent()) return;
  const std::vector<uint8_t> m = p.mask(nq, nk, hq);
  auto at = [](const Tensor& t, int64_t a, int64_t b, int64_t c, int64_t e) {
    return a * t.strides[0] + b * t.strides[1] + c * t.strides[2] + e * t.strides[3];
  };
  const double sc = scale == 0 ? 1.0 / std::sqrt(double(d)) : scale;
  std::vector<double> s(static_cast<size_t>(nk)), o(static_cast<size_t>(dv));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / (hq / hkv);
      for (int64_t i = 0; i < nq; ++i) {
        double mx = -INFINITY, cond = 0, vmax = 1;  // cond: the largest sum of |q_e k_e sc|
        for (int64_t j = 0; j < nk; ++j) {
          if (!m[size_t((h * nq + i) * nk + j)]) { s[size_t(j)] = -INFINITY; continue; }
          double acc = 0, mag = 0;
          for (int64_t e = 0; e < d; ++e) {
            const double t = double(read_float(q, at(q, b, i, h, e), dt)) * read_float(k, at(k, b, j, g, e), dt);
            acc += t;
            mag += std::fabs(t);
          }
          s[size_t(j)] = acc * sc;
          cond = std::max(cond, mag * std::fabs(sc));
          for (int64_t e = 0; e < dv; ++e) vmax = std::max(vmax, double(std::fabs(read_float(v, at(v, b, j, g, e), dt))));
          mx = std::max(mx, s[size_t(j)]);
        }
        std::fill(o.begin(), o.end(), 0.0);
        double l = 0;
        if (mx > -INFINITY)
          for (int64_t j = 0; j < nk; ++j) {
            if (s[size_t(j)] == -INFINITY) continue;
            const double w = std::exp(s[size_t(j)] - mx);
            l += w;
            for (int64_t e = 0; e < dv; ++e) o[size_t(e)] += w * read_float(v, at(v, b, j, g, e), dt);
          }
        for (int64_t e = 0; e < dv; ++e) {
          const double want = l > 0 ? o[size_t(e)] / l : 0.0;
          const double got = read_float(out, at(out, b, i, h, e), dt);
          // float32 scores carry a rounding error up to D * eps * sum |q_e k_e sc| (the dot
          // product's bound), which the softmax turns into a relative error of the weights.
          const double tol = 1e-5 + 2.0 * double(d) * 6e-8 * cond * vmax;
          if (!(std::fabs(got - want) <= tol)) {
            std::fprintf(stderr, "out[%lld,%lld,%lld,%lld] = %g, reference %g (%s)\n",
                         (long long)b, (long long)i, (long long)h, (long long)e, got, want,
                         p.describe().c_str());
            finding("forward differs from the float64 reference");
          }
        }
      }
    }
}

void fuzz_entry_points(FuzzedDataProvider& f) {
  static Arena* arena_ptr = new Arena();  // reused across inputs: no 1 MB allocation per run
  Arena& a = *arena_ptr;
  a.used = 0;
  const int64_t B = f.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t nq = f.ConsumeIntegralInRange<int64_t>(0, 24);
  const int64_t nk = f.ConsumeIntegralInRange<int64_t>(0, 40);
  const int64_t hkv = f.ConsumeIntegralInRange<int64_t>(1, 2);
  const int64_t hq = hkv * f.ConsumeIntegralInRange<int64_t>(1, 3);
  static const int64_t kDimsChoice[] = {1, 3, 8, 16, 33, 64};
  const int64_t d = kDimsChoice[f.ConsumeIntegralInRange<int>(0, 5)];
  const int64_t dv = kDimsChoice[f.ConsumeIntegralInRange<int>(0, 5)];
  static const DLDataType kTypes[] = {{kDLFloat, 32, 1}, {kDLFloat, 16, 1}, {kDLBfloat, 16, 1}};
  const DLDataType dt = kTypes[f.ConsumeIntegralInRange<int>(0, 2)];
  const DLDataType f32{kDLFloat, 32, 1}, i32{kDLInt, 32, 1};
  const bool swap = f.ConsumeBool();
  Pattern pattern;
  if (!answered([&] { pattern = make_pattern(f, 1, hq); })) pattern = Pattern::causal();
  spattn::Options opt;
  opt.scale = f.ConsumeBool() ? 0.0 : double(f.ConsumeIntegralInRange<int>(-40, 40)) / 16.0;
  opt.num_threads = f.ConsumeIntegralInRange<int>(-1, 3);

  const int call = f.ConsumeIntegralInRange<int>(0, 5);
  Tensor t[12];
  int n = 0;
  bool ok = true;
  auto take = [&](std::initializer_list<int64_t> shape, DLDataType type) {
    ok = ok && a.take(t[n], shape, type, swap) != nullptr;
    return n++;
  };
  const int64_t T = B * nq, Tk = B * nk;  // varlen totals
  const int64_t page = f.ConsumeIntegralInRange<int64_t>(1, 8);
  const int64_t pages = B * ((nk + page - 1) / page) + 1;
  switch (call) {
    case 0:  // forward: q k v out lse
    case 1:  // backward: + dout dq dk dv
      take({B, nq, hq, d}, dt), take({B, nk, hkv, d}, dt), take({B, nk, hkv, dv}, dt);
      take({B, nq, hq, dv}, dt), take({B, hq, nq}, f32);
      if (call == 1) take({B, nq, hq, dv}, dt), take({B, nq, hq, d}, dt), take({B, nk, hkv, d}, dt), take({B, nk, hkv, dv}, dt);
      break;
    case 2:  // varlen forward: q k v out lse cu_q cu_k
      take({T, hq, d}, dt), take({Tk, hkv, d}, dt), take({Tk, hkv, dv}, dt);
      take({T, hq, dv}, dt), take({hq, T}, f32), take({B + 1}, i32), take({B + 1}, i32);
      break;
    case 3:  // decode, contiguous: q k v cache_len out lse
    case 4:  // decode, paged: + block_table
      take({B, std::min<int64_t>(nq, 8), hq, d}, dt);
      if (call == 3) take({B, nk, hkv, d}, dt), take({B, nk, hkv, dv}, dt);
      else take({pages, page, hkv, d}, dt), take({pages, page, hkv, dv}, dt);
      take({B}, i32), take({B, std::min<int64_t>(nq, 8), hq, dv}, dt), take({B, hq, std::min<int64_t>(nq, 8)}, f32);
      if (call == 4) take({B, (nk + page - 1) / page + 1}, i32);
      break;
    default:  // merge of two parts: o1 o2 l1 l2 out lse
      take({B, nq, hq, dv}, dt), take({B, nq, hq, dv}, dt), take({B, hq, nq}, f32), take({B, hq, nq}, f32);
      take({B, nq, hq, dv}, dt), take({B, hq, nq}, f32);
      break;
  }
  if (!ok) return;
  for (int i = 0; i < n; ++i) {
    if (t[i].dl.dtype.code == kDLInt) continue;
    fill_floats(f, t[i], t[i].dl.dtype);
  }
  // Honest integer payloads: offsets of equal lengths, full caches, a shuffled page table.
  if (call == 2)
    for (int64_t b = 0; b <= B; ++b) {
      static_cast<int32_t*>(t[5].dl.data)[b] = int32_t(b * nq);
      static_cast<int32_t*>(t[6].dl.data)[b] = int32_t(b * nk);
    }
  if (call == 3 || call == 4)
    for (int64_t b = 0; b < B; ++b) static_cast<int32_t*>(t[3].dl.data)[b] = int32_t(nk);
  if (call == 4) {
    const int64_t cols = t[6].shape[1];
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < cols; ++c)
        static_cast<int32_t*>(t[6].dl.data)[b * cols + c] = int32_t((b * (cols - 1) + c) % pages);
  }
  // Mutations: the honest problem first, then up to 4 changed fields.
  const int mutations = f.ConsumeIntegralInRange<int>(0, 4);
  for (int i = 0; i < mutations; ++i) mutate(f, t[f.ConsumeIntegralInRange<int>(0, n - 1)], a);
  int64_t numel[12];
  for (int i = 0; i < n; ++i) {
    answered([&] { (void)spattn::view_of(t[i].get(), "x"); });
    if (!honest(t[i], a, &numel[i])) return;
    if (numel[i] > (int64_t(1) << 16)) return;  // a broadcast giant: legitimately slow
  }
  // Work cap: rows of q times rows of k (per dimension as given, mutated or not).
  auto rows = [&](const Tensor& x, int dim) {
    return x.dl.ndim > dim && !x.null_shape ? double(std::max<int64_t>(1, x.shape[dim])) : 1.0;
  };
  if (call <= 2 && rows(t[0], 0) * rows(t[0], 1) * rows(t[1], 0) * rows(t[1], 1) > (1 << 16)) return;
  if (call >= 3 && call <= 4 && rows(t[0], 0) * rows(t[0], 1) * rows(t[1], 0) * rows(t[1], 1) > (1 << 18)) return;

  bool done = false;
  switch (call) {
    case 0:
      done = answered([&] {
        spattn::attention_forward(t[0].get(), t[1].get(), t[2].get(), pattern, t[3].get(),
                                  f.ConsumeBool() ? &t[4].get() : nullptr, opt);
      });
      if (done && mutations == 0 && dt.bits == 32) check_forward(t[0], t[1], t[2], t[3], pattern, dt, opt.scale);
      break;
    case 1:
      answered([&] {
        spattn::attention_backward(t[5].get(), t[0].get(), t[1].get(), t[2].get(), t[3].get(),
                                   t[4].get(), pattern, t[6].get(), t[7].get(), t[8].get(), opt);
      });
      break;
    case 2:
      answered([&] {
        spattn::attention_forward_varlen(t[0].get(), t[1].get(), t[2].get(), t[5].get(),
                                         t[6].get(), pattern, t[3].get(), &t[4].get(), opt);
      });
      break;
    case 3:
    case 4:
      answered([&] {
        spattn::decode(t[0].get(), t[1].get(), t[2].get(), t[3].get(), pattern,
                       call == 4 ? &t[6].get() : nullptr, t[4].get(), &t[5].get(), opt);
      });
      break;
    default:
      answered([&] {
        spattn::merge_partials({t[0].get(), t[1].get()}, {t[2].get(), t[3].get()}, t[4].get(),
                               f.ConsumeBool() ? &t[5].get() : nullptr);
      });
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  if (f.ConsumeBool())
    fuzz_pattern(f);
  else
    fuzz_entry_points(f);
  return 0;
}
