// Building blocks of the CPU attention kernels (forward in attention.cpp, backward in
// attention_backward.cpp): tile sizes, a register-blocked float32 GEMM on small tiles, packing
// of strided storage rows into float32 tiles, the masked score tile, per-thread scratch and the
// OpenMP loop over work items.
//
// Everything is FASTOPS_FORCE_INLINE and templated on the vector width W (floats per register:
// 16 for AVX-512, 8 for AVX2, 4 for the SSE baseline), so each ISA entry function of the
// kernels compiles the same source to its own registers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "fastops/attention.h"
#include "fastops/math/dropout.h"
#include "fastops/math/softmax.h"
#include "fastops/storage.h"
#include "isa.h"

#if FASTOPS_HAVE_X86_PATHS
#include <immintrin.h>  // declares the target builtins (vdpbf16ps)
#endif

namespace fastops {
namespace cpu {
namespace attn {

constexpr int64_t kBlockM = 64;   // queries per tile
constexpr int64_t kBlockN = 64;   // keys per tile
constexpr int64_t kPad = 16;      // leading dims of float32 tiles are multiples of this (64 bytes)
static_assert(kBlockN % kPad == 0 && kBlockM % kPad == 0, "tiles must be whole vectors");

FASTOPS_FORCE_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
FASTOPS_FORCE_INLINE int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

template <int W>
struct VecOf {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
};
template <int W>
using Vec = typename VecOf<W>::type;

// Register tile of the GEMM: R rows x NC vectors of W floats stay in registers over the K loop.
template <int W>
struct MicroTile {
  static constexpr int R = W == 16 ? 6 : 4;  // AVX-512 has 32 zmm: 24 accumulators + 4 + 1
  static constexpr int NC = W == 8 ? 2 : 4;  // AVX2 has 16 ymm: 8 accumulators + 2 + 1
};

// What one k step of the GEMM multiplies. FmaKind<W>: float32 elements, acc += a * b.
// Bf16PairKind (x86 with AVX512-BF16 only): each element is a pair of bfloat16 along k packed
// in 32 bits, and `vdpbf16ps` adds both products per lane in float32 (k runs over pairs).
template <int W_>
struct FmaKind {
  static constexpr int W = W_;
  using Elem = float;
  using BVec = Vec<W>;
  using AVec = Vec<W>;
  typedef int32_t IVec __attribute__((vector_size(W * sizeof(int32_t))));
  // (references, not vector returns: these inline into target-attributed entries only)
  // The splat goes through the integer bits: GCC turns `float - V{}` into a full-vector load
  // of A plus a shuffle (reading past the row), `int - IVec{}` into one vpbroadcastd.
  FASTOPS_FORCE_INLINE static void splat(AVec& v, float a) {
    int32_t bits;
    std::memcpy(&bits, &a, sizeof(bits));
    v = (AVec)(bits - IVec{});
  }
  FASTOPS_FORCE_INLINE static void step(Vec<W>& acc, const AVec& a, const BVec& b) { acc += a * b; }
};

#if FASTOPS_HAVE_X86_PATHS
// `vdpbf16ps` through its builtin (the intrinsic's target attribute would stop it from inlining):
// only ever inlined into FASTOPS_TARGET_AVX512BF16 entry points.
struct Bf16PairKind {
  static constexpr int W = 16;
  using Elem = uint32_t;
  typedef short BVec __attribute__((vector_size(64)));
  typedef int IVec __attribute__((vector_size(64)));
  using AVec = BVec;
  FASTOPS_FORCE_INLINE static void splat(AVec& v, uint32_t a) { v = (BVec)(static_cast<int>(a) - IVec{}); }
  FASTOPS_FORCE_INLINE static void step(Vec<16>& acc, const AVec& a, const BVec& b) {
    acc = __builtin_ia32_dpbf16ps_v16sf(acc, a, b);
  }
};
#endif

// C[R, NC*W] += A[R, K] * B[K, NC*W] with the accumulators in registers; A[r, k] is read from
// A[r * ars + k * aks] (ars = lda, aks = 1 row-major; ars = 1, aks = lda reads A^T).
template <typename Kd, int R, int NC>
FASTOPS_FORCE_INLINE void gemm_micro(const typename Kd::Elem* A, int64_t ars, int64_t aks,
                                     const typename Kd::Elem* B, int64_t ldb, float* C, int64_t ldc, int64_t K) {
  constexpr int W = Kd::W;
  using V = Vec<W>;
  using BV = typename Kd::BVec;
  V acc[R][NC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = *reinterpret_cast<const V*>(C + r * ldc + c * W);
  for (int64_t k = 0; k < K; ++k) {
    BV b[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) b[c] = *reinterpret_cast<const BV*>(B + k * ldb + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      typename Kd::AVec a;
      Kd::splat(a, A[r * ars + k * aks]);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) Kd::step(acc[r][c], a, b[c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) *reinterpret_cast<V*>(C + r * ldc + c * W) = acc[r][c];
}

// One strip of R rows of C over all N columns.
template <typename Kd, int R>
FASTOPS_FORCE_INLINE void gemm_rows(const typename Kd::Elem* A, int64_t ars, int64_t aks,
                                    const typename Kd::Elem* B, int64_t ldb, float* C, int64_t ldc, int64_t N,
                                    int64_t K) {
  constexpr int W = Kd::W, NC = MicroTile<W>::NC;
  int64_t n = 0;
  for (; n + NC * W <= N; n += NC * W) gemm_micro<Kd, R, NC>(A, ars, aks, B + n, ldb, C + n, ldc, K);
  for (; n < N; n += W) gemm_micro<Kd, R, 1>(A, ars, aks, B + n, ldb, C + n, ldc, K);
}

// The last M % R rows (1 <= rows < R) as one strip.
template <typename Kd, int R>
FASTOPS_FORCE_INLINE void gemm_tail(int64_t rows, const typename Kd::Elem* A, int64_t ars, int64_t aks,
                                    const typename Kd::Elem* B, int64_t ldb, float* C, int64_t ldc, int64_t N,
                                    int64_t K) {
  if constexpr (R > 1) {
    if (rows == R - 1) return gemm_rows<Kd, R - 1>(A, ars, aks, B, ldb, C, ldc, N, K);
    gemm_tail<Kd, R - 1>(rows, A, ars, aks, B, ldb, C, ldc, N, K);
  }
}

// C[M, N] += A[M, K] * B[K, N] (K in elements of the kind: floats, or bfloat16 pairs), float32
// accumulators, A[m, k] at A[m * ars + k * aks] (so A may be a transposed tile). N, ldb, ldc are
// multiples of kPad and B, C are 64-byte aligned (the tiles below guarantee it); A is read one
// element at a time. The order of the K sum is fixed, so results are bitwise reproducible.
template <typename Kd>
FASTOPS_FORCE_INLINE void gemm_kind(const typename Kd::Elem* A, int64_t ars, int64_t aks,
                                    const typename Kd::Elem* B, int64_t ldb, float* C, int64_t ldc, int64_t M,
                                    int64_t N, int64_t K) {
  constexpr int R = MicroTile<Kd::W>::R;
  int64_t m = 0;
  for (; m + R <= M; m += R) gemm_rows<Kd, R>(A + m * ars, ars, aks, B, ldb, C + m * ldc, ldc, N, K);
  if (m < M) gemm_tail<Kd, R>(M - m, A + m * ars, ars, aks, B, ldb, C + m * ldc, ldc, N, K);
}

// The float32 GEMM of the kernels (W floats per vector).
template <int W>
FASTOPS_FORCE_INLINE void gemm(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C,
                               int64_t ldc, int64_t M, int64_t N, int64_t K) {
  gemm_kind<FmaKind<W>>(A, ars, aks, B, ldb, C, ldc, M, N, K);
}

// A float32 buffer aligned to 64 bytes.
struct Buffer {
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<float[], Free> data;
  explicit Buffer(int64_t n)
      : data(static_cast<float*>(::operator new[](round_up(std::max<int64_t>(n, 1), kPad) * sizeof(float),
                                                   std::align_val_t(64)))) {}
  float* get() const { return data.get(); }
};

// dst[r, 0:cols] = mul * src[r, 0:cols] for r < rows, zero up to ld and up to pad_rows rows.
template <typename T>
FASTOPS_FORCE_INLINE void pack_rows(const T* src, int64_t src_ld, int64_t rows, int64_t cols, float mul,
                                    float* dst, int64_t ld, int64_t pad_rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * src_ld;
    float* d = dst + r * ld;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) d[c] = mul * to_float(s[c]);
    std::fill(d + cols, d + ld, 0.0f);
  }
  for (int64_t r = rows; r < pad_rows; ++r) std::fill(dst + r * ld, dst + (r + 1) * ld, 0.0f);
}

// dst[c, r] = src[r, c] for r < rows, c < cols (dst has `cols` rows of ld >= rows floats,
// zero-filled past `rows`): K^T and V^T tiles.
template <typename T>
FASTOPS_FORCE_INLINE void pack_transposed(const T* src, int64_t src_ld, int64_t rows, int64_t cols,
                                          float* dst, int64_t ld) {
  for (int64_t c = 0; c < cols; ++c) std::fill(dst + c * ld + rows, dst + (c + 1) * ld, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * src_ld;
    for (int64_t c = 0; c < cols; ++c) dst[c * ld + r] = to_float(s[c]);
  }
}

// Where a [rows, kBlockN] score tile of queries i0.. and keys j0.. sits.
struct TileCoord {
  int64_t n, h, i0, j0, rows, cols;
};

// Adds the mask to a raw score tile (scale * q.k) and sets every excluded score to -inf:
// keys past the end (c >= cols), causal j > i, bool mask false; additive masks are added.
template <typename T>
FASTOPS_FORCE_INLINE void mask_scores(float* s, const TileCoord& t, bool causal, const AttentionMask& mask) {
  const float ninf = math::neg_infinity();
  for (int64_t r = 0; r < t.rows; ++r) {
    float* sr = s + r * kBlockN;
    const int64_t i = t.i0 + r;
    // keys [valid, kBlockN) of this row are excluded by length or causality
    const int64_t valid = causal ? std::min(t.cols, std::max<int64_t>(i - t.j0 + 1, 0)) : t.cols;
    std::fill(sr + valid, sr + kBlockN, ninf);
    if (mask.kind == MaskKind::kNone) continue;
    const int64_t base = t.n * mask.stride_n + t.h * mask.stride_h + i * mask.stride_l + t.j0 * mask.stride_s;
    const int64_t ss = mask.stride_s;
    if (mask.kind == MaskKind::kBool) {
      const uint8_t* m = static_cast<const uint8_t*>(mask.ptr) + base;
#pragma omp simd
      for (int64_t c = 0; c < valid; ++c) sr[c] = m[c * ss] ? sr[c] : ninf;
    } else {
      const T* m = static_cast<const T*>(mask.ptr) + base;
#pragma omp simd
      for (int64_t c = 0; c < valid; ++c) sr[c] += to_float(m[c * ss]);
    }
  }
}

// Multiplies a [rows, kBlockN] tile by the dropout factor of each (query, key): 0 where dropped,
// 1 / (1 - p) where kept (math/dropout.h).
FASTOPS_FORCE_INLINE void apply_dropout(float* tile, const TileCoord& t, const AttentionShape& sh) {
  const uint32_t threshold = math::dropout_threshold(sh.dropout_p);
  const float keep_scale = 1.0f / (1.0f - sh.dropout_p);
  for (int64_t r = 0; r < t.rows; ++r) {
    float* row = tile + r * kBlockN;
    const uint64_t base = static_cast<uint64_t>(((t.n * sh.H + t.h) * sh.L + t.i0 + r) * sh.S + t.j0);
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool kept = math::dropout_bits(sh.seed, base + static_cast<uint64_t>(c)) >= threshold;
      row[c] = kept ? row[c] * keep_scale : 0.0f;
    }
  }
}

// p_ij = exp(s_ij - lse_i) in place over a [rows, kBlockN] tile (backward recompute);
// lse_i = +inf for a fully masked row gives p = 0.
FASTOPS_FORCE_INLINE void probabilities(float* s, const float* lse, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kBlockN;
    const float l = lse[r];
#pragma omp simd
    for (int64_t c = 0; c < kBlockN; ++c) sr[c] = math::exp_f32(sr[c] - l);
  }
}

// max over a row of kBlockN floats. Kept vertical (kPad lanes, elementwise max) and reduced once:
// GCC leaves `omp simd reduction(max)` with std::max scalar, a 4-cycle chain per element.
FASTOPS_FORCE_INLINE float row_max(const float* row) {
  float lanes[kPad];
  std::fill(lanes, lanes + kPad, math::neg_infinity());
  for (int64_t c0 = 0; c0 < kBlockN; c0 += kPad) {
#pragma omp simd
    for (int64_t j = 0; j < kPad; ++j) lanes[j] = row[c0 + j] > lanes[j] ? row[c0 + j] : lanes[j];
  }
  float mx = lanes[0];
  for (int64_t j = 1; j < kPad; ++j) mx = lanes[j] > mx ? lanes[j] : mx;
  return mx;
}

// First key block a query block [i0, i0 + rows) needs, and one past its last key.
FASTOPS_FORCE_INLINE int64_t key_end(int64_t i0, int64_t rows, int64_t S, bool causal) {
  return causal ? std::min(S, i0 + rows) : S;
}

// Multiply-adds (N * H * L * S * E) below which one thread is faster than waking the others.
constexpr int64_t kParallelMinWork = int64_t{1} << 20;

// Runs item(i, scratch) for i in [0, items) on the OpenMP threads, dynamically scheduled
// (causal tiles differ in cost); each thread builds its own scratch once. `work` (multiply-adds)
// below kParallelMinWork runs on the calling thread alone.
template <typename MakeScratch, typename Item>
void parallel_items(int64_t items, int64_t work, const MakeScratch& make_scratch, const Item& item) {
#pragma omp parallel if (items > 1 && work >= kParallelMinWork)
  {
    auto scratch = make_scratch();
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < items; ++i) item(i, scratch);
  }
}

}  // namespace attn
}  // namespace cpu
}  // namespace fastops
