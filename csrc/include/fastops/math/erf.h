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

// tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error ~1e-7, saturates to +-1, NaN propagates.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float tanh_f32(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  return 1.0f - 2.0f / (exp_f32(2.0f * x) + 1.0f);
#endif
}

}  // namespace math
}  // namespace fastops
