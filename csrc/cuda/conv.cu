// fastops::cuda::conv2d_forward / conv2d_backward (fastops/conv.h): NHWC convolution on the
// current device. Torch-free: raw pointers, the Conv2dShape, a stream.
//
// Kernels (csrc/cuda/conv/):
//   implicit_gemm.cuh  conv_mma_kernel<T, Tile, Fwd | Dgrad | Wgrad>: mma.sync implicit GEMM,
//                      float16 / bfloat16, on the GEMM's tiles, pipeline and epilogue (gemm/).
//   depthwise.cuh      dw_forward, dw_dgrad (one thread per output element) and channel_reduce
//                      (depthwise weight gradient and every bias gradient), every dtype.
// Dispatch (the only place that picks a kernel):
//   depthwise (groups == C, O = mult C): the depthwise kernels.
//   else the implicit GEMM, 128 x 128 tiles when they give one block per SM per group, else 64 x 64;
//   conv2d_cuda_unsupported (fastops/conv.h) says which shapes the caller must send elsewhere.
// Grid: x = tiles (grouped order, < 2^31 checked), y = group (<= 65535 checked). The backward
// is deterministic: each output element is summed by one thread (or one block tile) in order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "conv/depthwise.cuh"
#include "conv/implicit_gemm.cuh"
#include "fastops/conv.h"
#include "launch.cuh"

namespace fastops {
namespace cuda {
namespace {

using gemm_impl::BigTile;
using gemm_impl::kBigMinBlocks;
using gemm_impl::kSmallMinBlocks;
using gemm_impl::SmallTile;
constexpr int64_t kMaxGridX = 2147483647, kMaxGridY = 65535;
constexpr int kElementwiseThreads = 256;

template <class Cfg, int MIN_BLOCKS, typename T, class Problem>
int launch_gemm_cfg(const Problem& prob, const conv_impl::Operands<T>& io, int64_t m, int64_t n, int64_t groups,
                    cudaStream_t stream) {
  const int64_t tiles_m = cdiv(m, Cfg::BM), tiles_n = cdiv(n, Cfg::BN);
  if (tiles_m * tiles_n > kMaxGridX || groups > kMaxGridY) return static_cast<int>(cudaErrorInvalidConfiguration);
  auto kernel = conv_impl::conv_mma_kernel<T, Cfg, MIN_BLOCKS, Problem>;
  if (const cudaError_t err = opt_in_smem(kernel, Cfg::SMEM_BYTES)) return static_cast<int>(err);
  const dim3 grid(static_cast<unsigned>(tiles_m * tiles_n), static_cast<unsigned>(groups));
  kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, stream>>>(prob, io, tiles_m, tiles_n);
  return static_cast<int>(cudaGetLastError());
}

// The implicit GEMM of one pass (m x n per group).
template <typename T, class Problem>
int launch_gemm(const Problem& prob, const conv_impl::Operands<T>& io, cudaStream_t stream) {
  const int64_t m = prob.M(), n = prob.N(), groups = prob.s.groups;
  if (m <= 0 || n <= 0) return 0;
  constexpr int kElem = sizeof(T);
  if (cdiv(m, BigTile<kElem>::BM) * cdiv(n, BigTile<kElem>::BN) * groups >= sm_count())
    return launch_gemm_cfg<BigTile<kElem>, kBigMinBlocks>(prob, io, m, n, groups, stream);
  return launch_gemm_cfg<SmallTile<kElem>, kSmallMinBlocks>(prob, io, m, n, groups, stream);
}

unsigned elementwise_blocks(int64_t total) {
  const int64_t want = cdiv(total, kElementwiseThreads), cap = int64_t{sm_count()} * 32;
  return static_cast<unsigned>(want < cap ? (want > 0 ? want : 1) : cap);
}

// out[o, t] (t < taps) = sum_p dy[p, o] * (x ? x[read by p at t] : 1).
template <typename T>
int launch_reduce(const Conv2dShape& s, const T* dy, const T* x, T* out, cudaStream_t stream) {
  const int64_t taps = x ? s.kh * s.kw : 1;
  if (taps > kMaxGridY) return static_cast<int>(cudaErrorInvalidConfiguration);
  const dim3 grid(static_cast<unsigned>(cdiv(s.o, conv_impl::kReduceCols)), static_cast<unsigned>(taps));
  conv_impl::channel_reduce<T><<<grid, conv_impl::kReduceCols * conv_impl::kReduceRows, 0, stream>>>(s, dy, x, out);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int forward(const Conv2dForwardParams& p, cudaStream_t stream) {
  const Conv2dShape& s = p.s;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  if (s.depthwise()) {
    const int64_t total = s.n * s.ho * s.wo * s.o;
    conv_impl::dw_forward<T><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(s, x, w, bias, y,
                                                                                           p.activation);
    return static_cast<int>(cudaGetLastError());
  }
  if constexpr (sizeof(T) == 2) {
    return launch_gemm(conv_impl::Fwd{s}, conv_impl::Operands<T>{x, w, y, bias, s.dtype, p.activation}, stream);
  }
  return static_cast<int>(cudaErrorNotSupported);
}

template <typename T>
int backward(const Conv2dBackwardParams& p, cudaStream_t stream) {
  const Conv2dShape& s = p.s;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  int err = 0;
  if (p.dx != nullptr) {
    T* dx = static_cast<T*>(p.dx);
    if (s.depthwise()) {
      const int64_t total = s.n * s.h * s.w * s.c;
      conv_impl::dw_dgrad<T><<<elementwise_blocks(total), kElementwiseThreads, 0, stream>>>(s, dy, w, dx);
      err = static_cast<int>(cudaGetLastError());
    } else if constexpr (sizeof(T) == 2) {
      err = launch_gemm(conv_impl::Dgrad{s}, conv_impl::Operands<T>{dy, w, dx, nullptr, s.dtype, Activation::kNone},
                        stream);
    } else {
      err = static_cast<int>(cudaErrorNotSupported);
    }
    if (err) return err;
  }
  if (p.dw != nullptr) {
    T* dw = static_cast<T*>(p.dw);
    if (s.depthwise()) {
      err = launch_reduce<T>(s, dy, x, dw, stream);
    } else if constexpr (sizeof(T) == 2) {
      err = launch_gemm(conv_impl::Wgrad{s}, conv_impl::Operands<T>{dy, x, dw, nullptr, s.dtype, Activation::kNone},
                        stream);
    } else {
      err = static_cast<int>(cudaErrorNotSupported);
    }
    if (err) return err;
  }
  if (p.dbias != nullptr) err = launch_reduce<T>(s, dy, nullptr, static_cast<T*>(p.dbias), stream);
  return err;
}

}  // namespace

int conv2d_forward(const Conv2dForwardParams& p, void* stream_ptr) {
  if (!p.s.channels_last) return static_cast<int>(cudaErrorInvalidValue);
  if (p.s.n <= 0 || p.s.o <= 0 || p.s.ho <= 0 || p.s.wo <= 0) return 0;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.s.dtype) {
    case DType::kFloat16: return forward<__half>(p, stream);
    case DType::kBFloat16: return forward<__nv_bfloat16>(p, stream);
    default: return forward<float>(p, stream);
  }
}

int conv2d_backward(const Conv2dBackwardParams& p, void* stream_ptr) {
  if (!p.s.channels_last) return static_cast<int>(cudaErrorInvalidValue);
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.s.dtype) {
    case DType::kFloat16: return backward<__half>(p, stream);
    case DType::kBFloat16: return backward<__nv_bfloat16>(p, stream);
    default: return backward<float>(p, stream);
  }
}

}  // namespace cuda
}  // namespace fastops
