// TopKBlocks inside attention on a CUDA device: the blocks are chosen on the device from q and k
// (kernels/topk_select.cu, the CPU's rule: spattn/cuda/topk_logic.hpp) and written straight into
// the layouts the forward and backward kernels walk, one per batch element. Sizes come from k,
// the blocks and the `always` pattern, so nothing is read back and nothing waits for the device.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.hpp"
#include "launch_util.hpp"
#include "spattn/cuda/topk_logic.hpp"

namespace spattn::cuda {

struct TopkTemplate;

// One call's choice: the per-batch layouts in a workspace freed (in stream order) with this
// object, which must outlive the launches that read it (they are queued before it goes).
struct TopkRun {
  std::shared_ptr<const TopkTemplate> keep;  // what is uploaded once per problem
  std::unique_ptr<launch::DeviceScratch> ws;
  StagedForward forward;    // valid with rows
  StagedBackward backward;  // valid with cols (and rows too for the sm90a dQ pass)
  unsigned char* regions = nullptr;
  size_t region_bytes = 0;
  const void* region(int64_t b) const { return regions + size_t(b) * region_bytes; }
};

// Chooses every batch element's blocks of `topk` from a.q and a.k and builds the layouts for
// kernels of tm x tn tiles: rows (forward, sm90a dQ) and / or columns (backward). Queued on
// call.stream. RuntimeError when a query block has more candidates than fit in the device's
// shared memory.
TopkRun topk_select_on_device(const backend::Attention& a, const Pattern& topk, int64_t tm,
                              int64_t tn, bool rows, bool cols, const backend::Call& call);

// TopKBlocks' choice alone (Backend::select_topk): every batch element of probs[0..n) chosen on
// the device on call.stream, the masks copied back into masks (host memory, one per batch
// element in order, each shaped by the planner) in one copy, waited for. RuntimeError on a
// stream capturing a CUDA graph (the wait cannot be captured), and as topk_select_on_device.
void topk_masks_on_device(const backend::Attention* probs, size_t n, const Pattern& topk,
                          BlockMask* masks, const backend::Call& call);

// Attention restricted to batch element b, as a batch of one (views into a's tensors).
backend::Attention batch_attention(const backend::Attention& a, int64_t b);
backend::Gradients batch_gradients(const backend::Gradients& g, int64_t b);

}  // namespace spattn::cuda
