// erf(x) and tanh(x) in float32 without branches, so CPU loops calling them vectorise
// (glibc's erff/tanhf are scalar calls). CUDA device code keeps the hardware erff/tanhf.
#pragma once

#include "fastops/macros.h"
#include "fastops/math/exp.h"

namespace fastops {
namespace math {

// erf on [-4, 4] as x P(x^2) / Q(x^2) (the rational minimax of Eigen's generic_fast_erf_float):
// |error| <= 5e-7 over the whole line, relative error as small near 0 (odd, no cancellation);
// erf(+-4) rounds to +-1 in float32, so clamping x there is exact. Numerator and denominator
// are returned apart so that vector code (csrc/cpu/vec_math.h) may use a reciprocal estimate.
template <typename T>
struct ErfRational {
  T num, den;
};
constexpr float kErfClamp = 4.0f;
template <typename T>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE ErfRational<T> erf_rational(T xc) {
  const T z = xc * xc;
  T p = z * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * z - 2.10102402082508e-06f;
  p = p * z - 5.69250639462346e-05f;
  p = p * z - 7.34990630326855e-04f;
  p = p * z - 2.95459980854025e-03f;
  p = p * z - 1.60960333262415e-02f;
  T q = z * -1.45660718464996e-05f - 2.13374055278905e-04f;
  q = q * z - 1.68282697438203e-03f;
  q = q * z - 7.37332916720468e-03f;
  q = q * z - 1.42647390514189e-02f;
  return ErfRational<T>{p * xc, q};
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float erf_f32(float x) {
#if defined(__CUDA_ARCH__)
  return erff(x);
#else
  float xc = x > kErfClamp ? kErfClamp : x;
  xc = xc < -kErfClamp ? -kErfClamp : xc;  // NaN falls through both and propagates
  const ErfRational<float> e = erf_rational(xc);
  return e.num / e.den;
#endif
}

// tanh(x) for |x| < 0.625, z = x * x: odd polynomial (Cephes tanhf). A template so the CPU's
// 16-lane code (csrc/cpu/vec_math.h) runs the same polynomial.
template <typename T>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE T tanh_small(T x, T z) {
  T p = z * -5.70498872745e-3f + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  return p * z * x + x;
}

// tanh in float32, branch-free (vectorises): tanh_small for |x| < 0.625,
// 1 - 2 / (exp(2|x|) + 1) above; ~2 ulp, tanh(+-inf) = +-1, NaN propagates. CUDA: tanhf.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float tanh_f32(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const float ax = x < 0.0f ? -x : x;
  const float small = tanh_small(x, x * x);
  const float big_abs = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
  const float big = x < 0.0f ? -big_abs : big_abs;
  const float y = ax < 0.625f ? small : big;
  return x != x ? x : y;
#endif
}

}  // namespace math
}  // namespace fastops
