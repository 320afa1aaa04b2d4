// The planner: every C++ entry point checks its arguments here, once (plan/checks.hpp), before
// anything is written; then it plans the call in device-neutral terms and hands the pieces to
// the backend of the tensors' device (backend/backend.hpp). What the planner does, for every
// device alike:
//   - the compiled pattern comes from the pattern's cache (Pattern::compiled), so a repeated
//     call does no work proportional to N on the host;
//   - dilated and strided patterns run as residue classes (plan/residue.hpp): ordinary windows
//     on row-strided views;
//   - a window | dilated/strided union runs as disjoint parts merged exactly by their lse;
//   - LongNet runs as its segment levels, each on per-head residue classes (plan/longnet.hpp);
//   - TopKBlocks chooses each batch element's blocks, then runs the concrete pattern;
//   - a variable-length batch runs each sequence as its own problem on sub-views.
#include "spattn/spattn.hpp"

#include <optional>
#include <sstream>
#include <vector>

#include "backend/backend.hpp"
#include "cpu/thread_pool.hpp"  // the host thread budget of the call (selection, CPU kernels)
#include "plan/checks.hpp"
#include "plan/modifiers.hpp"
#include "plan/longnet.hpp"
#include "plan/residue.hpp"
#include "select/topk.hpp"
#include "spattn/select.hpp"

#ifndef SPATTN_VERSION
#define SPATTN_VERSION "0.0.0"
#endif

namespace spattn {

namespace {

using backend::Attention;
using backend::Backend;
using backend::Call;
using backend::Dims;
using backend::Gradients;
using backend::Op;

// One planned call: the backend and the context every piece of it runs in.
struct Plan {
  Backend& be;
  Call call;
};

void check_lse(const TensorView& t, const Dims& s, const TensorView& q, DType dtype) {
  plan::expect_lse(t, "lse", dtype, {s.b, s.hq, s.nq}, "[B, Hq, Nq]", q);
}

// How a pattern runs: one or more parts with disjoint kept pairs. A part is a pattern walked over
// its block layout, or a residue window run as its classes (plan/residue.hpp: ordinary windows
// on row-strided views with disjoint outputs and gradients). Several parts are computed into
// temporaries and merged exactly through their logsumexps; gradients of disjoint parts add.
struct Part {
  Pattern walk;  // when residue is empty
  std::optional<plan::ResidueWindow> residue;
};

std::vector<Part> make_parts(const Pattern& pattern, const Dims& s) {
  const std::optional<plan::ResidueWindow> rw = plan::residue_form(pattern);
  if (rw && plan::residue_split_pays(*rw, s.nq)) return {Part{pattern, rw}};
  if (const auto u = plan::window_residue_union(pattern)) {
    bool pays = true;
    for (const plan::ResidueWindow& r : u->rest) pays = pays && plan::residue_split_pays(r, s.nq);
    if (pays) {
      std::vector<Part> parts{Part{u->window, std::nullopt}};
      for (const plan::ResidueWindow& r : u->rest) parts.push_back(Part{Pattern(), r});
      return parts;
    }
  }
  return {Part{pattern, std::nullopt}};
}

// One walk of a pattern's block layout by the backend.
void walk_forward(const Plan& pl, const Attention& a, const Pattern& pattern) {
  pl.be.forward(a, *pattern.compiled(a.s.nq, a.s.nk, a.s.hq), pl.call);
}

void walk_backward(const Plan& pl, const Attention& a, const Gradients& g, const Pattern& pattern) {
  pl.be.backward(a, g, *pattern.compiled(a.s.nq, a.s.nk, a.s.hq), pl.call);
}

// Residue classes that can share one backend call: equal sizes and window, consecutive
// residues (each one's first query and key row one row after the previous one's). Such a run of
// m classes is ONE batch of m problems whose batch stride is a single row: one kernel launch
// for all of them instead of m small ones (Strided(128) at 16K tokens is 128 classes of 128
// queries; launched one by one they kept a GPU 10% busy and cost 0.75 ms of host time).
struct ClassRun {
  const plan::ResidueClass* first;
  int64_t count;
};

std::vector<ClassRun> class_runs(const std::vector<plan::ResidueClass>& cs) {
  std::vector<ClassRun> runs;
  for (size_t i = 0; i < cs.size(); ++i) {
    if (!runs.empty()) {
      ClassRun& r = runs.back();
      const plan::ResidueClass& a = *r.first;
      const plan::ResidueClass& c = cs[i];
      if (c.nq == a.nq && c.nk == a.nk && &c.window.node() == &a.window.node() &&
          (c.nq == 0 || c.q0 == a.q0 + r.count) && c.k0 == a.k0 + r.count) {
        ++r.count;
        continue;
      }
    }
    runs.push_back({&cs[i], 1});
  }
  return runs;
}

// Rows start, start + d, ... (count of them) of dimension `dim` of batch element b of t, for m
// consecutive starts as a batch of m: shape [m, count, ...] with batch stride one row.
TensorView run_view(const TensorView& t, int64_t b, int dim, int64_t start, int64_t count,
                    int64_t d, int64_t m) {
  TensorView r = plan::strided_rows(t, dim, start, count, d);
  if (t.data != nullptr) r.data = static_cast<char*>(r.data) + b * t.strides[0] * (t.dtype.bits / 8);
  r.shape[0] = m;
  r.strides[0] = t.strides[dim];
  return r;
}

// Attention restricted to a run of residue classes of batch element b, as one batch.
Attention class_view(const Attention& a, const ClassRun& run, int64_t b, int64_t d) {
  const plan::ResidueClass& c = *run.first;
  Attention r = a;
  r.q = run_view(a.q, b, 1, c.q0, c.nq, d, run.count);
  r.k = run_view(a.k, b, 1, c.k0, c.nk, d, run.count);
  r.v = run_view(a.v, b, 1, c.k0, c.nk, d, run.count);
  r.out = run_view(a.out, b, 1, c.q0, c.nq, d, run.count);
  if (a.lse.data) r.lse = run_view(a.lse, b, 2, c.q0, c.nq, d, run.count);
  r.s.b = run.count;
  r.s.nq = c.nq;
  r.s.nk = c.nk;
  // ALiBi's rel in the class's rows: row i' is row q0 + d i' of a, key j' is key k0 + d j', so
  // a's rel = step (i - j) + base becomes (step d) (i' - j') + step (q0 - k0) + base. (The
  // classes of a run share q0 - k0.)
  const int64_t step = a.mods.rel_shifted ? a.mods.rel_step : 1;
  const int64_t base = a.mods.rel_shifted ? a.mods.rel_base : a.s.nk - a.s.nq;
  r.mods.rel_shifted = true;
  r.mods.rel_step = step * d;
  r.mods.rel_base = step * (c.q0 - c.k0) + base;
  return r;
}

void forward_part(const Plan& pl, const Part& part, const Attention& a) {
  if (!part.residue) return walk_forward(pl, a, part.walk);
  const std::vector<plan::ResidueClass> cs = plan::residue_classes(*part.residue, a.s.nq, a.s.nk);
  for (const ClassRun& run : class_runs(cs)) {
    if (run.first->nq == 0) continue;  // keys no query sees: nothing to compute in the forward
    for (int64_t b = 0; b < a.s.b; ++b)
      walk_forward(pl, class_view(a, run, b, part.residue->d), run.first->window);
  }
}

void backward_part(const Plan& pl, const Part& part, const Attention& a, const Gradients& g) {
  if (!part.residue) return walk_backward(pl, a, g, part.walk);
  const int64_t d = part.residue->d;
  const std::vector<plan::ResidueClass> cs = plan::residue_classes(*part.residue, a.s.nq, a.s.nk);
  for (const ClassRun& run : class_runs(cs)) {
    const plan::ResidueClass& c = *run.first;
    for (int64_t b = 0; b < a.s.b; ++b) {
      auto rows_q = [&](const TensorView& t) { return run_view(t, b, 1, c.q0, c.nq, d, run.count); };
      auto rows_k = [&](const TensorView& t) { return run_view(t, b, 1, c.k0, c.nk, d, run.count); };
      walk_backward(pl, class_view(a, run, b, d),
                    Gradients{rows_q(g.dout), rows_q(g.dq), rows_k(g.dk), rows_k(g.dv),
                              g.rows_complete},
                    c.window);
    }
  }
}

// Batch element b of a [B, ...] view (lse [B, Hq, Nq] too), as a [1, ...] view.
TensorView batch_view(const TensorView& t, int64_t b) {
  TensorView r = t;
  r.shape[0] = 1;
  if (t.data != nullptr) r.data = static_cast<char*>(t.data) + b * t.strides[0] * (t.dtype.bits / 8);
  return r;
}

// TopKBlocks: each batch element chooses its blocks from its own q and k, then runs as the
// concrete pattern. The choice is deterministic, so the backward pass, choosing again from the
// same q and k, computes the gradients of exactly the forward's pattern.
template <class Run>
void per_batch_selection(const Pattern& pattern, const Attention& a, Run run) {
  for (int64_t b = 0; b < a.s.b; ++b) {
    BlockMask chosen = select::choose(pattern, select::batch_rows(a.q, b, a.dtype),
                                      select::batch_rows(a.k, b, a.dtype));
    run(b, select::concrete(pattern, std::move(chosen)));
  }
}

Attention batch_of(const Attention& a, int64_t b) {
  Attention r = a;
  r.q = batch_view(a.q, b);
  r.k = batch_view(a.k, b);
  r.v = batch_view(a.v, b);
  r.out = batch_view(a.out, b);
  r.lse = batch_view(a.lse, b);
  r.s.b = 1;
  return r;
}

// ---- LongNet by levels (plan/longnet.hpp) --------------------------------------------------

// Rows c, c + r, ... (n of them) of head h of t, whose rows are dimension row_dim and heads
// head_dim: a [.., n, .., 1 head, ..] view.
TensorView head_rows(const TensorView& t, int row_dim, int head_dim, int64_t c, int64_t n,
                     int64_t r, int64_t h) {
  TensorView v = plan::strided_rows(t, row_dim, c, n, r);
  if (v.data != nullptr) v.data = static_cast<char*>(v.data) + h * t.strides[head_dim] * (t.dtype.bits / 8);
  v.shape[head_dim] = 1;
  return v;
}

// Query head h of a on its residue class c = h % r (n rows), q/k/v/out/lse views.
Attention class_head(const Attention& a, int64_t h, int64_t c, int64_t n, int64_t r) {
  const int64_t g = h / (a.s.hq / a.s.hkv);
  Attention v = a;
  v.q = head_rows(a.q, 1, 2, c, n, r, h);
  v.k = head_rows(a.k, 1, 2, c, n, r, g);
  v.v = head_rows(a.v, 1, 2, c, n, r, g);
  v.out = head_rows(a.out, 1, 2, c, n, r, h);
  if (a.lse.data) v.lse = head_rows(a.lse, 2, 1, c, n, r, h);
  v.s.nq = v.s.nk = n;
  v.s.hq = v.s.hkv = 1;
  return v;
}

void longnet_forward(const Plan& pl, const Attention& a, const plan::LongNetPlan& lp) {
  const Dims& s = a.s;
  std::vector<ManagedTensor> owned;
  auto temp = [&](DType dt, std::vector<int64_t> shape, const char* name) {
    owned.push_back(pl.be.allocate(dt, std::move(shape), pl.call));
    return owned.back().view(name);
  };
  Attention all = a;  // part 0 writes the result; later levels merge into its class rows
  if (!all.lse.data) all.lse = temp(lse_dtype(a.dtype), {s.b, s.hq, s.nq}, "lse");
  walk_forward(pl, all, lp.first);
  for (const plan::LongNetLevel& l : lp.levels) {
    const int64_t nmax = l.n_small + 1;
    const TensorView po = temp(a.dtype, {s.b, nmax, 1, s.dv}, "out"), pl_ = temp(lse_dtype(a.dtype), {s.b, 1, nmax}, "lse");
    const TensorView mo = temp(a.dtype, {s.b, nmax, 1, s.dv}, "out"), ml = temp(lse_dtype(a.dtype), {s.b, 1, nmax}, "lse");
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t c = h % l.r, n = (s.nq - 1 - c) / l.r + 1;
      Attention v = class_head(all, h, c, n, l.r);
      const TensorView fo = v.out, fl = v.lse;
      auto first_rows = [&](TensorView t, int dim) {
        t.shape[dim] = n;
        return t;
      };
      v.out = first_rows(po, 1);
      v.lse = first_rows(pl_, 2);
      walk_forward(pl, v, l.parts[n - l.n_small]);
      const TensorView outs[2] = {fo, v.out}, lses[2] = {fl, v.lse};
      const TensorView m_o = first_rows(mo, 1), m_l = first_rows(ml, 2);
      pl.be.merge(outs, lses, 2, m_o, m_l, a.dtype, pl.call);
      pl.be.merge(&m_o, &m_l, 1, fo, fl, a.dtype, pl.call);  // a copy (no part aliases out)
    }
  }
}

void longnet_backward(const Plan& pl, const Attention& a, const Gradients& g,
                      const plan::LongNetPlan& lp) {
  const Dims& s = a.s;
  walk_backward(pl, a, Gradients{g.dout, g.dq, g.dk, g.dv, false}, lp.first);
  std::vector<ManagedTensor> owned;
  auto temp = [&](std::vector<int64_t> shape, const char* name) {
    owned.push_back(pl.be.allocate(a.dtype, std::move(shape), pl.call));
    return owned.back().view(name);
  };
  for (const plan::LongNetLevel& l : lp.levels) {
    const int64_t nmax = l.n_small + 1;
    const TensorView tq = temp({s.b, nmax, 1, s.d}, "dq"), tk = temp({s.b, nmax, 1, s.d}, "dk"),
                     tv = temp({s.b, nmax, 1, s.dv}, "dv");
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t c = h % l.r, n = (s.nq - 1 - c) / l.r + 1;
      const int64_t kh = h / (s.hq / s.hkv);
      const Attention v = class_head(a, h, c, n, l.r);
      auto rows = [&](TensorView t) {
        t.shape[1] = n;
        return t;
      };
      const Gradients part{head_rows(g.dout, 1, 2, c, n, l.r, h), rows(tq), rows(tk), rows(tv), false};
      walk_backward(pl, v, part, l.parts[n - l.n_small]);
      // The level's gradients add to those of the parts before it (same element read and
      // written by one thread: in place is fine for sum).
      const TensorView dq = head_rows(g.dq, 1, 2, c, n, l.r, h), dk = head_rows(g.dk, 1, 2, c, n, l.r, kh),
                       dv = head_rows(g.dv, 1, 2, c, n, l.r, kh);
      const TensorView sq[2] = {dq, part.dq}, sk[2] = {dk, part.dk}, sv[2] = {dv, part.dv};
      pl.be.sum(dq, sq, 2, a.dtype, pl.call);
      pl.be.sum(dk, sk, 2, a.dtype, pl.call);
      pl.be.sum(dv, sv, 2, a.dtype, pl.call);
    }
  }
}

// LongNet's levels run one query head at a time on its residue class; score modifiers (per-head
// slopes and sinks, ALiBi's distances) are not mapped onto those views, so with modifiers the
// pattern is walked as one layout: correct, without the levels' speed.
bool by_levels(const Attention& a) { return !a.mods.any(); }

void run_forward(const Plan& pl, const Attention& a, const Pattern& pattern) {
  if (by_levels(a))
    if (const auto lp = plan::longnet_plan(pattern, a.s.nq, a.s.hq)) return longnet_forward(pl, a, *lp);
  if (pattern.data_dependent()) {
    if (pl.be.forward_topk(a, pattern, pl.call)) return;
    return per_batch_selection(pattern, a, [&](int64_t b, const Pattern& p) {
      run_forward(pl, batch_of(a, b), p);
    });
  }
  const std::vector<Part> parts = make_parts(pattern, a.s);
  if (parts.size() == 1) return forward_part(pl, parts[0], a);
  std::vector<ManagedTensor> owned;
  std::vector<TensorView> outs, lses;
  for (const Part& part : parts) {
    Attention pa = a;
    // The sinks join the first part only: a sink is one more term of the row's denominator, so
    // part 0 becomes the partial result over its keys plus the sink, and the exact merge of
    // the parts counts it once.
    if (&part != &parts[0]) pa.mods.drop_sinks();
    owned.push_back(pl.be.allocate(a.dtype, {a.s.b, a.s.nq, a.s.hq, a.s.dv}, pl.call));
    pa.out = owned.back().view("out");
    owned.push_back(pl.be.allocate(lse_dtype(a.dtype), {a.s.b, a.s.hq, a.s.nq}, pl.call));
    pa.lse = owned.back().view("lse");
    outs.push_back(pa.out);
    lses.push_back(pa.lse);
    forward_part(pl, part, pa);
  }
  pl.be.merge(outs.data(), lses.data(), int(parts.size()), a.out, a.lse, a.dtype, pl.call);
}

void run_backward(const Plan& pl, const Attention& a, const Gradients& g, const Pattern& pattern) {
  if (by_levels(a))
    if (const auto lp = plan::longnet_plan(pattern, a.s.nq, a.s.hq))
      return longnet_backward(pl, a, g, *lp);
  if (pattern.data_dependent()) {
    if (pl.be.backward_topk(a, g, pattern, pl.call)) return;
    return per_batch_selection(pattern, a, [&](int64_t b, const Pattern& p) {
      auto bv = [b](const TensorView& t) { return batch_view(t, b); };
      run_backward(pl, batch_of(a, b), Gradients{bv(g.dout), bv(g.dq), bv(g.dk), bv(g.dv), true},
                   p);
    });
  }
  const std::vector<Part> parts = make_parts(pattern, a.s);
  if (parts.size() == 1) return backward_part(pl, parts[0], a, g);
  // Each part's gradient uses the whole attention's out and lse, so the parts' sum is exact.
  std::vector<ManagedTensor> owned;
  std::vector<TensorView> dqs, dks, dvs;
  const Dims& s = a.s;
  for (const Part& part : parts) {
    owned.push_back(pl.be.allocate(a.dtype, {s.b, s.nq, s.hq, s.d}, pl.call));
    dqs.push_back(owned.back().view("dq"));
    owned.push_back(pl.be.allocate(a.dtype, {s.b, s.nk, s.hkv, s.d}, pl.call));
    dks.push_back(owned.back().view("dk"));
    owned.push_back(pl.be.allocate(a.dtype, {s.b, s.nk, s.hkv, s.dv}, pl.call));
    dvs.push_back(owned.back().view("dv"));
    backward_part(pl, part, a, Gradients{g.dout, dqs.back(), dks.back(), dvs.back(), false});
  }
  pl.be.sum(g.dq, dqs.data(), int(parts.size()), a.dtype, pl.call);
  pl.be.sum(g.dk, dks.data(), int(parts.size()), a.dtype, pl.call);
  pl.be.sum(g.dv, dvs.data(), int(parts.size()), a.dtype, pl.call);
}

// The backend for attention on q's device: TopKBlocks' selection must run there too.
Backend& attention_backend(const TensorView& q, Op op, DType dtype, const Dims& s,
                           const Pattern& pattern, const Options& o, Call* call) {
  Backend& be = plan::backend_for(q, op, dtype, s.d, s.dv, o, call);
  if (pattern.data_dependent()) {
    select::expect_selectable(dtype, "q");
    const std::string why = be.unsupported(Op::AttentionSelect, dtype, s.d, s.dv, *call);
    if (!why.empty()) throw RuntimeError("pattern: " + why);
  }
  return be;
}

}  // namespace

void attention_forward(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
                       const Pattern& pattern, const DLTensor& out_, const DLTensor* lse_,
                       const Options& options) {
  Attention a;
  a.q = view_of(q_, "q");
  a.k = view_of(k_, "k");
  a.v = view_of(v_, "v");
  a.s = plan::check_qkv(a.q, a.k, a.v, &a.dtype, false);
  const Dims& s = a.s;
  a.out = view_of(out_, "out");
  plan::check_output(a.out, "out", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", a.q, a.dtype);
  if (lse_) {
    a.lse = view_of(*lse_, "lse");
    check_lse(a.lse, s, a.q, a.dtype);
    plan::expect_writable_layout(a.lse, "lse");
  }
  expect_disjoint_outputs({{&a.out, "out"}, {&a.lse, "lse"}}, {{&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}});
  const plan::CallOptions o = plan::resolve(options, s.d);
  a.scale = o.scale;
  a.mods = plan::check_modifiers(options.modifiers, a.q, a.dtype, s.hq, false, nullptr);
  Call call;
  Backend& be = attention_backend(a.q, Op::Forward, a.dtype, s, pattern, options, &call);
  plan::expect_modifiers_supported(a.mods, be, Op::Forward, call, a.q);
  pattern.check(s.nq, s.nk, s.hq);
  const cpu::ThreadLimit limit(o.num_threads);
  run_forward(Plan{be, call}, a, pattern);
}

void attention_backward(const DLTensor& dout_, const DLTensor& q_, const DLTensor& k_,
                        const DLTensor& v_, const DLTensor& out_, const DLTensor& lse_,
                        const Pattern& pattern, const DLTensor& dq_, const DLTensor& dk_,
                        const DLTensor& dv_, const Options& options) {
  Attention a;
  Gradients g;
  a.q = view_of(q_, "q");
  a.k = view_of(k_, "k");
  a.v = view_of(v_, "v");
  a.s = plan::check_qkv(a.q, a.k, a.v, &a.dtype, false);
  const Dims& s = a.s;
  const DType dt = a.dtype;
  g.dout = view_of(dout_, "dout");
  a.out = view_of(out_, "out");
  a.lse = view_of(lse_, "lse");
  plan::check_input(g.dout, "dout", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", a.q, dt);
  plan::check_input(a.out, "out", {s.b, s.nq, s.hq, s.dv}, "[B, Nq, Hq, Dv]", a.q, dt);
  check_lse(a.lse, s, a.q, a.dtype);
  g.dq = view_of(dq_, "dq");
  g.dk = view_of(dk_, "dk");
  g.dv = view_of(dv_, "dv");
  plan::check_output(g.dq, "dq", {s.b, s.nq, s.hq, s.d}, "[B, Nq, Hq, D]", a.q, dt);
  plan::check_output(g.dk, "dk", {s.b, s.nk, s.hkv, s.d}, "[B, Nk, Hkv, D]", a.q, dt);
  plan::check_output(g.dv, "dv", {s.b, s.nk, s.hkv, s.dv}, "[B, Nk, Hkv, Dv]", a.q, dt);
  expect_disjoint_outputs({{&g.dq, "dq"}, {&g.dk, "dk"}, {&g.dv, "dv"}},
                          {{&g.dout, "dout"}, {&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}, {&a.out, "out"},
                           {&a.lse, "lse"}});
  const plan::CallOptions o = plan::resolve(options, s.d);
  a.scale = o.scale;
  TensorView dsinks;
  a.mods = plan::check_modifiers(options.modifiers, a.q, a.dtype, s.hq, true, &dsinks);
  expect_disjoint_outputs({{&dsinks, "dsinks"}},
                          {{&g.dout, "dout"}, {&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"},
                           {&a.out, "out"}, {&a.lse, "lse"}, {&g.dq, "dq"}, {&g.dk, "dk"},
                           {&g.dv, "dv"}});
  Call call;
  Backend& be = attention_backend(a.q, Op::Backward, dt, s, pattern, options, &call);
  plan::expect_modifiers_supported(a.mods, be, Op::Backward, call, a.q);
  pattern.check(s.nq, s.nk, s.hq);
  const cpu::ThreadLimit limit(o.num_threads);
  run_backward(Plan{be, call}, a, g, pattern);
  if (dsinks.data) be.sink_grad(g.dout, a.out, a.lse, a.mods, dsinks, dt, call);
}

// ---------------------------------------------------------------------------------------------
// Variable-length batches (docs/api.md): q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv], offsets
// cu_seqlens_q / cu_seqlens_k [B+1]; sequence b is the dense problem on rows
// [cu_q[b], cu_q[b+1]) of q and [cu_k[b], cu_k[b+1]) of k and v, with the pattern applied
// inside it (its own Nq, Nk and bottom-right alignment).

namespace {

// The offsets of a cu_seqlens argument, read on the host: int32 (int64 accepted) [B+1] with
// B >= 0, first 0, non-decreasing, last == total (the rows of q or k). On the CPU, or on q's
// device (then copied to the host: one synchronisation of the call's stream; pass them on the
// CPU to avoid it, as FlashAttention's max_seqlen is passed on the host).
std::vector<int64_t> read_cu_seqlens(const Plan& pl, const DLTensor& t_, const char* name,
                                     int64_t total, const char* total_name, const TensorView& q) {
  const TensorView t = view_of(t_, name);
  std::ostringstream m;
  if (!plan::is_index_dtype(t)) {
    m << name << ": expected int32 offsets [B+1], got dtype " << describe(t.dtype);
    throw TypeError(m.str());
  }
  if (t.ndim != 1 || t.shape[0] < 1) {
    m << name << ": expected 1 dimension [B+1] holding at least one offset, got shape "
      << t.shape_str();
    throw ValueError(m.str());
  }
  const bool on_host = t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost;
  if (!on_host) plan::expect_same_device(t, name, q);
  const int64_t n = t.shape[0], es = t.dtype.bits / 8, step = t.strides[0];
  if (n > (int64_t(1) << 31)) {  // at most 2^31 - 1 sequences (a broadcast view could claim any
    m << name << ": expected at most 2^31 offsets, got " << n;  // count)
    throw ValueError(m.str());
  }
  if (step < 0) throw ValueError(std::string(name) + ": negative strides are not supported");
  std::vector<unsigned char> raw;
  const unsigned char* base = static_cast<const unsigned char*>(t.data);
  if (!on_host) {
    raw.resize(size_t(((n - 1) * step + 1) * es));
    pl.be.read_to_host(t, raw.data(), raw.size(), pl.call);
    base = raw.data();
  }
  std::vector<int64_t> c(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i)
    c[size_t(i)] = es == 4 ? int64_t(reinterpret_cast<const int32_t*>(base)[i * step])
                           : reinterpret_cast<const int64_t*>(base)[i * step];
  if (c[0] != 0)
    m << name << ": the first offset must be 0, got " << c[0];
  for (int64_t i = 0; i + 1 < n && m.str().empty(); ++i)
    if (c[size_t(i + 1)] < c[size_t(i)])
      m << name << ": offsets must be non-decreasing, but " << name << "[" << i + 1
        << "] = " << c[size_t(i + 1)] << " < " << name << "[" << i << "] = " << c[size_t(i)]
        << " (sequence " << i << " would have negative length)";
  if (m.str().empty() && c[size_t(n - 1)] != total)
    m << name << ": the last offset must equal " << total_name << " = " << total
      << " (the rows of " << (total_name[1] == 'q' ? "q" : "k and v") << "), got "
      << c[size_t(n - 1)];
  if (!m.str().empty()) throw ValueError(m.str());
  return c;
}

// Both offset arrays, checked against each other: the same number of sequences.
void read_both_cu_seqlens(const Plan& pl, const DLTensor& cu_q, const DLTensor& cu_k,
                          const Dims& t, const TensorView& q, std::vector<int64_t>* cq,
                          std::vector<int64_t>* ck) {
  *cq = read_cu_seqlens(pl, cu_q, "cu_seqlens_q", t.nq, "Tq", q);
  *ck = read_cu_seqlens(pl, cu_k, "cu_seqlens_k", t.nk, "Tk", q);
  if (cq->size() != ck->size()) {
    std::ostringstream m;
    m << "cu_seqlens_q, cu_seqlens_k: expected the same number of offsets (B+1 for B "
      << "sequences), got " << cq->size() << " and " << ck->size();
    throw ValueError(m.str());
  }
}

void check_lse_varlen(const TensorView& t, const Dims& s, const TensorView& q, DType dtype) {
  plan::expect_lse(t, "lse", dtype, {s.hq, s.nq}, "[Hq, Tq]", q);
}

// pattern.check for every sequence, before anything runs; the message names the sequence.
void check_pattern_varlen(const Pattern& pattern, const std::vector<int64_t>& cq,
                          const std::vector<int64_t>& ck, int64_t hq) {
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t nq = cq[b + 1] - cq[b], nk = ck[b + 1] - ck[b];
    try {
      pattern.check(nq, nk, hq);
    } catch (const ValueError& e) {
      std::ostringstream m;
      m << "pattern: does not fit sequence " << b << " (Nq=" << nq << ", Nk=" << nk
        << "): " << e.what();
      throw ValueError(m.str());
    }
  }
}

// Rows [start, start + len) of dimension `dim` of t, presented with a leading unit (batch)
// dimension for the dense-batch path. A view is plain data: nothing is copied.
TensorView seq_view(const TensorView& t, int dim, int64_t start, int64_t len) {
  TensorView r = t;
  r.ndim = t.ndim + 1;
  r.shape[0] = 1;
  r.strides[0] = 0;
  for (int d = 0; d < t.ndim; ++d) {
    r.shape[d + 1] = t.shape[d];
    r.strides[d + 1] = t.strides[d];
  }
  r.shape[dim + 1] = len;
  if (t.data != nullptr && len > 0)  // data == nullptr: empty, or an output not wanted (lse)
    r.data = static_cast<char*>(t.data) + start * t.strides[dim] * int64_t(t.dtype.bits / 8);
  return r;
}

// Sequence b of a varlen problem as a batch of one.
Attention sequence(const Attention& t, const std::vector<int64_t>& cq,
                   const std::vector<int64_t>& ck, size_t b) {
  const int64_t q0 = cq[b], nq = cq[b + 1] - q0, k0 = ck[b], nk = ck[b + 1] - k0;
  Attention a = t;
  a.q = seq_view(t.q, 0, q0, nq);
  a.k = seq_view(t.k, 0, k0, nk);
  a.v = seq_view(t.v, 0, k0, nk);
  a.out = seq_view(t.out, 0, q0, nq);
  a.lse = seq_view(t.lse, 1, q0, nq);
  a.s = Dims{1, nq, nk, t.s.hq, t.s.hkv, t.s.d, t.s.dv};
  return a;
}

}  // namespace

// Parallelism: sequences run one after another, each using the whole device (the kernels
// parallelise over heads and query tiles inside a problem). Fine for long sequences; many
// short ones would be better served by one task list over (sequence, head, tile).
void attention_forward_varlen(const DLTensor& q_, const DLTensor& k_, const DLTensor& v_,
                              const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                              const Pattern& pattern, const DLTensor& out_, const DLTensor* lse_,
                              const Options& options) {
  Attention t;  // the whole packed batch: t.s.nq = Tq, t.s.nk = Tk
  t.q = view_of(q_, "q");
  t.k = view_of(k_, "k");
  t.v = view_of(v_, "v");
  t.s = plan::check_qkv(t.q, t.k, t.v, &t.dtype, /*varlen=*/true);
  t.out = view_of(out_, "out");
  plan::check_output(t.out, "out", {t.s.nq, t.s.hq, t.s.dv}, "[Tq, Hq, Dv]", t.q, t.dtype);
  if (lse_) {
    t.lse = view_of(*lse_, "lse");
    check_lse_varlen(t.lse, t.s, t.q, t.dtype);
    plan::expect_writable_layout(t.lse, "lse");
  }
  expect_disjoint_outputs({{&t.out, "out"}, {&t.lse, "lse"}}, {{&t.q, "q"}, {&t.k, "k"}, {&t.v, "v"}});
  const plan::CallOptions o = plan::resolve(options, t.s.d);
  t.scale = o.scale;
  t.mods = plan::check_modifiers(options.modifiers, t.q, t.dtype, t.s.hq, false, nullptr);
  Call call;
  Backend& be = attention_backend(t.q, Op::Forward, t.dtype, t.s, pattern, options, &call);
  plan::expect_modifiers_supported(t.mods, be, Op::Forward, call, t.q);
  const Plan pl{be, call};
  std::vector<int64_t> cq, ck;
  read_both_cu_seqlens(pl, cu_seqlens_q, cu_seqlens_k, t.s, t.q, &cq, &ck);
  check_pattern_varlen(pattern, cq, ck, t.s.hq);
  const cpu::ThreadLimit limit(o.num_threads);
  for (size_t b = 0; b + 1 < cq.size(); ++b) run_forward(pl, sequence(t, cq, ck, b), pattern);
}

void attention_backward_varlen(const DLTensor& dout_, const DLTensor& q_, const DLTensor& k_,
                               const DLTensor& v_, const DLTensor& out_, const DLTensor& lse_,
                               const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                               const Pattern& pattern, const DLTensor& dq_, const DLTensor& dk_,
                               const DLTensor& dv_, const Options& options) {
  Attention t;
  Gradients g;
  t.q = view_of(q_, "q");
  t.k = view_of(k_, "k");
  t.v = view_of(v_, "v");
  t.s = plan::check_qkv(t.q, t.k, t.v, &t.dtype, /*varlen=*/true);
  const DType dt = t.dtype;
  g.dout = view_of(dout_, "dout");
  t.out = view_of(out_, "out");
  t.lse = view_of(lse_, "lse");
  plan::check_input(g.dout, "dout", {t.s.nq, t.s.hq, t.s.dv}, "[Tq, Hq, Dv]", t.q, dt);
  plan::check_input(t.out, "out", {t.s.nq, t.s.hq, t.s.dv}, "[Tq, Hq, Dv]", t.q, dt);
  check_lse_varlen(t.lse, t.s, t.q, t.dtype);
  g.dq = view_of(dq_, "dq");
  g.dk = view_of(dk_, "dk");
  g.dv = view_of(dv_, "dv");
  plan::check_output(g.dq, "dq", {t.s.nq, t.s.hq, t.s.d}, "[Tq, Hq, D]", t.q, dt);
  plan::check_output(g.dk, "dk", {t.s.nk, t.s.hkv, t.s.d}, "[Tk, Hkv, D]", t.q, dt);
  plan::check_output(g.dv, "dv", {t.s.nk, t.s.hkv, t.s.dv}, "[Tk, Hkv, Dv]", t.q, dt);
  expect_disjoint_outputs({{&g.dq, "dq"}, {&g.dk, "dk"}, {&g.dv, "dv"}},
                          {{&g.dout, "dout"}, {&t.q, "q"}, {&t.k, "k"}, {&t.v, "v"}, {&t.out, "out"},
                           {&t.lse, "lse"}});
  const plan::CallOptions o = plan::resolve(options, t.s.d);
  t.scale = o.scale;
  TensorView dsinks;
  t.mods = plan::check_modifiers(options.modifiers, t.q, t.dtype, t.s.hq, true, &dsinks);
  expect_disjoint_outputs({{&dsinks, "dsinks"}},
                          {{&g.dout, "dout"}, {&t.q, "q"}, {&t.k, "k"}, {&t.v, "v"},
                           {&t.out, "out"}, {&t.lse, "lse"}, {&g.dq, "dq"}, {&g.dk, "dk"},
                           {&g.dv, "dv"}});
  Call call;
  Backend& be = attention_backend(t.q, Op::Backward, dt, t.s, pattern, options, &call);
  plan::expect_modifiers_supported(t.mods, be, Op::Backward, call, t.q);
  const Plan pl{be, call};
  std::vector<int64_t> cq, ck;
  read_both_cu_seqlens(pl, cu_seqlens_q, cu_seqlens_k, t.s, t.q, &cq, &ck);
  check_pattern_varlen(pattern, cq, ck, t.s.hq);
  const cpu::ThreadLimit limit(o.num_threads);
  // One sequence after another. Every row of dq, dk and dv belongs to exactly one sequence (the
  // offsets cover 0..T), so all of them are written.
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    const int64_t q0 = cq[b], nq = cq[b + 1] - q0, k0 = ck[b], nk = ck[b + 1] - k0;
    const Gradients gb{seq_view(g.dout, 0, q0, nq), seq_view(g.dq, 0, q0, nq),
                       seq_view(g.dk, 0, k0, nk), seq_view(g.dv, 0, k0, nk), true};
    run_backward(pl, sequence(t, cq, ck, b), gb, pattern);
  }
  // The sinks' gradient sums over every row of every sequence: one pass over the packed batch.
  if (dsinks.data)
    be.sink_grad(seq_view(g.dout, 0, 0, t.s.nq), seq_view(t.out, 0, 0, t.s.nq),
                 seq_view(t.lse, 1, 0, t.s.nq), t.mods, dsinks, dt, call);
}

// ---------------------------------------------------------------------------------------------
// TopKBlocks' selection (select.hpp). q and k are checked as attention's are; v is not needed,
// so k stands in for it in check_qkv.

namespace {
void expect_topk(const Pattern& p) {
  if (!p.valid() || !p.data_dependent())
    throw ValueError("pattern: select needs a TopKBlocks pattern, got " +
                     (p.valid() ? p.describe() : std::string("an empty pattern")));
}

// The backend of q's device, which must choose TopKBlocks' blocks (on its device or, when it
// does not, the planner on the host: select_topk).
Plan selection_plan(const Attention& a, const Options& options) {
  select::expect_selectable(a.dtype, "q");
  Call call;
  Backend& be = plan::backend_for(a.q, Op::Select, a.dtype, a.s.d, a.s.dv, options, &call);
  return Plan{be, call};
}

// The masks of every batch element of every problem of probs, in order: chosen on their
// device when the backend does that (one read back of all of them), else here on the host.
std::vector<BlockMask> choose_masks(const Plan& pl, const std::vector<Attention>& probs,
                                    const Pattern& topk) {
  std::vector<BlockMask> r;
  for (const Attention& a : probs)
    for (int64_t b = 0; b < a.s.b; ++b) r.push_back(select::empty_mask(topk, a.s.nq, a.s.nk, a.s.hq));
  if (pl.be.select_topk(probs.data(), probs.size(), topk, r.data(), pl.call)) return r;
  size_t at = 0;
  for (const Attention& a : probs)
    for (int64_t b = 0; b < a.s.b; ++b)
      r[at++] = select::choose(topk, select::batch_rows(a.q, b, a.dtype),
                               select::batch_rows(a.k, b, a.dtype));
  return r;
}

// q and k of a selection as an attention problem (k standing in for v; no out).
Attention selection_problem(const DLTensor& q_, const DLTensor& k_, bool varlen) {
  Attention a;
  a.q = view_of(q_, "q");
  a.k = view_of(k_, "k");
  a.v = a.k;
  a.s = plan::check_qkv(a.q, a.k, a.k, &a.dtype, varlen);
  return a;
}
}  // namespace

std::vector<BlockMask> select_blocks(const DLTensor& q_, const DLTensor& k_, const Pattern& topk,
                                     const Options& options) {
  expect_topk(topk);
  const Attention a = selection_problem(q_, k_, false);
  const Plan pl = selection_plan(a, options);
  topk.check(a.s.nq, a.s.nk, a.s.hq);
  const plan::CallOptions o = plan::resolve(options, a.s.d);
  const cpu::ThreadLimit limit(o.num_threads);
  return choose_masks(pl, {a}, topk);
}

std::vector<BlockMask> select_blocks_varlen(const DLTensor& q_, const DLTensor& k_,
                                            const DLTensor& cu_seqlens_q,
                                            const DLTensor& cu_seqlens_k, const Pattern& topk,
                                            const Options& options) {
  expect_topk(topk);
  const Attention t = selection_problem(q_, k_, /*varlen=*/true);
  const Plan pl = selection_plan(t, options);
  std::vector<int64_t> cq, ck;
  read_both_cu_seqlens(pl, cu_seqlens_q, cu_seqlens_k, t.s, t.q, &cq, &ck);
  check_pattern_varlen(topk, cq, ck, t.s.hq);
  const plan::CallOptions o = plan::resolve(options, t.s.d);
  const cpu::ThreadLimit limit(o.num_threads);
  std::vector<Attention> seqs;
  for (size_t b = 0; b + 1 < cq.size(); ++b) seqs.push_back(sequence(t, cq, ck, b));
  return choose_masks(pl, seqs, topk);
}

Pattern selected_pattern(const Pattern& topk, BlockMask chosen) {
  expect_topk(topk);
  return select::concrete(topk, std::move(chosen));
}

const char* version() { return SPATTN_VERSION; }

std::map<std::string, std::string> info() {
  std::map<std::string, std::string> r;
  r["version"] = SPATTN_VERSION;
  std::string names;
  for (Backend* b : backend::all()) {
    names += (names.empty() ? "" : ",") + std::string(b->name());
    b->describe(r);
  }
  r["backends"] = names;
  // Present whether or not CUDA was compiled, so that callers can test one key.
  r.emplace("cuda_compiled", "no");
  r.emplace("cuda_archs", "");
  r.emplace("cuda_kernels", "");
  r.emplace("cuda_sm90a_kernels", "");
  r.emplace("cuda_backward_kernels", "");
  r.emplace("cuda_sm90a_backward_kernels", "");
  return r;
}

}  // namespace spattn
