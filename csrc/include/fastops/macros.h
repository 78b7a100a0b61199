// Portability macros shared by the CPU (g++) and CUDA (nvcc) builds.
#pragma once

#if defined(__CUDACC__)
#define FASTOPS_HOST_DEVICE __host__ __device__
#define FASTOPS_DEVICE __device__
#define FASTOPS_FORCE_INLINE __forceinline__
#else
#define FASTOPS_HOST_DEVICE
#define FASTOPS_DEVICE
#define FASTOPS_FORCE_INLINE inline __attribute__((always_inline))
#endif
