// Tensor-core GEMM kernel (mma.sync, sm_80+), templated on the operand type T (__half,
// __nv_bfloat16, or float read as TF32) and the tile traits Cfg = gemm_impl::Tile<...> (layout.h).
//
// One block computes a BM x BN tile of C for each batch entry blockIdx.y, blockIdx.y + gridDim.y, ...
// Its tile is tile_of(blockIdx.x) (grouped order). Cfg::WARPS warps split the block tile into
// WARPS_M x WARPS_N warp tiles of WM x WN, each MI x NI mma tiles of 16 x 8, held in float32
// registers (acc[MI][NI][4]).
//
// Main loop: a STAGES-deep cp.async pipeline over k tiles of BK. Stage s of shared memory holds
// A (k tile kt) and B (k tile kt) for kt % STAGES == s. Before iteration kt, tiles kt .. kt +
// STAGES - 2 have been requested (one commit group each, empty groups past the end so the count is
// uniform); cp.async.wait_group STAGES - 2 then guarantees tile kt has landed (kt + STAGES - 1
// groups committed, at most STAGES - 2 pending), the barrier publishes it to every warp and proves
// every warp is done with iteration kt - 1, whose stage ((kt - 1) % STAGES == (kt + STAGES - 1) %
// STAGES) is then refilled with tile kt + STAGES - 1 while the warps run the mma's of tile kt.
//
// Edges: a copy chunk is 16 bytes of the operand's contiguous dimension. Its src-size is the
// number of in-range bytes (0 when its row is out of range), the rest is zero-filled, so partial
// M / N tiles read zeros (their C elements are masked in the epilogue) and the partial last k tile
// adds exact zeros. The launcher guarantees every chunk start is 16-byte aligned (matmul.cu,
// operand_layout).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "fastops/gemm.h"
#include "epilogue.cuh"
#include "layout.h"
#include "../mma.cuh"

namespace fastops {
namespace cuda {
namespace gemm_impl {

constexpr int kGroupM = 8;  // tile rows per group of the grouped order

// The two tile configs of the tensor-core kernels (GEMM and implicit-GEMM convolution): 128 x 128
// (8 warps, 3 stages) when the grid fills the GPU, else 64 x 64 (4 warps, 4 stages).
template <int ELEM>
using BigTile = Tile<128, 128, 64, 32, 3, ELEM>;
template <int ELEM>
using SmallTile = Tile<64, 64, 32, 32, 4, ELEM>;
constexpr int kBigMinBlocks = 2;    // <= 128 registers per thread
constexpr int kSmallMinBlocks = 4;  // <= 128 registers per thread

// Copies k tile `kt` of one operand (rows_mn x BK of it) into `dst` (one stage). `base` is the
// operand of this batch entry, `mn0` the first row (A: m, B: n) of the block tile, `ld_glob` the
// stride of the non-contiguous dimension, `mn`, `k` the operand's extent.
template <typename T, int ROWS_MN, class Cfg>
__device__ __forceinline__ void copy_stage(T* dst, const T* base, bool kmajor, int64_t ld_glob, int64_t mn0,
                                           int64_t k0, int64_t mn, int64_t k, int ld_smem) {
  constexpr int kChunks = ROWS_MN * Cfg::BK / Cfg::VEC;
#pragma unroll
  for (int i = 0; i < kChunks / Cfg::THREADS; ++i) {
    const ChunkCopy c = copy_plan(static_cast<int>(threadIdx.x) + i * Cfg::THREADS, kmajor, ROWS_MN, Cfg::BK, Cfg::VEC,
                                  ld_glob, mn0, k0, mn, k, ld_smem);
    cp_async_16(dst + c.dst, base + c.src, c.valid * Cfg::ELEM);
  }
}

// Fragments of one mma k-step `kk` (in elements) from one stage, then the MI x NI mma's.
template <typename T, class Cfg>
__device__ __forceinline__ void mma_kstep(float (&acc)[Cfg::MI][Cfg::NI][4], const T* sa, const T* sb, bool a_kmajor,
                                          bool b_kmajor, int lda, int ldb, int wm0, int wn0, int kk, int lane) {
  uint32_t af[Cfg::MI][4], bf[Cfg::NI][2];
  if constexpr (sizeof(T) == 2) {
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
      const Coord c = ldmatrix_a(lane, a_kmajor, wm0 + mi * 16, kk);
      if (a_kmajor) ldmatrix_x4(af[mi], sa + c.row * lda + c.col);
      else ldmatrix_x4_trans(af[mi], sa + c.row * lda + c.col);
    }
#pragma unroll
    for (int nj = 0; nj < Cfg::NI / 2; ++nj) {
      const Coord c = ldmatrix_b(lane, b_kmajor, wn0 + nj * 16, kk);
      uint32_t r[4];
      if (b_kmajor) ldmatrix_x4(r, sb + c.row * ldb + c.col);
      else ldmatrix_x4_trans(r, sb + c.row * ldb + c.col);
      bf[2 * nj][0] = r[0];
      bf[2 * nj][1] = r[1];
      bf[2 * nj + 1][0] = r[2];
      bf[2 * nj + 1][1] = r[3];
    }
  } else {
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int reg = 0; reg < 4; ++reg) {
        const Coord e = tf32_a(lane, reg);
        const int m = wm0 + mi * 16 + e.row, kx = kk + e.col;
        af[mi][reg] = to_tf32(a_kmajor ? sa[m * lda + kx] : sa[kx * lda + m]);
      }
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int reg = 0; reg < 2; ++reg) {
        const Coord e = tf32_b(lane, reg);
        const int n = wn0 + ni * 8 + e.row, kx = kk + e.col;
        bf[ni][reg] = to_tf32(b_kmajor ? sb[n * ldb + kx] : sb[kx * ldb + n]);
      }
  }
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni) Mma<T>::run(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
}

// The main loop of one block tile, shared by the GEMM and the implicit-GEMM convolution kernels:
// zeroes `acc`, then runs the STAGES-deep pipeline over `ktiles` k tiles of BK. request(kt, a, b)
// issues (without committing) the cp.async copies of k tile kt into the stage buffers a, b. Returns
// after every copy has landed and a barrier: the pipeline's shared memory is free again.
template <typename T, class Cfg, class Request>
__device__ __forceinline__ void mma_mainloop(float (&acc)[Cfg::MI][Cfg::NI][4], T* sa, T* sb, int64_t ktiles,
                                             bool a_kmajor, bool b_kmajor, int lda, int ldb, int wm0, int wn0,
                                             int lane, const Request& request) {
  auto issue = [&](int64_t kt) {
    if (kt < ktiles) {
      const int s = static_cast<int>(kt % Cfg::STAGES);
      request(kt, sa + s * Cfg::A_STAGE, sb + s * Cfg::B_STAGE);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 1; ++s) issue(s);
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<Cfg::STAGES - 2>();
    __syncthreads();
    issue(kt + Cfg::STAGES - 1);
    const int s = static_cast<int>(kt % Cfg::STAGES);
    const T* const stage_a = sa + s * Cfg::A_STAGE;
    const T* const stage_b = sb + s * Cfg::B_STAGE;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += Cfg::MMA_K)
      mma_kstep<T, Cfg>(acc, stage_a, stage_b, a_kmajor, b_kmajor, lda, ldb, wm0, wn0, kk, lane);
  }
  // Drain the (empty) trailing groups; after the barrier every warp is done reading the
  // pipeline's shared memory.
  cp_async_wait<0>();
  __syncthreads();
}

// Writes the warp's accumulators into the float32 C tile [BM][LD_C] in shared memory (the caller
// publishes it with a barrier before the epilogue reads it).
template <class Cfg>
__device__ __forceinline__ void acc_to_smem(const float (&acc)[Cfg::MI][Cfg::NI][4], float* tile_c, int wm0, int wn0,
                                            int lane) {
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // (c0, c1) then (c2, c3): two adjacent columns each
        const Coord e = acc_coord(lane, 2 * h);
        *reinterpret_cast<float2*>(tile_c + (wm0 + mi * 16 + e.row) * Cfg::LD_C + wn0 + ni * 8 + e.col) =
            make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
      }
}

// a_kmajor / b_kmajor: layout of each operand (see layout.h); tiles_m, tiles_n: block tiles of C.
template <typename T, class Cfg, int MIN_BLOCKS>
__global__ void __launch_bounds__(Cfg::THREADS, MIN_BLOCKS)
    gemm_mma_kernel(const GemmParams p, bool a_kmajor, bool b_kmajor, int64_t tiles_m, int64_t tiles_n) {
  static_assert(sizeof(T) == Cfg::ELEM, "tile traits for this element size");
  extern __shared__ __align__(16) unsigned char smem[];
  T* const sa = reinterpret_cast<T*>(smem);
  T* const sb = sa + Cfg::STAGES * Cfg::A_STAGE;

  const Coord tile = tile_of(blockIdx.x, tiles_m, tiles_n, kGroupM);
  const int64_t m0 = static_cast<int64_t>(tile.row) * Cfg::BM, n0 = static_cast<int64_t>(tile.col) * Cfg::BN;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int wm0 = (warp % Cfg::WARPS_M) * Cfg::WM, wn0 = (warp / Cfg::WARPS_M) * Cfg::WN;
  const int lda = a_kmajor ? Cfg::LD_A_K : Cfg::LD_A_MN, ldb = b_kmajor ? Cfg::LD_B_K : Cfg::LD_B_MN;
  // Stride of the strided dimension: A[m, k] K-major -> stride_row, M-major -> stride_col;
  // B[k, n] K-major -> stride_col (n), N-major -> stride_row (k).
  const int64_t a_ld = a_kmajor ? p.a.stride_row : p.a.stride_col;
  const int64_t b_ld = b_kmajor ? p.b.stride_col : p.b.stride_row;
  const int64_t ktiles = (p.k + Cfg::BK - 1) / Cfg::BK;

  for (int64_t batch = blockIdx.y; batch < p.batch; batch += gridDim.y) {
    const T* const a = static_cast<const T*>(p.a.ptr) + batch * p.a.stride_batch;
    const T* const b = static_cast<const T*>(p.b.ptr) + batch * p.b.stride_batch;
    float acc[Cfg::MI][Cfg::NI][4];
    mma_mainloop<T, Cfg>(acc, sa, sb, ktiles, a_kmajor, b_kmajor, lda, ldb, wm0, wn0, lane,
                         [&](int64_t kt, T* stage_a, T* stage_b) {
                           copy_stage<T, Cfg::BM, Cfg>(stage_a, a, a_kmajor, a_ld, m0, kt * Cfg::BK, p.m, p.k, lda);
                           copy_stage<T, Cfg::BN, Cfg>(stage_b, b, b_kmajor, b_ld, n0, kt * Cfg::BK, p.n, p.k, ldb);
                         });
    // The pipeline's shared memory now holds the float32 C tile [BM][LD_C].
    float* const tile_c = reinterpret_cast<float*>(smem);
    acc_to_smem<Cfg>(acc, tile_c, wm0, wn0, lane);
    __syncthreads();
    store_tile<Cfg::BM, Cfg::BN, Cfg::THREADS>(Epilogue::of(p, batch), tile_c, Cfg::LD_C, m0, n0);
    __syncthreads();  // the next batch entry refills shared memory
  }
}

}  // namespace gemm_impl
}  // namespace cuda
}  // namespace fastops
