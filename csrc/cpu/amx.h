// AMX-BF16 register tiles for the CPU GEMM (csrc/cpu/gemm.cpp): C[rows, 32] = A B over packed
// panels, with `tdpbf16ps` (16 x 16 float32 accumulators per tile register, 32 bfloat16 products
// per element per instruction). Used where has_amx_bf16() (isa.h) says the CPU has AMX and Linux
// gave this process the tile state.
//
// Tile registers: tmm0-3 the accumulators (rows 0-15 / 16-31 x columns 0-15 / 16-31), tmm4-5 the
// A tiles, tmm6-7 the B tiles. Panels (packed by gemm.cpp, k in pairs of bfloat16, one 32-bit
// word per pair, zero-padded to whole tiles of kAmxK pairs):
//   A: [32 or 16 rows][kq words]   (rows contiguous along k: a tile is 16 rows x 64 bytes)
//   B: [kq words][32 columns]      (the AVX512-BF16 kernel's B panel, padded: a tile is
//                                   16 pairs x 16 columns, rows 128 bytes apart)
#pragma once

#include <cstdint>

#include "fastops/macros.h"
#include "isa.h"

#if FASTOPS_HAVE_X86_PATHS
#include <immintrin.h>

#define FASTOPS_TARGET_AMX                                                                             \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16"), \
                 flatten))

namespace fastops {
namespace cpu {

constexpr int kAmxMR = 32, kAmxNR = 32;
constexpr int64_t kAmxK = 16;  // k pairs per tile step

// Palette 1, every tile register 16 rows x 64 bytes. Tile configuration is per thread and other
// libraries (oneDNN) set their own, so every GEMM call loads it and releases the tiles after.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// out[r, c] = in[r, c] + the pair products of A row r and B column c over q < kq, r < 16 H,
// c < 32 (in null: zero); a: the A panel (row stride lda bytes), b: the B panel, in / out:
// float32 rows ldo bytes apart (in may be out). Every element is one float32 sum over q in
// increasing order, whatever H, and split over calls (in = the last out) it is the same sum.
template <int H>
FASTOPS_FORCE_INLINE void amx_tile(int64_t kq, const uint32_t* a, int64_t lda, const uint32_t* b, const float* in,
                                   float* out, int64_t ldo) {
  static_assert(H == 1 || H == 2, "16 or 32 rows");
  const uint32_t* a1 = reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(a) + 16 * lda);
  // The tile intrinsics are asm statements that name their pointers but not the memory behind
  // them: compiler barriers keep the panel stores before the loads and the output reads after.
  asm volatile("" ::: "memory");
  if (in != nullptr) {
    const float* in1 = reinterpret_cast<const float*>(reinterpret_cast<const char*>(in) + 16 * ldo);
    _tile_loadd(0, in, ldo);
    _tile_loadd(1, in + 16, ldo);
    if constexpr (H == 2) {
      _tile_loadd(2, in1, ldo);
      _tile_loadd(3, in1 + 16, ldo);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (H == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  for (int64_t q = 0; q < kq; q += kAmxK) {
    _tile_loadd(4, a + q, lda);
    _tile_loadd(6, b + q * kAmxNR, kAmxNR * 4);
    _tile_loadd(7, b + q * kAmxNR + 16, kAmxNR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (H == 2) {
      _tile_loadd(5, a1 + q, lda);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, out, ldo);
  _tile_stored(1, out + 16, ldo);
  if constexpr (H == 2) {
    float* out1 = reinterpret_cast<float*>(reinterpret_cast<char*>(out) + 16 * ldo);
    _tile_stored(2, out1, ldo);
    _tile_stored(3, out1 + 16, ldo);
  }
  asm volatile("" ::: "memory");
}

}  // namespace cpu
}  // namespace fastops
#endif
