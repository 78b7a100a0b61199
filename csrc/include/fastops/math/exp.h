// exp(x) in float32 from a polynomial, identical on CPU and GPU.
//
// Branch-free (selects only), so a CPU loop calling it vectorises to AVX2/AVX-512 and a CUDA
// thread runs it without divergence. Max relative error ~2 ulp over the whole float range;
// exp(-inf) == 0 exactly, exp(+inf) == +inf, NaN propagates.
#pragma once

#include <cstdint>
#include <cstring>

#include "fastops/macros.h"

namespace fastops {
namespace math {

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Constants of the split x = n ln2 + r, n = round(x / ln2), |r| <= ln2 / 2 (Cody-Waite).
constexpr float kExpMaxX = 88.3762626647949f;   // beyond: overflow to +inf
constexpr float kExpMinX = -87.3365447504f;     // below: underflow to 0 (no denormals)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;      // exact in 9 bits, so n * kLn2Hi has no rounding
constexpr float kLn2Lo = -2.12194440e-4f;   // ln2 - kLn2Hi

// e^r on [-ln2/2, ln2/2], degree-6 minimax (Cephes expf coefficients). A template so the CPU's
// vector code (csrc/cpu/vec_math.h, T = a 16-float vector) runs the same polynomial.
template <typename T>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE T exp_reduced(T r) {
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// n (a whole float) and e^r for xc in [kExpMinX, kExpMaxX]: exp(xc) = p * 2^n.
struct ExpSplit {
  float n, p;
};
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE ExpSplit exp_split(float xc) {
  // round-to-nearest via the 1.5 * 2^23 trick: exact for |v| < 2^22
  const float kShift = 12582912.0f;
  float n = (xc * kLog2e + kShift) - kShift;
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  return ExpSplit{n, exp_reduced(r)};
}

// exp(x) = 2^n * e^r with n = round(x / ln2) and |r| <= ln2 / 2.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float exp_f32(float x) {
  float xc = x > kExpMaxX ? kExpMaxX : x;
  xc = xc < kExpMinX ? kExpMinX : xc;
  const ExpSplit e = exp_split(xc);
  // 2^n built in the exponent field; n in [-126, 128): for n == 128 split into 2^127 * 2
  int32_t ni = static_cast<int32_t>(e.n);
  int32_t n1 = ni > 127 ? 127 : ni;
  float scale1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  float scale2 = ni > 127 ? 2.0f : 1.0f;
  float y = e.p * scale1 * scale2;
  y = x < kExpMinX ? 0.0f : y;
  y = x > kExpMaxX ? bits_to_float(0x7f800000u) : y;
  return x != x ? x : y;
}

// exp(x) for x <= 0 (softmax after the max is subtracted), -inf and NaN included: bitwise
// exp_f32 there, with fewer operations (no overflow branch; NaN propagates through p).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float exp_f32_nonpositive(float x) {
  const float xc = x < kExpMinX ? kExpMinX : x;
  const ExpSplit e = exp_split(xc);
  const float y = e.p * bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(e.n) + 127) << 23);
  return x < kExpMinX ? 0.0f : y;
}

}  // namespace math
}  // namespace fastops
