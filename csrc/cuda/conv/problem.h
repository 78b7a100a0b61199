// Index math of the implicit-GEMM convolution (conv/implicit_gemm.cuh), free of CUDA intrinsics so
// the host simulation (tests/conv_cuda_problem_sim.cpp, driven by tests/test_conv_cuda.py) runs the
// very functions the kernel calls against torch's convolution.
//
// The three passes are GEMMs whose operands are gathered from NHWC activations (no im2col buffer).
// Per group g, with P = N HO WO output pixels, K = KH KW Cg (weight [O, K], K in (kh, kw, ci)
// order), taps t = (kh, kw):
//   Fwd    y[p, g Og + o]  = act(sum_k A[p, k] B[k, o] + bias)     m = P,      n = Og, k = K
//          A[p, (t, ci)] = x[pixel read by p at t, g Cg + ci] (0 in the padding), B[k, o] = w[g Og + o, k]
//   Dgrad  dx[q, g Cg + c] = sum_(t, o) A[q, (t, o)] B[(t, o), c]    m = N H W,  n = Cg, k = KH KW Og
//          A[q, (t, o)] = dy[output pixel that reads q at t, g Og + o] (0 when none), B[(t, o), c] = w[g Og + o, t Cg + c]
//   Wgrad  dw[g Og + o, k] = sum_p A[o, p] B[p, k]                  m = Og,     n = K,  k = P
//          A[o, p] = dy[p, g Og + o], B[p, (t, c)] = x[pixel read by p at t, g Cg + c]
// a(g, mn, k) / b(g, mn, k) give the element offset of operand element (mn, k) in the array the
// operand is read from (Fwd: x, w; Dgrad: dy, w; Wgrad: dy, x), or -1 for a zero. Each operand is
// K-major (its 16-byte chunks run along the GEMM's k) or MN-major (along m / n), fixed per pass.
// A chunk covers 8 consecutive channels of one pixel and tap when Cg (and, for the backward, Og)
// are multiples of 8 (conv2d_cuda_unsupported): it is then wholly in range, 8 consecutive
// offsets from a multiple of 8, or wholly zero. out(g) places the group's m x n result.
#pragma once

#include <cstdint>

#include "fastops/conv.h"
#include "fastops/macros.h"

namespace fastops {
namespace cuda {
namespace conv_impl {

struct Pixel {
  int64_t n, h, w;
};
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE Pixel split_pixel(int64_t p, int64_t h, int64_t w) {
  const int64_t hw = h * w, r = p % hw;
  return Pixel{p / hw, r / w, r % w};
}

// Offset of channel 0 of x's pixel read by output pixel p at tap t, or -1 in the padding.
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE int64_t input_pixel(const Conv2dShape& s, int64_t p, int64_t t) {
  const Pixel q = split_pixel(p, s.ho, s.wo);
  const int64_t hi = conv_in_index(q.h, t / s.kw, s.stride_h, s.pad_h, s.dil_h);
  const int64_t wi = conv_in_index(q.w, t % s.kw, s.stride_w, s.pad_w, s.dil_w);
  if (hi < 0 || hi >= s.h || wi < 0 || wi >= s.w) return -1;
  return ((q.n * s.h + hi) * s.w + wi) * s.c;
}

// Where a group's m x n GEMM result goes: element (i, j) at offset + i * ld + j.
struct OutTile {
  int64_t offset, ld, m, n;
};

struct Fwd {
  static constexpr bool A_KMAJOR = true, B_KMAJOR = true;
  Conv2dShape s;
  FASTOPS_HOST_DEVICE int64_t M() const { return s.n * s.ho * s.wo; }
  FASTOPS_HOST_DEVICE int64_t N() const { return s.og(); }
  FASTOPS_HOST_DEVICE int64_t K() const { return s.k(); }
  FASTOPS_HOST_DEVICE int64_t a(int64_t g, int64_t p, int64_t k) const {
    if (p >= M() || k >= K()) return -1;
    const int64_t pix = input_pixel(s, p, k / s.cg());
    return pix < 0 ? -1 : pix + g * s.cg() + k % s.cg();
  }
  FASTOPS_HOST_DEVICE int64_t b(int64_t g, int64_t o, int64_t k) const {
    return o < N() && k < K() ? (g * s.og() + o) * K() + k : -1;
  }
  FASTOPS_HOST_DEVICE OutTile out(int64_t g) const { return OutTile{g * s.og(), s.o, M(), N()}; }
};

struct Dgrad {
  static constexpr bool A_KMAJOR = true, B_KMAJOR = false;
  Conv2dShape s;
  FASTOPS_HOST_DEVICE int64_t M() const { return s.n * s.h * s.w; }
  FASTOPS_HOST_DEVICE int64_t N() const { return s.cg(); }
  FASTOPS_HOST_DEVICE int64_t K() const { return s.kh * s.kw * s.og(); }
  FASTOPS_HOST_DEVICE int64_t a(int64_t g, int64_t q, int64_t k) const {
    if (q >= M() || k >= K()) return -1;
    const int64_t t = k / s.og(), o = k % s.og();
    const Pixel i = split_pixel(q, s.h, s.w);
    const int64_t ho = conv_out_index(i.h, t / s.kw, s.stride_h, s.pad_h, s.dil_h, s.ho);
    const int64_t wo = conv_out_index(i.w, t % s.kw, s.stride_w, s.pad_w, s.dil_w, s.wo);
    if (ho < 0 || wo < 0) return -1;
    return ((i.n * s.ho + ho) * s.wo + wo) * s.o + g * s.og() + o;
  }
  FASTOPS_HOST_DEVICE int64_t b(int64_t g, int64_t c, int64_t k) const {
    if (c >= N() || k >= K()) return -1;
    const int64_t t = k / s.og(), o = k % s.og();
    return (g * s.og() + o) * s.k() + t * s.cg() + c;
  }
  FASTOPS_HOST_DEVICE OutTile out(int64_t g) const { return OutTile{g * s.cg(), s.c, M(), N()}; }
};

struct Wgrad {
  static constexpr bool A_KMAJOR = false, B_KMAJOR = false;
  Conv2dShape s;
  FASTOPS_HOST_DEVICE int64_t M() const { return s.og(); }
  FASTOPS_HOST_DEVICE int64_t N() const { return s.k(); }
  FASTOPS_HOST_DEVICE int64_t K() const { return s.n * s.ho * s.wo; }
  FASTOPS_HOST_DEVICE int64_t a(int64_t g, int64_t o, int64_t p) const {
    return o < M() && p < K() ? p * s.o + g * s.og() + o : -1;
  }
  FASTOPS_HOST_DEVICE int64_t b(int64_t g, int64_t kk, int64_t p) const {
    if (kk >= N() || p >= K()) return -1;
    const int64_t pix = input_pixel(s, p, kk / s.cg());
    return pix < 0 ? -1 : pix + g * s.cg() + kk % s.cg();
  }
  FASTOPS_HOST_DEVICE OutTile out(int64_t g) const { return OutTile{g * s.og() * s.k(), s.k(), M(), N()}; }
};

}  // namespace conv_impl
}  // namespace cuda
}  // namespace fastops
