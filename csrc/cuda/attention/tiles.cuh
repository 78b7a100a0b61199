// Tensor-core building blocks of the CUDA attention kernels (sm_80+): cp.async tile loads into a
// swizzled shared-memory layout, ldmatrix fragment loads and the two product shapes (Q K^T, P V)
// for float16 / bfloat16 with float32 accumulation. The PTX wrappers are cuda/mma.cuh.
//
// Shared-memory tiles are [rows, D] of 16-bit elements, D a multiple of 64 (8 chunks of 16 bytes
// or more per row). Chunk c of row r is stored at chunk position c ^ (r & 7): the 8 rows one
// ldmatrix 8x8 reads then sit in 8 different 16-byte bank groups (no bank conflicts), both for
// the plain and the transposed load.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/mma.cuh"
#include "cuda/storage.cuh"

namespace fastops {
namespace cuda {
namespace attn {

constexpr int kWarpSize = 32;
constexpr int kChunk = 8;  // 16-bit elements per 16-byte chunk

// Element offset of (row, col) in a swizzled [rows, D] tile (col % 8 kept inside the chunk).
template <int D>
__device__ __forceinline__ int swz(int row, int col) {
  return row * D + ((((col / kChunk) ^ (row & 7))) * kChunk) + (col % kChunk);
}

// How the loaders read global memory: 16-byte cp.async when every row start is 16-byte aligned
// and the head dims are multiples of 8 (checked by the launcher), element loads otherwise.
struct TileSrc {
  const void* ptr;  // element (0, 0) of the tile
  int64_t ld;       // row stride, elements
  int64_t rows;     // valid rows (may be <= 0: all zero)
  int cols;         // valid columns
};

// Loads a [ROWS, D] tile of T into swizzled shared memory, zero outside [rows, cols).
// THREADS threads take part; every one must call it.
template <typename T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(T* smem, const TileSrc& src, bool vec) {
  constexpr int kChunksPerRow = D / kChunk;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(D % 64 == 0, "swizzle needs 8 chunks per row");
  const T* g = static_cast<const T*>(src.ptr);
#pragma unroll
  for (int it = 0; it < (kChunks + THREADS - 1) / THREADS; ++it) {
    const int c = it * THREADS + static_cast<int>(threadIdx.x);
    if (kChunks % THREADS != 0 && c >= kChunks) break;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kChunk;
    T* dst = smem + swz<D>(r, col);
    const bool in = r < src.rows && col < src.cols;
    const T* s = g + static_cast<int64_t>(r) * src.ld + col;
    if (vec) {
      cp_async_16(dst, in ? s : g, in ? 16 : 0);
    } else {
      union {
        uint4 u;
        T e[kChunk];
      } buf;
#pragma unroll
      for (int e = 0; e < kChunk; ++e) buf.e[e] = (in && col + e < src.cols) ? s[e] : from_f32<T>(0.0f);
      *reinterpret_cast<uint4*>(dst) = buf.u;
    }
  }
}

// One step of a two-stage cp.async pipeline over `items` tiles: starts loading tile t + 1 into the
// other stage (load(t + 1, stage)), waits until tile t has landed, and returns t's stage. The
// caller's __syncthreads() then makes tile t visible to every warp.
template <typename Load>
__device__ __forceinline__ int pipeline_step(int64_t t, int64_t items, const Load& load) {
  const int stage = static_cast<int>(t & 1);
  if (t + 1 < items) {
    load(t + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  return stage;
}

// Address of the 16-byte chunk at column col0 + 8 * sub of `row` (col0 a multiple of 16, known
// at compile time once the fragment loops are unrolled; sub in {0, 1} per lane). Written so the
// compiler sees that only the low 3 chunk bits are swizzled: col0 / 64 stays an immediate offset
// and a thread holds at most 4 distinct swizzled offsets per operand, not one per fragment.
template <int D, typename T>
__device__ __forceinline__ const T* chunk_ptr(const T* tile, int row, int col0, int sub) {
  const int lo = ((col0 / kChunk) % 8 + sub) ^ (row % 8);
  return tile + row * D + (col0 / 64) * 64 + lo * kChunk;
}

// A fragment (16 x 16) of rows row0.. (a multiple of 8) and columns k0.. of a row-major tile.
template <int D, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int row0, int k0, int lane) {
  ldmatrix_x4(a, chunk_ptr<D>(tile, row0 + (lane % 16), k0, lane / 16));
}

// B fragments of two n8 tiles (n0.., n0+8..) x k16 (k0..) where B[k][n] = tile[n][k]
// (tile rows are the n index: K for Q K^T). b[0..1] = tile n0, b[2..3] = tile n0 + 8.
template <int D, typename T>
__device__ __forceinline__ void load_b_rows(uint32_t (&b)[4], const T* tile, int n0, int k0, int lane) {
  ldmatrix_x4(b, chunk_ptr<D>(tile, n0 + (lane % 8) + (lane / 16) * 8, k0, (lane / 8) % 2));
}

// B fragments of two n8 tiles x k16 where B[k][n] = tile[k][n] (tile rows are the k index:
// V for P V), through the transposing load.
template <int D, typename T>
__device__ __forceinline__ void load_b_cols(uint32_t (&b)[4], const T* tile, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, chunk_ptr<D>(tile, k0 + (lane % 8) + ((lane / 8) % 2) * 8, n0, lane / 16));
}

// ---- mma -------------------------------------------------------------------------------------

// acc[M16 rows of this warp][NT n8 tiles] += A (16 x K, from a row-major tile, rows arow0..)
// times B^T where B rows come from `brows` (n index) rows bn0..: the Q K^T product shape.
template <typename T, int D, int NT, int K>
__device__ __forceinline__ void gemm_rows(float (&acc)[NT][4], const T* atile, int arow0, const T* btile, int bn0,
                                          int lane) {
  static_assert(NT % 2 == 0 && K % 16 == 0, "tiles are pairs of n8 and whole k16");
  // Unrolled twice, not fully: a full unroll lets the scheduler hoist every fragment load of
  // the K loop (up to 4 * (1 + NT / 2) registers per k16 step) and the big tiles then spill.
#pragma unroll 2
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t a[4];
    load_a<D>(a, atile, arow0, k0, lane);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      load_b_rows<D>(b, btile, bn0 + nt * 8, k0, lane);
      Mma<T>::run(acc[nt], a, b[0], b[1]);
      Mma<T>::run(acc[nt + 1], a, b[2], b[3]);
    }
  }
}

// acc[NT] += P (16 x KT*16, register fragments of a C-layout accumulator) times a row-major
// [k][n] tile (rows bk0.., columns 0..NT*8): the P V product shape.
template <typename T, int D, int NT, int KT>
__device__ __forceinline__ void gemm_regs(float (&acc)[NT][4], const float (&p)[2 * KT][4], const T* btile, int bk0,
                                          int lane) {
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    const uint32_t a[4] = {Mma<T>::pack(p[2 * kt][0], p[2 * kt][1]), Mma<T>::pack(p[2 * kt][2], p[2 * kt][3]),
                           Mma<T>::pack(p[2 * kt + 1][0], p[2 * kt + 1][1]),
                           Mma<T>::pack(p[2 * kt + 1][2], p[2 * kt + 1][3])};
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      load_b_cols<D>(b, btile, bk0 + kt * 16, nt * 8, lane);
      Mma<T>::run(acc[nt], a, b[0], b[1]);
      Mma<T>::run(acc[nt + 1], a, b[2], b[3]);
    }
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastops
