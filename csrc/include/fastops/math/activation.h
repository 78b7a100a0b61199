// Pointwise activations and their derivatives, shared by the CPU and CUDA kernels (the GEMM and
// conv epilogues, the RNN gates). Triton mirrors them in fastops/triton/activation.py.
#pragma once

#include <cmath>
#include <type_traits>

#include "fastops/gemm.h"
#include "fastops/macros.h"
#include "fastops/math/erf.h"
#include "fastops/math/exp.h"

namespace fastops {
namespace math {

// f(std::integral_constant<Activation, a>{}) for the runtime a: the one switch from an activation
// value to a kernel compiled for it (kernels take the activation as a template argument).
template <typename F>
FASTOPS_FORCE_INLINE decltype(auto) with_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::kRelu: return f(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kGelu: return f(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kGeluTanh: return f(std::integral_constant<Activation, Activation::kGeluTanh>{});
    case Activation::kSilu: return f(std::integral_constant<Activation, Activation::kSilu>{});
    default: return f(std::integral_constant<Activation, Activation::kNone>{});
  }
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// gelu(x) = x * Phi(x) (torch's approximate="none"), gelu_tanh its tanh form ("tanh").
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float gelu(float x) {
  return 0.5f * x * (1.0f + erf_f32(x * 0.70710678118654752f));
}

// 0.5 x (1 + tanh(u)) == x sigmoid(2 u), u = sqrt(2/pi) (x + 0.044715 x^3): the sigmoid form has
// no cancellation where tanh(u) ~ -1 and needs one exp.
constexpr float kGeluTanhK = 0.79788456080286536f, kGeluTanhC = 0.044715f;
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float gelu_tanh(float x) {
  const float u2 = (2.0f * kGeluTanhK) * (x + kGeluTanhC * x * x * x);
  return x / (1.0f + exp_f32(-u2));
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float activate(Activation act, float x) {
  switch (act) {
    case Activation::kRelu: return x > 0.0f ? x : 0.0f;
    case Activation::kGelu: return gelu(x);
    case Activation::kGeluTanh: return gelu_tanh(x);
    case Activation::kSilu: return x * sigmoid(x);
    default: return x;
  }
}

// d act(x) / dx at the pre-activation x.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float activate_grad(Activation act, float x) {
  switch (act) {
    case Activation::kRelu: return x > 0.0f ? 1.0f : 0.0f;
    case Activation::kGelu: {
      const float pdf = 0.39894228040143268f * exp_f32(-0.5f * x * x);  // 1/sqrt(2 pi)
      return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * pdf;
    }
    case Activation::kGeluTanh: {
      const float k = 0.79788456080286536f;
      const float t = tanhf(k * (x + 0.044715f * x * x * x));
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case Activation::kSilu: {
      const float s = sigmoid(x);
      return s * (1.0f + x * (1.0f - s));
    }
    default: return 1.0f;
  }
}

}  // namespace math
}  // namespace fastops
