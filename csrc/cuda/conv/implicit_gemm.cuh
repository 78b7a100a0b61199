// Implicit-GEMM convolution on tensor cores (mma.sync, sm_80+), float16 / bfloat16, NHWC.
//
// One kernel, conv_mma_kernel<T, Cfg, Problem>, runs the three passes (Fwd, Dgrad, Wgrad of
// conv/problem.h, which holds the index math and the description of each GEMM) on the GEMM's
// pipeline (gemm/tile.cuh: mma_mainloop, acc_to_smem) and epilogue (gemm/epilogue.cuh). The tile
// loader gathers each 16-byte chunk from the activations with the Problem's a() / b() offsets
// (src-size 0 for a zero chunk). Every block runs its whole k range in order: the backward sums
// have a fixed order (no split-k, no atomics), float32 accumulation.
#pragma once

#include <cstdint>

#include "fastops/conv.h"
#include "cuda/gemm/epilogue.cuh"
#include "cuda/gemm/layout.h"
#include "cuda/gemm/tile.cuh"
#include "problem.h"

namespace fastops {
namespace cuda {
namespace conv_impl {

using gemm_impl::Coord;

// The arrays one pass reads and writes: A and B as the Problem's a() / b() offsets index them,
// the output (row stride and column placement from Problem::out), optional bias and activation
// (forward only).
template <typename T>
struct Operands {
  const T* a;
  const T* b;
  T* out;
  const T* bias;  // [O] or null
  DType dtype;
  Activation act;
};

// Copies k tile k0 of one operand (ROWS_MN rows of m or n from mn0, BK of k) into a stage, one
// 16-byte cp.async per chunk; `src(mn, k)` is the Problem's a or b of this group, an offset into `base`.
template <typename T, int ROWS_MN, class Cfg, bool KMAJOR, class Src>
__device__ __forceinline__ void gather_stage(T* dst, const Src& src, const T* base, int64_t mn0, int64_t k0,
                                             int ld_smem) {
  constexpr int kChunks = ROWS_MN * Cfg::BK / Cfg::VEC;
#pragma unroll
  for (int i = 0; i < kChunks / Cfg::THREADS; ++i) {
    const Coord c = gemm_impl::copy_chunk(static_cast<int>(threadIdx.x) + i * Cfg::THREADS, KMAJOR, ROWS_MN,
                                          Cfg::BK, Cfg::VEC);
    const int64_t off = KMAJOR ? src(mn0 + c.row, k0 + c.col) : src(mn0 + c.col, k0 + c.row);
    cp_async_16(dst + c.row * ld_smem + c.col, base + (off < 0 ? 0 : off), off < 0 ? 0 : 16);
  }
}

// One block: a BM x BN tile of group blockIdx.y's GEMM (grouped tile order in blockIdx.x).
template <typename T, class Cfg, int MIN_BLOCKS, class Problem>
__global__ void __launch_bounds__(Cfg::THREADS, MIN_BLOCKS)
    conv_mma_kernel(const Problem prob, const Operands<T> io, int64_t tiles_m, int64_t tiles_n) {
  static_assert(sizeof(T) == Cfg::ELEM && Cfg::VEC == 8, "16-bit elements, 8 channels per chunk");
  extern __shared__ __align__(16) unsigned char smem[];
  T* const sa = reinterpret_cast<T*>(smem);
  T* const sb = sa + Cfg::STAGES * Cfg::A_STAGE;
  constexpr bool kA = Problem::A_KMAJOR, kB = Problem::B_KMAJOR;
  constexpr int lda = kA ? Cfg::LD_A_K : Cfg::LD_A_MN, ldb = kB ? Cfg::LD_B_K : Cfg::LD_B_MN;

  const Coord tile = gemm_impl::tile_of(blockIdx.x, tiles_m, tiles_n, gemm_impl::kGroupM);
  const int64_t m0 = static_cast<int64_t>(tile.row) * Cfg::BM, n0 = static_cast<int64_t>(tile.col) * Cfg::BN;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int wm0 = (warp % Cfg::WARPS_M) * Cfg::WM, wn0 = (warp / Cfg::WARPS_M) * Cfg::WN;
  const int64_t g = blockIdx.y;
  const int64_t ktiles = (prob.K() + Cfg::BK - 1) / Cfg::BK;
  auto a = [&](int64_t mn, int64_t k) { return prob.a(g, mn, k); };
  auto b = [&](int64_t mn, int64_t k) { return prob.b(g, mn, k); };

  float acc[Cfg::MI][Cfg::NI][4];
  gemm_impl::mma_mainloop<T, Cfg>(acc, sa, sb, ktiles, kA, kB, lda, ldb, wm0, wn0, lane,
                                  [&](int64_t kt, T* stage_a, T* stage_b) {
                                    gather_stage<T, Cfg::BM, Cfg, kA>(stage_a, a, io.a, m0, kt * Cfg::BK, lda);
                                    gather_stage<T, Cfg::BN, Cfg, kB>(stage_b, b, io.b, n0, kt * Cfg::BK, ldb);
                                  });
  float* const tile_c = reinterpret_cast<float*>(smem);
  gemm_impl::acc_to_smem<Cfg>(acc, tile_c, wm0, wn0, lane);
  __syncthreads();
  const OutTile o = prob.out(g);
  const gemm_impl::Epilogue ep{io.out + o.offset, o.ld, 1, o.m, o.n, io.dtype,
                               io.bias ? io.bias + g * prob.s.og() : nullptr, false, 1.0f, 0.0f, io.act};
  gemm_impl::store_tile<Cfg::BM, Cfg::BN, Cfg::THREADS>(ep, tile_c, Cfg::LD_C, m0, n0);
}

}  // namespace conv_impl
}  // namespace cuda
}  // namespace fastops
