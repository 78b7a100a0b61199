// Host-side launch helpers shared by the CUDA launchers (matmul.cu, conv.cu).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

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

// Above 48 KiB of dynamic shared memory a kernel must opt in, once per device: call this before
// every launch of `kernel` (one instantiation per template, so one flag set per kernel).
template <class Kernel>
cudaError_t opt_in_smem(Kernel kernel, int bytes) {
  static std::atomic<uint64_t> opted_in{0};
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device)) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || !(opted_in.load(std::memory_order_relaxed) & bit)) {
    if (const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))
      return err;
    opted_in.fetch_or(bit, std::memory_order_relaxed);
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace fastops
