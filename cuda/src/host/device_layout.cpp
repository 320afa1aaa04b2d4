// The host side of the device layout compiler: plan the buffers, upload the program, launch.
#include "device_layout.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#include "device_layout_api.hpp"
#include "spattn/cuda/device_layout_logic.hpp"
#include "spattn/test_hooks.hpp"

namespace spattn::cuda::launch {

namespace {

// Device memory one compiled layout may take (capacities are bounds, so a pattern whose bound
// is far above its real size would waste it; past this the host compiler does it exactly).
constexpr size_t kMaxLayoutBytes = size_t(1) << 30;

using CompileFn = cudaError_t (*)(const DevLayoutLaunch&, cudaStream_t);
using SortBytesFn = size_t (*)(int64_t);

struct LayoutFns {
  CompileFn compile;
  SortBytesFn sort_bytes;
};

// The same architecture choice as the other kernels (arch_for in launch_util.hpp).
const LayoutFns* layout_fns(int device) {
  const ArchFns* a = device_info(device).arch;
#if SPATTN_CUDA_HAS_SM90A
  static const LayoutFns k90{&sm90a::compile_layout, &sm90a::layout_sort_bytes};
  if (a == &kSm90a) return &k90;
#endif
#if SPATTN_CUDA_HAS_SM80
  static const LayoutFns k80{&sm80::compile_layout, &sm80::layout_sort_bytes};
  if (a == &kSm80) return &k80;
#endif
  (void)a;
  return nullptr;
}

}  // namespace

bool layout_on_device_requested() {
  const char* v = std::getenv("SPATTN_LAYOUT_COMPILE");
  if (v == nullptr || *v == 0 || std::strcmp(v, "device") == 0) return true;
  if (std::strcmp(v, "host") == 0) return false;
  throw ValueError(std::string("SPATTN_LAYOUT_COMPILE: expected 'device' or 'host', got '") + v +
                   "'");
}

bool compile_forward_layout_on_device(const CompiledPattern& cp, int64_t bq, int64_t bk,
                                      int device, cudaStream_t stream,
                                      const Allocator* allocator, StagedForward* staged,
                                      DeviceBlob* blob) {
  const LayoutFns* fns = layout_fns(device);
  if (fns == nullptr) return false;
  const Predicate pred = cp.predicate();
  if (!device_layout_refusal(pred).empty()) return false;
  DeviceGuard guard(device);
  // A compile captured into a graph would run only when the graph does, but the result is
  // kept for every later call: compile on the host (its upload runs beside the capture).
  if (stream_capturing(stream)) return false;
  const int64_t nqb = (cp.nq() + bq - 1) / bq;
  const int64_t cap = spattn::detail::layout_row_budget(cp.heads() * nqb);
  DeviceLayoutPlan plan;
  std::string why;
  if (!plan_device_layout(pred, cp.nq(), cp.nk(), cp.hq(), bq, bk, cap,
                          fns->sort_bytes(cp.hq() * nqb), kMaxLayoutBytes, &plan, &why))
    return false;
  blob->device = device;
  allocate_blob(*blob, plan.total);
  plan.staged.relocate_nodes(blob->dev);
  upload_blob(*blob, plan.staged.blob, stream);
  // Scratch slots, costs and the sort's buffers: only while the launches run.
  DeviceScratch temp(plan.temp_total, stream, device_info(device).pools, allocator, device);
  check(fns->compile(plan.launch(blob->dev, temp.p), stream), "launching the device layout compile");
  *staged = std::move(plan.staged);
  return true;
}

}  // namespace spattn::cuda::launch
