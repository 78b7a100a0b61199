// Element-wise score math of the CUDA attention kernels: masking (length, causal, bool or additive
// mask through strides), dropout factors (math/dropout.h, the bits the CPU kernel and the torch
// reference use) and the exponent. Every function takes global (query i, key j) coordinates.
#pragma once

#include <cstdint>

#include "fastops/attention.h"
#include "fastops/math/dropout.h"
#include "fastops/math/softmax.h"
#include "cuda/storage.cuh"

namespace fastops {
namespace cuda {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;

// Which (batch n, query head h) a tile belongs to.
struct Head {
  int64_t n, h;
};

__device__ __forceinline__ int clamp_int(int64_t x) {
  return static_cast<int>(x < -(int64_t{1} << 30) ? -(int64_t{1} << 30) : (x > (int64_t{1} << 30) ? (int64_t{1} << 30) : x));
}

// The score elements (query ibase + di, key jbase + dj) a warp holds for one key block, with the
// per-tile (warp-uniform) parts of the masking and dropout arithmetic done once in int64 so the
// per-element work is int32: excluded are i >= L (padding rows), j >= S (padding keys), causal
// j > i; a mask comes from the float32 tile staged by load_mask (-inf where a bool mask is false).
struct ScoreTile {
  int li, lj, diag;       // di < li, dj < lj, causal: dj <= di + diag
  uint64_t drop_base;     // dropout index of (ibase, jbase) = element index in [N, H, L, S]
  __device__ __forceinline__ ScoreTile(const AttentionShape& sh, const Head& hd, int64_t ibase, int64_t jbase)
      : li(clamp_int(sh.L - ibase)), lj(clamp_int(sh.S - jbase)), diag(clamp_int(ibase - jbase)),
        drop_base(static_cast<uint64_t>(((hd.n * sh.H + hd.h) * sh.L + ibase) * sh.S + jbase)) {}

  // s = scale * acc (+ mask), or -inf where excluded. `mask`: this element of the staged tile,
  // read only when the call has a mask.
  __device__ __forceinline__ float score(float acc, int di, int dj, const AttentionShape& sh, bool has_mask,
                                         const float* mask) const {
    const bool valid = di < li && dj < lj && (!sh.causal || dj <= di + diag);
    const float s = has_mask ? fmaf(acc, sh.scale, *mask) : acc * sh.scale;
    return valid ? s : math::neg_infinity();
  }

  // Dropout index of element (di, dj): ((n * H + h) * L + i) * S + j.
  __device__ __forceinline__ uint64_t drop_index(int di, int dj, const AttentionShape& sh) const {
    return drop_base + static_cast<uint64_t>(static_cast<int64_t>(di) * sh.S + dj);
  }
};

// Stages the mask of queries ibase.. (ROWS) x keys jbase.. (COLS) into shared memory as float32
// [ROWS, COLS] additive values (a false bool is -inf; outside [L, S) is 0, those scores are
// excluded anyway). Neighbouring threads read neighbouring keys (coalesced for a contiguous mask).
// Every thread of the CTA calls it; the caller synchronises before the tile is read.
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_mask(float* sm, const AttentionShape& sh, const AttentionMask& m, const Head& hd,
                                          int64_t ibase, int64_t jbase) {
  const int64_t base = hd.n * m.stride_n + hd.h * m.stride_h + ibase * m.stride_l + jbase * m.stride_s;
  const int li = clamp_int(sh.L - ibase), lj = clamp_int(sh.S - jbase);
  for (int idx = threadIdx.x; idx < ROWS * COLS; idx += THREADS) {
    const int r = idx / COLS, c = idx % COLS;
    float val = 0.0f;
    if (r < li && c < lj) {
      const int64_t off = base + r * m.stride_l + c * m.stride_s;
      val = m.kind == MaskKind::kBool ? (static_cast<const uint8_t*>(m.ptr)[off] ? 0.0f : math::neg_infinity())
                                      : to_f32(static_cast<const T*>(m.ptr)[off]);
    }
    sm[idx] = val;
  }
}

// exp(s - shift) through the hardware exp2; s = -inf gives 0.
__device__ __forceinline__ float exp_shifted(float s, float shift) {
  return exp2f(fmaf(s, kLog2e, -shift * kLog2e));
}

// Dropout factor of an element: 0 (dropped) or keep_scale (math/dropout.h).
struct Dropout {
  bool on;
  uint32_t threshold;
  float keep_scale;
  uint64_t seed;
  __device__ __forceinline__ explicit Dropout(const AttentionShape& sh)
      : on(sh.dropout_p > 0.0f), threshold(math::dropout_threshold(sh.dropout_p)),
        keep_scale(1.0f / (1.0f - sh.dropout_p)), seed(sh.seed) {}
  __device__ __forceinline__ float factor(uint64_t index) const {
    return math::dropout_bits(seed, index) >= threshold ? keep_scale : 0.0f;
  }
};

// Global (row, column) of element e of n8 tile nt of a C-layout accumulator whose 16 rows start
// at row0 and whose columns start at col0 (see tiles.cuh).
__device__ __forceinline__ int frag_row(int e, int lane) { return lane / 4 + (e >= 2 ? 8 : 0); }
__device__ __forceinline__ int frag_col(int nt, int e, int lane) { return nt * 8 + 2 * (lane % 4) + (e & 1); }

// Stores a C-layout accumulator [NT][4] (16 rows of this warp) as T: dst row r at
// dst + r * ld, columns < cols, rows < rows. `pairs`: two neighbouring columns are stored at once
// (dst and ld even, cols even).
template <typename T, int NT>
__device__ __forceinline__ void store_rows(T* dst, int64_t ld, int64_t rows, int cols, const float (&acc)[NT][4],
                                           float mul0, float mul1, bool pairs, int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = lane / 4 + half * 8;
    if (r >= rows) continue;
    const float mul = half == 0 ? mul0 : mul1;
    T* row = dst + r * ld;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + 2 * (lane % 4);
      const float v0 = acc[nt][2 * half] * mul, v1 = acc[nt][2 * half + 1] * mul;
      if (pairs && c + 1 < cols) {
        struct alignas(2 * sizeof(T)) Pair {
          T a, b;
        };
        *reinterpret_cast<Pair*>(row + c) = Pair{from_f32<T>(v0), from_f32<T>(v1)};
      } else {
        if (c < cols) row[c] = from_f32<T>(v0);
        if (c + 1 < cols) row[c + 1] = from_f32<T>(v1);
      }
    }
  }
}

// Sum over the 4 lanes of a quad (the lanes that share an accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastops
