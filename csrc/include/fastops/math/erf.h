// erf(x) and tanh(x) in float32 without branches, so CPU loops calling them vectorise
// (glibc's erff/tanhf are scalar calls). CUDA device code keeps the hardware erff/tanhf.
#pragma once

#include "fastops/macros.h"
#include "fastops/math/exp.h"

namespace fastops {
namespace math {

// Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7 over the whole line; erf(-x) = -erf(x).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float erf_f32(float x) {
#if defined(__CUDA_ARCH__)
  return erff(x);
#else
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_f32(-ax * ax);
  return x < 0.0f ? -y : y;
#endif
}

// tanh in float32, branch-free (vectorises): odd polynomial for |x| < 0.625 (Cephes tanhf),
// 1 - 2 / (exp(2|x|) + 1) above; ~2 ulp, tanh(+-inf) = +-1, NaN propagates. CUDA: tanhf.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float tanh_f32(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big_abs = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
  const float big = x < 0.0f ? -big_abs : big_abs;
  const float y = ax < 0.625f ? small : big;
  return x != x ? x : y;
#endif
}

}  // namespace math
}  // namespace fastops
