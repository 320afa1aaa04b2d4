// The CUDA backend's decode and pool_keys (decode.cpp): plan on the host, or on the device when
// cache_len lives there (decode_device_plan.cpp), launch on the caller's stream. Internal to
// the CUDA backend (cuda_backend.cpp).
#pragma once

#include <string>

#include "backend/backend.hpp"

namespace spattn::cuda {

struct DecodeParams;

void decode_on_device(const backend::Decode& a, const backend::Call& call);
// backend::Backend::device_lengths_refusal: empty when decode `a` can be planned on the device
// from a.lengths (decode_device_plan.cpp); raises RuntimeError when it cannot and the stream is
// capturing a graph (the host read of the lengths would break the capture).
std::string decode_device_plan_refusal(const backend::Decode& a, const backend::Call& call);
// The decode kernels' parameters that do not depend on the plan: tensors, strides, sizes,
// scale and modifiers (decode.cpp).
void fill_decode_params(const backend::Decode& a, int64_t bk, int64_t dmax, DecodeParams* p);
// decode_on_device for a.cache_len == null: the plan made on the device from a.lengths
// (decode_device_plan.cpp; decode_device_plan_refusal was empty).
void decode_device_plan(const backend::Decode& a, const backend::Call& call);
// backend::Backend::raise_deferred_decode_errors (decode_errors.cpp).
void raise_deferred_decode_errors(const backend::Call& call);
void pool_keys_on_device(const backend::PoolKeys& a, const backend::Call& call);

}  // namespace spattn::cuda
