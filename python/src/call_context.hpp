// What one Python call hands the core besides its arrays: the scale and thread budget, and for
// CUDA arrays of torch or cupy the framework's current stream and its allocator (Options::stream
// and Options::allocator), so that spattn's device work is ordered with the caller's and its
// workspaces come from the caller's caching allocator (visible to torch.cuda.memory_allocated,
// captured with the rest in a CUDA graph).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "spattn/options.hpp"

namespace spattn {
namespace python {

namespace py = pybind11;

// While alive, import_array passes `stream` to CUDA producers' __dlpack__ (DLPack's rule: the
// producer makes its pending work visible to that stream). A null handle or None: no stream.
class ImportStream {
 public:
  explicit ImportStream(py::handle stream);
  ~ImportStream();
  ImportStream(const ImportStream&) = delete;
  ImportStream& operator=(const ImportStream&) = delete;
  // The stream of the innermost live scope (a null handle when none).
  static py::handle current();

 private:
  py::handle prev_;
};

class CallContext {
 public:
  // scale: None or a float (the Python layer has checked it); num_threads: 0 or more;
  // stream: None, or the cudaStream_t of the caller's framework as an int (0: legacy default);
  // workspace: None, or a callable nbytes -> (device pointer int, owner object) that allocates
  // from the framework (the owner is kept until the core gives the memory back).
  CallContext(py::handle scale, int num_threads, py::handle stream, py::handle workspace);
  CallContext(const CallContext&) = delete;
  CallContext& operator=(const CallContext&) = delete;

  const Options& options() const { return opt_; }

 private:
  static void* allocate(void* ctx, size_t bytes, DLDevice device, void* stream);
  static void deallocate(void* ctx, void* ptr, size_t bytes, DLDevice device, void* stream);

  Options opt_;
  Allocator alloc_;
  py::object stream_obj_;  // what __dlpack__ gets: 1 for the legacy default stream
  py::object workspace_;
  std::mutex m_;
  std::unordered_map<uintptr_t, py::object> live_;
  ImportStream import_;
};

}  // namespace python
}  // namespace spattn
