// AMX-BF16 register tiles for the CPU GEMM (csrc/cpu/gemm.cpp): C[rows, 32] = A B over packed
// panels, with `tdpbf16ps` (16 x 16 float32 accumulators per tile register, 32 bfloat16 products
// per element per instruction). Used where has_amx_bf16() (isa.h) says the CPU has AMX and Linux
// gave this process the tile state.
//
// Tile registers: tmm0-3 the accumulators (rows 0-15 / 16-31 x columns 0-15 / 16-31), tmm4-5 the
// A tiles, tmm6-7 the B tiles. Panels (packed by gemm.cpp, k in pairs of bfloat16, one 32-bit
// word per pair, zero-padded to whole tiles of kAmxK pairs):
//   A: per 16-row half, kq / 16 tile steps of [16 rows][16 words]: each tile load is 1 KB in
//      one run (16 rows strided through memory are 16 streams, past what the L1 prefetcher follows)
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

// Holds the tile configuration on this thread for its lifetime: the outermost scope loads it and
// releases the tiles at its end, inner ones do nothing. A GEMM call opens one per thread around
// all its units (a load and a release cost about 50 ns; the RNN's per-step products ran 32 units
// a step, each loading and releasing).
// In memory, whole: GCC's _tile_loadconfig tells the compiler it reads 8 bytes of its argument, so
// the rest of a config built on the stack may never be stored (ldtilecfg then faults).
inline constexpr AmxConfig kAmxConfig{};
inline thread_local int amx_scopes = 0;  // open AmxScopes on this thread
class AmxScope {
 public:
  FASTOPS_TARGET_AMX AmxScope() {
    if (amx_scopes++ == 0) _tile_loadconfig(&kAmxConfig);
  }
  FASTOPS_TARGET_AMX ~AmxScope() {
    if (--amx_scopes == 0) _tile_release();
  }
  AmxScope(const AmxScope&) = delete;
  AmxScope& operator=(const AmxScope&) = delete;
};

// out[r, c] = acc[r, c] (0 without acc) + the pair products of A row r and B column c over tile
// steps [s0, s1) (pairs [16 s0, 16 s1)), r < 16 H, c < 32; a: the A panel of kq pairs, b: the B
// panel, acc and out: float32 rows 128 / ldo bytes apart (out may be acc). Every element is one
// float32 sum over q in increasing order, whatever H and however the steps are split.
template <int H>
FASTOPS_FORCE_INLINE void amx_tile(int64_t kq, int64_t s0, int64_t s1, const uint32_t* a, const uint32_t* b,
                                   const float* acc, float* out, int64_t ldo) {
  static_assert(H == 1 || H == 2, "16 or 32 rows");
  constexpr int64_t kStepA = 16 * kAmxK, kStepB = kAmxK * kAmxNR;  // words per tile step
  const uint32_t* a1 = a + 16 * kq;
  // The tile intrinsics are asm statements that name their pointers but not the memory behind
  // them: compiler barriers keep the panel stores before the loads and the output reads after.
  asm volatile("" ::: "memory");
  if (acc) {
    _tile_loadd(0, acc, kAmxNR * 4);
    _tile_loadd(1, acc + 16, kAmxNR * 4);
    if constexpr (H == 2) {
      _tile_loadd(2, acc + 16 * kAmxNR, kAmxNR * 4);
      _tile_loadd(3, acc + 16 * kAmxNR + 16, kAmxNR * 4);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (H == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  for (int64_t s = s0; s < s1; ++s) {
    _tile_loadd(4, a + s * kStepA, kAmxK * 4);
    _tile_loadd(6, b + s * kStepB, kAmxNR * 4);
    _tile_loadd(7, b + s * kStepB + 16, kAmxNR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (H == 2) {
      _tile_loadd(5, a1 + s * kStepA, kAmxK * 4);
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

#if !FASTOPS_HAVE_X86_PATHS
namespace fastops {
namespace cpu {
struct AmxScope {};  // no AMX off x86 (Entries::amx is never set there)
}  // namespace cpu
}  // namespace fastops
#endif
