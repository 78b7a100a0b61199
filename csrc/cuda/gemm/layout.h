// Index math of the tensor-core GEMM (csrc/cuda/matmul.cu), kept free of CUDA intrinsics so the
// host-side warp simulation (tests/gemm_cuda_layout_sim.cpp) checks the very functions the
// kernel calls: tile traits, shared-memory layout, the chunk each thread copies, the address
// each lane hands to ldmatrix, the element each lane loads for TF32, the accumulator element
// each lane owns, and the grouped tile order.
//
// Notation: a stage holds an A tile (BM rows x BK k) and a B tile (BN columns x BK k) in shared
// memory, each in one of two layouts picked at launch from the operand's strides:
//   K-major  ("kmajor"):  [BM][BK + kPadK]   (A row-major / B column-major in global memory)
//   MN-major (!kmajor):   [BK][BM + kPadMN]  (A column-major / B row-major)
// Rows are padded so the 8 rows read by one ldmatrix (or the 8 x 4 pattern of the TF32 loads)
// hit distinct banks; the desk checks are next to each pad below.
#pragma once

#include <cstdint>

#include "fastops/macros.h"

namespace fastops {
namespace cuda {
namespace gemm_impl {

// Tile traits. Elem is the storage size in bytes (2: fp16/bf16, 4: fp32 read as TF32).
// BK is fixed at 64 bytes of k per stage, so one copy chunk (16 bytes) is a quarter of a K-major row.
template <int BM_, int BN_, int WM_, int WN_, int STAGES_, int ELEM_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_, ELEM = ELEM_;
  static constexpr int BK = 64 / ELEM;                      // 32 (16-bit) or 16 (fp32)
  static constexpr int VEC = 16 / ELEM;                     // elements per 16-byte copy chunk
  static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
  static constexpr int WARPS = WARPS_M * WARPS_N, THREADS = WARPS * 32;
  static constexpr int MMA_K = ELEM == 2 ? 16 : 8;          // m16n8k16 (f16/bf16) or m16n8k8 (tf32)
  static constexpr int MI = WM / 16, NI = WN / 8;           // mma tiles per warp
  // Row pads in elements. K-major rows are 64 B: +16 B gives an 80 B stride, and 8 consecutive
  // rows start at byte offsets 0, 80, 160, ... = 0, 80, 32, 112, 64, 16, 96, 48 mod 128: the eight
  // 16-byte ldmatrix rows cover all 32 banks once. For TF32 (row stride 20 words) lane (g, t)
  // reads word 20 g + t: {0..3, 20..23, 8..11, 28..31, 16..19, 4..7, 24..27, 12..15} mod 32,
  // all distinct. MN-major rows hold BM (BN) elements, a multiple of 64 bytes' worth for every
  // config; +16 B (16-bit: stride = 16 mod 128 bytes after the multiple of 128) makes ldmatrix.trans
  // rows hit 8 distinct 16-byte bank groups; TF32 needs +32 B (stride = 8 mod 32 words) so word
  // t * stride + g (t < 4, g < 8) is 8 t + g, all distinct.
  static constexpr int PAD_K = 16 / ELEM;
  static constexpr int PAD_MN = (ELEM == 2 ? 16 : 32) / ELEM;
  static constexpr int LD_A_K = BK + PAD_K, LD_A_MN = BM + PAD_MN;
  static constexpr int LD_B_K = BK + PAD_K, LD_B_MN = BN + PAD_MN;
  // One stage of A (or B) sized for whichever layout is larger.
  static constexpr int A_STAGE = (BM * LD_A_K > BK * LD_A_MN) ? BM * LD_A_K : BK * LD_A_MN;
  static constexpr int B_STAGE = (BN * LD_B_K > BK * LD_B_MN) ? BN * LD_B_K : BK * LD_B_MN;
  static constexpr int PIPE_BYTES = STAGES * (A_STAGE + B_STAGE) * ELEM;
  // The epilogue reuses the pipeline's shared memory for the float32 C tile [BM][LD_C]. LD_C = 8
  // mod 32 words: lane (g, t) writes the float2 at word g * LD_C + 2 t of each 16 x 8 accumulator
  // tile, i.e. words 8 g + 2 t, 8 g + 2 t + 1 mod 32: two conflict-free 128-byte wavefronts.
  static constexpr int LD_C = BN + 8;
  static constexpr int C_TILE_BYTES = BM * LD_C * 4;
  static constexpr int SMEM_BYTES = PIPE_BYTES > C_TILE_BYTES ? PIPE_BYTES : C_TILE_BYTES;
  static constexpr int A_CHUNKS = BM * BK / VEC, B_CHUNKS = BN * BK / VEC;  // per stage

  static_assert(ELEM == 2 || ELEM == 4, "16-bit or 32-bit elements");
  static_assert(BM % WM == 0 && BN % WN == 0, "warp tiles divide the block tile");
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile: multiples of 16 (ldmatrix.x4 loads two n8 tiles)");
  static_assert(BK % MMA_K == 0, "whole mma k-steps per stage");
  static_assert(BM % VEC == 0 && BN % VEC == 0 && BK % VEC == 0, "16-byte chunks tile the stage");
  static_assert(A_CHUNKS % THREADS == 0 && B_CHUNKS % THREADS == 0, "every thread copies as many chunks");
  static_assert((LD_A_K * ELEM) % 16 == 0 && (LD_A_MN * ELEM) % 16 == 0 && (LD_B_K * ELEM) % 16 == 0 &&
                    (LD_B_MN * ELEM) % 16 == 0 && (A_STAGE * ELEM) % 16 == 0 && (B_STAGE * ELEM) % 16 == 0,
                "16-byte aligned rows and stages for cp.async");
  static_assert(STAGES >= 2, "at least double buffering");
  static_assert(LD_C % 32 == 8, "conflict-free float2 accumulator stores");
};

struct Coord {
  int row, col;  // row/col of a shared-memory array [rows][ld]
};

// The 16-byte chunk `chunk` (< ROWS_MN * BK / VEC) of an operand tile whose contiguous global
// dimension is the smem row: kmajor -> (mn, k) with k = col; MN-major -> (k, mn) with mn = col. The
// chunk covers elements col .. col + VEC - 1 of that row. Consecutive chunks run along the row, so
// consecutive threads read consecutive 16-byte pieces of global memory.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord copy_chunk(int chunk, bool kmajor, int rows_mn, int bk, int vec) {
  if (kmajor) return Coord{chunk / (bk / vec), (chunk % (bk / vec)) * vec};
  return Coord{chunk / (rows_mn / vec), (chunk % (rows_mn / vec)) * vec};
}

// What one cp.async of a chunk does: copy `valid` (0..VEC) elements from operand offset `src`
// (element offset from the batch entry's base; 0 when valid == 0, so the address stays the
// aligned base) to stage offset `dst`, zero-filling the rest of the 16 bytes.
// mn0 / k0: the tile's first row (A: m, B: n) and k; mn, k: the operand's extents; ld_glob: the
// stride of its non-contiguous dimension (the contiguous one has stride 1); ld_smem: the stage's
// row stride for this layout.
struct ChunkCopy {
  int dst;
  int64_t src;
  int valid;
};
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE ChunkCopy copy_plan(int chunk, bool kmajor, int rows_mn, int bk, int vec,
                                                             int64_t ld_glob, int64_t mn0, int64_t k0, int64_t mn,
                                                             int64_t k, int ld_smem) {
  const Coord c = copy_chunk(chunk, kmajor, rows_mn, bk, vec);
  // (outer, inner): inner is the contiguous dimension, outer the strided one.
  const int64_t outer = (kmajor ? mn0 : k0) + c.row, inner = (kmajor ? k0 : mn0) + c.col;
  const int64_t outer_n = kmajor ? mn : k, inner_n = kmajor ? k : mn;
  const int64_t left = inner_n - inner;
  const int valid = outer < outer_n && left > 0 ? (left < vec ? static_cast<int>(left) : vec) : 0;
  return ChunkCopy{c.row * ld_smem + c.col, valid > 0 ? outer * ld_glob + inner : 0, valid};
}

// ldmatrix.x4 row address of `lane` for the A fragment of one m16 x k16 mma tile whose top-left
// is (m0, k0). Matrices 0..3 are (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15):
// the order of the registers a0..a3 of mma.m16n8k16 (row-major A). Lane l gives row l % 8 of
// matrix l / 8. K-major: plain ldmatrix of [m][k]; MN-major: ldmatrix.trans of [k][m] (each
// stored 8x8 block holds k rows of 8 m; .trans hands lane (g, t) the elements (m = g, k = 2t, 2t+1)).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord ldmatrix_a(int lane, bool kmajor, int m0, int k0) {
  const int j = lane >> 3, r = lane & 7;
  const int m_off = (j & 1) * 8, k_off = (j >> 1) * 8;
  if (kmajor) return Coord{m0 + m_off + r, k0 + k_off};
  return Coord{k0 + k_off + r, m0 + m_off};
}

// ldmatrix.x4 row address for the B fragments of two n8 x k16 mma tiles at (n0, k0) and
// (n0 + 8, k0). Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) =
// b0, b1 of the first tile, then b0, b1 of the second. K-major: [n][k] plain; MN-major: [k][n] .trans.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord ldmatrix_b(int lane, bool kmajor, int n0, int k0) {
  const int j = lane >> 3, r = lane & 7;
  const int n_off = (j >> 1) * 8, k_off = (j & 1) * 8;
  if (kmajor) return Coord{n0 + n_off + r, k0 + k_off};
  return Coord{k0 + k_off + r, n0 + n_off};
}

// TF32 m16n8k8: element (mn, k) of A register `reg` (0..3) / B register `reg` (0..1) of `lane`
// (PTX ISA, "Matrix fragments for mma.m16n8k8" .tf32): g = lane / 4, t = lane % 4,
// a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); b0 (k = t, n = g), b1 (k = t + 4, n = g).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord tf32_a(int lane, int reg) {
  return Coord{(lane >> 2) + (reg & 1) * 8, (lane & 3) + (reg >> 1) * 4};  // (m, k)
}
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord tf32_b(int lane, int reg) {
  return Coord{lane >> 2, (lane & 3) + reg * 4};  // (n, k)
}

// Accumulator element c`reg` (0..3) of `lane` in an m16 x n8 tile, the same for both mma shapes:
// c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord acc_coord(int lane, int reg) {
  return Coord{(lane >> 2) + (reg >> 1) * 8, (lane & 3) * 2 + (reg & 1)};  // (m, n)
}

// Grouped ("swizzled") tile order: `pid` walks groups of `group` tile rows column by column, so
// consecutive blocks share B columns and A rows in L2. A bijection of [0, tiles_m * tiles_n).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord tile_of(int64_t pid, int64_t tiles_m, int64_t tiles_n, int group) {
  const int64_t per_group = static_cast<int64_t>(group) * tiles_n;
  const int64_t first_m = (pid / per_group) * group;
  const int64_t rows = (tiles_m - first_m) < group ? (tiles_m - first_m) : group;
  const int64_t in_group = pid % per_group;
  return Coord{static_cast<int>(first_m + in_group % rows), static_cast<int>(in_group / rows)};
}

// Element `idx` (< BM * BN) of the epilogue's walk over a block's C tile: along columns (j
// fastest) unless C is column-major (`rows_fast`).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Coord epilogue_element(int idx, bool rows_fast, int bm, int bn) {
  return rows_fast ? Coord{idx % bm, idx / bm} : Coord{idx / bn, idx % bn};
}

}  // namespace gemm_impl
}  // namespace cuda
}  // namespace fastops
