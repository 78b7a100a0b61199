// GEMM epilogue shared by the tensor-core and SIMT kernels: for one output element,
//   C[i, j] = act(alpha * acc + beta * C[i, j] + bias[i or j])
// exactly as the reference csrc/cpu/gemm.cpp: beta == 0 never reads C, bias (C's dtype) is added
// after beta * C, the activation (fastops/math/activation.h) comes last. C's storage dtype is a
// runtime value (a uniform branch per element) so the kernels are templated on the A/B type only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "fastops/dtype.h"
#include "fastops/gemm.h"
#include "fastops/math/activation.h"
#include "layout.h"
#include "../storage.cuh"

namespace fastops {
namespace cuda {
namespace gemm_impl {

__device__ __forceinline__ float load_f32(const void* base, DType dt, int64_t off) {
  switch (dt) {
    case DType::kFloat16: return to_f32(static_cast<const __half*>(base)[off]);
    case DType::kBFloat16: return to_f32(static_cast<const __nv_bfloat16*>(base)[off]);
    default: return static_cast<const float*>(base)[off];
  }
}

__device__ __forceinline__ void store_f32(void* base, DType dt, int64_t off, float v) {
  switch (dt) {
    case DType::kFloat16: static_cast<__half*>(base)[off] = from_f32<__half>(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(base)[off] = from_f32<__nv_bfloat16>(v); break;
    default: static_cast<float*>(base)[off] = v;
  }
}

// The output side of GemmParams for one batch entry.
struct Epilogue {
  void* c;  // C of this batch entry
  int64_t stride_row, stride_col, m, n;
  DType dtype;
  const void* bias;
  bool bias_per_row;
  float alpha, beta;
  Activation act;

  __device__ __forceinline__ static Epilogue of(const GemmParams& p, int64_t batch) {
    return Epilogue{static_cast<char*>(p.c) + batch * p.c_stride_batch * elem_bytes(p.c_dtype),
                    p.c_stride_row, p.c_stride_col, p.m, p.n, p.c_dtype, p.bias, p.bias_per_row,
                    p.alpha, p.beta, p.activation};
  }

  __device__ __forceinline__ static int64_t elem_bytes(DType dt) { return dt == DType::kFloat32 ? 4 : 2; }

  // Element (i, j) of this batch entry's C; out-of-range (i, j) are skipped.
  __device__ __forceinline__ void store(int64_t i, int64_t j, float acc) const {
    if (i >= m || j >= n) return;
    const int64_t off = i * stride_row + j * stride_col;
    float v = alpha * acc;
    if (beta != 0.0f) v += beta * load_f32(c, dtype, off);
    if (bias != nullptr) v += load_f32(bias, dtype, bias_per_row ? i : j);
    store_f32(c, dtype, off, math::activate(act, v));
  }
};

// Writes a block's BM x BN output tile, staged as float32 in shared memory (`tile`, row stride
// `ld`, filled and published by a barrier before the call), to C at (m0, n0). Consecutive threads
// take consecutive elements along C's unit-stride dimension (rows when C is column-major), so
// the global accesses coalesce; one element per iteration keeps a single copy of the activation
// code and few registers, whatever the tile size.
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void store_tile(const Epilogue& ep, const float* tile, int ld, int64_t m0, int64_t n0) {
  const bool rows_fast = ep.stride_row == 1 && ep.stride_col != 1;
#pragma unroll 1
  for (int idx = static_cast<int>(threadIdx.x); idx < BM * BN; idx += THREADS) {
    const Coord e = epilogue_element(idx, rows_fast, BM, BN);
    ep.store(m0 + e.row, n0 + e.col, tile[e.row * ld + e.col]);
  }
}

}  // namespace gemm_impl
}  // namespace cuda
}  // namespace fastops
