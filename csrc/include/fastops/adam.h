// Fused Adam / AdamW interface: torch-free parameters of a multi-tensor step and the entry
// points of every backend.
//
// One call updates a list of n tensors that share a device, a parameter dtype and the
// hyperparameters (a (device, dtype) bucket of one param group). Tensor i has numel[i]
// contiguous elements; its parameter and gradient are `param_dtype` (float32, float16 or
// bfloat16), its states exp_avg / exp_avg_sq / max_exp_avg_sq (amsgrad) are float32, as is the
// optional master copy of the parameter (then the update runs on the master and the parameter
// receives its rounded value). step[i] points to tensor i's float32 step count, already
// incremented for this step. All pointers are host pointers for the CPU entry, device pointers
// for the CUDA one (the arrays of pointers themselves are always host arrays).
//
// grad_scale (optional, float32 scalar): gradients are divided by it and the unscaled gradient
// is written back, as torch._fused_adam_ does. found_inf (optional, float32 scalar): when
// nonzero, nothing is updated.
#pragma once

#include <cstdint>

#include "fastops/dtype.h"
#include "fastops/math/adam.h"

namespace fastops {

struct AdamParams {
  int64_t num_tensors;
  void* const* params;              // [n] param_dtype
  void* const* grads;               // [n] param_dtype (written only when grad_scale is set)
  float* const* exp_avgs;           // [n]
  float* const* exp_avg_sqs;        // [n]
  float* const* max_exp_avg_sqs;    // [n], or nullptr unless options.amsgrad
  float* const* master_params;      // [n], or nullptr: no master weights
  const float* const* steps;        // [n] scalar step counts
  const int64_t* numel;             // [n]
  DType param_dtype;
  const float* grad_scale;          // scalar or nullptr
  const float* found_inf;           // scalar or nullptr
  math::AdamOptions options;
};

namespace cpu {
void adam_step(const AdamParams& p);
}  // namespace cpu

namespace cuda {
// `stream` is a cudaStream_t. Returns 0 on success, else the cudaError_t of the failed launch.
int adam_step(const AdamParams& p, void* stream);
}  // namespace cuda

}  // namespace fastops
