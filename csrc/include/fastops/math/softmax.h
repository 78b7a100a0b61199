// Numerically safe softmax math shared by the CPU and CUDA kernels (the Triton kernel mirrors it).
//
//   forward : y_d = exp(x_d - m) / s,  m = max_d x_d,  s = sum_d exp(x_d - m)
//   backward: dx_d = y_d * (dy_d - sum_k dy_k * y_k)
//
// Long rows are reduced in pieces; each piece yields a partial (m, s) and pieces merge with
// `merge`, the online-softmax rule. All accumulation is float32 whatever the storage type.
#pragma once

#include "fastops/macros.h"
#include "fastops/math/exp.h"

namespace fastops {
namespace math {

// Running max and running sum of exp(x - max) over the elements seen so far.
struct SoftmaxState {
  float max;
  float sum;
};

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float neg_infinity() { return bits_to_float(0xff800000u); }

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE SoftmaxState softmax_state_init() {
  return SoftmaxState{neg_infinity(), 0.0f};
}

// exp(a - b) where b is the larger of two maxima; two -inf maxima contribute nothing
// (instead of exp(-inf - -inf) = NaN).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float rescale(float old_max, float new_max) {
  return new_max == neg_infinity() ? 0.0f : exp_f32(old_max - new_max);
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
  float m = a.max > b.max ? a.max : b.max;
  // a NaN max must win so the whole row reads NaN, as in torch
  m = (a.max != a.max) ? a.max : m;
  m = (b.max != b.max) ? b.max : m;
  return SoftmaxState{m, a.sum * rescale(a.max, m) + b.sum * rescale(b.max, m)};
}

// Adds one element to the state.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE SoftmaxState push(SoftmaxState s, float x) {
  return merge(s, SoftmaxState{x, 1.0f});
}

// Output of one element once the row's state is final.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float softmax_output(float x, SoftmaxState s) {
  return exp_f32(x - s.max) / s.sum;
}

// Input gradient of one element given dot = sum_k dy_k * y_k over the row.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float softmax_grad(float dy, float y, float dot) {
  return y * (dy - dot);
}

}  // namespace math
}  // namespace fastops
