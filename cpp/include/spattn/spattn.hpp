// spattn: sparse attention on DLPack tensors. The C++ entry points (docs/api.md).
//
//   q   [B, Nq, Hq, D]     k [B, Nk, Hkv, D]     v [B, Nk, Hkv, Dv]
//   out [B, Nq, Hq, Dv]    lse [B, Hq, Nq] float32 (natural-log logsumexp of scaled scores)
//
// Any strides; float32, float16 or bfloat16 (q, k, v, out, dout and the gradients share one
// dtype), or float64 on the CPU (a plain float64 kernel for gradient checks; its lse, here and
// everywhere below, is float64 too); Hq % Hkv == 0. The tensors' device picks the backend. Errors are thrown as
// spattn::ValueError / TypeError / RuntimeError (error.hpp) before anything is written.
#pragma once

#include <map>
#include <string>

#include "spattn/dlpack.hpp"
#include "spattn/error.hpp"
#include "spattn/layout.hpp"
#include "spattn/merge.hpp"
#include "spattn/options.hpp"
#include "spattn/pattern.hpp"
#include "spattn/select.hpp"

namespace spattn {

// out (and lse when not null) are written; nothing else is.
void attention_forward(const DLTensor& q, const DLTensor& k, const DLTensor& v,
                       const Pattern& pattern, const DLTensor& out, const DLTensor* lse,
                       const Options& options = {});

// dq, dk, dv are written (overwritten, not accumulated into).
void attention_backward(const DLTensor& dout, const DLTensor& q, const DLTensor& k,
                        const DLTensor& v, const DLTensor& out, const DLTensor& lse,
                        const Pattern& pattern, const DLTensor& dq, const DLTensor& dk,
                        const DLTensor& dv, const Options& options = {});

// Variable-length batches: q [Tq, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv], out [Tq, Hq, Dv],
// lse [Hq, Tq] float32; cu_seqlens_q / cu_seqlens_k are int32 (or int64) [B+1] offsets on q's
// device: first 0, non-decreasing, last Tq / Tk, both of one length. Sequence b is its own
// problem on rows [cu_q[b], cu_q[b+1]) of q and [cu_k[b], cu_k[b+1]) of k and v, with the
// pattern applied inside it (its own Nq, Nk, bottom-right alignment); a block layout must fit
// every sequence. Empty sequences are fine (out rows 0, lse -inf, gradients 0).
void attention_forward_varlen(const DLTensor& q, const DLTensor& k, const DLTensor& v,
                              const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                              const Pattern& pattern, const DLTensor& out, const DLTensor* lse,
                              const Options& options = {});

void attention_backward_varlen(const DLTensor& dout, const DLTensor& q, const DLTensor& k,
                               const DLTensor& v, const DLTensor& out, const DLTensor& lse,
                               const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                               const Pattern& pattern, const DLTensor& dq, const DLTensor& dk,
                               const DLTensor& dv, const Options& options = {});

// Attention of a few new queries against a KV cache (docs/api.md):
//   q [B, Nq, Hq, D] with 0 <= Nq <= 64; cache_len int32 (or int64) [B]: the valid keys of each
//   sequence, the new ones included;
//   contiguous caches (block_table == nullptr): k_cache [B, Ncap, Hkv, D], v_cache
//   [B, Ncap, Hkv, Dv], cache_len[b] <= Ncap;
//   paged caches: k_cache [pages, page_size, Hkv, D], v_cache [pages, page_size, Hkv, Dv],
//   block_table int32 (or int64) [B, max_pages]: key j of sequence b lies in page
//   block_table[b, j / page_size], row j % page_size; cache_len[b] <= max_pages * page_size.
//   out [B, Nq, Hq, Dv], lse (optional) [B, Hq, Nq] float32.
// Sequence b equals attention_forward(q[b], k[b, :cache_len[b]], v[b, :cache_len[b]], pattern)
// (bottom-right alignment, Nk = cache_len[b]). Only the key blocks (pages) the pattern visits
// are read, and only their block_table entries: each must lie in [0, pages) (checked before
// anything is computed); entries of pages the pattern skips are never read. The keys are
// split across threads (split-K) and the parts merged exactly.
//
// TopKBlocks chooses each sequence's key blocks from its new queries and the mean key of every
// block (docs/patterns.md). By default the means are computed from the cache, reading every key the
// choice scores; pooled_keys (float32 [B, blocks, Hkv, D], block c = keys c*bk .. c*bk+bk-1 of
// the pattern's bk, as pool_keys writes them) gives them instead, so that only the chosen
// blocks' keys are read. Every block the choice scores must be there and current: for a causal
// pattern those are complete blocks only, so an entry stays valid once its block is full.
//
// On a CUDA device with cache_len on that device too, a pattern whose rule does not depend on
// the length (docs/api.md, "Decode on a GPU") is planned there: the host never reads the
// lengths, the call never synchronises and it can be captured in a CUDA graph. A bad length or
// table entry is then found on the device: by default the call waits for its kernels and
// raises ValueError (as on the CPU); with options.decode_defer_errors, or while the stream is
// capturing a graph, it returns at once and the error waits on the device for
// check_decode_errors.
void decode(const DLTensor& q, const DLTensor& k_cache, const DLTensor& v_cache,
            const DLTensor& cache_len, const Pattern& pattern, const DLTensor* block_table,
            const DLTensor& out, const DLTensor* lse, const Options& options = {},
            const DLTensor* pooled_keys = nullptr);

// Raises (ValueError, as decode would have) the first error a deferred CUDA decode left on
// `device` since the last check, and forgets it; returns when there is none. Waits for all the
// device's work first (cudaDeviceSynchronize): not while a stream is capturing. Nothing to do
// for the CPU.
void check_decode_errors(const DLDevice& device);

// The mean key of every block of `block` keys of each sequence of a cache (laid out as for
// decode), into out float32 [B, blocks, Hkv, D] with blocks * block >= every cache_len: block
// c of sequence b is the mean of keys c*block .. min(cache_len[b], (c+1)*block) - 1; blocks past
// cache_len are 0. B is k_cache's first dimension, or block_table's when paged. On a CUDA
// device it runs on options.stream with workspace from options.allocator. With cache_len on
// that device too, the kernel reads and checks the lengths itself: no host read, and the call
// can be captured in a CUDA graph; a bad length (outside [0, capacity], or past out's blocks)
// or visited table entry is reported as decode's are (options.decode_defer_errors, graph
// captures, check_decode_errors). The other options do not apply.
void pool_keys(const DLTensor& k_cache, const DLTensor& cache_len, int64_t block,
               const DLTensor* block_table, const DLTensor& out, const Options& options = {});

// Build and runtime facts: version, backends, compiled CUDA architectures, SIMD level, threads.
std::map<std::string, std::string> info();

// The library version, "MAJOR.MINOR.PATCH".
const char* version();

}  // namespace spattn
