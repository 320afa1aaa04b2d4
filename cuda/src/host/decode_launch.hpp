// The CUDA backend's decode and pool_keys (decode.cpp): plan on the host, or on the device when
// cache_len lives there (decode_device_plan.cpp), launch on the caller's stream. Internal to
// the CUDA backend (cuda_backend.cpp).
#pragma once

#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/backend.hpp"

namespace spattn::cuda {

struct DecodeParams;
namespace launch {
struct ArchFns;
}

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
// decode_on_device for a TopKBlocks pattern with host lengths: the blocks chosen and the plan
// made on the device (decode_topk.cpp).
void decode_topk_on_device(const backend::Decode& a, const backend::Call& call);
// TopKBlocks with cache_len on the device (decode_topk.cpp): why it cannot be planned there
// (empty: it can; decode_device_plan_refusal asks), and the call that does it.
std::string decode_topk_device_lengths_refusal(const backend::Decode& a, const backend::Call& call);
void decode_topk_device_lengths(const backend::Decode& a, const backend::Call& call);
// RuntimeError "<what> on CUDA cannot be captured in a CUDA graph here: <why>" when `stream`
// is capturing a graph (decode.cpp).
void refuse_capture(cudaStream_t stream, const char* what, const std::string& why);
// dec_dim_max(D, Dv): the decode kernel's head dim for D and Dv, or RuntimeError when it has
// none (decode.cpp).
int64_t decode_dim_max(int64_t D, int64_t Dv);
// Keys per decode block: the page size, or kDecContigBlock for contiguous caches (decode.cpp).
int64_t decode_block_keys(const backend::Decode& a);
// arch's decode kernels on p for call a, or RuntimeError naming them (decode.cpp).
void launch_decode_kernels(const launch::ArchFns& arch, const DecodeParams& p,
                           const backend::Decode& a, cudaStream_t stream);
// Copies a call's plan blob to `dev` on `stream` through the device's pinned staging buffer
// (decode.cpp; the next call that reuses the buffer waits for this copy, not the caller).
void upload_call_blob(const std::vector<unsigned char>& blob, void* dev, cudaStream_t stream,
                      int device);
// backend::Backend::raise_deferred_decode_errors (decode_errors.cpp).
void raise_deferred_decode_errors(const backend::Call& call);
void pool_keys_on_device(const backend::PoolKeys& a, const backend::Call& call);

}  // namespace spattn::cuda
