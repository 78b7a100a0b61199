// CUDA RNN step kernels: the fused pointwise pass of one time step, forward and backward
// (fastops/rnn.h). The per-unit bodies are the ones the CPU loops run
// (rnn_step_forward_unit / rnn_step_backward_unit over fastops/math/rnn.h); the GEMMs of a step
// (x W_ih^T for all steps, h W_hh^T per step) come from torch or the matmul family.
//
// Launch: one thread per (row, unit), 256 threads per block along units, grid (ceil(H / 256),
// min(B, 65535)) with rows grid-strided. Offsets are int64. Torch-free: raw pointers, a stream.
//
// The persistent layer forward (rnn_persistent_forward, fastops/rnn.h) runs a whole layer
// direction in one cooperative launch; see the section at the end of this file.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "fastops/rnn.h"
#include "launch.cuh"
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


// ---- persistent layer forward -----------------------------------------------------------------
// One cooperative launch of `blocks` <= #SMs blocks (one per SM, checked against the occupancy
// API), 256 threads each. Block k owns hidden units [k U, k U + U) and keeps their G U rows of
// W_hh in shared memory (storage dtype, rows zero-padded to hp = H rounded up to 4 columns) next
// to h_{t-1} of every batch row (float32, B x hp). Per step:
//   1. h_{t-1} -> shared memory (y[t-1] written by every block last step, or h0);
//   2. one warp per W_hh row, lanes along k (4 columns per load), B <= 8 batch rows per pass:
//      gh[b, g H + j] = sum_k h[b, k] W_hh[g H + j, k] in float32, a fixed-order warp reduction;
//      written to the fp32 workspace p.gh (this block's columns only);
//   3. __syncthreads, then the per-step body rnn_step_forward_unit on (b, j) of this block's
//      units, exactly as the per-step kernel runs it (y[t], saved[t], c_all[t]);
//   4. grid.sync(): y[t] (and c_all[t]) of every unit are visible to every block.
// No atomics: the result does not depend on the schedule.
namespace {

constexpr int kPersistentThreads = 256;

// Four consecutive storage values as float; p is aligned to 4 elements.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __half* p) {
  const __half2* q = reinterpret_cast<const __half2*>(p);
  const float2 a = __half22float2(q[0]), b = __half22float2(q[1]);
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const __nv_bfloat162* q = reinterpret_cast<const __nv_bfloat162*>(p);
  const float2 a = __bfloat1622float2(q[0]), b = __bfloat1622float2(q[1]);
  return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

struct PersistentArgs {
  RnnPersistentParams p;
  int64_t units;    // hidden units per block
  int64_t hp;       // H rounded up to a multiple of 4 (row stride of both shared arrays)
  int64_t w_bytes;  // bytes of the W_hh slice in shared memory, a multiple of 16
};

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <RnnMode M, typename T>
__global__ void __launch_bounds__(kPersistentThreads) rnn_persistent_forward_kernel(const PersistentArgs a) {
  constexpr int G = math::rnn_gates(M);
  constexpr int S = math::rnn_saved(M);
  constexpr int kMaxB = static_cast<int>(kRnnPersistentMaxBatch);
  extern __shared__ __align__(16) unsigned char smem[];
  const RnnPersistentParams& p = a.p;
  const int64_t H = p.hidden, B = p.batch, GH = G * H, hp = a.hp;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * a.units;
  // units and rows fit in int: their W_hh slice fits in shared memory
  const int units = static_cast<int>(H - j0 < a.units ? H - j0 : a.units);  // >= 1: blocks = ceil(H / units)
  const int rows = G * units;  // local row r: gate r / units, unit r % units
  T* ws = reinterpret_cast<T*>(smem);
  float* hs = reinterpret_cast<float*>(smem + a.w_bytes);

  const T* w = static_cast<const T*>(p.w_hh);
  for (int r = 0; r < rows; ++r) {
    const T* src = w + ((r / units) * H + j0 + r % units) * H;
    for (int64_t k = threadIdx.x; k < hp; k += blockDim.x) ws[r * hp + k] = k < H ? src[k] : from_f32<T>(0.0f);
  }

  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  T* y = static_cast<T*>(p.y);
  for (int64_t s = 0; s < p.steps; ++s) {
    const int64_t t = p.reverse ? p.steps - 1 - s : s;
    const int64_t tp = p.reverse ? t + 1 : t - 1;  // the step before t in time order (s > 0)
    const T* h_prev = s == 0 ? static_cast<const T*>(p.h0) : y + tp * B * H;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = threadIdx.x; k < hp; k += blockDim.x) hs[b * hp + k] = k < H ? to_f32(h_prev[b * H + k]) : 0.0f;
    __syncthreads();  // also orders the W_hh slice before the first step

    for (int r = warp; r < rows; r += warps) {
      float acc[kMaxB];
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) acc[b] = 0.0f;
      const T* wr = ws + r * hp;
      for (int64_t k = 4 * lane; k < hp; k += 128) {
        const float4 wv = load4(wr + k);
#pragma unroll
        for (int b = 0; b < kMaxB; ++b) {
          if (b < B) {
            const float4 hv = load4(hs + b * hp + k);
            acc[b] = fmaf(wv.x, hv.x, fmaf(wv.y, hv.y, fmaf(wv.z, hv.z, fmaf(wv.w, hv.w, acc[b]))));
          }
        }
      }
      const int64_t col = (r / units) * H + j0 + r % units;
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) {
        if (b < B) {
          const float v = warp_sum(acc[b]);
          if (lane == b) p.gh[b * GH + col] = v;
        }
      }
    }
    __syncthreads();  // this block's gh columns are written (global writes, same block)

    RnnStepParams q;
    q.mode = M;
    q.batch = B;
    q.hidden = H;
    q.dtype = p.dtype;
    q.gi = p.gx + t * B * GH;
    q.gh = p.gh;
    q.gi_stride = q.gh_stride = GH;
    q.b_ih = p.b_ih;
    q.b_hh = p.b_hh;
    q.h_prev = h_prev;
    q.h_out = y + t * B * H;
    q.y_out = nullptr;
    if (M == RnnMode::kLstm) {
      q.c_prev = s == 0 ? p.c0 : p.c_all + tp * B * H;
      q.c_out = p.c_all + t * B * H;
    }
    q.saved = p.saved + t * B * S * H;
    for (int e = threadIdx.x; e < static_cast<int>(B) * units; e += blockDim.x)
      rnn_step_forward_unit<M, T, Cvt>(q, e / units, j0 + e % units, true);
    grid.sync();  // y[t], c_all[t] complete before any block reads them; hs / gh reusable
  }
}

using PersistentKernel = void (*)(PersistentArgs);

template <typename T>
PersistentKernel persistent_kernel_of(RnnMode mode) {
  switch (mode) {
    case RnnMode::kRelu: return rnn_persistent_forward_kernel<RnnMode::kRelu, T>;
    case RnnMode::kLstm: return rnn_persistent_forward_kernel<RnnMode::kLstm, T>;
    case RnnMode::kGru: return rnn_persistent_forward_kernel<RnnMode::kGru, T>;
    default: return rnn_persistent_forward_kernel<RnnMode::kTanh, T>;
  }
}

PersistentKernel persistent_kernel(RnnMode mode, DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return persistent_kernel_of<__half>(mode);
    case DType::kBFloat16: return persistent_kernel_of<__nv_bfloat16>(mode);
    default: return persistent_kernel_of<float>(mode);
  }
}

int64_t storage_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

std::string cuda_failure(const char* what, cudaError_t err) {
  return std::string(what) + " failed: " + cudaGetErrorString(err);
}

}  // namespace

std::string rnn_persistent_plan(const RnnPersistentParams& p, RnnPersistentPlan* plan) {
  const int64_t B = p.batch, H = p.hidden;
  if (B < 1 || B > kRnnPersistentMaxBatch)
    return "batch " + std::to_string(B) + " outside 1.." + std::to_string(kRnnPersistentMaxBatch);
  if (H < 1) return "hidden size 0";
  int device = 0, cooperative = 0, sms = 0, smem_max = 0;
  if (const cudaError_t err = cudaGetDevice(&device)) return cuda_failure("cudaGetDevice", err);
  if (const cudaError_t err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device))
    return cuda_failure("cudaDeviceGetAttribute", err);
  if (!cooperative) return "the device has no cooperative launch";
  if (const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device))
    return cuda_failure("cudaDeviceGetAttribute", err);
  if (const cudaError_t err = cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device))
    return cuda_failure("cudaDeviceGetAttribute", err);
  // one block per SM at most: the fewest units per block that spread H over the SMs
  const int64_t G = math::rnn_gates(p.mode), hp = round_up(H, 4);
  const int64_t units = cdiv(H, sms);
  const int64_t blocks = cdiv(H, units);
  const int64_t w_bytes = round_up(G * units * hp * storage_bytes(p.dtype), 16);
  const int64_t smem = w_bytes + B * hp * 4;
  if (smem > smem_max)
    return "W_hh slice of " + std::to_string(units) + " units x " + std::to_string(G) + " gates and h of " +
           std::to_string(B) + " rows need " + std::to_string(smem) + " B of shared memory per block, the device has " +
           std::to_string(smem_max);
  const PersistentKernel kernel = persistent_kernel(p.mode, p.dtype);
  if (const cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)))
    return cuda_failure("cudaFuncSetAttribute", err);
  int per_sm = 0;
  if (const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistentThreads,
                                                                            static_cast<size_t>(smem)))
    return cuda_failure("cudaOccupancyMaxActiveBlocksPerMultiprocessor", err);
  if (blocks > static_cast<int64_t>(per_sm) * sms)
    return std::to_string(blocks) + " blocks are not co-resident (" + std::to_string(per_sm) + " per SM x " +
           std::to_string(sms) + " SMs)";
  plan->blocks = static_cast<int>(blocks);
  plan->threads = kPersistentThreads;
  plan->units = units;
  plan->smem_bytes = smem;
  return {};
}

int rnn_persistent_forward(const RnnPersistentParams& p, void* stream) {
  if (p.steps <= 0) return 0;
  RnnPersistentPlan plan;
  if (!rnn_persistent_plan(p, &plan).empty()) return static_cast<int>(cudaErrorInvalidConfiguration);
  const int64_t G = math::rnn_gates(p.mode), hp = round_up(p.hidden, 4);
  PersistentArgs a{p, plan.units, hp, round_up(G * plan.units * hp * storage_bytes(p.dtype), 16)};
  void* args[] = {&a};
  return static_cast<int>(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(persistent_kernel(p.mode, p.dtype)),
                                                      dim3(plan.blocks), dim3(plan.threads), args,
                                                      static_cast<size_t>(plan.smem_bytes),
                                                      static_cast<cudaStream_t>(stream)));
}

}  // namespace cuda
}  // namespace fastops
