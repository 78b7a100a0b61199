// 16-lane AVX-512 forms of the pointwise math in fastops/math/{exp,erf,activation}.h, for CPU
// epilogues that work on a register (the GEMM's, after the micro-kernel): the same range
// reduction and polynomials (math::exp_reduced, math::erf_rational, templates over the lane
// type), with AVX-512's own instructions where they are cheaper than the portable formulas:
// vscalefps for 2^n, vrcp14ps plus one Newton step for 1 / d (|rel. error| ~ 2^-28, no vdivps).
// Every function is always_inline with the AVX-512 target, so it inlines only into entry points
// compiled for AVX-512 (FASTOPS_TARGET_AVX512, FASTOPS_TARGET_AVX512BF16 in isa.h).
#pragma once

#include "isa.h"

#if FASTOPS_HAVE_X86_PATHS
#include <immintrin.h>

#include "fastops/gemm.h"
#include "fastops/math/activation.h"
#include "fastops/storage.h"

// The templates of fastops/math instantiated on __m512 (always inlined into AVX-512 code): GCC
// warns about their by-value vector ABI and the dropped may_alias attribute, neither of which applies.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wignored-attributes"

#define FASTOPS_VEC512                                                                          \
  inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

namespace fastops {
namespace cpu {
namespace vec512 {

// exp(x) for x clamped to [kExpMinX, kExpMaxX] (finite everywhere; NaN propagates): the
// arguments of 1 / (1 + exp(.)) below, where the clamp changes nothing visible.
FASTOPS_VEC512 __m512 exp_clamped(__m512 x) {
  // max/min return their second operand when one is NaN: x goes second
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(math::kExpMaxX), _mm512_max_ps(_mm512_set1_ps(math::kExpMinX), x));
  const __m512 n = _mm512_roundscale_ps(xc * math::kLog2e, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = xc - n * math::kLn2Hi;
  r = r - n * math::kLn2Lo;
  return _mm512_scalef_ps(math::exp_reduced(r), n);
}

// 1 / d for finite d != 0.
FASTOPS_VEC512 __m512 recip(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return r + r * (1.0f - d * r);
}

FASTOPS_VEC512 __m512 sigmoid(__m512 x) { return recip(1.0f + exp_clamped(-x)); }

// math::tanh_f32's formula: the odd polynomial for |x| < 0.625, 1 - 2 / (exp(2|x|) + 1) with x's
// sign above; NaN propagates.
FASTOPS_VEC512 __m512 tanh(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 small = math::tanh_small(x, x * x);
  const __m512 big_abs = 1.0f - 2.0f * recip(exp_clamped(2.0f * ax) + 1.0f);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512 big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big_abs), sign));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ), big, small);
}

// The nonlinearities of the cell formulas in fastops/math/rnn.h (math::ScalarGateOps) on 16
// lanes. Not always_inline: the generic template calls them, and an always_inline AVX-512 function cannot be inlined there; the AVX-512
// entry points' `flatten` (isa.h) inlines the whole chain into them.
#define FASTOPS_VEC512_CALLBACK inline __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
struct GateOps {
  static FASTOPS_VEC512_CALLBACK __m512 sigmoid(__m512 x) { return vec512::sigmoid(x); }
  static FASTOPS_VEC512_CALLBACK __m512 tanh(__m512 x) { return vec512::tanh(x); }
  static FASTOPS_VEC512_CALLBACK __m512 pos(__m512 h, __m512 v) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, _mm512_setzero_ps(), _CMP_GT_OQ), v);
  }
};

FASTOPS_VEC512 __m512 erf(__m512 x) {
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(math::kErfClamp), _mm512_max_ps(_mm512_set1_ps(-math::kErfClamp), x));
  const math::ErfRational<__m512> e = math::erf_rational(xc);
  return e.num * recip(e.den);
}

template <Activation kAct>
FASTOPS_VEC512 __m512 activate(__m512 x) {
  if constexpr (kAct == Activation::kRelu) {
    return _mm512_max_ps(_mm512_setzero_ps(), x);  // NaN stays NaN
  } else if constexpr (kAct == Activation::kGelu) {
    const __m512 h = 0.5f * x;
    return h + h * erf(x * 0.70710678118654752f);
  } else if constexpr (kAct == Activation::kGeluTanh) {  // x sigmoid(2 u), as math::gelu_tanh
    const __m512 u2 = x * ((x * x) * (2.0f * math::kGeluTanhK * math::kGeluTanhC) + 2.0f * math::kGeluTanhK);
    return x * sigmoid(u2);
  } else if constexpr (kAct == Activation::kSilu) {
    return x * sigmoid(x);
  } else {
    return x;
  }
}

// d act(x) / dx (math::activate_grad), with sigmoid forms of the tanh ones: for s = sigmoid(2 u),
// 1 + tanh(u) = 2 s and 1 - tanh(u)^2 = 4 s (1 - s). relu's x may be the output y (same sign).
template <Activation kAct>
FASTOPS_VEC512 __m512 activate_grad(__m512 x) {
  if constexpr (kAct == Activation::kRelu) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f));
  } else if constexpr (kAct == Activation::kGelu) {
    const __m512 pdf = 0.39894228040143268f * exp_clamped(-0.5f * (x * x));  // 1 / sqrt(2 pi)
    return 0.5f + 0.5f * erf(x * 0.70710678118654752f) + x * pdf;
  } else if constexpr (kAct == Activation::kGeluTanh) {
    const __m512 x2 = x * x;
    const __m512 s = sigmoid(x * (x2 * (2.0f * math::kGeluTanhK * math::kGeluTanhC) + 2.0f * math::kGeluTanhK));
    const __m512 du = math::kGeluTanhK + x2 * (3.0f * math::kGeluTanhK * math::kGeluTanhC);  // u'(x)
    return s + 2.0f * x * (s * (1.0f - s)) * du;
  } else if constexpr (kAct == Activation::kSilu) {
    const __m512 s = sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
  } else {
    return _mm512_set1_ps(1.0f);
  }
}

// Masked loads and stores of 16 elements of a storage type, widened to / rounded from float32
// exactly as to_float / from_float (fastops/storage.h) do.
template <typename T>
FASTOPS_VEC512 __m512 load(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    if constexpr (std::is_same_v<T, BFloat16>) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

template <typename T>
FASTOPS_VEC512 void store(T* p, __mmask16 m, __m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, m, v);
  } else if constexpr (std::is_same_v<T, BFloat16>) {  // round to nearest even, NaN -> quiet NaN
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
    const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), nan);
    _mm512_mask_cvtepi32_storeu_epi16(p, m, r);
  } else {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

FASTOPS_VEC512 __mmask16 first_lanes(int n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffffu : (1u << n) - 1u);
}

}  // namespace vec512
}  // namespace cpu
}  // namespace fastops

#endif  // FASTOPS_HAVE_X86_PATHS
