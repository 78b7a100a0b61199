// Softmax kernel interface: torch-free parameters and the entry points of every backend.
//
// A contiguous tensor is viewed as [outer, dim, inner]; softmax runs along `dim`.
// Element (o, d, i) lives at offset (o * dim + d) * inner + i. inner == 1 is the common
// "softmax over the last dimension" case; inner > 1 is a reduction over a strided axis.
#pragma once

#include <cstdint>

#include "fastops/dtype.h"

namespace fastops {

struct SoftmaxParams {
  const void* x;  // input  [outer, dim, inner], contiguous, `dtype`
  void* y;        // output [outer, dim, inner], contiguous, `dtype`
  int64_t outer;
  int64_t dim;
  int64_t inner;
  DType dtype;
};

// dx = y * (dy - sum_d(dy * y)), all three [outer, dim, inner], contiguous, `dtype`.
struct SoftmaxBackwardParams {
  const void* dy;
  const void* y;
  void* dx;
  int64_t outer;
  int64_t dim;
  int64_t inner;
  DType dtype;
};

namespace cpu {
void softmax_forward(const SoftmaxParams& p);
void softmax_backward(const SoftmaxBackwardParams& p);
}  // namespace cpu

namespace cuda {
// `stream` is a cudaStream_t; kept as void* so this header needs no CUDA headers.
// Return 0 on success, else the cudaError_t of the failed launch.
int softmax_forward(const SoftmaxParams& p, void* stream);
int softmax_backward(const SoftmaxBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace fastops
