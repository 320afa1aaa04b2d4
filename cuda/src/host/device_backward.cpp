// The host side of the backward's device layout: plan the buffers, upload the program, launch
// the row compile and the transposition on the caller's stream.
#include "device_backward.hpp"

#include <string>

#include "device_layout_api.hpp"
#include "device_transpose_api.hpp"
#include "spattn/cuda/device_transpose_logic.hpp"
#include "spattn/test_hooks.hpp"

namespace spattn::cuda::launch {

namespace {

// Device memory one backward layout may take, kept and temporary together (capacities are
// bounds; past this the host compiler does it exactly, see device_transpose_logic.hpp).
constexpr size_t kMaxBackwardLayoutBytes = size_t(1) << 30;

struct BackwardLayoutFns {
  cudaError_t (*rows)(const DevLayoutLaunch&, cudaStream_t);
  size_t (*sort_bytes)(int64_t);
  cudaError_t (*columns)(const DevTransposeLaunch&, cudaStream_t);
  size_t (*scan_bytes)(int64_t);
};

// The same architecture choice as the other kernels (arch_for in launch_util.hpp).
const BackwardLayoutFns* backward_layout_fns(int device) {
  const ArchFns* a = device_info(device).arch;
#if SPATTN_CUDA_HAS_SM90A
  static const BackwardLayoutFns k90{&sm90a::compile_layout, &sm90a::layout_sort_bytes,
                                     &sm90a::compile_backward_columns,
                                     &sm90a::transpose_scan_bytes};
  if (a == &kSm90a) return &k90;
#endif
#if SPATTN_CUDA_HAS_SM80
  static const BackwardLayoutFns k80{&sm80::compile_layout, &sm80::layout_sort_bytes,
                                     &sm80::compile_backward_columns,
                                     &sm80::transpose_scan_bytes};
  if (a == &kSm80) return &k80;
#endif
  (void)a;
  return nullptr;
}

}  // namespace

bool compile_backward_layout_on_device(const CompiledPattern& cp, int64_t hkv, int64_t bq,
                                       int64_t bk, bool with_rows, int device,
                                       cudaStream_t stream, const Allocator* allocator,
                                       StagedBackward* staged, DeviceBlob* blob) {
  const BackwardLayoutFns* fns = backward_layout_fns(device);
  if (fns == nullptr) return false;
  const Predicate pred = cp.predicate();
  if (!device_layout_refusal(pred).empty()) return false;
  DeviceGuard guard(device);
  // As the forward's: a compile captured into a graph would run only when the graph does.
  if (stream_capturing(stream)) return false;
  const int64_t nqb = (cp.nq() + bq - 1) / bq;
  const int64_t nkb = (cp.nk() + bk - 1) / bk;
  const int64_t cap = spattn::detail::layout_row_budget(cp.heads() * nqb);
  DeviceBackwardPlan plan;
  std::string why;
  if (!plan_device_backward(pred, cp.nq(), cp.nk(), cp.hq(), hkv, bq, bk, cap, with_rows,
                            fns->sort_bytes(cp.hq() * nqb), fns->sort_bytes(hkv * nkb),
                            fns->scan_bytes(pred.heads * nkb), kMaxBackwardLayoutBytes, &plan,
                            &why))
    return false;
  blob->device = device;
  allocate_blob(*blob, plan.total);
  plan.staged.relocate_nodes(blob->dev);
  upload_blob(*blob, plan.staged.blob, stream);
  // The rows' temporaries and the transposition's: only while the launches run.
  DeviceScratch temp(plan.temp_total, stream, device_info(device).pools, allocator, device);
  check(fns->rows(plan.rows.launch(blob->dev, temp.p), stream),
        "launching the device layout compile (backward rows)");
  check(fns->columns(plan.launch(blob->dev, temp.p), stream),
        "launching the device layout transposition (backward columns)");
  *staged = std::move(plan.staged);
  return true;
}

}  // namespace spattn::cuda::launch
