// The CPU decode: split-K attention of a few new queries against a KV cache (decode.cpp).
#pragma once

#include <cstdint>

#include "spattn/pattern.hpp"
#include "spattn/tensor.hpp"

namespace spattn::cpu {

// Checked by the caller (decode_api.cpp): q [B, Nq, Hq, D]; k/v contiguous [B, Ncap, Hkv, D/Dv]
// or paged [pages, page_size, Hkv, D/Dv] with table [B, max_pages] (int32 or int64);
// cache_len[b] in [0, capacity]; out [B, Nq, Hq, Dv]; lse [B, Hq, Nq] float32 or data null.
// The pattern is checked and compiled here per sequence, and every table entry the pattern
// visits is checked, before anything is computed (ValueError naming sequence and column).
struct DecodeArgs {
  TensorView q, k, v, out, lse;
  TensorView table;  // data null (and paged false): contiguous caches
  bool paged = false;
  const int64_t* cache_len = nullptr;  // B values
  DType dtype = DType::Float32;
  float scale = 1.f;
  const Pattern* pattern = nullptr;
  // TopKBlocks only: the caller's per-block mean keys, float32 [B, blocks, Hkv, D] (data null:
  // pooled from the cache).
  TensorView pooled;
};

void decode(const DecodeArgs& a);

// Mean key of every block of `block` keys of each sequence (blocks past cache_len: zeros).
// Checked by the caller: k as in DecodeArgs, out float32 [B, blocks, Hkv, D] with blocks *
// block >= every cache_len. Paged: every table entry below cache_len is checked here.
struct PoolKeysArgs {
  TensorView k, table, out;
  bool paged = false;
  const int64_t* cache_len = nullptr;
  DType dtype = DType::Float32;
  int64_t block = 1;
};

void pool_keys(const PoolKeysArgs& a);

}  // namespace spattn::cpu
