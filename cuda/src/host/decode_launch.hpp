// The CUDA backend's decode and pool_keys (decode.cpp): plan on the host, launch on the
// caller's stream. Internal to the CUDA backend (cuda_backend.cpp).
#pragma once

#include "backend/backend.hpp"

namespace spattn::cuda {

void decode_on_device(const backend::Decode& a, const backend::Call& call);
void pool_keys_on_device(const backend::PoolKeys& a, const backend::Call& call);

}  // namespace spattn::cuda
