// What the CUDA backend of this build is: whether it was compiled, for which architectures, and
// how many devices the machine has. Implemented by cuda/src/host/backend_info.cpp when spattn is
// built with CUDA (SPATTN_WITH_CUDA=1) and by cuda/src/stub.cpp otherwise, so callers need no
// #if. None of these throws, and none touches the GPU or the driver unless called: nothing here
// runs at import or at load time.
#pragma once

#include <string>

namespace spattn::cuda {

// True when the CUDA kernels are part of this build.
bool compiled() noexcept;

// The architectures the kernels were compiled for, comma-separated, e.g. "sm_80,sm_90a"; empty
// when not compiled.
std::string compiled_archs();

// CUDA devices visible to this process; 0 when CUDA is not compiled, or there is no driver, no
// GPU, or any other error (the error is cleared, never thrown).
int device_count() noexcept;

// Runs a small CuTe kernel on `device` and checks its result against the CPU: "" when it passed,
// else a message (no device, no kernel for its architecture, wrong result, CUDA error, or "not
// compiled"). For checks on a GPU machine (spattn info, tests), never called implicitly.
std::string selftest(int device = 0);

}  // namespace spattn::cuda
