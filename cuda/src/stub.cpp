// The CUDA side of a CPU-only build (SPATTN_WITH_CUDA=0): no backend registered, no kernels, no
// devices, and no CUDA runtime linked. spattn/cuda/backend_info.hpp and allocate.hpp answer so
// that callers need no #if.
#include "backend/backend.hpp"
#include "spattn/cuda/allocate.hpp"
#include "spattn/cuda/backend_info.hpp"
#include "spattn/cuda/backward.hpp"
#include "spattn/cuda/forward.hpp"
#include "spattn/error.hpp"

namespace spattn::backend {

Backend* cuda_backend() { return nullptr; }

}  // namespace spattn::backend

namespace spattn::cuda {

bool compiled() noexcept { return false; }

std::string compiled_archs() { return {}; }

int device_count() noexcept { return 0; }

std::string selftest(int) { return "not compiled: spattn was built without CUDA (SPATTN_CUDA=OFF or no nvcc)"; }

// The kernels' tiles and kernel lists, so that host-side tests need no #if.
ForwardTile forward_tile(int64_t d, int64_t dv) { return sm80_forward_tile(DType::BFloat16, d, dv); }
ForwardTile forward_tile(int64_t d, int64_t dv, int, DType dtype) {
  return sm80_forward_tile(dtype, d, dv);
}
bool supports(DType, int64_t, int64_t) { return false; }
std::string forward_kernels() { return {}; }
std::string forward_kernels_sm90a() { return {}; }
void attention_forward(const ForwardProblem&) {
  throw RuntimeError("cuda attention: this spattn was built without CUDA");
}
BackwardTile backward_tile(int64_t, int64_t) { return {kBwdBlockM, kBwdBlockN}; }
BackwardTile backward_tile(int64_t, int64_t, int, DType) { return {kBwdBlockM, kBwdBlockN}; }
std::string backward_kernels_sm90a() { return {}; }
bool supports_backward(DType, int64_t, int64_t) { return false; }
std::string backward_kernels() { return {}; }
void attention_backward(const BackwardProblem&) {
  throw RuntimeError("cuda attention backward: this spattn was built without CUDA");
}

ManagedTensor allocate(DType, const std::vector<int64_t>&, int) {
  throw RuntimeError("cuda allocate: this spattn was built without CUDA");
}

// Without CUDA no result lives on a device, so there is never anything to order.
void order_after_spattn(intptr_t, int) {}

}  // namespace spattn::cuda
