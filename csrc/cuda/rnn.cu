// CUDA RNN step kernels: the fused pointwise pass of one time step, forward and backward
// (fastops/rnn.h). The per-unit bodies are the ones the CPU loops run
// (rnn_step_forward_unit / rnn_step_backward_unit over fastops/math/rnn.h); the GEMMs of a step
// (x W_ih^T for all steps, h W_hh^T per step) come from torch or the matmul family.
//
// Launch: one thread per (row, unit), 256 threads per block along units, grid (ceil(H / 256),
// min(B, 65535)) with rows grid-strided. Offsets are int64. Torch-free: raw pointers, a stream.
//
// The persistent layer kernels (rnn_persistent_forward / _backward, fastops/rnn.h) run a whole
// layer direction's time loop in one cooperative launch; see the section at the end of this file.
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


// ---- persistent layer kernels ------------------------------------------------------------------
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

constexpr int kMaxB = static_cast<int>(kRnnPersistentMaxBatch);

// The warp's sums of acc[b] for b < B (a fixed-order butterfly), lane b calling out(b, sum).
template <typename Out>
__device__ __forceinline__ void warp_sums(float (&acc)[kMaxB], int64_t B, int lane, Out out) {
#pragma unroll
  for (int b = 0; b < kMaxB; ++b) {
    if (b < B) {
      const float v = warp_sum(acc[b]);
      if (lane == b) out(b, v);
    }
  }
}

struct PersistentArgs {
  RnnPersistentParams p;
  int64_t units;    // hidden units per block
  int64_t hp;       // H rounded up to a multiple of 4 (row stride of both shared arrays)
  int64_t w_bytes;  // bytes of the W_hh slice in shared memory, a multiple of 16
};

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// This block's first hidden unit *j0 and its number of units: `per`, or what is left for the last
// block (>= 1 as blocks = ceil(H / per)); an int, as their W_hh slice fits in shared memory.
__device__ __forceinline__ int block_units(int64_t H, int64_t per, int64_t* j0) {
  *j0 = static_cast<int64_t>(blockIdx.x) * per;
  return static_cast<int>(H - *j0 < per ? H - *j0 : per);
}

template <RnnMode M, typename T>
__global__ void __launch_bounds__(kPersistentThreads) rnn_persistent_forward_kernel(const PersistentArgs a) {
  constexpr int G = math::rnn_gates(M);
  constexpr int S = math::rnn_saved(M);
  extern __shared__ __align__(16) unsigned char smem[];
  const RnnPersistentParams& p = a.p;
  const int64_t H = p.hidden, B = p.batch, GH = G * H, hp = a.hp;
  int64_t j0;
  const int units = block_units(H, a.units, &j0);
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
      warp_sums(acc, B, lane, [&](int b, float v) { p.gh[b * GH + col] = v; });
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

// The backward through time (RnnPersistentBackwardParams). Block k keeps the W_hh columns of its
// units, wc[u G H + r] = W_hh[r, j0 + u] (storage dtype), and per step i = 0 .. T-1 (forward
// order index s = T-1-i, time t):
//   1. i > 0: dh[b, j] += sum_r dgh_{step s+1}[b, r] W_hh[r, j] for its units (one warp per unit,
//      lanes along r; dgh read from global, written by every block last step);
//   2. __syncthreads, then rnn_step_backward_unit on (b, j) of its units (dgi, dgh, dh, dc);
//   3. grid.sync().
// Finally 1. once more with the first step's dgh: dh = d h0.
struct PersistentBackwardArgs {
  RnnPersistentBackwardParams p;
  int64_t units;  // hidden units per block
};

template <RnnMode M, typename T>
__global__ void __launch_bounds__(kPersistentThreads) rnn_persistent_backward_kernel(const PersistentBackwardArgs a) {
  constexpr int G = math::rnn_gates(M);
  constexpr int S = math::rnn_saved(M);
  extern __shared__ __align__(16) unsigned char smem[];
  const RnnPersistentBackwardParams& p = a.p;
  const int64_t H = p.hidden, B = p.batch, GH = G * H, steps = p.steps;
  int64_t j0;
  const int units = block_units(H, a.units, &j0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  T* wc = reinterpret_cast<T*>(smem);
  const T* w = static_cast<const T*>(p.w_hh);
  for (int64_t r = warp; r < GH; r += warps)
    for (int u = lane; u < units; u += 32) wc[u * GH + r] = w[r * H + j0 + u];
  __syncthreads();

  const float* dgh_all = M == RnnMode::kGru ? p.dgh : p.dgi;
  auto add_recurrent = [&](int64_t t) {  // dh[:, own units] += dgh[t] W_hh[:, own units]
    const float* g = dgh_all + t * B * GH;
    for (int u = warp; u < units; u += warps) {
      float acc[kMaxB];
#pragma unroll
      for (int b = 0; b < kMaxB; ++b) acc[b] = 0.0f;
      const T* wu = wc + u * GH;
      for (int64_t r = lane; r < GH; r += 32) {
        const float wv = to_f32(wu[r]);
#pragma unroll
        for (int b = 0; b < kMaxB; ++b)
          if (b < B) acc[b] = fmaf(wv, g[b * GH + r], acc[b]);
      }
      warp_sums(acc, B, lane, [&](int b, float v) { p.dh[b * H + j0 + u] += v; });
    }
  };

  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t s = steps - 1 - i;  // the forward's order index of this step
    const int64_t t = p.reverse ? steps - 1 - s : s;
    if (i > 0) {
      add_recurrent(p.reverse ? t - 1 : t + 1);  // the step after t in the forward's order
      __syncthreads();
    }
    RnnStepBackwardParams q;
    q.mode = M;
    q.batch = B;
    q.hidden = H;
    q.dtype = p.dtype;
    q.dy = p.dy ? static_cast<const T*>(p.dy) + t * B * H : nullptr;
    q.dh = p.dh;
    q.dc = p.dc;
    q.saved = p.saved + t * B * S * H;
    if (M == RnnMode::kLstm) {
      q.c = p.c_all + t * B * H;
      q.c_prev = s == 0 ? p.c0 : p.c_all + (p.reverse ? t + 1 : t - 1) * B * H;
    }
    q.h_prev = p.h_prev + t * B * H;
    q.dgi = p.dgi + t * B * GH;
    if (M == RnnMode::kGru) q.dgh = p.dgh + t * B * GH;
    for (int e = threadIdx.x; e < static_cast<int>(B) * units; e += blockDim.x)
      rnn_step_backward_unit<M, T, Cvt>(q, e / units, j0 + e % units, true);
    grid.sync();  // dgh[t] complete before any block reads it
  }
  if (steps > 0) add_recurrent(p.reverse ? steps - 1 : 0);  // the forward's first step: dh = d h0
}

// The instantiation of kernel template K (forward or backward) for a mode and dtype.
template <template <RnnMode, typename> class K, typename T>
const void* kernel_of(RnnMode mode) {
  switch (mode) {
    case RnnMode::kRelu: return reinterpret_cast<const void*>(K<RnnMode::kRelu, T>::fn);
    case RnnMode::kLstm: return reinterpret_cast<const void*>(K<RnnMode::kLstm, T>::fn);
    case RnnMode::kGru: return reinterpret_cast<const void*>(K<RnnMode::kGru, T>::fn);
    default: return reinterpret_cast<const void*>(K<RnnMode::kTanh, T>::fn);
  }
}

template <template <RnnMode, typename> class K>
const void* kernel_of(RnnMode mode, DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return kernel_of<K, __half>(mode);
    case DType::kBFloat16: return kernel_of<K, __nv_bfloat16>(mode);
    default: return kernel_of<K, float>(mode);
  }
}

template <RnnMode M, typename T>
struct ForwardKernel {
  static constexpr void (*fn)(PersistentArgs) = rnn_persistent_forward_kernel<M, T>;
};
template <RnnMode M, typename T>
struct BackwardKernel {
  static constexpr void (*fn)(PersistentBackwardArgs) = rnn_persistent_backward_kernel<M, T>;
};

int64_t storage_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

std::string cuda_failure(const char* what, cudaError_t err) {
  return std::string(what) + " failed: " + cudaGetErrorString(err);
}

// Shared memory per block: forward, the W_hh rows of `units` units (rows padded to hp) and h of
// B rows (float32); backward, the W_hh columns of `units` units (all G*H rows).
int64_t persistent_smem(const RnnPersistentParams& p, int64_t units, int64_t* w_bytes) {
  const int64_t G = math::rnn_gates(p.mode), hp = round_up(p.hidden, 4);
  if (p.backward) {
    *w_bytes = round_up(units * G * p.hidden * storage_bytes(p.dtype), 16);
    return *w_bytes;
  }
  *w_bytes = round_up(G * units * hp * storage_bytes(p.dtype), 16);
  return *w_bytes + p.batch * hp * 4;
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
  const int64_t units = cdiv(H, sms);
  const int64_t blocks = cdiv(H, units);
  int64_t w_bytes = 0;
  const int64_t smem = persistent_smem(p, units, &w_bytes);
  if (smem > smem_max)
    return "W_hh slice of " + std::to_string(units) + " units x " + std::to_string(math::rnn_gates(p.mode)) +
           " gates" + (p.backward ? "" : " and h of " + std::to_string(B) + " rows") + " needs " +
           std::to_string(smem) + " B of shared memory per block, the device has " + std::to_string(smem_max);
  const void* kernel = p.backward ? kernel_of<BackwardKernel>(p.mode, p.dtype)
                                  : kernel_of<ForwardKernel>(p.mode, p.dtype);
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

namespace {

// Plans p and launches kernel K(args) cooperatively; cudaErrorInvalidConfiguration if the plan
// does not fit (the caller checks rnn_persistent_plan first).
template <template <RnnMode, typename> class K, typename Args, typename Fill>
int launch_persistent(const RnnPersistentParams& shape, void* stream, Args a, Fill fill) {
  RnnPersistentPlan plan;
  if (!rnn_persistent_plan(shape, &plan).empty()) return static_cast<int>(cudaErrorInvalidConfiguration);
  int64_t w_bytes = 0;
  persistent_smem(shape, plan.units, &w_bytes);
  fill(a, plan.units, w_bytes);
  void* args[] = {&a};
  return static_cast<int>(cudaLaunchCooperativeKernel(kernel_of<K>(shape.mode, shape.dtype), dim3(plan.blocks),
                                                      dim3(plan.threads), args, static_cast<size_t>(plan.smem_bytes),
                                                      static_cast<cudaStream_t>(stream)));
}

}  // namespace

int rnn_persistent_forward(const RnnPersistentParams& p, void* stream) {
  if (p.steps <= 0) return 0;
  RnnPersistentParams shape = p;
  shape.backward = false;
  return launch_persistent<ForwardKernel>(shape, stream, PersistentArgs{p, 0, round_up(p.hidden, 4), 0},
                                          [](PersistentArgs& a, int64_t units, int64_t w_bytes) {
                                            a.units = units;
                                            a.w_bytes = w_bytes;
                                          });
}

int rnn_persistent_backward(const RnnPersistentBackwardParams& p, void* stream) {
  if (p.steps <= 0) return 0;
  RnnPersistentParams shape;
  shape.mode = p.mode;
  shape.dtype = p.dtype;
  shape.steps = p.steps;
  shape.batch = p.batch;
  shape.hidden = p.hidden;
  shape.backward = true;
  return launch_persistent<BackwardKernel>(shape, stream, PersistentBackwardArgs{p, 0},
                                           [](PersistentBackwardArgs& a, int64_t units, int64_t) { a.units = units; });
}

}  // namespace cuda
}  // namespace fastops
