// Depthwise convolution kernels (groups == C, O = mult C), NHWC, every storage dtype, float32 math.
// The weight is [O, KH KW] (Cg = 1, so the (kh, kw) order is the same in both layouts).
//   dw_forward:  one thread per output element y[n, ho, wo, o] (o fastest: coalesced), taps in
//                order, then + bias and the activation.
//   dw_dgrad:    one thread per dx[n, h, w, c]: sum over (mult m, kh, kw) in order of the dy
//                elements whose window reads it (conv_out_index).
//   channel_reduce: out[o, t] = sum over output pixels p of dy[p, o] * x[pixel read by p at tap t,
//                o / mult] (x null: 1, the bias gradient; taps = 1). Block (32 channels) x (ROWS
//                row-groups) per (channel block, tap); thread (tx, ty) sums pixels ty, ty + ROWS, ...
//                then row-group sums are added in order ty = 0, 1, ...: a fixed order whatever the
//                grid, no atomics. Also the bias gradient of the implicit-GEMM path.
#pragma once

#include <cstdint>

#include "fastops/conv.h"
#include "fastops/math/activation.h"
#include "cuda/storage.cuh"

namespace fastops {
namespace cuda {
namespace conv_impl {

template <typename T>
__global__ void __launch_bounds__(256) dw_forward(const Conv2dShape s, const T* __restrict__ x,
                                                  const T* __restrict__ w, const T* __restrict__ bias,
                                                  T* __restrict__ y, Activation act) {
  const int64_t total = s.n * s.ho * s.wo * s.o, mult = s.o / s.c, taps = s.kh * s.kw;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = idx % s.o, p = idx / s.o;
    const int64_t wo = p % s.wo, ho = (p / s.wo) % s.ho, n = p / (s.wo * s.ho);
    const T* xn = x + n * s.h * s.w * s.c + o / mult;
    const T* wo_ = w + o * taps;
    float acc = 0.0f;
    for (int64_t kh = 0; kh < s.kh; ++kh) {
      const int64_t hi = conv_in_index(ho, kh, s.stride_h, s.pad_h, s.dil_h);
      if (hi < 0 || hi >= s.h) continue;
      for (int64_t kw = 0; kw < s.kw; ++kw) {
        const int64_t wi = conv_in_index(wo, kw, s.stride_w, s.pad_w, s.dil_w);
        if (wi < 0 || wi >= s.w) continue;
        acc = fmaf(to_f32(xn[(hi * s.w + wi) * s.c]), to_f32(wo_[kh * s.kw + kw]), acc);
      }
    }
    if (bias != nullptr) acc += to_f32(bias[o]);
    y[idx] = from_f32<T>(math::activate(act, acc));
  }
}

template <typename T>
__global__ void __launch_bounds__(256) dw_dgrad(const Conv2dShape s, const T* __restrict__ dy,
                                                const T* __restrict__ w, T* __restrict__ dx) {
  const int64_t total = s.n * s.h * s.w * s.c, mult = s.o / s.c, taps = s.kh * s.kw;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % s.c, q = idx / s.c;
    const int64_t wi = q % s.w, hi = (q / s.w) % s.h, n = q / (s.w * s.h);
    const T* dyn = dy + n * s.ho * s.wo * s.o + c * mult;
    const T* wc = w + c * mult * taps;
    float acc = 0.0f;
    for (int64_t kh = 0; kh < s.kh; ++kh) {
      const int64_t ho = conv_out_index(hi, kh, s.stride_h, s.pad_h, s.dil_h, s.ho);
      if (ho < 0) continue;
      for (int64_t kw = 0; kw < s.kw; ++kw) {
        const int64_t wo = conv_out_index(wi, kw, s.stride_w, s.pad_w, s.dil_w, s.wo);
        if (wo < 0) continue;
        const T* d = dyn + (ho * s.wo + wo) * s.o;
        for (int64_t m = 0; m < mult; ++m)
          acc = fmaf(to_f32(d[m]), to_f32(wc[m * taps + kh * s.kw + kw]), acc);
      }
    }
    dx[idx] = from_f32<T>(acc);
  }
}

constexpr int kReduceCols = 32, kReduceRows = 16;

template <typename T>
__global__ void __launch_bounds__(kReduceCols* kReduceRows) channel_reduce(const Conv2dShape s, const T* __restrict__ dy,
                                                                           const T* __restrict__ x, T* __restrict__ out) {
  __shared__ float part[kReduceRows][kReduceCols + 1];
  const int tx = static_cast<int>(threadIdx.x) % kReduceCols, ty = static_cast<int>(threadIdx.x) / kReduceCols;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kReduceCols + tx, t = blockIdx.y;
  const int64_t pixels = s.n * s.ho * s.wo, taps = x ? s.kh * s.kw : 1, mult = s.o / s.c;
  const int64_t kh = t / s.kw, kw = t % s.kw;
  float acc = 0.0f;
  if (o < s.o) {
    for (int64_t p = ty; p < pixels; p += kReduceRows) {
      float v = to_f32(dy[p * s.o + o]);
      if (x != nullptr) {
        const int64_t wo = p % s.wo, ho = (p / s.wo) % s.ho, n = p / (s.wo * s.ho);
        const int64_t hi = conv_in_index(ho, kh, s.stride_h, s.pad_h, s.dil_h);
        const int64_t wi = conv_in_index(wo, kw, s.stride_w, s.pad_w, s.dil_w);
        v = (hi < 0 || hi >= s.h || wi < 0 || wi >= s.w) ? 0.0f
                                                         : v * to_f32(x[((n * s.h + hi) * s.w + wi) * s.c + o / mult]);
      }
      acc += v;
    }
  }
  part[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && o < s.o) {
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < kReduceRows; ++r) sum += part[r][tx];
    out[o * taps + t] = from_f32<T>(sum);
  }
}

}  // namespace conv_impl
}  // namespace cuda
}  // namespace fastops
