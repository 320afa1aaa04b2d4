// spattn/cuda/allocate.hpp with CUDA: device memory behind a versioned DLPack tensor.
#include "spattn/cuda/allocate.hpp"

#include <string>

#include <cuda_runtime_api.h>

#include "spattn/error.hpp"

namespace spattn::cuda {

namespace {

struct DeviceBlock {
  DLManagedTensorVersioned managed;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  void* data;
  int device;
};

void device_block_deleter(DLManagedTensorVersioned* self) {
  auto* block = static_cast<DeviceBlock*>(self->manager_ctx);
  int prev = 0;
  const bool restore = cudaGetDevice(&prev) == cudaSuccess && prev != block->device;
  if (restore) (void)cudaSetDevice(block->device);
  (void)cudaFree(block->data);  // a deleter must not throw; a failure here leaks at worst
  if (restore) (void)cudaSetDevice(prev);
  (void)cudaGetLastError();
  delete block;
}

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  throw RuntimeError(std::string("cuda allocate: ") + what + " failed: " + cudaGetErrorName(e) +
                     " (" + cudaGetErrorString(e) + ")");
}

}  // namespace

ManagedTensor allocate(DType dtype, const std::vector<int64_t>& shape, int device) {
  if (shape.size() > size_t(kMaxDims))
    throw ValueError("allocate: expected at most " + std::to_string(kMaxDims) + " dimensions");
  int64_t numel = 1;
  for (int64_t n : shape) {
    if (n < 0) throw ValueError("allocate: negative size " + std::to_string(n));
    if (n != 0 && numel > (int64_t(1) << 62) / n)
      throw ValueError("allocate: the tensor is too large");
    numel *= n;
  }
  const size_t bytes = size_t(numel) * size_t(dtype_size(dtype));
  int prev = 0;
  check(cudaGetDevice(&prev), "cudaGetDevice");
  check(cudaSetDevice(device), "cudaSetDevice");
  void* data = nullptr;
  const cudaError_t e = cudaMalloc(&data, bytes == 0 ? 256 : bytes);  // a unique valid pointer
  (void)cudaSetDevice(prev);
  check(e, "cudaMalloc");
  auto* block = new DeviceBlock();
  block->data = data;
  block->device = device;
  const int nd = int(shape.size());
  int64_t stride = 1;
  for (int i = nd - 1; i >= 0; --i) {
    block->shape[i] = shape[size_t(i)];
    block->strides[i] = stride;
    stride *= shape[size_t(i)] > 0 ? shape[size_t(i)] : 1;
  }
  DLManagedTensorVersioned& m = block->managed;
  m.version = DLPackVersion{1, 1};
  m.manager_ctx = block;
  m.deleter = &device_block_deleter;
  m.flags = 0;
  m.dl_tensor.data = data;
  m.dl_tensor.device = DLDevice{kDLCUDA, device};
  m.dl_tensor.ndim = nd;
  m.dl_tensor.dtype = to_dl(dtype);
  m.dl_tensor.shape = block->shape;
  m.dl_tensor.strides = block->strides;
  m.dl_tensor.byte_offset = 0;
  return ManagedTensor::adopt(&m);
}

void order_after_spattn(intptr_t stream, int device) {
  if (stream == 1 || stream == -1) return;
  int prev = 0;
  check(cudaGetDevice(&prev), "cudaGetDevice");
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaEvent_t ev = nullptr;
  cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventRecord(ev, cudaStreamLegacy);
  const cudaStream_t consumer =
      stream == 2 ? cudaStreamPerThread : reinterpret_cast<cudaStream_t>(stream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(consumer, ev, 0);
  if (ev != nullptr) (void)cudaEventDestroy(ev);  // released once the wait is done
  (void)cudaSetDevice(prev);
  check(e, "ordering the consumer's stream after spattn's work");
}

}  // namespace spattn::cuda
