// SIMT (CUDA-core, float32 FMA) GEMM kernel: float32 without TF32, and the fallback for operands
// the tensor-core kernel cannot copy with cp.async (no unit-stride dimension, unaligned pointer or
// leading dimension, k == 0). Reads any strides element by element.
//
// One block of SIMT_THREADS = (BM / TM) * (BN / TN) threads computes a BM x BN tile (grouped order,
// batch entries blockIdx.y + i * gridDim.y). Per k tile of BK: each thread loads BM * BK / THREADS
// elements of A and BN * BK / THREADS of B into registers (converted to float32, zero out of
// range), stores them to shared memory as sA[BK][BM], sB[BK][BN], and while the block computes
// on them, already loads the next k tile into registers. Thread (ty, tx) owns rows ty * TM .. + TM - 1
// and columns tx * TN .. + TN - 1, summing over p in order (float32).
// `a_kfast` / `b_nfast`: which index of the element loop runs fastest across threads, chosen by
// the launcher as the dimension with the smaller stride, so global reads coalesce.
#pragma once

#include <cstdint>

#include "fastops/gemm.h"
#include "epilogue.cuh"
#include "layout.h"
#include "../storage.cuh"

namespace fastops {
namespace cuda {
namespace gemm_impl {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct SimtTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int THREADS = (BM / TM) * (BN / TN);
  static constexpr int A_PER_THREAD = BM * BK / THREADS, B_PER_THREAD = BN * BK / THREADS;
  static constexpr int PAD = 4;  // rows stay 16-byte aligned for the float4 reads
  static constexpr int LD_C = BN + PAD;
  static constexpr int MAIN_FLOATS = BK * (BM + PAD) + BK * (BN + PAD);
  static constexpr int SMEM_FLOATS = MAIN_FLOATS > BM * LD_C ? MAIN_FLOATS : BM * LD_C;
  static_assert(BM % TM == 0 && BN % TN == 0 && TM == 4 && TN == 4, "float4 fragments");
  static_assert((BM * BK) % THREADS == 0 && (BN * BK) % THREADS == 0, "whole loads per thread");
  static_assert(THREADS % BK == 0 && THREADS % BM == 0 && THREADS % BN == 0, "loads step by whole rows");
};

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, 2)
    gemm_simt_kernel(const GemmParams p, bool a_kfast, bool b_nfast, int64_t tiles_m, int64_t tiles_n) {
  // sa[BK][BM + PAD] and sb[BK][BN + PAD] in the main loop, then the C tile [BM][BN + PAD].
  __shared__ __align__(16) float smem[Cfg::SMEM_FLOATS];
  float(*const sa)[Cfg::BM + Cfg::PAD] = reinterpret_cast<float(*)[Cfg::BM + Cfg::PAD]>(smem);
  float(*const sb)[Cfg::BN + Cfg::PAD] =
      reinterpret_cast<float(*)[Cfg::BN + Cfg::PAD]>(smem + Cfg::BK * (Cfg::BM + Cfg::PAD));
  const Coord tile = tile_of(blockIdx.x, tiles_m, tiles_n, 8);
  const int64_t m0 = static_cast<int64_t>(tile.row) * Cfg::BM, n0 = static_cast<int64_t>(tile.col) * Cfg::BN;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % (Cfg::BN / Cfg::TN), ty = tid / (Cfg::BN / Cfg::TN);

  for (int64_t batch = blockIdx.y; batch < p.batch; batch += gridDim.y) {
    const T* const a = static_cast<const T*>(p.a.ptr) + batch * p.a.stride_batch;
    const T* const b = static_cast<const T*>(p.b.ptr) + batch * p.b.stride_batch;
    float ra[Cfg::A_PER_THREAD], rb[Cfg::B_PER_THREAD];
    // Thread tid loads elements e = tid + i * THREADS of the A tile, (mm, kk) = (e / BK, e % BK)
    // when a_kfast else (e % BM, e / BM): (am + i * adm, ak + i * adk), as THREADS is a multiple
    // of BK and BM. The same for B with (kk, nn).
    const int am = a_kfast ? tid / Cfg::BK : tid % Cfg::BM, ak = a_kfast ? tid % Cfg::BK : tid / Cfg::BM;
    const int adm = a_kfast ? Cfg::THREADS / Cfg::BK : 0, adk = a_kfast ? 0 : Cfg::THREADS / Cfg::BM;
    const int bn = b_nfast ? tid % Cfg::BN : tid / Cfg::BK, bk = b_nfast ? tid / Cfg::BN : tid % Cfg::BK;
    const int bdn = b_nfast ? 0 : Cfg::THREADS / Cfg::BK, bdk = b_nfast ? Cfg::THREADS / Cfg::BN : 0;
    const T* const a_thread = a + (m0 + am) * p.a.stride_row + ak * p.a.stride_col;
    const T* const b_thread = b + bk * p.b.stride_row + (n0 + bn) * p.b.stride_col;
    const int64_t a_step = adm * p.a.stride_row + adk * p.a.stride_col;
    const int64_t b_step = bdk * p.b.stride_row + bdn * p.b.stride_col;
    auto fetch = [&](int64_t k0) {
      const T* const pa = a_thread + k0 * p.a.stride_col;
      const T* const pb = b_thread + k0 * p.b.stride_row;
#pragma unroll
      for (int i = 0; i < Cfg::A_PER_THREAD; ++i) {
        const bool ok = m0 + am + i * adm < p.m && k0 + ak + i * adk < p.k;
        ra[i] = ok ? to_f32(pa[i * a_step]) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < Cfg::B_PER_THREAD; ++i) {
        const bool ok = k0 + bk + i * bdk < p.k && n0 + bn + i * bdn < p.n;
        rb[i] = ok ? to_f32(pb[i * b_step]) : 0.0f;
      }
    };

    float acc[Cfg::TM][Cfg::TN] = {};
    if (p.k > 0) fetch(0);
    for (int64_t k0 = 0; k0 < p.k; k0 += Cfg::BK) {
#pragma unroll
      for (int i = 0; i < Cfg::A_PER_THREAD; ++i) sa[ak + i * adk][am + i * adm] = ra[i];
#pragma unroll
      for (int i = 0; i < Cfg::B_PER_THREAD; ++i) sb[bk + i * bdk][bn + i * bdn] = rb[i];
      __syncthreads();
      if (k0 + Cfg::BK < p.k) fetch(k0 + Cfg::BK);
      // Unrolled by 4, not BK: fully unrolled, the compiler hoists every shared-memory read of
      // the k tile (128 registers) and the 16-bit variants spill.
#pragma unroll 4
      for (int kk = 0; kk < Cfg::BK; ++kk) {
        const float4 av = *reinterpret_cast<const float4*>(&sa[kk][ty * Cfg::TM]);
        const float4 bv = *reinterpret_cast<const float4*>(&sb[kk][tx * Cfg::TN]);
        const float af[4] = {av.x, av.y, av.z, av.w}, bf[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
        for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
          for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = fmaf(af[i], bf[j], acc[i][j]);
      }
      __syncthreads();
    }

    // The loop ended on a barrier: shared memory is free for the C tile.
    float* const tile_c = smem;
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i)
      *reinterpret_cast<float4*>(tile_c + (ty * Cfg::TM + i) * Cfg::LD_C + tx * Cfg::TN) =
          make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    __syncthreads();
    store_tile<Cfg::BM, Cfg::BN, Cfg::THREADS>(Epilogue::of(p, batch), tile_c, Cfg::LD_C, m0, n0);
    __syncthreads();  // the next batch entry refills shared memory
  }
}

}  // namespace gemm_impl
}  // namespace cuda
}  // namespace fastops
