// Counter-based dropout shared by the CPU and CUDA kernels (the Triton kernels and the torch
// reference in fastops/ops/attention.py compute the same bits): whether element `index` of a
// tensor is kept depends only on (seed, index), so a backward pass regenerates the forward's mask
// without storing it.
//
//   bits(seed, index) = fmix32(lo32(index) ^ fmix32(lo32(seed) ^ fmix32(hi32(index) ^ hi32(seed))))
//   kept  <=>  bits >= threshold = floor(p * 2^32)      (kept elements are scaled by 1 / (1 - p))
// fmix32 is MurmurHash3's finaliser (a bijection on 32 bits with full avalanche).
#pragma once

#include <cstdint>

#include "fastops/macros.h"

namespace fastops {
namespace math {

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE uint32_t dropout_bits(uint64_t seed, uint64_t index) {
  const uint32_t k = fmix32(static_cast<uint32_t>(seed) ^
                            fmix32(static_cast<uint32_t>(index >> 32) ^ static_cast<uint32_t>(seed >> 32)));
  return fmix32(static_cast<uint32_t>(index) ^ k);
}

// floor(p * 2^32) for p in [0, 1); p >= 1 is not a dropout the kernels take.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE uint32_t dropout_threshold(float p) {
  const double t = static_cast<double>(p) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

}  // namespace math
}  // namespace fastops
