// fastops::cuda::gemm (fastops/gemm.h): strided, batched GEMM with fused alpha / beta / bias /
// activation epilogue on the current device. Torch-free: raw pointers, sizes, strides, a stream.
//
// Kernels (csrc/cuda/gemm/):
//   tile.cuh   gemm_mma_kernel<T, Tile<...>>: mma.sync tensor cores (m16n8k16 fp16/bf16,
//              m16n8k8 TF32), ldmatrix, cp.async multi-stage pipeline; fp32 accumulation.
//   simt.cuh   gemm_simt_kernel<T, SimtTile<...>>: float32 FMA, any strides.
//   epilogue.cuh  the shared epilogue; layout.h the index math (checked on the host by
//              tests/gemm_cuda_layout_sim.cpp); ../mma.cuh the PTX wrappers (shared).
// Instantiations: mma {fp16, bf16, tf32} x {128x128 (8 warps, 3 stages), 64x64 (4 warps,
// 4 stages)} and simt {fp16, bf16, fp32} x 64x64: nine kernels per architecture.
//
// Dispatch (gemm() below, the only place that picks a kernel):
//   1. batch, m or n == 0: nothing to do. k == 0 is a launch (C = act(beta * C + bias)).
//   2. Tensor cores when T is 16-bit, or T is float32 and allow_tf32; and both operands fit
//      cp.async (operand_layout: one dimension of unit stride, the other stride, the batch stride
//      and the base pointer 16-byte aligned), and k > 0.
//      Tile: 128 x 128 when that gives at least one block per SM, else 64 x 64.
//   3. Otherwise the SIMT kernel.
// Grid: x = tiles_m * tiles_n (grouped order, < 2^31 checked), y = min(batch, 65535) with the
// kernels striding over further batch entries. Offsets are int64_t throughout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastops/gemm.h"
#include "gemm/layout.h"
#include "gemm/simt.cuh"
#include "gemm/tile.cuh"
#include "launch.cuh"

namespace fastops {
namespace cuda {
namespace {

using gemm_impl::BigTile;
using gemm_impl::kBigMinBlocks;
using gemm_impl::kSmallMinBlocks;
using gemm_impl::SimtTile;
using gemm_impl::SmallTile;

using Simt = SimtTile<64, 64, 16, 4, 4>;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

// Which dimension of an operand [rows, cols] (strides sr, sc, batch stride sb, `batch` entries) is
// the contiguous one cp.async can copy in 16-byte chunks of `vec` elements:
//   kCols (row-major: A K-major, B N-major), kRows (column-major), or kNone.
// A dimension of extent 1 is read at index 0 only, so its stride does not matter.
enum class Contig { kNone, kRows, kCols };

Contig operand_layout(const GemmOperand& o, int64_t batch, int64_t rows, int64_t cols, int vec) {
  if (reinterpret_cast<uintptr_t>(o.ptr) % 16 != 0) return Contig::kNone;
  if (batch > 1 && o.stride_batch % vec != 0) return Contig::kNone;
  const bool cols_unit = cols == 1 || o.stride_col == 1, rows_unit = rows == 1 || o.stride_row == 1;
  const bool rows_aligned = rows == 1 || o.stride_row % vec == 0;
  const bool cols_aligned = cols == 1 || o.stride_col % vec == 0;
  if (cols_unit && rows_aligned) return Contig::kCols;
  if (rows_unit && cols_aligned) return Contig::kRows;
  return Contig::kNone;
}

template <typename T, class Cfg, int MIN_BLOCKS>
int launch_mma(const GemmParams& p, bool a_kmajor, bool b_kmajor, cudaStream_t stream) {
  const int64_t tiles_m = cdiv(p.m, Cfg::BM), tiles_n = cdiv(p.n, Cfg::BN);
  if (tiles_m * tiles_n > kMaxGridX) return static_cast<int>(cudaErrorInvalidConfiguration);
  auto kernel = gemm_impl::gemm_mma_kernel<T, Cfg, MIN_BLOCKS>;
  if (const cudaError_t err = opt_in_smem(kernel, Cfg::SMEM_BYTES)) return static_cast<int>(err);
  const dim3 grid(static_cast<unsigned>(tiles_m * tiles_n), static_cast<unsigned>(p.batch < kMaxGridY ? p.batch : kMaxGridY));
  kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, stream>>>(p, a_kmajor, b_kmajor, tiles_m, tiles_n);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_simt(const GemmParams& p, cudaStream_t stream) {
  const int64_t tiles_m = cdiv(p.m, Simt::BM), tiles_n = cdiv(p.n, Simt::BN);
  if (tiles_m * tiles_n > kMaxGridX) return static_cast<int>(cudaErrorInvalidConfiguration);
  // Threads run fastest along the dimension of smaller stride (the contiguous one, if any).
  const bool a_kfast = p.k > 1 && (p.m == 1 || p.a.stride_col <= p.a.stride_row);
  const bool b_nfast = p.n > 1 && (p.k == 1 || p.b.stride_col <= p.b.stride_row);
  const dim3 grid(static_cast<unsigned>(tiles_m * tiles_n), static_cast<unsigned>(p.batch < kMaxGridY ? p.batch : kMaxGridY));
  gemm_impl::gemm_simt_kernel<T, Simt><<<grid, Simt::THREADS, 0, stream>>>(p, a_kfast, b_nfast, tiles_m, tiles_n);
  return static_cast<int>(cudaGetLastError());
}

// Tensor-core path for operand type T if both operands fit cp.async; -1 when they do not.
template <typename T>
int try_mma(const GemmParams& p, cudaStream_t stream) {
  constexpr int kElem = sizeof(T), kVec = 16 / kElem;
  const Contig a = operand_layout(p.a, p.batch, p.m, p.k, kVec);  // A [m, k]: kCols = K-major
  const Contig b = operand_layout(p.b, p.batch, p.k, p.n, kVec);  // B [k, n]: kRows = K-major
  if (a == Contig::kNone || b == Contig::kNone || p.k == 0) return -1;
  const bool a_kmajor = a == Contig::kCols, b_kmajor = b == Contig::kRows;
  const int64_t big_blocks = cdiv(p.m, BigTile<kElem>::BM) * cdiv(p.n, BigTile<kElem>::BN) * p.batch;
  if (big_blocks >= sm_count())
    return launch_mma<T, BigTile<kElem>, kBigMinBlocks>(p, a_kmajor, b_kmajor, stream);
  return launch_mma<T, SmallTile<kElem>, kSmallMinBlocks>(p, a_kmajor, b_kmajor, stream);
}

}  // namespace

int gemm(const GemmParams& p, bool allow_tf32, void* stream_ptr) {
  if (p.batch <= 0 || p.m <= 0 || p.n <= 0) return 0;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  int err = -1;
  switch (p.ab_dtype) {
    case DType::kFloat16:
      err = try_mma<__half>(p, stream);
      return err >= 0 ? err : launch_simt<__half>(p, stream);
    case DType::kBFloat16:
      err = try_mma<__nv_bfloat16>(p, stream);
      return err >= 0 ? err : launch_simt<__nv_bfloat16>(p, stream);
    default:
      if (allow_tf32) err = try_mma<float>(p, stream);
      return err >= 0 ? err : launch_simt<float>(p, stream);
  }
}

}  // namespace cuda
}  // namespace fastops
