// CUDA RNN step kernels: the fused pointwise pass of one time step, forward and backward
// (fastops/rnn.h). The per-unit bodies are the ones the CPU loops run
// (rnn_step_forward_unit / rnn_step_backward_unit over fastops/math/rnn.h); the GEMMs of a step
// (x W_ih^T for all steps, h W_hh^T per step) come from torch or the matmul family.
//
// Launch: one thread per (row, unit), 256 threads per block along units, grid (ceil(H / 256),
// min(B, 65535)) with rows grid-strided. Offsets are int64. Torch-free: raw pointers, a stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastops/rnn.h"
#include "storage.cuh"

namespace fastops {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

struct Cvt {
  template <typename T>
  static __device__ __forceinline__ float load(T v) { return to_f32(v); }
  template <typename T>
  static __device__ __forceinline__ T store(float v) { return from_f32<T>(v); }
};

__device__ __forceinline__ bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

template <RnnMode M, typename T>
__global__ void __launch_bounds__(kThreads) rnn_step_forward_kernel(const RnnStepParams p) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= p.hidden) return;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y)
    rnn_step_forward_unit<M, T, Cvt>(p, b, j, row_active(p.lengths, b, p.t));
}

template <RnnMode M, typename T>
__global__ void __launch_bounds__(kThreads) rnn_step_backward_kernel(const RnnStepBackwardParams p) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= p.hidden) return;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y)
    rnn_step_backward_unit<M, T, Cvt>(p, b, j, row_active(p.lengths, b, p.t));
}

dim3 grid_of(int64_t batch, int64_t hidden) {
  return dim3(static_cast<unsigned>((hidden + kThreads - 1) / kThreads),
              static_cast<unsigned>(batch < kMaxGridY ? batch : kMaxGridY));
}

template <typename T, typename P, typename Launch>
int by_mode(const P& p, Launch launch) {
  switch (p.mode) {
    case RnnMode::kRelu: return launch(rnn_step_forward_kernel<RnnMode::kRelu, T>, rnn_step_backward_kernel<RnnMode::kRelu, T>);
    case RnnMode::kLstm: return launch(rnn_step_forward_kernel<RnnMode::kLstm, T>, rnn_step_backward_kernel<RnnMode::kLstm, T>);
    case RnnMode::kGru: return launch(rnn_step_forward_kernel<RnnMode::kGru, T>, rnn_step_backward_kernel<RnnMode::kGru, T>);
    default: return launch(rnn_step_forward_kernel<RnnMode::kTanh, T>, rnn_step_backward_kernel<RnnMode::kTanh, T>);
  }
}

template <typename P, typename Launch>
int by_dtype(const P& p, Launch launch) {
  switch (p.dtype) {
    case DType::kFloat16: return by_mode<__half>(p, launch);
    case DType::kBFloat16: return by_mode<__nv_bfloat16>(p, launch);
    default: return by_mode<float>(p, launch);
  }
}

}  // namespace

int rnn_step_forward(const RnnStepParams& p, void* stream) {
  if (p.batch <= 0 || p.hidden <= 0) return 0;
  return by_dtype(p, [&](auto fwd, auto) {
    fwd<<<grid_of(p.batch, p.hidden), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}

int rnn_step_backward(const RnnStepBackwardParams& p, void* stream) {
  if (p.batch <= 0 || p.hidden <= 0) return 0;
  return by_dtype(p, [&](auto, auto bwd) {
    bwd<<<grid_of(p.batch, p.hidden), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace fastops
