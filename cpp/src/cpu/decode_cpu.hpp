// The CPU decode: split-K attention of a few new queries against a KV cache (decode.cpp).
#pragma once

#include <cstdint>

#include "backend/backend.hpp"
#include "spattn/pattern.hpp"
#include "spattn/tensor.hpp"

namespace spattn::cpu {

// The planner's description of a decode call (backend/backend.hpp), checked by decode_api.cpp.
using DecodeArgs = backend::Decode;

void decode(const DecodeArgs& a);

// Mean key of every block of `block` keys of each sequence (blocks past cache_len: zeros).
// Paged: every table entry below cache_len is checked here.
using PoolKeysArgs = backend::PoolKeys;

void pool_keys(const PoolKeysArgs& a);

}  // namespace spattn::cpu
