// spattn/cuda/backend_info.hpp for a CPU-only build (SPATTN_WITH_CUDA=0): no kernels, no
// devices, and no CUDA runtime linked.
#include "spattn/cuda/backend_info.hpp"

namespace spattn::cuda {

bool compiled() noexcept { return false; }

std::string compiled_archs() { return {}; }

int device_count() noexcept { return 0; }

std::string selftest(int) { return "not compiled: spattn was built without CUDA (SPATTN_CUDA=OFF or no nvcc)"; }

}  // namespace spattn::cuda
