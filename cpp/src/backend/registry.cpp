// The one list of backends: adding a backend is one line here plus its folder.
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "spattn/error.hpp"

namespace spattn::backend {

namespace {

struct Entry {
  DLDeviceType type;
  Backend* backend;
};

// Host-visible CUDA memory (kDLCUDAHost, pinned) is ordinary host memory to the CPU kernels.
const std::vector<Entry>& entries() {
  static const std::vector<Entry> e = [] {
    std::vector<Entry> v{{kDLCPU, cpu_backend()}, {kDLCUDAHost, cpu_backend()}};
    if (Backend* c = cuda_backend()) v.push_back({kDLCUDA, c});
    return v;
  }();
  return e;
}

}  // namespace

Backend* find(DLDeviceType type) {
  for (const Entry& e : entries())
    if (e.type == type) return e.backend;
  return nullptr;
}

Backend& for_device(const DLDevice& device, const char* what) {
  if (Backend* b = find(device.device_type)) return *b;
  std::string m = std::string(what) + ": tensors are on " + describe(device) + ", but ";
  if (device.device_type == kDLCUDA)
    m += "this spattn was built without CUDA; rebuild with SPATTN_CUDA=ON or pass CPU tensors";
  else if (device.device_type == kDLCUDAManaged && find(kDLCUDA))
    m += "the CUDA kernels take device memory (kDLCUDA), not managed memory; pass device or CPU "
         "tensors";
  else
    m += "no spattn backend runs there; pass CPU tensors";
  throw RuntimeError(m);
}

const std::vector<Backend*>& all() {
  static const std::vector<Backend*> v = [] {
    std::vector<Backend*> r;
    for (const Entry& e : entries()) {
      bool seen = false;
      for (Backend* b : r) seen = seen || b == e.backend;
      if (!seen) r.push_back(e.backend);
    }
    return r;
  }();
  return v;
}

}  // namespace spattn::backend
