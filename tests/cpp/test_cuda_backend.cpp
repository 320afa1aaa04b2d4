// spattn/cuda/backend_info.hpp in either build: CPU-only (the stub) or with CUDA. Without a GPU
// or driver, device_count() must be 0 and nothing may throw or crash; with one, the CuTe
// self-test kernel must run and give the right result. Exits nonzero on failure.
#include <spattn/cuda/backend_info.hpp>
#include <spattn/spattn.hpp>

#include "backend/backend.hpp"

#include <cstdio>
#include <string>

int main() {
  int failures = 0;
  auto check = [&failures](bool ok, const char* what) {
    if (!ok) {
      std::fprintf(stderr, "FAILED: %s\n", what);
      ++failures;
    }
  };

  const bool compiled = spattn::cuda::compiled();
  const std::string archs = spattn::cuda::compiled_archs();
  const int devices = spattn::cuda::device_count();
  std::printf("SPATTN_WITH_CUDA=%d compiled=%d archs='%s' devices=%d\n", SPATTN_WITH_CUDA,
              compiled ? 1 : 0, archs.c_str(), devices);

  check(compiled == (SPATTN_WITH_CUDA != 0), "compiled() agrees with SPATTN_WITH_CUDA");
  check(compiled ? !archs.empty() : archs.empty(), "compiled_archs() empty exactly when not compiled");
  check(devices >= 0, "device_count() >= 0");
  check(compiled || devices == 0, "a CPU-only build sees no devices");
  check(spattn::cuda::device_count() == devices, "device_count() is stable");

  const std::string result = spattn::cuda::selftest(0);
  std::printf("selftest(0): %s\n", result.empty() ? "passed" : result.c_str());
  if (compiled && devices > 0) {
    check(result.empty(), "the CuTe self-test kernel passes on device 0");
  } else {
    check(!result.empty(), "selftest() reports why it cannot run");
  }
  check(!spattn::cuda::selftest(-1).empty(), "selftest(-1) is refused");

  // What the CUDA backend takes for attention, decode and pool_keys (no device needed to ask).
  using spattn::DType;
  using spattn::backend::Op;
  spattn::backend::Backend* be = spattn::backend::cuda_backend();
  check((be != nullptr) == compiled, "a CUDA backend exactly when compiled");
  if (be) {
    const spattn::backend::Call call{DLDevice{kDLCUDA, 0}};
    check(be->unsupported(Op::Decode, DType::BFloat16, 128, 128, call).empty(), "decode: bf16 D=128");
    check(be->unsupported(Op::Decode, DType::Float16, 64, 32, call).empty(), "decode: f16 D=64, Dv=32");
    check(be->unsupported(Op::Decode, DType::BFloat16, 256, 256, call).empty(), "decode: D=256");
    check(!be->unsupported(Op::Decode, DType::BFloat16, 512, 128, call).empty(), "decode: D=512 refused");
    check(be->unsupported(Op::Decode, DType::Float32, 128, 128, call).empty(), "decode: float32");
    // float32 attention: the SIMT kernels (head dims up to 128, smaller ones padded); D=256 has
    // no float32 kernel to pad to.
    for (Op op : {Op::Forward, Op::Backward}) {
      check(be->unsupported(op, DType::Float32, 128, 128, call).empty(), "attention: float32 D=128");
      check(be->unsupported(op, DType::Float32, 64, 40, call).empty(), "attention: float32 D=64, Dv=40");
      check(!be->unsupported(op, DType::Float32, 256, 256, call).empty(), "attention: float32 D=256 refused");
      check(!be->unsupported(op, DType::Float64, 64, 64, call).empty(), "attention: float64 refused");
    }
    check(!be->unsupported(Op::Decode, DType::Float64, 128, 128, call).empty(), "decode: float64 refused");
    check(be->unsupported(Op::PoolKeys, DType::Float32, 128, 128, call).empty(), "pool_keys: float32");
    // TopKBlocks' choice: in attention, in decode and alone (select_blocks), on the GPU.
    for (Op op : {Op::Select, Op::AttentionSelect, Op::DecodeSelect}) {
      for (DType t : {DType::BFloat16, DType::Float16, DType::Float32})
        check(be->unsupported(op, t, 128, 128, call).empty(), "TopKBlocks' selection runs on the GPU");
      check(!be->unsupported(op, DType::Float64, 128, 128, call).empty(),
            "TopKBlocks' selection: float64 refused");
    }
    check(be->unsupported_modifiers(Op::Decode, call).empty(), "decode: score modifiers");
  }

  return failures == 0 ? 0 : 1;
}
