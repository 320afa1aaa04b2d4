// The CUDA decode's error records: read back, kept on the device, raised (decode_errors.hpp).
#include "decode_errors.hpp"

#include "decode_launch.hpp"

#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "launch_util.hpp"
#include "spattn/error.hpp"
#include "spattn/pattern.hpp"

namespace spattn::cuda {

using namespace launch;

namespace {

// Work outside a capture while the thread captures in the global mode (torch.cuda.graph's).
struct RelaxedMode {
  cudaStreamCaptureMode prev = cudaStreamCaptureModeRelaxed;
  RelaxedMode() { (void)cudaThreadExchangeStreamCaptureMode(&prev); }
  ~RelaxedMode() { (void)cudaThreadExchangeStreamCaptureMode(&prev); }
};

// Sets n words at dev to all ones on a private stream and waits (legal during a capture).
void clear_words(void* dev, size_t n) {
  RelaxedMode relaxed;
  cudaStream_t side = nullptr;
  check(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaError_t e = cudaMemsetAsync(dev, 0xff, n * sizeof(unsigned long long), side);
  if (e == cudaSuccess) e = cudaStreamSynchronize(side);
  (void)cudaStreamDestroy(side);
  check(e, "clearing the decode error record");
}

struct PerDevice {
  std::mutex m;
  unsigned long long* sticky = nullptr;  // device, kDecStickyWords
  unsigned long long* pinned = nullptr;  // host, kDecStickyWords (read-back)
};

PerDevice& per_device(int device) {
  static std::mutex m;
  static std::vector<std::unique_ptr<PerDevice>> all;
  std::lock_guard<std::mutex> lock(m);
  if (size_t(device) >= all.size()) all.resize(size_t(device) + 1);
  if (!all[size_t(device)]) all[size_t(device)] = std::make_unique<PerDevice>();
  return *all[size_t(device)];
}

unsigned long long* pinned_words(PerDevice& d) {
  if (!d.pinned) {
    RelaxedMode relaxed;
    void* p = nullptr;
    check(cudaMallocHost(&p, kDecStickyWords * sizeof(unsigned long long)),
          "cudaMallocHost (decode error record)");
    d.pinned = static_cast<unsigned long long*>(p);
  }
  return d.pinned;
}

}  // namespace

unsigned long long* deferred_record(int device) {
  PerDevice& d = per_device(device);
  std::lock_guard<std::mutex> lock(d.m);
  if (!d.sticky) {
    RelaxedMode relaxed;
    DeviceGuard guard(device);
    void* p = nullptr;
    check(cudaMalloc(&p, kDecStickyWords * sizeof(unsigned long long)),
          "cudaMalloc (decode error record)");
    clear_words(p, kDecStickyWords);
    d.sticky = static_cast<unsigned long long*>(p);  // kept for the process (72 bytes)
  }
  return d.sticky;
}

void read_error_record(const void* dev, cudaStream_t stream, int device, unsigned long long* out) {
  PerDevice& d = per_device(device);
  std::lock_guard<std::mutex> lock(d.m);
  unsigned long long* pinned = pinned_words(d);
  check(cudaMemcpyAsync(pinned, dev, kDecErrorWords * sizeof(unsigned long long),
                        cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (decode error record)");
  check(cudaStreamSynchronize(stream), "the decode kernels (error record)");
  std::memcpy(out, pinned, kDecErrorWords * sizeof(unsigned long long));
}

void raise_decode_error(const unsigned long long* w, const Pattern* pattern, int64_t hq) {
  const unsigned long long key = w[0], cls = dec_error_class(key);
  const int64_t index = dec_error_index(key), value = int64_t(w[1]), nk = int64_t(w[2]);
  const int64_t hkv = int64_t(w[3]), max_pages = int64_t(w[4]), pages = int64_t(w[5]);
  const int64_t capacity = int64_t(w[6]), min_keys = int64_t(w[7]), nq = int64_t(w[8]);
  std::ostringstream m;
  if (cls == kDecErrLength) {
    // The CPU's message (decode_api.cpp), with what the record knows of the cache.
    m << "cache_len: cache_len[" << index << "] = " << value << " is outside 0.." << capacity;
    if (pages > 0)
      m << " (max_pages * page_size = " << max_pages << " * "
        << (max_pages > 0 ? capacity / max_pages : 0)  // no columns: the page size is lost
        << "; block_table has too few columns for this length)";
    else
      m << " (Ncap, the cache's second dimension)";
    throw ValueError(m.str());
  }
  if (cls == kDecErrPattern) {
    m << "pattern: does not fit sequence " << index << " (Nq=" << nq << ", cache_len=" << value
      << "): ";
    if (pattern != nullptr) {
      try {
        pattern->check(nq, value, hq);
      } catch (const ValueError& e) {
        throw ValueError(m.str() + e.what());
      }
    }
    m << "its rule needs cache_len >= " << min_keys;
    throw ValueError(m.str());
  }
  if (cls == kDecErrBlocks) {
    // The CPU's message (decode_api.cpp, pool_keys).
    const int64_t out_blocks = min_keys, block = nq;  // pool_keys' words [7] and [8]
    m << "out: " << out_blocks << " blocks of " << block << " keys hold fewer than cache_len["
      << index << "] = " << value << " keys";
    throw ValueError(m.str());
  }
  if (cls == kDecErrTable) {
    // The CPU's message (cpu/decode.cpp, check_table_entry).
    const int64_t bg = index / max_pages, c = index - bg * max_pages, b = bg / hkv;
    m << "block_table: entry [" << b << ", " << c << "] = " << value
      << " is not a page index in [0, " << pages << ") (sequence " << b << " has cache_len "
      << nk << " and reads its page " << c << ")";
    throw ValueError(m.str());
  }
  throw RuntimeError("cuda decode: a buffer of the device plan was too small (a bug in spattn: "
                     "please report it with the pattern and sizes)");
}

void raise_if_error(const DecodeParams& p, const unsigned long long* rec, const Pattern* pattern) {
  if (rec[0] == ~0ull) return;
  unsigned long long w[kDecStickyWords];
  dec_sticky_words(p, rec, w);
  raise_decode_error(w, pattern, p.hq);
}

void raise_if_pool_error(const PoolParams& p, const unsigned long long* rec) {
  if (rec[0] == ~0ull) return;
  unsigned long long w[kDecStickyWords];
  pool_sticky_words(p, rec, w);
  raise_decode_error(w, nullptr, 0);
}

void raise_deferred_decode_errors(const backend::Call& call) {
  const int device = call.device.device_id;
  PerDevice& d = per_device(device);
  std::lock_guard<std::mutex> lock(d.m);
  if (!d.sticky) return;  // no deferred call ran on this device
  DeviceGuard guard(device);
  unsigned long long* pinned = pinned_words(d);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (check_decode_errors)");
  check(cudaMemcpy(pinned, d.sticky, kDecStickyWords * sizeof(unsigned long long),
                   cudaMemcpyDeviceToHost),
        "cudaMemcpy (decode error record)");
  if (pinned[0] == ~0ull) return;
  unsigned long long w[kDecStickyWords];
  std::memcpy(w, pinned, sizeof w);
  check(cudaMemset(d.sticky, 0xff, kDecStickyWords * sizeof(unsigned long long)),
        "cudaMemset (decode error record)");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (check_decode_errors)");
  raise_decode_error(w, nullptr, 0);
}

}  // namespace spattn::cuda
