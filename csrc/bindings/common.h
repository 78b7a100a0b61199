// Shared by the per-family binding files: the only code besides them that sees torch.
//
// Every binding expects what fastops/ops/*.py guarantees (supported dtypes, one device, the
// layout the kernel reads) and checks it again with messages naming the argument, so a direct
// call from Python with bad input raises instead of crashing.
#pragma once

#include <torch/extension.h>

#include "fastops/dtype.h"

#ifdef FASTOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#ifndef FASTOPS_CUDA_ARCHS
#define FASTOPS_CUDA_ARCHS ""
#endif

namespace fastops {

inline DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastops: ", name, " must be float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "fastops: ", name, " must be contiguous, got strides ", t.strides());
}

inline void check_same_device_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "fastops: ", an, " and ", bn,
              " must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastops: ", an, " and ", bn,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

inline void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  check_same_device_dtype(a, an, b, bn);
  TORCH_CHECK(a.sizes() == b.sizes(), "fastops: ", an, " and ", bn, " must have the same shape, got ",
              a.sizes(), " and ", b.sizes());
}

#ifdef FASTOPS_WITH_CUDA
inline void check_cuda(int err, const char* what) {
  TORCH_CHECK(err == 0, "fastops: CUDA launch of ", what, " failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}
#endif

// " or cuda" when this build holds CUDA kernels: the tail of "must be on cpu..." messages.
inline const char* or_cuda() { return FASTOPS_CUDA_ARCHS[0] ? " or cuda" : ""; }

// Each family's binding file defines one of these; module.cpp calls them all.
void bind_softmax(pybind11::module_& m);
void bind_adam(pybind11::module_& m);
void bind_attention(pybind11::module_& m);
void bind_conv(pybind11::module_& m);
void bind_rnn(pybind11::module_& m);
void bind_matmul(pybind11::module_& m);

}  // namespace fastops
