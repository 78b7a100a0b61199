// CPU GEMM (fastops/gemm.h): packed panels, a register-tiled micro-kernel, fused epilogue.
//
//   1. Pack: B (k x n, any strides) into NR-column panels [k][NR] and A (m x k) into MR-row
//      panels [k][MR] (fewer rows where that evens the tiles out: tile_rows), zero-padded at
//      the edges, converted to the compute type once:
//      float32 for the FMA kernel (float16 and bfloat16 widened), or, when the CPU has
//      AVX512-BF16, bfloat16 pairs [k/2][MR or NR] of 32 bits for `vdpbf16ps` (rows contiguous
//      along k, as a row-major A or a linear weight, are transposed 16 x 16 pairs in registers).
//      A B with stride_batch == 0 (broadcast weight) is packed once for every batch item.
//   2. Compute: the C of one batch item is cut into macro tiles (units) of MC x NC; each unit
//      walks its MR x NR register tiles, and each register tile runs the whole K sum in
//      registers (no K blocking: the A and B panels stream from L2), then goes through the
//      epilogue alpha * acc + beta * C + bias -> activation -> C dtype, stored once.
//   3. Threads: OpenMP over register tiles, an equal share per thread (or over batch items when
//      there are many small ones). Every output element is one float32 sum over p in increasing
//      order (pairs of p for bf16), done by one thread, so results are bitwise the same for any
//      thread count or blocking.
//
// Paths (csrc/cpu/isa.h): AVX-512 (16 x 32 floats per tile... see Tile<16>), AVX2, SSE
// baseline, plus the AVX512-BF16 kernel for bfloat16 inputs, or, where the CPU has AMX, the AMX
// tiles (csrc/cpu/amx.h: 32 x 32 per register tile, A panels in tile steps, k padded to whole tiles).
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastops/gemm.h"
#include "fastops/gemm_packed.h"
#include "fastops/math/activation.h"
#include "fastops/storage.h"
#include "amx.h"
#include "isa.h"
#include "vec_math.h"

#if FASTOPS_HAVE_X86_PATHS
#include <immintrin.h>  // declares the target builtins used below
#define FASTOPS_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c"), flatten))
#endif

namespace fastops {
namespace cpu {
namespace {

FASTOPS_FORCE_INLINE int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }
FASTOPS_FORCE_INLINE int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

template <int W>
struct VecOf {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
};
template <int W>
using Vec = typename VecOf<W>::type;

// Register tile of the float32 kernel: MR rows x NV vectors of W floats of accumulators.
// AVX-512: 28 of the 32 zmm hold accumulators, 2 the B row, 1 the A broadcast.
template <int W>
struct Tile;
template <>
struct Tile<16> {
  static constexpr int MR = 14, NV = 2;
};
template <>
struct Tile<8> {
  static constexpr int MR = 6, NV = 2;  // AVX2: 12 of 16 ymm
};
template <>
struct Tile<4> {
  static constexpr int MR = 4, NV = 2;  // SSE: 8 of 16 xmm
};
// AVX512-BF16 tile: one `vdpbf16ps` adds two products per lane.
#ifndef FASTOPS_GEMM_BF16_MR
#define FASTOPS_GEMM_BF16_MR 14
#define FASTOPS_GEMM_BF16_NV 2
#endif
constexpr int kBf16MR = FASTOPS_GEMM_BF16_MR, kBf16NV = FASTOPS_GEMM_BF16_NV, kBf16NR = 16 * kBf16NV;

// ---- aligned scratch, kept per thread between calls (large ones are freed) --------------------

constexpr int64_t kKeepBytes = int64_t(64) << 20;

struct Scratch {
  struct Free {
    void operator()(char* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<char[], Free> data;
  int64_t bytes = 0;
  char* get(int64_t want) {
    want = std::max<int64_t>(round_up(want, 64), 64);
    if (want > bytes) {
      data.reset(static_cast<char*>(::operator new[](want, std::align_val_t(64))));
      bytes = want;
    }
    return data.get();
  }
  void trim() {
    if (bytes > kKeepBytes) {
      data.reset();
      bytes = 0;
    }
  }
};

// ---- one problem, as the kernels see it --------------------------------------------------------

// P: packed element type: float (FMA kernel) or uint32_t (a pair of bfloat16 along k).
struct Plan {
  const GemmParams* p;
  int mr, nr;            // register tile
  int64_t kq;            // packed k steps: k (float) or ceil(k / 2) (bf16 pairs)
  int64_t mc, nc;        // unit (macro tile) rows and columns, multiples of mr / nr
  int64_t m_panels, n_panels, m_units, n_units;
  int64_t a_panel, b_panel;  // packed elements per A / B panel
};

template <typename T>
FASTOPS_FORCE_INLINE float ld(const void* base, int64_t off) {
  return to_float(static_cast<const T*>(base)[off]);
}

template <typename T>
FASTOPS_FORCE_INLINE uint32_t ld_bits(const void* base, int64_t off) {
  uint16_t u;
  std::memcpy(&u, static_cast<const T*>(base) + off, 2);
  return u;
}

// ---- packing -----------------------------------------------------------------------------------

#if FASTOPS_HAVE_X86_PATHS
// dst[q * width + r] = rows[r][q] for r < len (<= width, 14 or 32), q < kq: the 32-bit pairs of
// `len` rows contiguous along k, transposed 16 x 16 in registers (unpack 32 / 64-bit, then two
// rounds of 128-bit lane shuffles); rows past len and lanes past width are left as they are.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void transpose_pairs(
    const uint32_t* const* rows, int len, int width, int64_t kq, uint32_t* dst) {
  for (int g = 0; g * 16 < len; ++g) {
    const int glen = std::min(16, len - 16 * g);
    const __mmask16 out_mask = static_cast<__mmask16>((1u << std::min(16, width - 16 * g)) - 1);
    for (int64_t q0 = 0; q0 < kq; q0 += 16) {
      const int qn = static_cast<int>(std::min<int64_t>(16, kq - q0));
      const __mmask16 in_mask = static_cast<__mmask16>((1u << qn) - 1);
      __m512i r[16], t[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < glen ? _mm512_maskz_loadu_epi32(in_mask, rows[16 * g + i] + q0) : _mm512_setzero_si512();
      for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
      }
      // r[4 i + j], 128-bit lane L: rows 4 i .. 4 i + 3 of column 4 L + j
      for (int j = 0; j < 4; ++j) {
        const __m512i u0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88), u1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xdd);
        const __m512i u2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
        const __m512i u3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xdd);
        t[j] = _mm512_shuffle_i32x4(u0, u2, 0x88);
        t[8 + j] = _mm512_shuffle_i32x4(u0, u2, 0xdd);
        t[4 + j] = _mm512_shuffle_i32x4(u1, u3, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(u1, u3, 0xdd);
      }
      uint32_t* d = dst + q0 * width + 16 * g;
      for (int q = 0; q < qn; ++q) _mm512_mask_storeu_epi32(d + q * width, out_mask, t[q]);
    }
  }
}

// dst[q * width + r] = x0[q][r] | x1[q][r] << 16 for r < 32 * (width / 32), q < kq, where
// x0[q] = base + 2 q sq and x1[q] = x0[q] + sq hold contiguous rows (bf16 along n): 16-bit
// unpacks, then a 64-bit permute back into column order.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void interleave_pairs(const uint16_t* base, int64_t sq,
                                                                                   int width, int64_t kq,
                                                                                   uint32_t* dst) {
  const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i hi_idx = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t q = 0; q < kq; ++q) {
    const uint16_t* x0 = base + 2 * q * sq;
    for (int c = 0; c + 32 <= width; c += 32) {
      const __m512i a = _mm512_loadu_si512(x0 + c), b = _mm512_loadu_si512(x0 + sq + c);
      const __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
      _mm512_storeu_si512(dst + q * width + c, _mm512_permutex2var_epi64(lo, lo_idx, hi));
      _mm512_storeu_si512(dst + q * width + c + 16, _mm512_permutex2var_epi64(lo, hi_idx, hi));
    }
  }
}
#endif

constexpr int64_t kPackAhead = 16;  // q rows a strided pack asks for ahead of its reads

// One panel of `len` (< = width) rows of A (or columns of B) starting at `i0`:
// dst[q * width + r] = X(i0 + r, q), zero for r >= len. X(i, q) = base[i * si + q * sq].
// kWords: the caller runs on AVX-512, where float32 rows contiguous along q are transposed
// 16 x 16 in registers (transpose_pairs moves any 32-bit words).
template <typename T, bool kWords>
FASTOPS_FORCE_INLINE void pack_f32(const void* base, int64_t si, int64_t sq, int64_t i0, int len, int width,
                                   int64_t k, float* dst) {
  if (len < width) {
    for (int64_t q = 0; q < k; ++q) std::fill(dst + q * width + len, dst + (q + 1) * width, 0.0f);
  }
  const int64_t off0 = i0 * si;
  if (si == 1 || sq != 1) {  // rows contiguous along i (or neither): walk q outer
    for (int64_t q = 0; q < k; ++q) {
      const int64_t o = off0 + q * sq;
      // q rows far apart (a column-major A): each is on its own page, past the hardware prefetcher
      __builtin_prefetch(static_cast<const T*>(base) + o + kPackAhead * sq, 0, 0);
      float* d = dst + q * width;
#pragma omp simd
      for (int r = 0; r < len; ++r) d[r] = ld<T>(base, o + r * si);
    }
#if FASTOPS_HAVE_X86_PATHS
  } else if (kWords && std::is_same_v<T, float> && len <= 32) {
    const uint32_t* rows[32];
    for (int r = 0; r < len; ++r) rows[r] = static_cast<const uint32_t*>(base) + off0 + r * si;
    transpose_pairs(rows, len, width, k, reinterpret_cast<uint32_t*>(dst));
#endif
  } else {  // contiguous along q: read rows, write strided, 16 q at a time to stay in cache
    for (int64_t q0 = 0; q0 < k; q0 += 16) {
      const int64_t qn = std::min<int64_t>(16, k - q0);
      for (int r = 0; r < len; ++r) {
        const int64_t o = off0 + r * si + q0;
        for (int64_t q = 0; q < qn; ++q) dst[(q0 + q) * width + r] = ld<T>(base, o + q);
      }
    }
  }
}

// As pack_f32 for bfloat16 storage into pairs: dst[q2 * width + r] = X(i, 2 q2) | X(i, 2 q2 + 1) << 16.
template <typename T>
FASTOPS_FORCE_INLINE void pack_pairs(const void* base, int64_t si, int64_t sq, int64_t i0, int len, int width,
                                     int64_t k, uint32_t* dst) {
  const int64_t kq = ceil_div(k, 2);
  if (len < width) {
    for (int64_t q = 0; q < kq; ++q) std::fill(dst + q * width + len, dst + (q + 1) * width, 0u);
  }
  const int64_t off0 = i0 * si, kfull = k / 2;
  if (sq == 1 && si != 1) {  // contiguous along k: a pair is one 32-bit word of the row
#if FASTOPS_HAVE_X86_PATHS
    if (len <= 32) {
      const uint32_t* rows[32];
      for (int r = 0; r < len; ++r)
        rows[r] = reinterpret_cast<const uint32_t*>(static_cast<const T*>(base) + off0 + r * si);
      transpose_pairs(rows, len, width, kfull, dst);
    } else
#endif
    for (int64_t q0 = 0; q0 < kfull; q0 += 16) {
      const int64_t qn = std::min<int64_t>(16, kfull - q0);
      for (int r = 0; r < len; ++r) {
        const char* row = reinterpret_cast<const char*>(static_cast<const T*>(base) + off0 + r * si) + 4 * q0;
        for (int64_t q = 0; q < qn; ++q) {
          uint32_t w;
          std::memcpy(&w, row + 4 * q, 4);
          dst[(q0 + q) * width + r] = w;
        }
      }
    }
  } else {
#if FASTOPS_HAVE_X86_PATHS
    if (si == 1 && len == width && width % 32 == 0) {  // full panel of a row-major B
      interleave_pairs(reinterpret_cast<const uint16_t*>(static_cast<const T*>(base) + off0), sq, width, kfull, dst);
    } else
#endif
    for (int64_t q = 0; q < kfull; ++q) {
      const int64_t o = off0 + 2 * q * sq;
      __builtin_prefetch(static_cast<const T*>(base) + o + kPackAhead * sq, 0, 0);  // as in pack_f32
      uint32_t* d = dst + q * width;
#pragma omp simd
      for (int r = 0; r < len; ++r)
        d[r] = ld_bits<T>(base, o + r * si) | (ld_bits<T>(base, o + r * si + sq) << 16);
    }
  }
  if (k % 2) {
    const int64_t o = off0 + (k - 1) * sq;
    for (int r = 0; r < len; ++r) dst[kfull * width + r] = ld_bits<T>(base, o + r * si);
  }
}

// Packs k steps [q0, q1) of panel `pi` of A (is_a) or B of batch item `b` (q0 even for pairs).
template <typename T, typename P, bool kWords>
FASTOPS_FORCE_INLINE void pack_panel(const Plan& pl, bool is_a, int64_t b, int64_t pi, P* dst, int64_t q0,
                                     int64_t q1) {
  const GemmParams& p = *pl.p;
  const GemmOperand& x = is_a ? p.a : p.b;
  const int width = is_a ? pl.mr : pl.nr;
  const int64_t extent = is_a ? p.m : p.n;
  const int64_t i0 = pi * width;
  const int len = static_cast<int>(std::min<int64_t>(width, extent - i0));
  const int64_t si = is_a ? x.stride_row : x.stride_col;  // along m (A) or n (B)
  const int64_t sq = is_a ? x.stride_col : x.stride_row;  // along k
  const void* base = static_cast<const T*>(x.ptr) + b * x.stride_batch + q0 * sq;
  if constexpr (std::is_same_v<P, uint32_t>) {
    if constexpr (std::is_same_v<T, BFloat16>) pack_pairs<T>(base, si, sq, i0, len, width, q1 - q0, dst + q0 / 2 * width);
  } else {
    pack_f32<T, kWords>(base, si, sq, i0, len, width, q1 - q0, dst + q0 * width);
  }
}

// Packs A panels [first, last) of batch item b into dst (panel i at (i - first) * a_panel). A
// column-major A (rows contiguous along m) goes in blocks of k steps across all the panels, so
// that each k row's run of m is read once, while its page is in the TLB.
template <typename T, typename P, bool kWords>
FASTOPS_FORCE_INLINE void pack_a_panels(const Plan& pl, int64_t b, int64_t first, int64_t last, P* dst) {
  constexpr int64_t kBlock = 32;  // k steps per block: even, for pairs
  const GemmParams& p = *pl.p;
  const int64_t step = p.a.stride_row == 1 && last - first > 1 ? kBlock : std::max<int64_t>(p.k, 1);
  for (int64_t q0 = 0; q0 < p.k; q0 += step)
    for (int64_t i = first; i < last; ++i)
      pack_panel<T, P, kWords>(pl, true, b, i, dst + (i - first) * pl.a_panel, q0, std::min(p.k, q0 + step));
}

// ---- micro-kernels: acc[R][NR] = sum_q A[q][r] * B[q][:] over the packed panels ------------------

template <int W, int R, int NV>
FASTOPS_FORCE_INLINE void micro_f32(int64_t kq, const float* a, int mr, const float* b, float* out, int64_t ldo) {
  using V = Vec<W>;
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) acc[r][c] = V{};
#pragma GCC unroll 2
  for (int64_t q = 0; q < kq; ++q) {
    V bv[NV];
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) bv[c] = *reinterpret_cast<const V*>(b + q * NV * W + c * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V av = a[q * mr + r] - V{};  // a splat (x - 0 == x exactly): folds to a broadcast
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) acc[r][c] += av * bv[c];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) __builtin_memcpy(out + r * ldo + c * W, &acc[r][c], sizeof(V));  // out: any alignment
}

#if FASTOPS_HAVE_X86_PATHS
// `vdpbf16ps` through its builtin (not the intrinsic, whose target attribute would stop it from
// inlining here): only ever inlined into the AVX512-BF16 entry points below.
typedef short V32bh __attribute__((vector_size(64)));
typedef int V16i __attribute__((vector_size(64)));

template <int R>
FASTOPS_FORCE_INLINE void micro_bf16(int64_t kq, const uint32_t* a, int mr, const uint32_t* b, float* out,
                                     int64_t ldo) {
  using V = Vec<16>;
  V acc[R][kBf16NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kBf16NV; ++c) acc[r][c] = V{};
#pragma GCC unroll 2
  for (int64_t q = 0; q < kq; ++q) {
    V32bh bv[kBf16NV];
#pragma GCC unroll 4
    for (int c = 0; c < kBf16NV; ++c) bv[c] = reinterpret_cast<const V32bh*>(b + q * kBf16NR + 16 * c)[0];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V32bh av = (V32bh)(static_cast<int>(a[q * mr + r]) - V16i{});  // pair splat
#pragma GCC unroll 4
      for (int c = 0; c < kBf16NV; ++c) acc[r][c] = __builtin_ia32_dpbf16ps_v16sf(acc[r][c], av, bv[c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kBf16NV; ++c) __builtin_memcpy(out + r * ldo + 16 * c, &acc[r][c], sizeof(V));
}
#endif

// ---- epilogue: C[i0 + r, j0 + c] = act(alpha * t + beta * C + bias), r < rows, c < cols ---------

template <typename C, Activation kAct>
FASTOPS_FORCE_INLINE void store_rows(const GemmParams& p, C* c0, int64_t i0, int64_t j0, int rows, int cols,
                                     float* t, int ldt) {
  const C* bias = static_cast<const C*>(p.bias);
  const bool unit = p.c_stride_col == 1;
  for (int r = 0; r < rows; ++r) {
    float* v = t + r * ldt;
    C* crow = c0 + (i0 + r) * p.c_stride_row + j0 * p.c_stride_col;
    const float alpha = p.alpha;
    if (p.beta != 0.0f) {
      const float beta = p.beta;
      if (unit) {
#pragma omp simd
        for (int c = 0; c < cols; ++c) v[c] = alpha * v[c] + beta * to_float(crow[c]);
      } else {
        for (int c = 0; c < cols; ++c) v[c] = alpha * v[c] + beta * to_float(crow[c * p.c_stride_col]);
      }
    } else if (alpha != 1.0f) {
#pragma omp simd
      for (int c = 0; c < cols; ++c) v[c] = alpha * v[c];
    }
    if (bias != nullptr) {
      if (p.bias_per_row) {
        const float bv = to_float(bias[i0 + r]);
#pragma omp simd
        for (int c = 0; c < cols; ++c) v[c] += bv;
      } else {
#pragma omp simd
        for (int c = 0; c < cols; ++c) v[c] += to_float(bias[j0 + c]);
      }
    }
    if constexpr (kAct != Activation::kNone) {
#pragma omp simd
      for (int c = 0; c < cols; ++c) v[c] = math::activate(kAct, v[c]);
    }
    if (unit) {
#pragma omp simd
      for (int c = 0; c < cols; ++c) crow[c] = from_float<C>(v[c]);
    } else {
      for (int c = 0; c < cols; ++c) crow[c * p.c_stride_col] = from_float<C>(v[c]);
    }
  }
}

#if FASTOPS_HAVE_X86_PATHS
// The same epilogue on AVX-512, one pass per 16 columns with every step in a register (read the
// accumulators, scale, add C and bias, activate with vec_math.h, round and store once); the tail
// of a row is a masked vector, so every element of C goes through the same code. C unit-strided.
// Not inlined (one call per register tile): a target-specific body cannot be inlined through the
// generic store_tile, and the call costs nothing next to the tile's math.
template <typename C, Activation kAct>
__attribute__((noinline, target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) void store_rows_avx512(const GemmParams& p, C* c0, int64_t i0, int64_t j0, int rows, int cols,
                                      const float* t, int ldt) {
  const C* bias = static_cast<const C*>(p.bias);
  const bool col_bias = bias != nullptr && !p.bias_per_row, beta_c = p.beta != 0.0f;
  const __m512 alpha = _mm512_set1_ps(p.alpha), beta = _mm512_set1_ps(p.beta);
  for (int r = 0; r < rows; ++r) {
    const float* v = t + r * ldt;
    C* crow = c0 + (i0 + r) * p.c_stride_row + j0;
    const __m512 row_bias = _mm512_set1_ps(bias != nullptr && p.bias_per_row ? to_float(bias[i0 + r]) : 0.0f);
    for (int c = 0; c < cols; c += 16) {
      const __mmask16 m = vec512::first_lanes(cols - c);
      __m512 x = _mm512_maskz_loadu_ps(m, v + c);
      if (beta_c) x = alpha * x + beta * vec512::load(crow + c, m);
      else if (p.alpha != 1.0f) x = alpha * x;
      x = x + (col_bias ? vec512::load(bias + j0 + c, m) : row_bias);
      vec512::store(crow + c, m, vec512::activate<kAct>(x));
    }
  }
}

// The same epilogue for C with contiguous rows and strided columns (c_stride_row == 1, beta == 0,
// rows <= 16; an NCHW convolution output: rows = pixels, columns = channels): the tile is
// transposed 16 x 16 in registers first, so each column goes out as one run of `rows` elements
// instead of `rows` scattered ones.
template <typename C, Activation kAct>
__attribute__((noinline, target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) void store_cols_avx512(
    const GemmParams& p, C* c0, int64_t i0, int64_t j0, int rows, int cols, const float* t, int ldt) {
  const C* bias = static_cast<const C*>(p.bias);
  const __mmask16 m = vec512::first_lanes(rows);
  const __m512 alpha = _mm512_set1_ps(p.alpha);
  const __m512 row_bias = bias != nullptr && p.bias_per_row ? vec512::load(bias + i0, m) : _mm512_setzero_ps();
  const uint32_t* tr[16];
  for (int r = 0; r < rows; ++r) tr[r] = reinterpret_cast<const uint32_t*>(t + r * ldt);
  alignas(64) float tt[16 * 64];  // tt[c * 16 + r] = t[r, c]
  for (int cb = 0; cb < cols; cb += 64) {
    const int n = std::min(64, cols - cb);
    const uint32_t* rs[16];
    for (int r = 0; r < rows; ++r) rs[r] = tr[r] + cb;
    transpose_pairs(rs, rows, 16, n, reinterpret_cast<uint32_t*>(tt));
    for (int c = 0; c < n; ++c) {
      __m512 x = _mm512_load_ps(tt + c * 16);
      if (p.alpha != 1.0f) x = alpha * x;
      if (bias != nullptr) x = x + (p.bias_per_row ? row_bias : _mm512_set1_ps(to_float(bias[j0 + cb + c])));
      vec512::store(c0 + i0 + (j0 + cb + c) * p.c_stride_col, m, vec512::activate<kAct>(x));
    }
  }
}
#endif

// kVec512: the caller is compiled for AVX-512 (the float32 kernel with W = 16, or AVX512-BF16).
template <typename C, bool kVec512>
FASTOPS_FORCE_INLINE void store_tile(const GemmParams& p, int64_t b, int64_t i0, int64_t j0, int rows, int cols,
                                     float* t, int ldt) {
  C* c0 = static_cast<C*>(p.c) + b * p.c_stride_batch;
  // inlined into the caller, so that it is compiled for the caller's ISA target
  math::with_activation(p.activation, [&](auto act) __attribute__((always_inline)) {
    constexpr Activation kAct = decltype(act)::value;
#if FASTOPS_HAVE_X86_PATHS
    if constexpr (kVec512) {
      if (p.c_stride_col == 1) return store_rows_avx512<C, kAct>(p, c0, i0, j0, rows, cols, t, ldt);
      if (p.c_stride_row == 1 && p.beta == 0.0f && rows <= 16)
        return store_cols_avx512<C, kAct>(p, c0, i0, j0, rows, cols, t, ldt);
    }
#endif
    store_rows<C, kAct>(p, c0, i0, j0, rows, cols, t, ldt);
  });
}

// ---- one unit (macro tile) of one batch item ----------------------------------------------------

// micro<R> for R = rows of this register tile (1 <= rows <= R at the first call).
template <int W, int R, typename P>
FASTOPS_FORCE_INLINE void micro_rows(int rows, int64_t kq, const P* a, int mr, const P* b, float* out, int64_t ldo) {
  if constexpr (R >= 1) {
    if (rows < R) return micro_rows<W, R - 1, P>(rows, kq, a, mr, b, out, ldo);
    if constexpr (W == 0) {
#if FASTOPS_HAVE_X86_PATHS
      micro_bf16<R>(kq, a, mr, b, out, ldo);
#endif
    } else {
      micro_f32<W, R, Tile<W>::NV>(kq, a, mr, b, out, ldo);
    }
  }
}

// C = A B exactly (float32 C, unit columns, no scale, C term, bias or activation): full-width
// register tiles go straight from the accumulators to C, with no pass through a tile buffer.
template <typename C>
FASTOPS_FORCE_INLINE bool stores_plain(const GemmParams& p) {
  return std::is_same_v<C, float> && p.c_stride_col == 1 && p.alpha == 1.0f && p.beta == 0.0f && p.bias == nullptr &&
         p.activation == Activation::kNone;
}

// Calls tile(ir, jr, rows, cols) for register tiles [t0, t1) of unit `unit`, numbered A panel
// (row) major within the unit: A panel ir, B panel jr of nr columns, rows x cols of C in range.
template <typename Fn>
FASTOPS_FORCE_INLINE void for_unit_tiles(const Plan& pl, int64_t unit, int64_t t0, int64_t t1, int nr, Fn&& tile) {
  const int64_t ui = unit / pl.n_units, uj = unit % pl.n_units, mr = pl.mr;
  const int64_t ir0 = ui * (pl.mc / mr);
  const int64_t jr0 = uj * (pl.nc / nr), jr1 = std::min(pl.n_panels, jr0 + pl.nc / nr);
  const int64_t width = jr1 - jr0;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t ir = ir0 + t / width, jr = jr0 + t % width;
    tile(ir, jr, static_cast<int>(std::min<int64_t>(mr, pl.p->m - ir * mr)),
         static_cast<int>(std::min<int64_t>(nr, pl.p->n - jr * nr)));
  }
}

// Kind of kernel: W floats per vector for the float32 FMA kernel, 0 for AVX512-BF16.
// Runs register tiles [t0, t1) of the unit, numbered A panel (row) major within the unit.
template <int W, typename C>
FASTOPS_FORCE_INLINE void run_unit(const Plan& pl, int64_t b, int64_t unit, int64_t t0, int64_t t1, const void* ap,
                                   int64_t a_first, const void* bp) {
  const GemmParams& p = *pl.p;
  constexpr bool kBf16 = W == 0;
  constexpr int MR = kBf16 ? kBf16MR : Tile<(kBf16 ? 16 : W)>::MR;
  constexpr int NR = kBf16 ? kBf16NR : Tile<(kBf16 ? 16 : W)>::NV * (kBf16 ? 16 : W);
  using P = std::conditional_t<kBf16, uint32_t, float>;
  alignas(64) float tile[MR * NR];
  const int64_t mr = pl.mr;
  const bool direct = stores_plain<C>(p);
  for_unit_tiles(pl, unit, t0, t1, NR, [&](int64_t ir, int64_t jr, int rows, int cols) __attribute__((always_inline)) {
    const P* a = static_cast<const P*>(ap) + (ir - a_first) * pl.a_panel;
    const P* bq = static_cast<const P*>(bp) + jr * pl.b_panel;
    if (direct && cols == NR) {
      float* c = static_cast<float*>(p.c) + b * p.c_stride_batch + ir * mr * p.c_stride_row + jr * NR;
      return micro_rows<W, MR, P>(rows, pl.kq, a, mr, bq, c, p.c_stride_row);
    }
    micro_rows<W, MR, P>(rows, pl.kq, a, mr, bq, tile, NR);
    store_tile<C, W == 0 || W == 16>(p, b, ir * mr, jr * NR, rows, cols, tile, NR);
  });
}

// ---- ISA entry points -------------------------------------------------------------------------

struct Entries {
  void (*pack_a)(const Plan&, int64_t b, int64_t first, int64_t last, void* dst);  // A panels [first, last)
  void (*pack_b)(const Plan&, int64_t b, int64_t panel, void* dst);
  // register tiles [t0, t1) of a unit; ap holds the packed A panels from number a_first on
  void (*unit)(const Plan&, int64_t b, int64_t unit, int64_t t0, int64_t t1, const void* ap, int64_t a_first,
               const void* bp);
  int mr, nr;
  bool pairs;
  bool amx = false;  // AMX tiles: A panels in tile steps, kq padded to whole tiles (amx.h)
};
// AMX units are this many A panels by as many column panels at most, whatever k (unit_amx).
constexpr int kAmxUnitPanels = 8, kAmxUnitTiles = kAmxUnitPanels * kAmxUnitPanels;

#define FASTOPS_GEMM_ENTRIES(SUFFIX, TARGET, W, P)                                                      \
  template <typename AB>                                                                                \
  TARGET void pack_a_##SUFFIX(const Plan& pl, int64_t b, int64_t first, int64_t last, void* dst) {       \
    pack_a_panels<AB, P, W == 16>(pl, b, first, last, static_cast<P*>(dst));                            \
  }                                                                                                     \
  template <typename AB>                                                                                \
  TARGET void pack_b_##SUFFIX(const Plan& pl, int64_t b, int64_t pi, void* dst) {                        \
    pack_panel<AB, P, W == 16>(pl, false, b, pi, static_cast<P*>(dst) + pi * pl.b_panel, 0, pl.p->k);   \
  }                                                                                                     \
  template <typename C>                                                                                 \
  TARGET void unit_##SUFFIX(const Plan& pl, int64_t b, int64_t u, int64_t t0, int64_t t1, const void* ap, \
                            int64_t a_first, const void* bp) {                                          \
    run_unit<W, C>(pl, b, u, t0, t1, ap, a_first, bp);                                                  \
  }

FASTOPS_GEMM_ENTRIES(avx512, FASTOPS_TARGET_AVX512, 16, float)
FASTOPS_GEMM_ENTRIES(avx2, FASTOPS_TARGET_AVX2, 8, float)
FASTOPS_GEMM_ENTRIES(baseline, FASTOPS_TARGET_BASELINE, 4, float)
#if FASTOPS_HAVE_X86_PATHS
FASTOPS_GEMM_ENTRIES(bf16dp, FASTOPS_TARGET_AVX512BF16, 0, uint32_t)
#endif
#undef FASTOPS_GEMM_ENTRIES

#if FASTOPS_HAVE_X86_PATHS
// ---- AMX entries (amx.h): the AVX512-BF16 panels of B padded to whole tiles, A in tile steps ----

// The A panel of the AMX kernel (amx.h): 16-row halves, each a run of kq / 16 tile steps of 16 rows
// x 16 words (1 KB, one tile load): word q of row r at amx_a_offset(r, q, kq).
FASTOPS_FORCE_INLINE int64_t amx_a_offset(int r, int64_t q, int64_t kq) {
  return (r / 16) * 16 * kq + (q / kAmxK) * 16 * kAmxK + (r % 16) * kAmxK + q % kAmxK;
}

// Elements [e0, e0 + n) of row r of an A panel (bfloat16, kq pairs a row) from src, or zeros for
// a null src: runs split at the tile steps' 32-element boundaries (whole runs inline 64-byte copies).
FASTOPS_FORCE_INLINE void amx_put_run(void* panel, int r, int64_t kq, int64_t e0, const void* src, int64_t n) {
  constexpr int64_t kRun = 2 * kAmxK;  // bfloat16 elements per tile step of a row
  const char* s = static_cast<const char*>(src);
  for (int64_t done = 0, el = e0; done < n;) {
    const int64_t take = std::min(n - done, kRun - el % kRun);
    char* d = static_cast<char*>(panel) + 4 * amx_a_offset(r, el / kRun * kAmxK, kq) + 2 * (el % kRun);
    if (take == kRun) {
      if (s) __builtin_memcpy(d, s + 2 * done, 2 * kRun);
      else __builtin_memset(d, 0, 2 * kRun);
    } else if (s) {
      std::memcpy(d, s + 2 * done, 2 * take);
    } else {
      std::memset(d, 0, 2 * take);
    }
    done += take;
    el += take;
  }
}

// Row r of an A panel: n elements from src, zeros after.
FASTOPS_FORCE_INLINE void amx_put_row(void* panel, int r, int64_t kq, const void* src, int64_t n) {
  amx_put_run(panel, r, kq, 0, src, n);
  amx_put_run(panel, r, kq, n, nullptr, 2 * kq - n);
}

// An A panel from A pairs packed as for `vdpbf16ps` (src[q * mr + r], q < kq_real): rows back by
// 16 x 16 register transposes (through a row-major scratch), then into their tile steps.
void amx_panel_from_pairs(const uint32_t* src, int mr, int64_t kq_real, int64_t kq, uint32_t* dst) {
  thread_local std::vector<uint32_t> rows_buf;
  const int64_t ld = round_up(std::max<int64_t>(kq_real, 1), kAmxK);  // the transposes write whole 16-word runs
  rows_buf.resize(static_cast<size_t>(mr * ld));
  for (int64_t q0 = 0; q0 < kq_real; q0 += 32) {
    const int len = static_cast<int>(std::min<int64_t>(32, kq_real - q0));
    const uint32_t* rows[32];
    for (int j = 0; j < len; ++j) rows[j] = src + (q0 + j) * mr;
    transpose_pairs(rows, len, static_cast<int>(ld), mr, rows_buf.data() + q0);  // [r * ld + q0 + j] = rows[j][r]
  }
  for (int r = 0; r < mr; ++r) amx_put_row(dst, r, kq, rows_buf.data() + r * ld, 2 * kq_real);
}

// A panels [first, last): rows contiguous along k are copied as they are (a pair is one 32-bit
// word of the row); any other A goes through the `vdpbf16ps` packing ([kq][mr] pairs), transposed
// 16 x 16 in registers back to rows. Rows past m are zero.
template <typename AB>
FASTOPS_TARGET_AMX void pack_a_amx(const Plan& pl, int64_t b, int64_t first, int64_t last, void* dst) {
  const GemmParams& p = *pl.p;
  thread_local std::vector<uint32_t> pairs;
  for (int64_t i = first; i < last; ++i) {
    uint32_t* d = static_cast<uint32_t*>(dst) + (i - first) * pl.a_panel;
    const int64_t i0 = i * pl.mr;
    const int len = static_cast<int>(std::min<int64_t>(pl.mr, p.m - i0));
    if (p.a.stride_col == 1) {
      const AB* base = static_cast<const AB*>(p.a.ptr) + b * p.a.stride_batch;
      for (int r = 0; r < pl.mr; ++r)
        amx_put_row(d, r, pl.kq, base + (i0 + r) * p.a.stride_row, r < len ? p.k : 0);
      continue;
    }
    pairs.resize(static_cast<size_t>(std::max<int64_t>(ceil_div(p.k, 2), 1) * pl.mr));
    pack_panel<AB, uint32_t, false>(pl, true, b, i, pairs.data(), 0, p.k);
    amx_panel_from_pairs(pairs.data(), pl.mr, ceil_div(p.k, 2), pl.kq, d);
  }
}

// B panel pi as for `vdpbf16ps` ([kq][32] pairs), its rows past ceil(k / 2) zero.
template <typename AB>
FASTOPS_TARGET_AMX void pack_b_amx(const Plan& pl, int64_t b, int64_t pi, void* dst) {
  uint32_t* d = static_cast<uint32_t*>(dst) + pi * pl.b_panel;
  pack_panel<AB, uint32_t, false>(pl, false, b, pi, d, 0, pl.p->k);
  std::fill(d + ceil_div(pl.p->k, 2) * pl.nr, d + pl.kq * pl.nr, 0u);
}

// Register tiles [t0, t1) of a unit, as run_unit, k in blocks of kAmxBlockSteps tile steps
// outermost: every tile of the range takes its next block, its partial sums kept in a float32
// buffer, before any takes the one after. A deep k's whole panels are past L1 and a unit's past
// L2, and tile loads from there held the kernel near half its rate; this way a block of one A
// panel (16 KB) serves all the unit's column panels from L1, and each block of the unit's panels
// is read from memory once. The last block goes to the epilogue, or straight into C for a plain
// full tile. Units hold at most kAmxUnitTiles tiles (make_plan, packed_plan); a larger range
// would go in chunks.
constexpr int64_t kAmxBlockSteps = 8;  // 128 pairs: a 32-row A block of 16 KB
thread_local Scratch tls_amx_partial;

template <typename C>
FASTOPS_TARGET_AMX void unit_amx(const Plan& pl, int64_t b, int64_t unit, int64_t t0, int64_t t1, const void* ap,
                                 int64_t a_first, const void* bp) {
  const GemmParams& p = *pl.p;
  float* partial = reinterpret_cast<float*>(tls_amx_partial.get(kAmxUnitTiles * kAmxMR * kAmxNR * 4));
  const AmxScope tiles;
  const int64_t mr = pl.mr, steps = pl.kq / kAmxK;
  const bool plain = stores_plain<C>(p);
  for (int64_t c0 = t0; c0 < t1; c0 += kAmxUnitTiles) {
    const int64_t c1 = std::min<int64_t>(t1, c0 + kAmxUnitTiles);
    for (int64_t s0 = 0; s0 < steps; s0 += kAmxBlockSteps) {
      const int64_t s1 = std::min(steps, s0 + kAmxBlockSteps);
      float* acc = partial;
      for_unit_tiles(pl, unit, c0, c1, kAmxNR, [&](int64_t ir, int64_t jr, int rows, int cols) __attribute__((always_inline)) {
        const uint32_t* a = static_cast<const uint32_t*>(ap) + (ir - a_first) * pl.a_panel;
        const uint32_t* bq = static_cast<const uint32_t*>(bp) + jr * pl.b_panel;
        const bool last = s1 == steps, direct = last && plain && rows == mr && cols == kAmxNR;
        float* out = direct ? static_cast<float*>(p.c) + b * p.c_stride_batch + ir * mr * p.c_stride_row + jr * kAmxNR
                            : acc;
        const int64_t ldo = (direct ? p.c_stride_row : kAmxNR) * 4;
        if (mr == kAmxMR) amx_tile<2>(pl.kq, s0, s1, a, bq, s0 > 0 ? acc : nullptr, out, ldo);
        else amx_tile<1>(pl.kq, s0, s1, a, bq, s0 > 0 ? acc : nullptr, out, ldo);
        if (last && !direct) store_tile<C, true>(p, b, ir * mr, jr * kAmxNR, rows, cols, acc, kAmxNR);
        acc += kAmxMR * kAmxNR;
      });
    }
  }
}
#endif

bool cpu_has_bf16_dot() { return has_avx512_bf16(); }

template <typename AB, typename C>
Entries entries(DType ab) {
#if FASTOPS_HAVE_X86_PATHS
  if (ab == DType::kBFloat16 && has_amx_bf16())
    return {pack_a_amx<AB>, pack_b_amx<AB>, unit_amx<C>, kAmxMR, kAmxNR, true, true};
  if (ab == DType::kBFloat16 && cpu_has_bf16_dot())
    return {pack_a_bf16dp<AB>, pack_b_bf16dp<AB>, unit_bf16dp<C>, kBf16MR, kBf16NR, true};
#endif
  (void)ab;
  switch (active_isa()) {
    case Isa::kAvx512:
      return {pack_a_avx512<AB>, pack_b_avx512<AB>, unit_avx512<C>, Tile<16>::MR, Tile<16>::NV * 16, false};
    case Isa::kAvx2:
      return {pack_a_avx2<AB>, pack_b_avx2<AB>, unit_avx2<C>, Tile<8>::MR, Tile<8>::NV * 8, false};
    default:
      return {pack_a_baseline<AB>, pack_b_baseline<AB>, unit_baseline<C>, Tile<4>::MR, Tile<4>::NV * 4, false};
  }
}

// ---- blocking and threads ---------------------------------------------------------------------

// Rows of the register tiles (A panels) for m rows: the kernel's mr, or fewer where that evens
// the tiles out. 16 rows run as 8 + 8, not 14 + 2: each tile streams the whole B panel, so a
// 2-row tile costs a panel read for a seventh of the work (the RNN's per-step products).
// Any height computes every element as the same sum in the same order.
int tile_rows(int64_t m, int mr) {
  const int64_t rows = std::max<int64_t>(m, 1);
  return static_cast<int>(ceil_div(rows, ceil_div(rows, mr)));
}

// The panel geometry of a product (register tile, K extent in compute elements, panel sizes);
// the unit blocking is left to the caller.
Plan panel_plan(const GemmParams& p, const Entries& e) {
  Plan pl{};
  pl.p = &p;
  pl.mr = e.amx ? (p.m <= 16 ? 16 : kAmxMR) : tile_rows(p.m, e.mr);
  pl.nr = e.nr;
  pl.kq = e.pairs ? ceil_div(p.k, 2) : p.k;
  if (e.amx) pl.kq = round_up(std::max<int64_t>(pl.kq, 1), kAmxK);
  pl.m_panels = ceil_div(p.m, pl.mr);
  pl.n_panels = ceil_div(p.n, e.nr);
  pl.a_panel = std::max<int64_t>(pl.kq, 1) * pl.mr;
  pl.b_panel = std::max<int64_t>(pl.kq, 1) * e.nr;
  return pl;
}

// Unit size: the B columns a unit walks (nc x k packed) sized for about half of L2, the A rows
// (mc x k) for a quarter (AMX: kAmxUnitPanels square, unit_amx blocks k); then split further until
// every thread has a few units. Changes the schedule only, never the arithmetic.
constexpr int64_t kUnitBBytes = int64_t(512) << 10;  // packed B a unit walks: about half of L2

Plan make_plan(const GemmParams& p, const Entries& e, int threads, bool per_item_threads) {
  Plan pl = panel_plan(p, e);
  const int64_t row_bytes = std::max<int64_t>(pl.kq, 1) * 4;
  int64_t np = std::clamp<int64_t>(kUnitBBytes / (row_bytes * e.nr), 1, 16);
  int64_t mp = std::clamp<int64_t>((int64_t(256) << 10) / (row_bytes * pl.mr), 1, 24);
  if (e.amx) np = mp = kAmxUnitPanels;
  np = std::min(np, pl.n_panels);
  mp = std::min(mp, pl.m_panels);
  if (per_item_threads) {
    const int64_t want = 3 * static_cast<int64_t>(threads);
    while (ceil_div(pl.m_panels, mp) * ceil_div(pl.n_panels, np) < want && (mp > 1 || np > 1)) {
      if (mp >= np && mp > 1) mp = ceil_div(mp, 2); else np = ceil_div(np, 2);
    }
  }
  pl.mc = mp * pl.mr;
  pl.nc = np * e.nr;
  pl.m_units = ceil_div(pl.m_panels, mp);
  pl.n_units = ceil_div(pl.n_panels, np);
  return pl;
}

thread_local Scratch tls_a, tls_b;

// Register tiles of unit u: (A panels of its unit row) x (B panels of its unit column).
FASTOPS_FORCE_INLINE int64_t unit_tiles(const Plan& pl, int64_t u) {
  const int64_t per_row = pl.mc / pl.mr, per_col = pl.nc / pl.nr;
  const int64_t ui = u / pl.n_units, uj = u % pl.n_units;
  return (std::min(pl.m_panels, (ui + 1) * per_row) - ui * per_row) *
         (std::min(pl.n_panels, (uj + 1) * per_col) - uj * per_col);
}

// Runs register tiles [t0, t1) of batch item b, numbered unit by unit (units row-major, tiles A
// panel major within a unit): an equal share of tiles per thread, whatever the edge units hold.
// The A panels of a unit row are packed just before its first tile (into this thread's buffer,
// so the block is still in L2 when the micro-kernels read it).
FASTOPS_FORCE_INLINE void run_tiles(const Entries& e, const Plan& pl, int64_t b, int64_t t0, int64_t t1, void* abuf,
                                    const void* bbuf) {
  int64_t packed_row = -1, first = 0, seen = 0;
  const int64_t per_row = pl.mc / pl.mr, units = pl.m_units * pl.n_units;
  for (int64_t u = 0; u < units && seen < t1; ++u) {
    const int64_t cnt = unit_tiles(pl, u), lo = std::max<int64_t>(t0 - seen, 0), hi = std::min(cnt, t1 - seen);
    seen += cnt;
    if (lo >= hi) continue;
    const int64_t ui = u / pl.n_units;
    if (ui != packed_row) {
      first = ui * per_row;
      const int64_t last = std::min(pl.m_panels, first + per_row);
      e.pack_a(pl, b, first, last, abuf);
      packed_row = ui;
    }
    e.unit(pl, b, u, lo, hi, abuf, first, bbuf);
  }
}

template <typename AB, typename C>
void gemm_typed(const GemmParams& p) {
  const Entries e = entries<AB, C>(p.ab_dtype);
  const int max_threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double flops = 2.0 * double(p.m) * double(p.n) * double(std::max<int64_t>(p.k, 1));
  // Many items: one thread per item (no barriers); few: all threads on each item.
  const bool by_item = p.batch >= max_threads &&
                       (p.batch % max_threads == 0 || p.batch >= 4 * max_threads || flops < 4e6);
  const int threads = flops * double(p.batch) < 2e5 ? 1 : max_threads;
  const Plan pl = make_plan(p, e, threads, !by_item);
  const int64_t a_block = (pl.mc / pl.mr) * pl.a_panel, b_elems = pl.n_panels * pl.b_panel;
  const int64_t tiles = pl.m_panels * pl.n_panels;
  const bool shared_b = p.b.stride_batch == 0;

  if (by_item) {
#pragma omp parallel num_threads(threads)
    {
      std::optional<AmxScope> amx;  // the tile configuration held across this call's units
      if (e.amx) amx.emplace();
      void* ab = tls_a.get(a_block * 4);
      void* bb = tls_b.get(b_elems * 4);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < p.batch; ++b) {
        for (int64_t i = 0; i < pl.n_panels; ++i) e.pack_b(pl, b, i, bb);
        run_tiles(e, pl, b, 0, tiles, ab, bb);
      }
      tls_a.trim();
      tls_b.trim();
    }
    return;
  }
  // B packed by all threads into one buffer; A rows packed by each thread for its own units.
  void* bb = tls_b.get(b_elems * 4);
#pragma omp parallel num_threads(threads)
  {
    std::optional<AmxScope> amx;  // the tile configuration held across this call's units
    if (e.amx) amx.emplace();
    void* ab = tls_a.get(a_block * 4);
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t t0 = tiles * t / nt, t1 = tiles * (t + 1) / nt;
    for (int64_t b = 0; b < p.batch; ++b) {
      if (b == 0 || !shared_b) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < pl.n_panels; ++i) e.pack_b(pl, b, i, bb);
      }
      run_tiles(e, pl, b, t0, t1, ab, bb);
      if (!shared_b && b + 1 < p.batch) {
#pragma omp barrier
      }
    }
    tls_a.trim();
  }
  tls_b.trim();
}

template <typename AB>
void gemm_ab(const GemmParams& p) {
  switch (p.c_dtype) {
    case DType::kFloat16: return gemm_typed<AB, Half>(p);
    case DType::kBFloat16: return gemm_typed<AB, BFloat16>(p);
    default: return gemm_typed<AB, float>(p);
  }
}

}  // namespace

void gemm(const GemmParams& p) {
  if (p.batch <= 0 || p.m <= 0 || p.n <= 0) return;
  switch (p.ab_dtype) {
    case DType::kFloat16: return gemm_ab<Half>(p);
    case DType::kBFloat16: return gemm_ab<BFloat16>(p);
    default: return gemm_ab<float>(p);
  }
}

// ---- packed B (fastops/gemm_packed.h): the same panels and kernels, B packed once ---------------
// (an additive block: nothing above depends on it)

namespace {

// The Plan of a product with a prepacked B: units of up to kPackedChunk row panels x one column
// panel (kAmxUnitPanels on AMX), a unit index (row chunk) * n_units + (column chunk).
constexpr int64_t kPackedChunk = 8;

Plan packed_plan(const GemmParams& p, const Entries& e) {
  Plan pl = panel_plan(p, e);
  pl.mc = std::min<int64_t>(std::max<int64_t>(pl.m_panels, 1), kPackedChunk) * pl.mr;
  pl.nc = (e.amx ? std::clamp<int64_t>(pl.n_panels, 1, kAmxUnitPanels) : 1) * e.nr;
  pl.m_units = ceil_div(pl.m_panels, pl.mc / pl.mr);
  pl.n_units = ceil_div(pl.n_panels, pl.nc / e.nr);
  return pl;
}

struct PackedFree {
  void operator()(char* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

template <typename AB>
std::shared_ptr<char> pack_b_groups(const GemmOperand& b, int64_t k, int64_t n, DType ab, int64_t groups,
                                    int64_t group_stride, int* nr, int64_t* group_elems) {
  const Entries e = entries<AB, float>(ab);
  GemmParams g;
  g.m = 1;
  g.n = n;
  g.k = k;
  g.b = b;
  g.ab_dtype = ab;
  const Plan pl = packed_plan(g, e);
  *nr = e.nr;
  *group_elems = pl.n_panels * pl.b_panel;
  const int64_t bytes = std::max<int64_t>(groups * *group_elems * 4, 64);
  std::shared_ptr<char> mem(static_cast<char*>(::operator new[](bytes, std::align_val_t(64))), PackedFree());
  char* dst = mem.get();
  const int64_t total = groups * pl.n_panels, ge = *group_elems;
  const bool par = !omp_in_parallel() && k * n * groups >= (1 << 15);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t w = 0; w < total; ++w) {
    const int64_t grp = w / pl.n_panels, pi = w % pl.n_panels;
    GemmParams gg = g;
    gg.b.ptr = static_cast<const AB*>(b.ptr) + grp * group_stride;
#if FASTOPS_HAVE_X86_PATHS
    if (std::is_same_v<AB, float> && !e.pairs && e.nr == 32 && b.stride_row == 1 && b.stride_col != 1) {
      // float32 B contiguous along k (a weight [n, k], as conv's): 16 x 16 register transposes
      const int64_t j0 = pi * 32;
      const int len = static_cast<int>(std::min<int64_t>(32, n - j0));
      const uint32_t* rows[32];
      for (int r = 0; r < len; ++r)
        rows[r] = reinterpret_cast<const uint32_t*>(static_cast<const AB*>(gg.b.ptr) + (j0 + r) * b.stride_col);
      uint32_t* d = reinterpret_cast<uint32_t*>(dst + grp * ge * 4) + pi * pl.b_panel;
      if (len < 32) std::fill(d, d + pl.b_panel, 0u);
      transpose_pairs(rows, len, 32, k, d);
      continue;
    }
#endif
    Plan pg = pl;
    pg.p = &gg;
    e.pack_b(pg, 0, pi, dst + grp * ge * 4);
  }
  return mem;
}

template <typename AB>
void pack_a_gathered_for(const Plan& pl, const Entries& e, const GatheredA& ga, int64_t pi, void* dst);
template <typename AB, typename C>
bool direct_gathered(const Plan& pl, const Entries& e, const GatheredA& ga, int64_t first, int64_t last, int64_t jr0,
                     int64_t jr1, const char* bp);

template <typename AB, typename C>
void packed_multiply(const GemmParams& p0, const char* bbuf, int64_t k, int64_t n, int64_t groups,
                     int64_t group_elems, int64_t j0, int64_t j1, int64_t c_group_stride,
                     const GatheredA* ga = nullptr) {
  const Entries e = entries<AB, C>(p0.ab_dtype);
  GemmParams p = p0;
  p.batch = 1;
  p.k = k;
  // The columns [j0, j1) widened to whole panels, as a product of their own: C, bias and B from
  // column panel jr0 on.
  const int64_t jr0 = j0 / e.nr, jc0 = jr0 * e.nr;
  p.n = std::min(n, round_up(j1, e.nr)) - jc0;
  p.c = static_cast<C*>(p.c) + jc0 * p.c_stride_col;
  if (p.bias && !p.bias_per_row) p.bias = static_cast<const C*>(p.bias) + jc0;
  const Plan pl = packed_plan(p, e);
  const char* bcols = bbuf + jr0 * pl.b_panel * 4;
  const int64_t per_row = pl.mc / pl.mr;
  void* abuf = tls_a.get(per_row * pl.a_panel * 4);
  std::optional<AmxScope> amx;  // the tile configuration held across this call's units
  if (e.amx) amx.emplace();
  for (int64_t ui = 0; ui < pl.m_units; ++ui) {
    const int64_t first = ui * per_row, last = std::min(pl.m_panels, first + per_row);
    if (ga && groups == 1 && direct_gathered<AB, C>(pl, e, *ga, first, last, 0, pl.n_panels, bcols)) continue;
    if (ga) {
      for (int64_t i = first; i < last; ++i)
        pack_a_gathered_for<AB>(pl, e, *ga, i, static_cast<char*>(abuf) + (i - first) * pl.a_panel * 4);
    } else {
      e.pack_a(pl, 0, first, last, abuf);
    }
    for (int64_t grp = 0; grp < groups; ++grp) {
      GemmParams pg = p;
      pg.c = static_cast<C*>(p.c) + grp * c_group_stride;
      Plan plg = pl;
      plg.p = &pg;
      for (int64_t uj = 0; uj < pl.n_units; ++uj) {
        const int64_t u = ui * pl.n_units + uj;
        e.unit(plg, 0, u, 0, unit_tiles(plg, u), abuf, first, bcols + grp * group_elems * 4);
      }
    }
  }
}

template <typename AB>
void packed_multiply_ab(const GemmParams& p, const char* bbuf, int64_t k, int64_t n, int64_t groups,
                        int64_t group_elems, int64_t j0, int64_t j1, int64_t cgs, const GatheredA* ga = nullptr) {
  switch (p.c_dtype) {
    case DType::kFloat16: return packed_multiply<AB, Half>(p, bbuf, k, n, groups, group_elems, j0, j1, cgs, ga);
    case DType::kBFloat16:
      return packed_multiply<AB, BFloat16>(p, bbuf, k, n, groups, group_elems, j0, j1, cgs, ga);
    default: return packed_multiply<AB, float>(p, bbuf, k, n, groups, group_elems, j0, j1, cgs, ga);
  }
}

}  // namespace

PackedB::PackedB(const GemmOperand& b, int64_t k, int64_t n, DType ab, int64_t groups, int64_t group_stride)
    : k_(k), n_(n), groups_(groups), dtype_(ab) {
  if (n <= 0 || groups <= 0) return;
  switch (ab) {
    case DType::kFloat16: data_ = pack_b_groups<Half>(b, k, n, ab, groups, group_stride, &nr_, &group_elems_); break;
    case DType::kBFloat16:
      data_ = pack_b_groups<BFloat16>(b, k, n, ab, groups, group_stride, &nr_, &group_elems_);
      break;
    default: data_ = pack_b_groups<float>(b, k, n, ab, groups, group_stride, &nr_, &group_elems_); break;
  }
}

void PackedB::multiply(const GemmParams& p, int64_t j0, int64_t j1, int64_t c_group_stride) const {
  if (p.m <= 0 || j1 <= j0 || !data_) return;
  switch (dtype_) {
    case DType::kFloat16:
      return packed_multiply_ab<Half>(p, data_.get(), k_, n_, groups_, group_elems_, j0, j1, c_group_stride);
    case DType::kBFloat16:
      return packed_multiply_ab<BFloat16>(p, data_.get(), k_, n_, groups_, group_elems_, j0, j1, c_group_stride);
    default:
      return packed_multiply_ab<float>(p, data_.get(), k_, n_, groups_, group_elems_, j0, j1, c_group_stride);
  }
}


// ---- A gathered from row segments (PackedB::multiply_gathered; an additive block) --------------

namespace {

// The row segments of A panel `pi`: [segment][pl.mr] pointers, null for rows past m and rows
// without data (padding); *len: the panel's rows within m. In a buffer of this thread, valid
// until its next call.
const void* const* gathered_rows(const Plan& pl, const GatheredA& ga, int64_t pi, int* len) {
  thread_local std::vector<const void*> table;
  const int64_t i0 = pi * pl.mr;
  *len = static_cast<int>(std::min<int64_t>(pl.mr, pl.p->m - i0));
  table.assign(static_cast<size_t>(ga.segments * pl.mr), nullptr);
  ga.rows(ga.ctx, i0, *len, pl.mr, table.data());
  return table.data();
}

// Packs A panel `pi` (rows pi mr ..) straight from the row segments into the layout pack_panel
// gives: [kq][mr] of float32 (or of bfloat16 pairs for the AVX512-BF16 kernel). 32-bit words of
// whole segments (float32 on the AVX-512 kernel, bfloat16 pairs with an even segment length) go
// through the 16 x 16 register transpose, the rest element by element.
template <typename AB>
void pack_a_gathered(const Plan& pl, bool bf16_pairs, const GatheredA& ga, int64_t pi, void* dst) {
  const int width = pl.mr;
  const int64_t seg = ga.seg_len, k = pl.p->k;
  int len = 0;
  const void* const* table = gathered_rows(pl, ga, pi, &len);
#if FASTOPS_HAVE_X86_PATHS
  const bool words = (bf16_pairs || active_isa() == Isa::kAvx512) && len <= 32 &&
                     ((bf16_pairs && std::is_same_v<AB, BFloat16> && seg % 2 == 0) ||
                      (!bf16_pairs && std::is_same_v<AB, float>));
  if (words) {
    uint32_t* d = static_cast<uint32_t*>(dst);
    const int64_t wq = bf16_pairs ? seg / 2 : seg;  // 32-bit words per segment
    std::vector<uint32_t> zeros;
    for (int64_t sgi = 0; sgi < ga.segments; ++sgi) {
      const uint32_t* wr[32];
      for (int r = 0; r < len; ++r) {
        wr[r] = static_cast<const uint32_t*>(table[sgi * width + r]);
        if (wr[r] == nullptr) {  // padding: a row of zeros
          if (zeros.empty()) zeros.assign(std::max<int64_t>(wq, 16), 0u);
          wr[r] = zeros.data();
        }
      }
      transpose_pairs(wr, len, width, wq, d + sgi * wq * width);
    }
    return;
  }
#endif
  // element by element: X(i, kk) of segment kk / seg, zero for padding rows and past k
  auto x = [&](int r, int64_t kk) -> uint32_t {
    const void* row = table[kk / seg * width + r];
    return row ? ld_bits<AB>(row, kk % seg) : 0u;
  };
  if (bf16_pairs) {
    uint32_t* d = static_cast<uint32_t*>(dst);
    for (int64_t q = 0; q < pl.kq; ++q)
      for (int r = 0; r < width; ++r) d[q * width + r] = x(r, 2 * q) | (2 * q + 1 < k ? x(r, 2 * q + 1) << 16 : 0u);
  } else {
    float* d = static_cast<float*>(dst);
    for (int r = 0; r < width; ++r) {
      for (int64_t sgi = 0; sgi < ga.segments; ++sgi) {
        const void* row = table[sgi * width + r];
        for (int64_t q = 0; q < seg; ++q) d[(sgi * seg + q) * width + r] = row ? ld<AB>(row, q) : 0.0f;
      }
    }
  }
}

#if FASTOPS_HAVE_X86_PATHS
// A panel `pi` of the AMX kernel from the row segments: each segment is copied into its row of the
// panel in runs that end at the tile steps' 32-element boundaries (bfloat16 elements, so a
// segment of odd length shares a pair with the next); rows and segments without data, and the k
// padding, written as zeros.
FASTOPS_TARGET_AMX void pack_a_gathered_amx(const Plan& pl, const GatheredA& ga, int64_t pi, void* dst) {
  const int64_t seg = ga.seg_len, filled = ga.segments * seg;
  int len = 0;
  const void* const* table = gathered_rows(pl, ga, pi, &len);
  for (int r = 0; r < pl.mr; ++r) {
    for (int64_t sgi = 0; sgi < ga.segments && r < len; ++sgi)
      amx_put_run(dst, r, pl.kq, sgi * seg, table[sgi * pl.mr + r], seg);
    const int64_t from = r < len ? filled : 0;
    amx_put_run(dst, r, pl.kq, from, nullptr, 2 * pl.kq - from);
  }
}
#endif

// pack_a_gathered in the layout of the kernel e.
template <typename AB>
void pack_a_gathered_for(const Plan& pl, const Entries& e, const GatheredA& ga, int64_t pi, void* dst) {
#if FASTOPS_HAVE_X86_PATHS
  if (std::is_same_v<AB, BFloat16> && e.amx) return pack_a_gathered_amx(pl, ga, pi, dst);  // bfloat16 only
#endif
  pack_a_gathered<AB>(pl, e.pairs, ga, pi, dst);
}

// Direct product (the AVX-512 kernels): A is not packed at all. The micro-kernel broadcasts A's
// elements straight from the row segments, through one pointer per (row, segment) of the register
// tile (a shared zero run for null rows), in the packed kernels' order (q increasing, the same
// multiply-add per element), so the results are bitwise those of the packed path.
#if FASTOPS_HAVE_X86_PATHS
template <int R, typename P>
FASTOPS_FORCE_INLINE void micro_direct(int64_t segs, int64_t wq, const P* const* rp, const P* b, float* out,
                                       int64_t ldo) {
  using V = Vec<16>;
  constexpr bool kBf16 = std::is_same_v<P, uint32_t>;
  constexpr int MR = kBf16 ? kBf16MR : Tile<16>::MR, NV = kBf16 ? kBf16NV : Tile<16>::NV, NR = 16 * NV;
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) acc[r][c] = V{};
  for (int64_t sg = 0; sg < segs; ++sg) {
    const P* const* rs = rp + sg * MR;
    const P* bs = b + sg * wq * NR;
#pragma GCC unroll 2
    for (int64_t q = 0; q < wq; ++q) {
      if constexpr (kBf16) {
        V32bh bv[NV];
#pragma GCC unroll 4
        for (int c = 0; c < NV; ++c) bv[c] = reinterpret_cast<const V32bh*>(bs + q * NR + 16 * c)[0];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const V32bh av = (V32bh)(static_cast<int>(rs[r][q]) - V16i{});  // pair splat
#pragma GCC unroll 4
          for (int c = 0; c < NV; ++c) acc[r][c] = __builtin_ia32_dpbf16ps_v16sf(acc[r][c], av, bv[c]);
        }
      } else {
        V bv[NV];
#pragma GCC unroll 4
        for (int c = 0; c < NV; ++c) bv[c] = *reinterpret_cast<const V*>(bs + q * NR + c * 16);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const V av = rs[r][q] - V{};  // a splat, as micro_f32
#pragma GCC unroll 4
          for (int c = 0; c < NV; ++c) acc[r][c] += av * bv[c];
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) __builtin_memcpy(out + r * ldo + c * 16, &acc[r][c], sizeof(V));  // any alignment
}

template <int R, typename P>
FASTOPS_FORCE_INLINE void micro_direct_rows(int rows, int64_t segs, int64_t wq, const P* const* rp, const P* b,
                                            float* out, int64_t ldo) {
  if constexpr (R >= 1) {
    if (rows < R) return micro_direct_rows<R - 1, P>(rows, segs, wq, rp, b, out, ldo);
    micro_direct<R, P>(segs, wq, rp, b, out, ldo);
  }
}

// A panels [first, last) against the B column panels [jr0, jr1); rp holds the row pointers,
// [panel - first][segment][MR]. As run_unit: the column panels in blocks of at most half of L2,
// and within a block each register tile's rows (in L1 after the first panel) against every panel
// of the block, so the gathered rows are read from cache once per block, not once per panel.
template <typename P, typename C>
FASTOPS_FORCE_INLINE void direct_chunk(const Plan& pl, int64_t first, int64_t last, int64_t jr0, int64_t jr1,
                                       int64_t segs, int64_t wq, const P* const* rp, const P* bp) {
  constexpr bool kBf16 = std::is_same_v<P, uint32_t>;
  constexpr int MR = kBf16 ? kBf16MR : Tile<16>::MR, NR = kBf16 ? kBf16NR : Tile<16>::NV * 16;
  const GemmParams& p = *pl.p;
  alignas(64) float tile[MR * NR];
  const bool direct = stores_plain<C>(p);
  const int64_t block = std::max<int64_t>(1, kUnitBBytes / std::max<int64_t>(1, pl.b_panel * 4));
  for (int64_t jb = jr0; jb < jr1; jb += block) {
    for (int64_t i = first; i < last; ++i) {
      const int rows = static_cast<int>(std::min<int64_t>(pl.mr, p.m - i * pl.mr));
      const P* const* ri = rp + (i - first) * segs * MR;
      for (int64_t jr = jb; jr < std::min(jr1, jb + block); ++jr) {
        const int cols = static_cast<int>(std::min<int64_t>(NR, p.n - jr * NR));
        if (direct && cols == NR) {
          float* c = static_cast<float*>(p.c) + i * pl.mr * p.c_stride_row + jr * NR;
          micro_direct_rows<MR, P>(rows, segs, wq, ri, bp + jr * pl.b_panel, c, p.c_stride_row);
          continue;
        }
        micro_direct_rows<MR, P>(rows, segs, wq, ri, bp + jr * pl.b_panel, tile, NR);
        store_tile<C, true>(p, 0, i * pl.mr, jr * NR, rows, cols, tile, NR);
      }
    }
  }
}

template <typename C>
FASTOPS_TARGET_AVX512 void direct_chunk_avx512(const Plan& pl, int64_t first, int64_t last, int64_t jr0, int64_t jr1,
                                               int64_t segs, int64_t wq, const float* const* rp, const float* bp) {
  direct_chunk<float, C>(pl, first, last, jr0, jr1, segs, wq, rp, bp);
}

template <typename C>
FASTOPS_TARGET_AVX512BF16 void direct_chunk_bf16dp(const Plan& pl, int64_t first, int64_t last, int64_t jr0,
                                                   int64_t jr1, int64_t segs, int64_t wq, const uint32_t* const* rp,
                                                   const uint32_t* bp) {
  direct_chunk<uint32_t, C>(pl, first, last, jr0, jr1, segs, wq, rp, bp);
}
#endif

// Runs A panels [first, last) x column panels [jr0, jr1) of a gathered product on the direct
// kernels; false (nothing done) where they do not apply: the float32 AVX-512 kernel with float32
// A, or the AVX512-BF16 kernel with bfloat16 A in segments of whole pairs.
template <typename AB, typename C>
bool direct_gathered(const Plan& pl, const Entries& e, const GatheredA& ga, int64_t first, int64_t last, int64_t jr0,
                     int64_t jr1, const char* bp) {
#if FASTOPS_HAVE_X86_PATHS
  const bool f32 = std::is_same_v<AB, float> && !e.pairs && e.mr == Tile<16>::MR && e.nr == Tile<16>::NV * 16;
  const bool bf16 = std::is_same_v<AB, BFloat16> && e.pairs && !e.amx && ga.seg_len % 2 == 0;
  if (!f32 && !bf16) return false;
  const int mr = e.mr, rows = pl.mr;  // rp: e.mr pointers per segment, of which the tile's rows are set
  const int64_t wq = bf16 ? ga.seg_len / 2 : ga.seg_len, segs = ga.segments, m = pl.p->m;
  thread_local std::vector<uint32_t> zeros;
  thread_local std::vector<const void*> rp;
  if (static_cast<int64_t>(zeros.size()) < wq) zeros.assign(wq, 0u);
  rp.resize((last - first) * segs * mr);
  std::fill(rp.begin(), rp.end(), nullptr);
  for (int64_t i = first; i < last; ++i)
    ga.rows(ga.ctx, i * rows, static_cast<int>(std::min<int64_t>(rows, m - i * rows)), mr,
            rp.data() + (i - first) * segs * mr);
  for (const void*& row : rp)
    if (!row) row = zeros.data();
  if (f32) {
    direct_chunk_avx512<C>(pl, first, last, jr0, jr1, segs, wq, reinterpret_cast<const float* const*>(rp.data()),
                           reinterpret_cast<const float*>(bp));
  } else {
    direct_chunk_bf16dp<C>(pl, first, last, jr0, jr1, segs, wq, reinterpret_cast<const uint32_t* const*>(rp.data()),
                           reinterpret_cast<const uint32_t*>(bp));
  }
  return true;
#else
  (void)pl, (void)e, (void)ga, (void)first, (void)last, (void)jr0, (void)jr1, (void)bp;
  return false;
#endif
}

}  // namespace

void transpose16_u32(const uint32_t* src, int64_t lds, uint32_t* dst, int64_t ldd) {
#if FASTOPS_HAVE_X86_PATHS
  const uint32_t* rows[16];
  for (int r = 0; r < 16; ++r) rows[r] = src + r * lds;
  alignas(64) uint32_t t[256];
  transpose_pairs(rows, 16, 16, 16, t);
  for (int q = 0; q < 16; ++q) std::memcpy(dst + q * ldd, t + q * 16, 64);
#else
  for (int j = 0; j < 16; ++j)
    for (int i = 0; i < 16; ++i) dst[j * ldd + i] = src[i * lds + j];
#endif
}

// ---- B packed from row segments (an additive block) -------------------------------------------

namespace {

template <typename AB>
std::shared_ptr<char> pack_b_segments(const GemmOperand* segs, int64_t nsegs, int64_t seg_k, int64_t n, DType ab,
                                      int* nr, int64_t* group_elems) {
  const Entries e = entries<AB, float>(ab);
  GemmParams g;
  g.m = 1;
  g.n = n;
  g.k = nsegs * seg_k;
  g.ab_dtype = ab;
  const Plan pl = packed_plan(g, e);
  *nr = e.nr;
  *group_elems = pl.n_panels * pl.b_panel;
  const int64_t bytes = std::max<int64_t>(*group_elems * 4, 64);
  std::shared_ptr<char> mem(static_cast<char*>(::operator new[](bytes, std::align_val_t(64))), PackedFree());
  char* dst = mem.get();
  if (e.amx) std::memset(dst, 0, bytes);  // the k padding of every panel (the segments fill the rest)
  const int64_t seg_words = e.pairs ? seg_k / 2 : seg_k;  // packed k steps per segment
  const int64_t total = pl.n_panels * nsegs;
  const bool par = !omp_in_parallel() && g.k * n >= (1 << 15);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t w = 0; w < total; ++w) {
    const int64_t pi = w / nsegs, sg = w % nsegs;
    GemmParams gg = g;  // panel pi of segment sg, as panel 0 of a [seg_k, n - pi nr] product
    gg.k = seg_k;
    gg.n = n - pi * e.nr;
    gg.b = segs[sg];
    gg.b.ptr = static_cast<const AB*>(segs[sg].ptr) + pi * e.nr * segs[sg].stride_col;
    Plan pg = panel_plan(gg, e);
    pg.p = &gg;
    pg.kq = seg_words;  // no padding inside the panel (pack_b_amx zeroes rows [seg_words, kq) only)
    e.pack_b(pg, 0, 0, dst + (pi * pl.b_panel + sg * seg_words * e.nr) * 4);
  }
  return mem;
}

}  // namespace

bool PackedB::segments_fit(int64_t seg_k, DType ab) {
  return !(ab == DType::kBFloat16 && cpu_has_bf16_dot()) || seg_k % 2 == 0;
}

PackedB::PackedB(const GemmOperand* segs, int64_t segments, int64_t seg_k, int64_t n, DType ab)
    : k_(segments * seg_k), n_(n), groups_(1), dtype_(ab) {
  if (n <= 0 || segments <= 0) return;
  switch (ab) {
    case DType::kFloat16: data_ = pack_b_segments<Half>(segs, segments, seg_k, n, ab, &nr_, &group_elems_); break;
    case DType::kBFloat16:
      data_ = pack_b_segments<BFloat16>(segs, segments, seg_k, n, ab, &nr_, &group_elems_);
      break;
    default: data_ = pack_b_segments<float>(segs, segments, seg_k, n, ab, &nr_, &group_elems_); break;
  }
}

void PackedB::multiply_gathered(const GemmParams& p, const GatheredA& a, int64_t j0, int64_t j1) const {
  if (p.m <= 0 || j1 <= j0 || !data_) return;
  switch (dtype_) {
    case DType::kFloat16:
      return packed_multiply_ab<Half>(p, data_.get(), k_, n_, groups_, group_elems_, j0, j1, 0, &a);
    case DType::kBFloat16:
      return packed_multiply_ab<BFloat16>(p, data_.get(), k_, n_, groups_, group_elems_, j0, j1, 0, &a);
    default:
      return packed_multiply_ab<float>(p, data_.get(), k_, n_, groups_, group_elems_, j0, j1, 0, &a);
  }
}

}  // namespace cpu
}  // namespace fastops
