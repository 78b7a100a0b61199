// Host-side launch helpers shared by the CUDA launchers (matmul.cu, conv.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

namespace fastops {
namespace cuda {

inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 1;
  return sms;
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Above 48 KiB of dynamic shared memory a kernel must opt in, per kernel and device: call this
// before every launch. Kernels of one signature share the template instantiation, so the record
// is keyed by the kernel's address (and device), and raised when a launch asks for more.
template <class Kernel>
cudaError_t opt_in_smem(Kernel kernel, int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device)) return err;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> allowed;  // (kernel, device) -> bytes
  const std::lock_guard<std::mutex> lock(mutex);
  int& limit = allowed[{reinterpret_cast<const void*>(kernel), device}];
  if (bytes > limit) {
    if (const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))
      return err;
    limit = bytes;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace fastops
