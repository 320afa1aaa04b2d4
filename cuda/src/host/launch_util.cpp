// The out-of-line parts of launch_util.hpp: the per-device facts, and persistent device blobs.
#include "launch_util.hpp"

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

namespace spattn::cuda::launch {

namespace {

// Lets allocations and a private stream's copy run while the caller's thread is capturing a
// graph in the global mode (torch.cuda.graph's default), which would refuse them otherwise.
struct RelaxedCapture {
  cudaStreamCaptureMode prev = cudaStreamCaptureModeRelaxed;
  RelaxedCapture() { (void)cudaThreadExchangeStreamCaptureMode(&prev); }
  ~RelaxedCapture() { (void)cudaThreadExchangeStreamCaptureMode(&prev); }
};

}  // namespace

const DeviceInfo& device_info(int device) {
  static std::mutex m;
  static std::vector<std::unique_ptr<DeviceInfo>> infos;
  std::lock_guard<std::mutex> lock(m);
  if (device < 0) throw RuntimeError("cuda attention: bad device index " + std::to_string(device));
  if (size_t(device) >= infos.size()) infos.resize(size_t(device) + 1);
  if (!infos[size_t(device)]) {
    auto info = std::make_unique<DeviceInfo>();
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    int pools = 0;
    check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
          "cudaDeviceGetAttribute(MemoryPoolsSupported)");
    info->arch = arch_for(prop.major, prop.minor);
    info->pools = pools != 0;
    info->major = prop.major;
    info->minor = prop.minor;
    info->sms = prop.multiProcessorCount;
    info->name = prop.name;
    infos[size_t(device)] = std::move(info);
  }
  return *infos[size_t(device)];
}

const ArchFns& arch_of(int device, const char* what) {
  const DeviceInfo& d = device_info(device);
  if (!d.arch)
    throw RuntimeError(std::string(what) + ": no kernels for " + d.name + " (sm_" +
                       std::to_string(d.major) + std::to_string(d.minor) +
                       "); this spattn was compiled for " + SPATTN_CUDA_ARCHS_STR);
  return *d.arch;
}

DeviceBlob::~DeviceBlob() {
  // Called when the compiled pattern goes (or is pushed out of its cache). Work queued earlier
  // may still read the blob: cudaFree waits for the device to finish it.
  int prev = -1;
  const bool restore = cudaGetDevice(&prev) == cudaSuccess && prev != device;
  if (restore) (void)cudaSetDevice(device);
  if (dev) (void)cudaFree(dev);
  if (pinned) (void)cudaFreeHost(pinned);
  if (restore) (void)cudaSetDevice(prev);
  (void)cudaGetLastError();
}

void allocate_blob(DeviceBlob& out, size_t bytes) {
  RelaxedCapture relaxed;
  DeviceGuard guard(out.device);
  check(cudaMalloc(&out.dev, bytes == 0 ? 16 : bytes),
        "cudaMalloc(" + std::to_string(bytes) + " bytes of layout)");
}

void upload_blob(DeviceBlob& out, const std::vector<unsigned char>& blob, cudaStream_t stream) {
  if (blob.empty()) return;
  RelaxedCapture relaxed;
  DeviceGuard guard(out.device);
  check(cudaMallocHost(&out.pinned, blob.size()), "cudaMallocHost (layout staging)");
  std::memcpy(out.pinned, blob.data(), blob.size());
  if (!stream_capturing(stream)) {
    check(cudaMemcpyAsync(out.dev, out.pinned, blob.size(), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (layout upload)");
    return;
  }
  cudaStream_t side = nullptr;
  check(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaError_t e = cudaMemcpyAsync(out.dev, out.pinned, blob.size(), cudaMemcpyHostToDevice, side);
  if (e == cudaSuccess) e = cudaStreamSynchronize(side);
  (void)cudaStreamDestroy(side);
  check(e, "uploading the layout beside a graph capture");
}

}  // namespace spattn::cuda::launch
