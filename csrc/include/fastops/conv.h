// 2-D convolution (torch.nn.functional.conv2d semantics): torch-free parameters and entry points.
//
// Dims: N images, C input channels, H x W input, O output channels, G groups (Cg = C / G input and
// Og = O / G output channels per group), kernel KH x KW, output HO x WO with
//   HO = (H + 2 pad_h - dil_h (KH - 1) - 1) / stride_h + 1 (the same for WO).
// x, y, dx and dy are dense 4-D tensors in one memory format: NCHW (channels_last = false) or
// NHWC (channels_last = true). The weight (and its gradient) is [O, K] contiguous, K = Cg KH KW in
// the order that matches the layout: (ci, kh, kw) for NCHW, (kh, kw, ci) for NHWC, so that a
// K-run of the implicit im2col matrix reads memory in order. bias is [O], or null.
// Storage float32/float16/bfloat16; every sum accumulates in float32 in a fixed order
// (deterministic whatever the thread count); offsets are int64.
#pragma once

#include <cstdint>

#include "fastops/dtype.h"
#include "fastops/gemm.h"
#include "fastops/macros.h"

namespace fastops {

struct Conv2dShape {
  int64_t n = 0, c = 0, h = 0, w = 0;   // input
  int64_t o = 0, kh = 1, kw = 1;        // weight [O, C / groups, KH, KW]
  int64_t ho = 0, wo = 0;               // output
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
  bool channels_last = false;
  DType dtype = DType::kFloat32;

  FASTOPS_HOST_DEVICE int64_t cg() const { return c / groups; }
  FASTOPS_HOST_DEVICE int64_t og() const { return o / groups; }
  FASTOPS_HOST_DEVICE int64_t k() const { return cg() * kh * kw; }
  // A 1x1, stride-1, unpadded convolution: a plain GEMM on the input in place.
  FASTOPS_HOST_DEVICE bool pointwise() const {
    return kh == 1 && kw == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  }
  // groups == C == O / multiplier: the dedicated depthwise kernels.
  FASTOPS_HOST_DEVICE bool depthwise() const { return groups > 1 && groups == c && o % c == 0; }
};

// Output length of one spatial dim (may be <= 0 for a kernel larger than the padded input).
FASTOPS_HOST_DEVICE inline int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad,
                                                 int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// Input row (or column) that output `out` reads at kernel tap `k`: may fall in the padding (< 0 or
// >= the input size).
FASTOPS_HOST_DEVICE inline int64_t conv_in_index(int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return out * stride - pad + k * dil;
}

// The output row (or column) that reads input `in` at kernel tap `k`, or -1 when none does (the
// input gradient's gather: in = out * stride - pad + k * dil must hold exactly).
FASTOPS_HOST_DEVICE inline int64_t conv_out_index(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                                                  int64_t out_size) {
  const int64_t t = in + pad - k * dil;
  if (t < 0 || t % stride != 0) return -1;
  return t / stride < out_size ? t / stride : -1;
}

// y = act(conv(x, w) + bias).
struct Conv2dForwardParams {
  Conv2dShape s;
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;  // [O] or null
  void* y = nullptr;
  Activation activation = Activation::kNone;
  // CPU, channels_last shape: y is written as NCHW [N, O, HO, WO] (x and w stay in the NHWC
  // layout), by the GEMM's store where it can (cpu::conv2d_forward), else through a transpose.
  bool y_nchw = false;
  // CPU, channels_last shape: w is [O, Cg, KH, KW] (NCHW order) instead of [O, KH, KW, Cg]; the
  // implicit GEMM packs it straight from there (else the kernel reorders a copy).
  bool w_nchw = false;
};

// Gradients of y = conv(x, w) + bias from dy; each output is skipped when its pointer is null.
struct Conv2dBackwardParams {
  Conv2dShape s;
  const void* dy = nullptr;
  const void* x = nullptr;
  const void* w = nullptr;
  void* dx = nullptr;     // layout of x
  void* dw = nullptr;     // [O, K] in the layout's K order, storage dtype
  void* dbias = nullptr;  // [O], storage dtype
  bool w_nchw = false;    // as Conv2dForwardParams::w_nchw (dw stays in the layout's K order)
};

namespace cpu {
// Call from outside any OpenMP parallel region (they run cpu::gemm, which is parallel).
void conv2d_forward(const Conv2dForwardParams& p);
void conv2d_backward(const Conv2dBackwardParams& p);
// dst[b][j][i] = src[b][i][j] for i < rows, j < cols: a batch of dense row-major matrices transposed,
// elements of elem_bytes (2 or 4) bytes; the layout changes of the binding (NCHW <-> NHWC with
// rows, cols = C, H W or H W, C; the weight [O, C, KH KW] <-> [O, KH KW, C]). OpenMP over tiles.
void transpose_batched(const void* src, void* dst, int64_t batch, int64_t rows, int64_t cols, int elem_bytes);
}  // namespace cpu

// What the CUDA kernels (csrc/cuda/conv.cu) run, NHWC only (s.channels_last): the depthwise
// kernels take every dtype and shape; the implicit-GEMM kernels take float16 / bfloat16 with 16-byte
// copies along the channels, so C / groups (and, for the backward, O / groups) must be multiples
// of 8. Returns nullptr when `s` is covered, else the reason (the binding raises it, and
// fastops/ops/conv.py mirrors it for fastops.explain()).
inline const char* conv2d_cuda_unsupported(const Conv2dShape& s, bool backward) {
  if (!s.channels_last) return "the CUDA kernels run NHWC (channels_last) only";
  if (s.depthwise()) return nullptr;
  if (s.dtype == DType::kFloat32) return "float32: the CUDA implicit-GEMM kernels run float16/bfloat16 on tensor cores";
  if (s.cg() % 8 != 0) return "C / groups must be a multiple of 8 for the CUDA implicit-GEMM kernels";
  if (backward && s.og() % 8 != 0) return "O / groups must be a multiple of 8 for the CUDA implicit-GEMM backward";
  return nullptr;
}

namespace cuda {
// On the current device and `stream` (a cudaStream_t); s.channels_last must be true and
// conv2d_cuda_unsupported(s, ...) null; every pointer 16-byte aligned. The backward is
// deterministic (fixed reduction order, no atomics). Return 0 or the cudaError_t of the failed launch.
int conv2d_forward(const Conv2dForwardParams& p, void* stream);
int conv2d_backward(const Conv2dBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace fastops
