// PTX wrappers of the tensor-core kernels (sm_80+), shared by the GEMM (gemm/tile.cuh), the
// attention (attention/tiles.cuh) and the convolution (conv/*.cuh) kernels: cp.async, ldmatrix,
// mma.sync m16n8k16 (f16 / bf16 -> f32) and m16n8k8 (tf32 -> f32), cvt.rna.tf32.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16"): lane = 4 * g + t (g = lane / 4, t = lane % 4).
//   A (16 x 16, row major)  a0 = A[g][2t..2t+1]   a1 = A[g+8][2t..]   a2 = A[g][8+2t..]   a3 = A[g+8][8+2t..]
//   B (16 x 8, "col")       b0 = B[2t..2t+1][g]   b1 = B[8+2t..][g]
//   C (16 x 8, float32)     c0, c1 = C[g][2t], C[g][2t+1]     c2, c3 = C[g+8][2t], C[g+8][2t+1]
// The index math that uses them lives beside each kernel family (gemm/layout.h, attention/tiles.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fastops {
namespace cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1; bytes past `src_bytes` (0..16) are zero-filled
// and not read, so a partial or empty chunk at a tile edge needs no branch. `src` must be
// 16-byte aligned even when src_bytes < 16.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lane l supplies the row address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// Round a float32 to TF32 (nearest, ties away: what cuBLAS/CUTLASS use) in a 32-bit register.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// d += a * b on one m16 x n8 tile: `mma.sync.aligned.<SHAPE_TYPES>` with the accumulators in d.
#define FASTOPS_MMA_SYNC(SHAPE_TYPES, d, a, b0, b1)                                                     \
  asm volatile("mma.sync.aligned." SHAPE_TYPES " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "          \
               "{%0, %1, %2, %3};\n"                                                                    \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                          \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

// Mma<T>::run(d, a, b0, b1): d += a * b on one m16 x n8 tile. T selects the operand type (__half,
// __nv_bfloat16, float = tf32); K is the mma's k extent. The 16-bit types also pack two floats
// into one A register (pack), for a product whose A operand is a float accumulator (attention's P V).
template <typename T>
struct Mma;

template <>
struct Mma<__half> {
  static constexpr int K = 16;
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    FASTOPS_MMA_SYNC("m16n8k16.row.col.f32.f16.f16.f32", d, a, b0, b1);
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <>
struct Mma<__nv_bfloat16> {
  static constexpr int K = 16;
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    FASTOPS_MMA_SYNC("m16n8k16.row.col.f32.bf16.bf16.f32", d, a, b0, b1);
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <>
struct Mma<float> {
  static constexpr int K = 8;
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    FASTOPS_MMA_SYNC("m16n8k8.row.col.f32.tf32.tf32.f32", d, a, b0, b1);
  }
};

#undef FASTOPS_MMA_SYNC

}  // namespace cuda
}  // namespace fastops
