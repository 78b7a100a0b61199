// Float32 <-> storage conversions for the CPU kernels (float16/bfloat16 held as uint16 bits).
// The CUDA kernels use cuda_fp16.h / cuda_bf16.h types instead.
#pragma once

#include <cstdint>
#include <cstring>

#include "fastops/macros.h"
#include "fastops/math/exp.h"

namespace fastops {

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

FASTOPS_FORCE_INLINE float to_float(float v) { return v; }

FASTOPS_FORCE_INLINE float to_float(BFloat16 v) {
  return math::bits_to_float(static_cast<uint32_t>(v.bits) << 16);
}

// IEEE half -> float, exact (normals, subnormals, inf, NaN), branch-free.
FASTOPS_FORCE_INLINE float to_float(Half v) {
  uint32_t h = v.bits;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t rest = h & 0x7fffu;
  // Shift exponent+mantissa into float position and rebias by multiplying with 2^112;
  // this handles subnormals too. inf/NaN get their exponent forced to all-ones.
  float mag = math::bits_to_float(rest << 13) * math::bits_to_float(0x77800000u);  // 2^112
  uint32_t mbits;
  std::memcpy(&mbits, &mag, 4);
  mbits = rest >= 0x7c00u ? (0x7f800000u | (rest & 0x3ffu) << 13) : mbits;
  return math::bits_to_float(sign | mbits);
}

template <typename T>
FASTOPS_FORCE_INLINE T from_float(float f);

template <>
FASTOPS_FORCE_INLINE float from_float<float>(float f) { return f; }

// Round to nearest even; NaN stays a quiet NaN.
template <>
FASTOPS_FORCE_INLINE BFloat16 from_float<BFloat16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = (u >> 16) | 0x40u;
  return BFloat16{static_cast<uint16_t>((f != f) ? nan : rounded)};
}

// Round to nearest even, overflow to inf, subnormal halves handled exactly, branch-free.
template <>
FASTOPS_FORCE_INLINE Half from_float<Half>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  // Normal range: rebias exponent (127 -> 15) and round the 13 dropped bits to nearest even.
  uint32_t normal = (abs - 0x38000000u + 0xfffu + ((abs >> 13) & 1u)) >> 13;
  // Subnormal range (|f| < 2^-14): adding 0.5 aligns the value so the FPU rounds to the
  // 2^-24 grid; the low bits of the sum are the half's mantissa.
  float sub = math::bits_to_float(abs) + 0.5f;
  uint32_t subbits;
  std::memcpy(&subbits, &sub, 4);
  subbits -= 0x3f000000u;
  uint32_t h = abs < 0x38800000u ? subbits : normal;
  h = abs >= 0x47800000u ? 0x7c00u : h;               // >= 65536 (incl. inf) -> inf
  h = abs > 0x7f800000u ? (0x7e00u | ((abs >> 13) & 0x3ffu)) : h;  // NaN
  return Half{static_cast<uint16_t>(sign | h)};
}

}  // namespace fastops
