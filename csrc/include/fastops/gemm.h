// General matrix multiply: torch-free parameters and the CPU entry point.
//
// The building block of the matmul, conv and RNN families:
//   C[b, i, j] = act(alpha * sum_p A[b, i, p] * B[b, p, j] + beta * C[b, i, j] + bias[j or i])
// for b < batch, i < m, j < n, p < k. Every operand is addressed through element strides, so
// transposed and broadcast views (stride 0) are read in place; C must not overlap A or B.
// A and B share one storage dtype; C (and bias) have their own, so a bf16 GEMM can write
// float32 (RNN gate pre-activations, conv wgrad partial sums). Products are summed in float32
// in a fixed order whatever the thread count (bitwise reproducible), and offsets are int64.
// beta == 0 never reads C (it may hold NaN); k == 0 gives act(beta * C + bias).
#pragma once

#include <cstdint>

#include "fastops/dtype.h"

namespace fastops {

// Fused epilogues; the formulas live in fastops/math/activation.h.
enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3, kSilu = 4 };

struct GemmOperand {
  const void* ptr = nullptr;
  int64_t stride_batch = 0, stride_row = 0, stride_col = 0;  // elements
};

struct GemmParams {
  int64_t batch = 1, m = 0, n = 0, k = 0;
  GemmOperand a;  // [batch, m, k]
  GemmOperand b;  // [batch, k, n]
  void* c = nullptr;  // [batch, m, n]
  int64_t c_stride_batch = 0, c_stride_row = 0, c_stride_col = 1;
  DType ab_dtype = DType::kFloat32;
  DType c_dtype = DType::kFloat32;  // also the dtype of bias
  const void* bias = nullptr;       // contiguous, n elements (or m when bias_per_row), or null
  bool bias_per_row = false;
  float alpha = 1.0f, beta = 0.0f;
  Activation activation = Activation::kNone;
};

namespace cpu {
// OpenMP over output tiles; call it from outside any parallel region.
void gemm(const GemmParams& p);
}  // namespace cpu

namespace cuda {
// Tensor-core GEMM on the current device (csrc/cuda/matmul.cu). `stream` is a cudaStream_t;
// `allow_tf32` lets float32 inputs use TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32).
// Returns 0 on success, else the cudaError_t of the failed launch.
int gemm(const GemmParams& p, bool allow_tf32, void* stream);
}  // namespace cuda

}  // namespace fastops
