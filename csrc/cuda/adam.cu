// CUDA fused Adam / AdamW: a multi-tensor apply over the tensors of one (device, dtype) bucket.
// Torch-free: raw pointers, sizes, a stream. The element math is fastops/math/adam.h.
//
// Launch: the tensors are cut into chunks of kChunk elements; a launch carries, by value in its
// kernel arguments, a TensorTable of up to kMaxTensors tensors (pointers, numel, step pointer)
// and the (tensor, chunk) pair of each of its up to kMaxBlocks blocks (apex's multi_tensor_apply
// layout, 3.2 KB of arguments). Block b updates chunk chunk_of_block[b] of tensor
// tensor_of_block[b]: kThreads threads stride over the chunk kVec elements at a time, with
// 128-bit loads and stores of the float32 arrays (64-bit for 16-bit params and grads) when every
// pointer of the tensor is 16-byte aligned (chunk starts are multiples of kVec, so then every
// vector is), scalar accesses otherwise and for the last numel % kVec elements. The host fills
// tables and launches whenever one is full, so a step over up to kMaxTensors tensors and
// kMaxBlocks * kChunk elements is one launch. Offsets are int64_t; chunk indices int (a tensor
// of 2^31 * kChunk elements would be needed to overflow them).
// Bias corrections are computed per block from the tensor's step (float64 pow, once per block).
// found_inf != 0 makes every block return before touching memory.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastops/adam.h"
#include "fastops/macros.h"
#include "fastops/math/adam.h"
#include "storage.cuh"

namespace fastops {
namespace cuda {
namespace {

constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;
constexpr int kVec = 4;

struct TensorTable {
  void* p[kMaxTensors];
  void* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  float* vmax[kMaxTensors];
  float* master[kMaxTensors];
  const float* step[kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char tensor_of_block[kMaxBlocks];
  int chunk_of_block[kMaxBlocks];
};
static_assert(sizeof(TensorTable) + sizeof(math::AdamOptions) + 2 * sizeof(void*) <= 4096,
              "kernel arguments must fit the 4 KB limit of every architecture");

// ---- storage <-> float32, kVec elements at a time (scalar conversions: storage.cuh) -----------

__device__ __forceinline__ float half_bits(__half, unsigned short b) { return __half2float(__ushort_as_half(b)); }
__device__ __forceinline__ float half_bits(__nv_bfloat16, unsigned short b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}
__device__ __forceinline__ unsigned short bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// p must be kVec * sizeof(T) aligned: one 128-bit (float) or 64-bit (16-bit types) access.
template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float* o) {
  if constexpr (sizeof(T) == 4) {
    const float4 r = *reinterpret_cast<const float4*>(p);
    o[0] = r.x; o[1] = r.y; o[2] = r.z; o[3] = r.w;
  } else {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    o[0] = half_bits(T(), static_cast<unsigned short>(r.x & 0xffffu));
    o[1] = half_bits(T(), static_cast<unsigned short>(r.x >> 16));
    o[2] = half_bits(T(), static_cast<unsigned short>(r.y & 0xffffu));
    o[3] = half_bits(T(), static_cast<unsigned short>(r.y >> 16));
  }
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
  } else {
    unsigned w[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      w[k] = static_cast<unsigned>(bits16(from_f32<T>(in[2 * k]))) |
             (static_cast<unsigned>(bits16(from_f32<T>(in[2 * k + 1]))) << 16);
    }
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  }
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// ---- the kernel --------------------------------------------------------------------------------

template <typename T, bool kAmsgrad, bool kMaster>
__global__ void __launch_bounds__(kThreads) adam_kernel(TensorTable tab, math::AdamOptions o,
                                                        const float* grad_scale, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  const int t = tab.tensor_of_block[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(tab.chunk_of_block[blockIdx.x]) * kChunk;
  const int64_t n = tab.numel[t];
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  const math::AdamScalars k = math::adam_scalars(o, *tab.step[t]);
  const bool scaled = grad_scale != nullptr;
  const float scale = scaled ? *grad_scale : 1.0f;
  T* __restrict__ p = static_cast<T*>(tab.p[t]);
  T* __restrict__ g = static_cast<T*>(tab.g[t]);
  float* __restrict__ m = tab.m[t];
  float* __restrict__ v = tab.v[t];
  float* __restrict__ vmax = tab.vmax[t];
  float* __restrict__ master = tab.master[t];

  // 16-bit p/g need 8-byte alignment for a 4-element vector; 16 is asked of all for simplicity.
  bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v);
  if constexpr (kAmsgrad) vec = vec && aligned16(vmax);
  if constexpr (kMaster) vec = vec && aligned16(master);
  const int64_t vec_end = vec ? begin + (end - begin) / kVec * kVec : begin;

  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vec_end;
       i += static_cast<int64_t>(kThreads) * kVec) {
    float pv[kVec], gv[kVec], mv[kVec], vv[kVec], xv[kVec];
    if constexpr (kMaster) load_vec(master + i, pv); else load_vec(p + i, pv);
    load_vec(g + i, gv);
    load_vec(m + i, mv);
    load_vec(v + i, vv);
    if constexpr (kAmsgrad) load_vec(vmax + i, xv);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      gv[j] = scaled ? gv[j] / scale : gv[j];
      math::adam_update<kAmsgrad>(pv[j], gv[j], mv[j], vv[j], xv[j], k);
    }
    if (scaled) store_vec(g + i, gv);
    store_vec(m + i, mv);
    store_vec(v + i, vv);
    if constexpr (kAmsgrad) store_vec(vmax + i, xv);
    if constexpr (kMaster) store_vec(master + i, pv);
    store_vec(p + i, pv);
  }
  for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads) {
    float pi = kMaster ? master[i] : to_f32(p[i]);
    float gi = to_f32(g[i]);
    float mi = m[i], vi = v[i], xi = kAmsgrad ? vmax[i] : 0.0f;
    if (scaled) {
      gi = gi / scale;
      g[i] = from_f32<T>(gi);
    }
    math::adam_update<kAmsgrad>(pi, gi, mi, vi, xi, k);
    m[i] = mi;
    v[i] = vi;
    if constexpr (kAmsgrad) vmax[i] = xi;
    if constexpr (kMaster) master[i] = pi;
    p[i] = from_f32<T>(pi);
  }
}

// ---- host: fill tables, launch when full -------------------------------------------------------

using Kernel = void (*)(TensorTable, math::AdamOptions, const float*, const float*);

template <typename T>
Kernel pick(bool amsgrad, bool master) {
  if (amsgrad) return master ? adam_kernel<T, true, true> : adam_kernel<T, true, false>;
  return master ? adam_kernel<T, false, true> : adam_kernel<T, false, false>;
}

Kernel pick_kernel(const AdamParams& a) {
  const bool amsgrad = a.options.amsgrad, master = a.master_params != nullptr;
  switch (a.param_dtype) {
    case DType::kFloat16: return pick<__half>(amsgrad, master);
    case DType::kBFloat16: return pick<__nv_bfloat16>(amsgrad, master);
    default: return pick<float>(amsgrad, master);
  }
}

}  // namespace

int adam_step(const AdamParams& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Kernel kernel = pick_kernel(a);
  TensorTable tab;
  int tensors = 0, blocks = 0;
  auto launch = [&]() -> int {
    kernel<<<blocks, kThreads, 0, s>>>(tab, a.options, a.grad_scale, a.found_inf);
    const cudaError_t err = cudaGetLastError();
    blocks = 0;
    return static_cast<int>(err);
  };
  for (int64_t t = 0; t < a.num_tensors; ++t) {
    const int64_t n = a.numel[t];
    if (n == 0) continue;
    tab.p[tensors] = a.params[t];
    tab.g[tensors] = a.grads[t];
    tab.m[tensors] = a.exp_avgs[t];
    tab.v[tensors] = a.exp_avg_sqs[t];
    tab.vmax[tensors] = a.max_exp_avg_sqs != nullptr ? a.max_exp_avg_sqs[t] : nullptr;
    tab.master[tensors] = a.master_params != nullptr ? a.master_params[t] : nullptr;
    tab.step[tensors] = a.steps[t];
    tab.numel[tensors] = n;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      tab.tensor_of_block[blocks] = static_cast<unsigned char>(tensors);
      tab.chunk_of_block[blocks] = static_cast<int>(c);
      ++blocks;
      const bool last_chunk = c + 1 == chunks;
      if (blocks == kMaxBlocks || (last_chunk && tensors + 1 == kMaxTensors)) {
        if (const int err = launch()) return err;
        if (last_chunk) {
          tensors = -1;  // the table starts empty with the next tensor
        } else {         // the rest of this tensor continues in slot 0 of the next table
          tab.p[0] = tab.p[tensors]; tab.g[0] = tab.g[tensors]; tab.m[0] = tab.m[tensors];
          tab.v[0] = tab.v[tensors]; tab.vmax[0] = tab.vmax[tensors];
          tab.master[0] = tab.master[tensors]; tab.step[0] = tab.step[tensors];
          tab.numel[0] = tab.numel[tensors];
          tensors = 0;
        }
      }
    }
    ++tensors;
  }
  if (blocks > 0) return launch();
  return 0;
}

}  // namespace cuda
}  // namespace fastops
