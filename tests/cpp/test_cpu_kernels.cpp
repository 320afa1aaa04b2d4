// Standalone check of the CPU attention kernels (spattn::cpu::forward / backward) against a
// naive float64 reference. Prints one line per failure and "N passed, M failed"; exit code 1
// on any failure. Run it with SPATTN_SIMD=portable|avx2|avx512|avx512bf16 to check each kernel
// set (avx512bf16: the bfloat16 kernels on CPUs with AVX512_BF16).
//
//   g++ -O2 -std=c++17 -pthread -Icpp/include -Icpp/src tests/cpp/test_cpu_kernels.cpp
//     $(ls cpp/src/cpu/*.cpp | grep -v decode) cpp/src/pattern/*.cpp cpp/src/tensor.cpp
//     -o /tmp/test_cpu_kernels && /tmp/test_cpu_kernels
//
// The kernels need only the plain fields of TensorView and BlockLayout, so the test builds its
// own layouts (by counting kept pairs per block with keeps()) and links nothing else.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/attention_cpu.hpp"
#include "cpu/thread_pool.hpp"
#include "spattn/pattern.hpp"

using namespace spattn;
using Idx = std::array<int64_t, 4>;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
    if (std::getenv("VERBOSE")) std::printf("ok   %s\n", what.c_str());
  } else {
    ++g_failed;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// ---- float16 / bfloat16 conversions written independently of the kernels' ----

float half_to_float(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const float s = (h & 0x8000) ? -1.f : 1.f;
  if (e == 0) return s * std::ldexp(float(m), -24);
  if (e == 31) return m ? std::numeric_limits<float>::quiet_NaN() : s * INFINITY;
  return s * std::ldexp(float(m + 1024), e - 25);
}

// Round to nearest even by arithmetic on the value (exact in double).
uint16_t float_to_half(float f) {
  if (std::isnan(f)) return 0x7e00;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (a >= 65520.0) return sign | 0x7c00;  // 65520 is the midpoint to 2^16: ties to even = inf
  int e;
  std::frexp(a, &e);                            // a in [2^(e-1), 2^e)
  const int q = std::max(e - 11, -24);          // spacing of halves there
  const double n = std::nearbyint(std::ldexp(a, -q));  // ties to even
  const double r = std::ldexp(n, q);
  if (r < std::ldexp(1.0, -14)) return sign | uint16_t(std::ldexp(r, 24));  // subnormal
  int ee;
  const double mm = std::frexp(r, &ee);  // r = mm * 2^ee, mm in [0.5, 1)
  return sign | uint16_t(((ee - 1 + 15) << 10) | (uint16_t(std::ldexp(mm, 11)) & 1023));
}

float bf16_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t hi = u >> 16, lo = u & 0xffff;
  return uint16_t(lo > 0x8000 || (lo == 0x8000 && (hi & 1)) ? hi + 1 : hi);
}

const char* name_of(DType d) {
  return d == DType::Float32 ? "f32" : d == DType::Float16 ? "f16" : "bf16";
}

// ---- tensors with arbitrary strides ----

struct Tensor {
  std::vector<uint8_t> mem;
  TensorView tv;
  DType dt = DType::Float32;
  int es = 4;

  int64_t offset(const Idx& i) const {
    int64_t o = 0;
    for (int d = 0; d < tv.ndim; ++d) o += i[d] * tv.strides[d];
    return o;
  }
  double get(const Idx& i) const {
    const uint8_t* p = static_cast<const uint8_t*>(tv.data) + offset(i) * es;
    if (dt == DType::Float32) {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, p, 2);
    return dt == DType::Float16 ? half_to_float(h) : bf16_to_float(h);
  }
  uint16_t bits16(const Idx& i) const {
    uint16_t h;
    std::memcpy(&h, static_cast<const uint8_t*>(tv.data) + offset(i) * es, 2);
    return h;
  }
  void set(const Idx& i, double v) {
    uint8_t* p = static_cast<uint8_t*>(tv.data) + offset(i) * es;
    if (dt == DType::Float32) {
      const float f = float(v);
      std::memcpy(p, &f, 4);
      return;
    }
    const uint16_t h = dt == DType::Float16 ? float_to_half(float(v)) : float_to_bf16(float(v));
    std::memcpy(p, &h, 2);
  }
  void set_bits16(const Idx& i, uint16_t h) {
    std::memcpy(static_cast<uint8_t*>(tv.data) + offset(i) * es, &h, 2);
  }
  void poison() { std::memset(mem.data(), 0xff, mem.size()); }  // NaN in every dtype
};

// Memory layouts: 0 contiguous; 1 [B,H,N,D] memory seen as [B,N,H,D] (a transpose view);
// 2 padded rows; 3 last dimension stride 2 and the sequence dimension reversed.
Tensor make_tensor(DType dt, const std::vector<int64_t>& shape, int mode) {
  Tensor t;
  t.dt = dt;
  t.es = dt == DType::Float32 ? 4 : 2;
  const int nd = int(shape.size());
  t.tv.ndim = nd;
  t.tv.dtype.code = dt == DType::BFloat16 ? kDLBfloat : kDLFloat;
  t.tv.dtype.bits = dt == DType::Float32 ? 32 : 16;
  t.tv.dtype.lanes = 1;
  for (int d = 0; d < nd; ++d) t.tv.shape[d] = shape[d];
  std::vector<int> order(nd);  // outermost first
  for (int d = 0; d < nd; ++d) order[d] = d;
  if (mode == 1 && nd == 4) order = {0, 2, 1, 3};
  int64_t stride = mode == 3 ? 2 : 1;
  for (int k = nd - 1; k >= 0; --k) {
    const int d = order[k];
    t.tv.strides[d] = stride;
    stride *= std::max<int64_t>(shape[d], 1);
    if (mode == 2 && k == nd - 1) stride += 3;
  }
  int64_t base = 0;
  if (mode == 3 && nd >= 2) {
    base = (std::max<int64_t>(shape[1], 1) - 1) * t.tv.strides[1];
    t.tv.strides[1] = -t.tv.strides[1];
  }
  t.mem.assign(size_t(stride + base + 16) * t.es, 0);
  t.tv.data = t.mem.data() + base * t.es;
  return t;
}

// A block layout built by brute force from the element rule (test sizes are small).
BlockLayout build_layout(const Predicate& pred, int64_t nq, int64_t nk, int64_t heads,
                         bool all_partial) {
  const auto ts = cpu::cpu_tile_size();
  BlockLayout L;
  L.heads = heads;
  L.nq = nq;
  L.nk = nk;
  L.bq = ts.bq;
  L.bk = ts.bk;
  L.nqb = (nq + L.bq - 1) / L.bq;
  L.nkb = (nk + L.bk - 1) / L.bk;
  L.full_ptr.push_back(0);
  L.part_ptr.push_back(0);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t a = 0; a < L.nqb; ++a) {
      for (int64_t c = 0; c < L.nkb; ++c) {
        int64_t kept = 0, all = 0;
        for (int64_t i = a * L.bq; i < std::min(nq, (a + 1) * L.bq); ++i)
          for (int64_t j = c * L.bk; j < std::min(nk, (c + 1) * L.bk); ++j) {
            ++all;
            kept += keeps(pred, h, i, j);
          }
        // all_partial: every block listed as partial, those keeping nothing too (what an
        // over-budget periodic leaf lists, see layout.hpp); ranges of one block each.
        if (kept == 0 && !all_partial) continue;
        if (kept == all && !all_partial)
          { L.full_lo.push_back(int32_t(c)); L.full_hi.push_back(int32_t(c + 1)); }
        else
          { L.part_lo.push_back(int32_t(c)); L.part_hi.push_back(int32_t(c + 1)); }
      }
      L.full_ptr.push_back(int64_t(L.full_lo.size()));
      L.part_ptr.push_back(int64_t(L.part_lo.size()));
    }
  return L;
}

struct Case {
  std::string name;
  int64_t B, Nq, Nk, Hq, Hkv, D, Dv;
  int64_t left = kUnbounded, right = kUnbounded;  // window
  int64_t mask_bq = 0, mask_bk = 0;               // > 0: a random per-head block mask
  int mode_q = 0, mode_kv = 0, mode_o = 0;
  bool all_partial = false;
  double amp = 2.0;  // q and k uniform in [-amp, amp]: larger means peakier softmax rows
};

struct Ref {
  std::vector<double> out, lse, dq, dk, dv;
  std::vector<char> empty;  // per (b, h, i)
};

// Max |got - ref| / max |ref| over a tensor, NaN if any NaN was produced.
double rel_err(const Tensor& t, const std::vector<double>& ref, const std::vector<int64_t>& shape) {
  double e = 0, m = 0;
  bool nan = false;
  Idx i{};
  int64_t n = 0;
  for (i[0] = 0; i[0] < shape[0]; ++i[0])
    for (i[1] = 0; i[1] < shape[1]; ++i[1])
      for (i[2] = 0; i[2] < shape[2]; ++i[2])
        for (i[3] = 0; i[3] < shape[3]; ++i[3], ++n) {
          const double g = t.get(i);
          if (std::isnan(g)) nan = true;
          e = std::max(e, std::fabs(g - ref[n]));
          m = std::max(m, std::fabs(ref[n]));
        }
  if (nan) return std::numeric_limits<double>::quiet_NaN();
  return m > 0 ? e / m : e;
}

void run_case(const Case& cs, DType dt, std::mt19937& rng) {
  const std::string tag = cs.name + " [" + name_of(dt) + "]";
  const int64_t B = cs.B, Nq = cs.Nq, Nk = cs.Nk, Hq = cs.Hq, Hkv = cs.Hkv, D = cs.D, Dv = cs.Dv;
  const int64_t group = Hq / Hkv;
  const float scale = float(1.0 / std::sqrt(double(D)));

  Pattern pat;
  int64_t heads = 1;
  if (cs.mask_bq > 0) {
    BlockMask bm;
    bm.bq = cs.mask_bq;
    bm.bk = cs.mask_bk;
    bm.nbq = (Nq + cs.mask_bq - 1) / cs.mask_bq;
    bm.nbk = (Nk + cs.mask_bk - 1) / cs.mask_bk;
    bm.heads = Hq;
    bm.bits.resize(size_t(Hq * bm.nbq * bm.nbk));
    for (auto& b : bm.bits) b = (rng() % 3) != 0;
    if (!bm.bits.empty()) bm.bits[0] = 0;  // an empty block row for head 0 (maybe)
    pat = Pattern::block_sparse(std::move(bm));
    heads = Hq;
  }
  // A window is built as a one-node program by hand: the cases include empty windows
  // (left < -right), which Pattern::sliding_window refuses but the kernels must handle.
  PredNode wnode;
  wnode = pred_leaf(rules::window{cs.left, cs.right});
  const int32_t wbegin = 0, wend = 1;
  Predicate pred;
  if (cs.mask_bq > 0) {
    static std::vector<CompiledPattern> keep;  // keeps the compiled program alive
    keep.push_back(pat.compile(Nq, Nk, Hq));
    pred = keep.back().predicate();
  } else {
    pred.off = Nk - Nq;
    pred.nodes = &wnode;
    pred.head_begin = &wbegin;
    pred.head_end = &wend;
  }
  const BlockLayout layout = build_layout(pred, Nq, Nk, heads, cs.all_partial);

  std::uniform_real_distribution<double> U(-1.0, 1.0);
  Tensor q = make_tensor(dt, {B, Nq, Hq, D}, cs.mode_q);
  Tensor k = make_tensor(dt, {B, Nk, Hkv, D}, cs.mode_kv);
  Tensor v = make_tensor(dt, {B, Nk, Hkv, Dv}, cs.mode_kv);
  Tensor dout = make_tensor(dt, {B, Nq, Hq, Dv}, cs.mode_o);
  auto fill = [&](Tensor& t, double amp) {
    Idx i{};
    for (i[0] = 0; i[0] < t.tv.shape[0]; ++i[0])
      for (i[1] = 0; i[1] < t.tv.shape[1]; ++i[1])
        for (i[2] = 0; i[2] < t.tv.shape[2]; ++i[2])
          for (i[3] = 0; i[3] < t.tv.shape[3]; ++i[3]) t.set(i, amp * U(rng));
  };
  fill(q, cs.amp);
  fill(k, cs.amp);
  fill(v, 1.0);
  fill(dout, 1.0);

  // ---- reference (float64, from the dtype-rounded inputs) ----
  Ref r;
  r.out.assign(size_t(B * Nq * Hq * Dv), 0.0);
  r.lse.assign(size_t(B * Hq * Nq), -INFINITY);
  r.empty.assign(size_t(B * Hq * Nq), 1);
  r.dq.assign(size_t(B * Nq * Hq * D), 0.0);
  r.dk.assign(size_t(B * Nk * Hkv * D), 0.0);
  r.dv.assign(size_t(B * Nk * Hkv * Dv), 0.0);
  std::vector<double> s(static_cast<size_t>(Nk)), p(static_cast<size_t>(Nk));
  std::vector<double> qd(static_cast<size_t>(D)), dod(static_cast<size_t>(Dv));
  double smax = 0;  // largest |score|: float32 scores carry an error of ~|s| * 2^-24
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / group;
      for (int64_t i = 0; i < Nq; ++i) {
        for (int64_t d = 0; d < D; ++d) qd[d] = q.get({b, i, h, d});
        for (int64_t d = 0; d < Dv; ++d) dod[d] = dout.get({b, i, h, d});
        double mx = -INFINITY;
        std::vector<int64_t> js;
        for (int64_t j = 0; j < Nk; ++j) {
          if (!keeps(pred, h, i, j)) continue;
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += qd[d] * k.get({b, j, g, d});
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
          smax = std::max(smax, std::fabs(s[j]));
          js.push_back(j);
        }
        if (js.empty()) continue;
        r.empty[(b * Hq + h) * Nq + i] = 0;
        double sum = 0;
        for (int64_t j : js) sum += std::exp(s[j] - mx);
        const double lse = mx + std::log(sum);
        r.lse[(b * Hq + h) * Nq + i] = lse;
        double* o = &r.out[((b * Nq + i) * Hq + h) * Dv];
        for (int64_t j : js) {
          p[j] = std::exp(s[j] - lse);
          for (int64_t d = 0; d < Dv; ++d) o[d] += p[j] * v.get({b, j, g, d});
        }
        double delta = 0;
        for (int64_t d = 0; d < Dv; ++d) delta += dod[d] * o[d];
        double* dq = &r.dq[((b * Nq + i) * Hq + h) * D];
        for (int64_t j : js) {
          double dp = 0;
          for (int64_t d = 0; d < Dv; ++d) dp += dod[d] * v.get({b, j, g, d});
          const double ds = p[j] * (dp - delta);
          double* dk = &r.dk[((b * Nk + j) * Hkv + g) * D];
          double* dv = &r.dv[((b * Nk + j) * Hkv + g) * Dv];
          for (int64_t d = 0; d < D; ++d) {
            dq[d] += scale * ds * k.get({b, j, g, d});
            dk[d] += scale * ds * qd[d];
          }
          for (int64_t d = 0; d < Dv; ++d) dv[d] += p[j] * dod[d];
        }
      }
    }

  // ---- forward ----
  // Tolerances on max|err| / max|ref|: the dtype's output rounding plus float32 accumulation,
  // plus what float32 scores lose at their magnitude (any float32 attention does).
  const double score_err = 8 * smax * std::ldexp(1.0, -24);
  const double tol_f = (dt == DType::Float32 ? 1e-5 : dt == DType::Float16 ? 1.5e-3 : 1e-2) + score_err;
  const double tol_b = (dt == DType::Float32 ? 2e-5 : dt == DType::Float16 ? 4e-3 : 2.5e-2) + 2 * score_err;
  Tensor out = make_tensor(dt, {B, Nq, Hq, Dv}, cs.mode_o);
  // lse with padded strides when the outputs are strided
  Tensor lse = make_tensor(DType::Float32, {B, Hq, Nq}, cs.mode_o == 0 ? 0 : 2);
  out.poison();
  lse.poison();
  cpu::ForwardArgs fa;
  fa.q = q.tv;
  fa.k = k.tv;
  fa.v = v.tv;
  fa.out = out.tv;
  fa.lse = lse.tv;
  fa.dtype = dt;
  fa.scale = scale;
  fa.layout = &layout;
  fa.pred = pred;
  cpu::forward(fa);

  const double eo = rel_err(out, r.out, {B, Nq, Hq, Dv});
  check(eo <= tol_f, tag + " out rel err " + std::to_string(eo));
  double el = 0;
  bool lse_ok = true, empty_ok = true;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i) {
        float got;
        std::memcpy(&got, static_cast<uint8_t*>(lse.tv.data) +
                              (b * lse.tv.strides[0] + h * lse.tv.strides[1] + i * lse.tv.strides[2]) * 4,
                    4);
        const double want = r.lse[(b * Hq + h) * Nq + i];
        if (r.empty[(b * Hq + h) * Nq + i]) {
          if (!(std::isinf(got) && got < 0)) lse_ok = false;
          for (int64_t d = 0; d < Dv; ++d)
            if (out.get({b, i, h, d}) != 0.0) empty_ok = false;
        } else {
          if (std::isnan(got)) lse_ok = false;
          el = std::max(el, std::fabs(got - want) / std::max(1.0, std::fabs(want)));
        }
      }
  check(lse_ok && el <= 2e-5 * (dt == DType::Float32 ? 1 : 1), tag + " lse err " + std::to_string(el));
  check(empty_ok, tag + " empty rows give out = 0");

  // Without lse.
  Tensor out2 = make_tensor(dt, {B, Nq, Hq, Dv}, cs.mode_o);
  out2.poison();
  fa.out = out2.tv;
  fa.lse = TensorView{};
  fa.lse.data = nullptr;
  cpu::forward(fa);
  check(out2.mem == out.mem, tag + " forward without lse matches");

  // ---- backward (inputs: the kernel's own out and lse, as a user would pass) ----
  Tensor dq = make_tensor(dt, {B, Nq, Hq, D}, cs.mode_q);
  Tensor dk = make_tensor(dt, {B, Nk, Hkv, D}, cs.mode_kv);
  Tensor dv = make_tensor(dt, {B, Nk, Hkv, Dv}, cs.mode_kv);
  dq.poison();
  dk.poison();
  dv.poison();
  cpu::BackwardArgs ba;
  ba.dout = dout.tv;
  ba.q = q.tv;
  ba.k = k.tv;
  ba.v = v.tv;
  ba.out = out.tv;
  ba.lse = lse.tv;
  ba.dq = dq.tv;
  ba.dk = dk.tv;
  ba.dv = dv.tv;
  ba.dtype = dt;
  ba.scale = scale;
  ba.layout = &layout;
  ba.pred = pred;
  cpu::backward(ba);
  const double edq = rel_err(dq, r.dq, {B, Nq, Hq, D});
  const double edk = rel_err(dk, r.dk, {B, Nk, Hkv, D});
  const double edv = rel_err(dv, r.dv, {B, Nk, Hkv, Dv});
  check(edq <= tol_b, tag + " dq rel err " + std::to_string(edq));
  check(edk <= tol_b, tag + " dk rel err " + std::to_string(edk));
  check(edv <= tol_b, tag + " dv rel err " + std::to_string(edv));
  bool dq_empty_ok = true;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Nq; ++i)
        if (r.empty[(b * Hq + h) * Nq + i])
          for (int64_t d = 0; d < D; ++d)
            if (dq.get({b, i, h, d}) != 0.0) dq_empty_ok = false;
  check(dq_empty_ok, tag + " empty rows give dq = 0");

  // Deterministic: a second run gives identical bits.
  Tensor dk2 = make_tensor(dt, {B, Nk, Hkv, D}, cs.mode_kv);
  dk2.poison();
  ba.dk = dk2.tv;
  cpu::backward(ba);
  check(dk2.mem == dk.mem, tag + " backward is deterministic");
}

// Conversions, exactly: every float16 / bfloat16 value goes through the kernel unchanged
// (one key: out = v), and the midpoint of two values rounds to nearest even (two keys with
// equal scores: out = (v0 + v1) / 2, computed exactly in float32 before rounding).
void conversion_checks(DType dt, int mode_o) {
  const std::string tag = std::string("conversion [") + name_of(dt) + (mode_o ? ", strided]" : "]");
  const int64_t H = 256, Dv = 256;
  for (int64_t nk = 1; nk <= 2; ++nk) {
    const CompiledPattern compiled = Pattern::dense().compile(1, nk, H);
    const Predicate pred = compiled.predicate();
    const BlockLayout L = build_layout(pred, 1, nk, 1, false);
    Tensor q = make_tensor(dt, {1, 1, H, 1}, 0);
    Tensor k = make_tensor(dt, {1, nk, H, 1}, 0);
    Tensor v = make_tensor(dt, {1, nk, H, Dv}, 0);
    Tensor out = make_tensor(dt, {1, 1, H, Dv}, mode_o);
    std::mt19937 rng(7);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < Dv; ++d) {
        v.set_bits16({0, 0, h, d}, uint16_t(h * Dv + d));
        if (nk == 2) {  // a neighbour (or a random value) of the same sign
          const uint16_t a = uint16_t(h * Dv + d);
          const uint16_t b = (rng() & 1) ? uint16_t(a + 1) : uint16_t(rng());
          v.set_bits16({0, 1, h, d}, (b & 0x7fff) | (a & 0x8000));
        }
      }
    out.poison();
    cpu::ForwardArgs fa;
    fa.q = q.tv;
    fa.k = k.tv;
    fa.v = v.tv;
    fa.out = out.tv;
    fa.dtype = dt;
    fa.scale = 1.f;
    fa.layout = &L;
    fa.pred = pred;
    cpu::forward(fa);
    int64_t bad = 0;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < Dv; ++d) {
        const float v0 = float(v.get({0, 0, h, d}));
        float want = v0;
        if (nk == 2) want = (v0 + float(v.get({0, 1, h, d}))) * 0.5f;
        const uint16_t got = out.bits16({0, 0, h, d});
        const uint16_t expect = dt == DType::Float16 ? float_to_half(want) : float_to_bf16(want);
        const bool got_nan = dt == DType::Float16 ? std::isnan(half_to_float(got)) : std::isnan(bf16_to_float(got));
        // (-0 comes out as +0: the weighted sum starts from +0.)
        const bool zeros = (got & 0x7fff) == 0 && (expect & 0x7fff) == 0;
        if (std::isnan(want) ? !got_nan : (got != expect && !zeros)) {
          if (bad < 3)
            std::printf("  %s keys=%lld value %.9g: got 0x%04x want 0x%04x\n", tag.c_str(),
                        (long long)nk, want, got, expect);
          ++bad;
        }
      }
    check(bad == 0, tag + " keys=" + std::to_string(nk) + " mismatches " + std::to_string(bad));
  }
}

void pool_checks() {
  std::atomic<int64_t> sum{0};
  cpu::parallel_for(1000, [&](int64_t i, int t) {
    if (t < 0 || t >= cpu::num_threads()) throw std::runtime_error("bad thread index");
    sum += i;
  });
  check(sum == 999 * 1000 / 2, "pool: every task runs once");
  bool threw = false;
  try {
    cpu::parallel_for(100, [&](int64_t i, int) {
      if (i == 37) throw std::runtime_error("task 37");
    });
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()) == "task 37";
  }
  check(threw, "pool: a task's exception reaches the caller");
  std::atomic<int64_t> nested{0};
  cpu::parallel_for(8, [&](int64_t, int) {
    cpu::parallel_for(10, [&](int64_t, int t) { nested += t == 0 ? 1 : 1000; });
  });
  check(nested == 80, "pool: nested calls run inline");
}

}  // namespace

int main() {
  std::printf("simd level: %s, threads: %d\n", cpu::simd_level(), cpu::num_threads());
  pool_checks();
  for (DType dt : {DType::Float16, DType::BFloat16})
    for (int m : {0, 3}) conversion_checks(dt, m);

  const int64_t U = kUnbounded;
  std::vector<Case> cases = {
      {"dense 97", 2, 97, 97, 2, 2, 64, 64},
      {"causal Nq<Nk gqa D!=Dv", 1, 255, 1025, 4, 2, 32, 48, U, 0},
      {"causal Nq>Nk (empty rows)", 1, 1025, 255, 2, 1, 64, 64, U, 0},
      {"window 511 1025", 1, 1025, 1025, 2, 2, 64, 64, 511, 0},
      {"window wider than seq", 2, 97, 97, 2, 1, 16, 16, 5000, 3000},
      {"window both sides, off", 1, 97, 300, 3, 1, 24, 40, 3, 5},
      {"window keys unseen", 1, 97, 1025, 2, 2, 64, 32, 3, 0},
      {"window ahead (left < 0), short last block", 1, 97, 255, 2, 1, 40, 24, -3, 5},
      {"no key anywhere", 1, 97, 97, 2, 2, 16, 16, -5, 2},
      {"D=256", 1, 97, 130, 2, 1, 256, 256, 40, 7},
      {"D=1", 1, 255, 255, 2, 2, 1, 1, U, 0},
      {"D=1 Dv=256", 1, 65, 97, 1, 1, 1, 256, U, U},
      {"D=256 Dv=1", 1, 97, 65, 1, 1, 256, 1, U, U},
      {"decode mqa Nq=1", 2, 1, 1025, 8, 1, 64, 64, U, 0},
      {"Nq=1 Nk=1", 1, 1, 1, 1, 1, 8, 8, U, 0},
      {"B=0", 0, 97, 97, 2, 2, 16, 16},
      {"Nq=0", 1, 0, 97, 2, 2, 16, 16},
      {"Nk=0 (all rows empty)", 1, 97, 0, 2, 2, 16, 16},
      {"blockmask per head 32x48", 2, 255, 200, 4, 2, 32, 32, U, U, 32, 48},
      {"blockmask 5x7 gqa", 1, 97, 129, 4, 1, 20, 12, U, U, 5, 7},
  };
  {
    Case c{"strided BHND views", 2, 97, 130, 4, 2, 64, 64, 60, 0};
    c.mode_q = 1, c.mode_kv = 1, c.mode_o = 1;
    cases.push_back(c);
    c.name = "padded rows";
    c.mode_q = 2, c.mode_kv = 2, c.mode_o = 2;
    cases.push_back(c);
    c.name = "last stride 2, reversed seq";
    c.mode_q = 3, c.mode_kv = 3, c.mode_o = 3;
    cases.push_back(c);
    c.name = "mixed layouts, D=48";
    c.D = 48, c.Dv = 80, c.mode_q = 3, c.mode_kv = 1, c.mode_o = 2;
    cases.push_back(c);
    Case d{"all blocks partial (empty ones listed too), window", 1, 255, 255, 2, 2, 32, 32, 100, 0};
    d.all_partial = true;
    cases.push_back(d);
    Case e{"peaky scores (running max moves a lot)", 1, 200, 700, 2, 1, 64, 64, U, 0};
    e.amp = 6.0;
    cases.push_back(e);
    e.name = "peaky scores, window";
    e.left = 300, e.D = 16, e.Dv = 16, e.amp = 12.0;
    cases.push_back(e);
  }
  std::mt19937 rng(1234);
  for (const Case& c : cases)
    for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) run_case(c, dt, rng);

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
