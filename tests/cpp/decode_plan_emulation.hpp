// The device decode plan (spattn/cuda/decode_plan_logic.hpp) made on the host, as the launcher
// (cuda/src/host/decode_device_plan.cpp) and the kernels (cuda/src/kernels/decode_plan.cu)
// make it on a GPU: the program planned and "uploaded" (a host blob relocated to itself), one
// workspace carved by plan_decode_space, then dec_plan_row for every (sequence, layout head)
// and dec_plan_union for every (sequence, kv head), each one thread's work, in launch order.
// Shared by the decode tests (test_cuda_decode_logic.cpp, test_cuda_decode_plan.cpp).
#pragma once

#include <spattn/cuda/decode_plan_logic.hpp>
#include <spattn/spattn.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pattern/length_rule.hpp"
#include "spattn/test_hooks.hpp"

namespace decode_emu {

using namespace spattn;
using namespace spattn::cuda;

struct DevicePlan {
  std::shared_ptr<const CompiledPattern> cp;
  DecodeProgram prog;
  DecodePlanSpace space;
  std::vector<uint64_t> ws;  // the workspace (8-byte aligned; offsets are 16-byte multiples)
  DecodePlanParams pp;
  unsigned long long error[kDecErrorWords] = {~0ull, 0, 0};
  std::string why;  // set when the pattern cannot be planned on the device
};

// Plans a call of B = lens.size() sequences whose lengths are `lens` as stored (int32 values
// when !lens64; lens_s: element stride of that array) on a device of `sms` SMs. False with
// d->why when the pattern is not length-free or has no device rule.
inline bool device_plan(const Pattern& pattern, const void* lens, bool lens64, int64_t lens_s,
                        int64_t B, int64_t nq, int64_t hq, int64_t hkv, int64_t bk,
                        int64_t capacity, int64_t sms, DevicePlan* d) {
  const LengthRule rule = length_rule(pattern);
  if (!rule.free) {
    d->why = rule.why;
    return false;
  }
  const int64_t nk_plan = std::max<int64_t>(std::max<int64_t>(capacity, rule.min_keys), 1);
  d->cp = pattern.compiled(nq, nk_plan, hq);
  const Predicate pred = d->cp->predicate();
  if (!plan_decode_program(pred, nq, hq, bk, capacity, spattn::detail::layout_row_budget(pred.heads),
                           &d->prog, &d->why))
    return false;
  d->prog.relocate(d->prog.blob.data());
  const int64_t G = hq / hkv;
  d->space = plan_decode_space(d->prog, B, hkv, G, nq, bk, sms);
  d->ws.assign(d->space.total / 8 + 2, 0xdeadbeefdeadbeefull);  // garbage, as a fresh allocation
  DecodePlanParams& p = d->pp;
  d->prog.bind(d->prog.blob.data(), &p);
  d->space.bind(d->ws.data(), &p);
  p.lens = lens;
  p.lens64 = lens64;
  p.lens_s = lens_s;
  p.b = B, p.nq = nq, p.hq = hq, p.hkv = hkv, p.group = G, p.bk = bk;
  p.capacity = capacity;
  p.min_keys = rule.min_keys;
  p.error = d->error;
  for (int64_t r = 0; r < B * p.lheads; ++r) dec_plan_row(p, r);
  for (int64_t bg = 0; bg < B * hkv; ++bg) dec_plan_union(p, bg);
  return true;
}

}  // namespace decode_emu
