// The Adam / AdamW update of one element, shared by the CPU and CUDA kernels (the Triton kernel
// mirrors it). Float32 math whatever the storage type, in the order of torch.optim.Adam's
// single-tensor path (torch/optim/adam.py `_single_tensor_adam`), so trajectories agree with
// torch's to float32 rounding:
//
//   g  = maximize ? -g : g                     (g already divided by grad_scale, if any)
//   p  = p * (1 - lr * wd)                     decoupled (AdamW), wd != 0
//   g  = g + wd * p                            L2 (Adam), wd != 0
//   m  = m + (1 - beta1) * (g - m)             m.lerp_(g, 1 - beta1)
//   v  = v * beta2 + (1 - beta2) * g * g       v.mul_(beta2).addcmul_(g, g, 1 - beta2)
//   vm = max(vm, v)                            amsgrad only; vm replaces v below
//   p  = p + (-lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i^step
//
// Scalars that depend on the step are computed once per tensor, in float64 like torch's Python
// floats, and rounded to float32 as torch rounds a Python scalar for a float32 tensor op.
#pragma once

#include <cmath>

#include "fastops/macros.h"

namespace fastops {
namespace math {

// Hyperparameters of one step, as the optimizer's param group holds them (float64).
struct AdamOptions {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool decoupled;  // AdamW: decay the parameter, not the gradient
  bool amsgrad;
  bool maximize;
};

// The float32 constants of one tensor's update at a given step.
struct AdamScalars {
  float neg_step_size;    // -lr / (1 - beta1^step)
  float bc2_sqrt;         // sqrt(1 - beta2^step)
  float eps;
  float beta2;
  float one_minus_beta1;  // lerp weight
  float one_minus_beta2;
  float l2;               // weight decay added to the gradient (0 for AdamW)
  float decay;            // factor applied to the parameter (1 for Adam)
  bool decay_on;          // weight_decay != 0 and decoupled
  bool l2_on;             // weight_decay != 0 and not decoupled
  bool maximize;
};

// `step` is the step count after this step's increment (1 on the first step).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE AdamScalars adam_scalars(const AdamOptions& o, float step) {
  const double s = static_cast<double>(step);
  const double bc1 = 1.0 - pow(o.beta1, s);
  const double bc2 = 1.0 - pow(o.beta2, s);
  AdamScalars k;
  k.neg_step_size = static_cast<float>(-(o.lr / bc1));
  k.bc2_sqrt = static_cast<float>(sqrt(bc2));
  k.eps = static_cast<float>(o.eps);
  k.beta2 = static_cast<float>(o.beta2);
  k.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
  k.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
  k.decay_on = o.weight_decay != 0.0 && o.decoupled;
  k.l2_on = o.weight_decay != 0.0 && !o.decoupled;
  k.l2 = static_cast<float>(o.weight_decay);
  k.decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
  k.maximize = o.maximize;
  return k;
}

// One element: p (fp32 value of the parameter or its master copy), g (unscaled gradient),
// m, v (and vmax when kAmsgrad) updated in place. Selects only, so loops over it vectorise.
template <bool kAmsgrad>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE void adam_update(float& p, float g, float& m, float& v, float& vmax,
                                                          const AdamScalars& k) {
  g = k.maximize ? -g : g;
  p = k.decay_on ? p * k.decay : p;
  g = k.l2_on ? g + k.l2 * p : g;
  m = m + k.one_minus_beta1 * (g - m);
  v = v * k.beta2 + k.one_minus_beta2 * g * g;
  float vv = v;
  if constexpr (kAmsgrad) {
    vmax = vmax > v ? vmax : v;
    // torch.maximum propagates NaN
    vmax = (v != v) ? v : vmax;
    vv = vmax;
  }
  const float denom = sqrtf(vv) / k.bc2_sqrt + k.eps;
  p = p + k.neg_step_size * m / denom;
}

}  // namespace math
}  // namespace fastops
