// Host simulation of the CUDA implicit-GEMM convolution's index math (csrc/cuda/conv/problem.h),
// loaded by tests/test_conv_cuda.py with ctypes: runs one pass as the kernel's loaders see it,
// every operand element through the Problem's own a() / b() offsets, the result placed by out(),
// in float64, so the test compares it with torch's convolution. It also checks what the loader's
// 16-byte copies assume: every chunk (8 elements along k for a K-major operand, along m / n for an
// MN-major one, starting at a multiple of 8) is wholly zero or 8 consecutive offsets starting at a
// multiple of 8 (16-byte aligned).
#include <cstdint>
#include <vector>

#include "cuda/conv/problem.h"

using namespace fastops;
using namespace fastops::cuda::conv_impl;

namespace {

// 0 ok, 1 a chunk of A broken, 2 a chunk of B broken.
template <class Problem>
int check_chunks(const Problem& pr, int64_t g) {
  const int64_t m = pr.M(), n = pr.N(), k = pr.K();
  auto ok = [](auto f, int64_t outer_n, int64_t inner_n, bool kmajor) {
    for (int64_t outer = 0; outer < outer_n; ++outer)
      for (int64_t inner = 0; inner < inner_n; inner += 8) {
        auto at = [&](int64_t e) { return kmajor ? f(outer, inner + e) : f(inner + e, outer); };
        const int64_t first = at(0);
        if (first >= 0 && first % 8 != 0) return false;
        for (int64_t e = 1; e < 8; ++e) {
          const int64_t v = at(e);
          if (first < 0 ? v >= 0 : v != first + e) return false;
        }
      }
    return true;
  };
  auto a = [&](int64_t mn, int64_t kk) { return pr.a(g, mn, kk); };
  auto b = [&](int64_t mn, int64_t kk) { return pr.b(g, mn, kk); };
  // K-major: outer = mn, inner = k; MN-major: outer = k, inner = mn (f takes (mn, k)).
  if (!(Problem::A_KMAJOR ? ok(a, m, k, true) : ok(a, k, m, false))) return 1;
  if (!(Problem::B_KMAJOR ? ok(b, n, k, true) : ok(b, k, n, false))) return 2;
  return 0;
}

template <class Problem>
int run(const Problem& pr, const double* a_src, const double* b_src, double* out, bool check) {
  for (int64_t g = 0; g < pr.s.groups; ++g) {
    if (check) {
      if (const int bad = check_chunks(pr, g)) return bad;
    }
    const OutTile o = pr.out(g);
    for (int64_t i = 0; i < pr.M(); ++i)
      for (int64_t j = 0; j < pr.N(); ++j) {
        double acc = 0.0;
        for (int64_t kk = 0; kk < pr.K(); ++kk) {
          const int64_t ao = pr.a(g, i, kk), bo = pr.b(g, j, kk);
          if (ao >= 0 && bo >= 0) acc += a_src[ao] * b_src[bo];
        }
        out[o.offset + i * o.ld + j] = acc;
      }
  }
  return 0;
}

}  // namespace

extern "C" {
// shape: n c h w o kh kw ho wo stride_h stride_w pad_h pad_w dil_h dil_w groups; pass 0 fwd
// (a = x NHWC, b = w [O, K] (kh, kw, ci), out = y NHWC), 1 dgrad (dy, w -> dx), 2 wgrad (dy, x -> dw).
int conv_problem_sim(const int64_t* d, int pass, const double* a_src, const double* b_src, double* out,
                     int check_chunks) {
  Conv2dShape s;
  s.n = d[0], s.c = d[1], s.h = d[2], s.w = d[3], s.o = d[4], s.kh = d[5], s.kw = d[6], s.ho = d[7], s.wo = d[8];
  s.stride_h = d[9], s.stride_w = d[10], s.pad_h = d[11], s.pad_w = d[12], s.dil_h = d[13], s.dil_w = d[14];
  s.groups = d[15];
  s.channels_last = true;
  if (pass == 0) return run(Fwd{s}, a_src, b_src, out, check_chunks != 0);
  if (pass == 1) return run(Dgrad{s}, a_src, b_src, out, check_chunks != 0);
  return run(Wgrad{s}, a_src, b_src, out, check_chunks != 0);
}
}
