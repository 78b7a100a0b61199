// CPU conv2d (fastops/conv.h): implicit GEMM on cpu::gemm / cpu::PackedB, plus dedicated depthwise
// kernels. Dense convolutions with a spatial kernel run NHWC (the binding changes an NCHW x / dy /
// weight with transpose_batched below; an NCHW y comes straight from the GEMM's store, y_nchw):
//   forward: W_g^T packed once per call (PackedB); each thread multiplies its blocks of output pixels
//         against it with the im2col rows read in place (PackedB::multiply_gathered: the AVX-512 /
//         AVX512-BF16 kernels broadcast them straight from x, no A packing); blocks span images.
//   dgrad (stride 1): a forward convolution of dy with the tap-flipped weight, packed straight
//         from w by taps (PackedB from row segments); other strides: dcol = dy x w_g (float32, per
//         block), col2im scattered into a float32 image buffer, each thread owning a channel range.
//   wgrad: each thread owns a range of dw's columns and sums every pixel block into it in order
//         (dw_g[:, cols] += dy_blk^T x panel[:, cols], one-thread GEMMs, beta = 1 after the first).
// NCHW (pointwise and the paths above when asked for NCHW): panel [K, pixels] of one image (Caffe's
// im2col, K = (ci, kh, kw)); y[Og, pixels] = w_g x panel in place (row stride HO WO).
// 1x1 stride-1 unpadded convolutions skip the panel: the input is the GEMM operand in place.
// Bias and activation ride on GemmParams.bias / .activation. Every output element is one float32
// sum in a fixed order (no atomics): results are the same run to run.
// dbias: float32 sums over pixels in a fixed order, one thread per channel range.
// Depthwise (groups == C, O = multiplier C): direct loops, vectorised over channels (NHWC) or
// over output width (NCHW forward); the backward runs on NHWC (the binding converts NCHW). The
// stride-1 dgrad (multiplier 1) is the forward of dy with the taps flipped.
#include "fastops/conv.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#if FASTOPS_HAVE_X86_PATHS
#include <immintrin.h>  // _mm512_stream_ps (AVX-512 entries only)
#endif
#include "fastops/gemm_packed.h"
#include "fastops/math/activation.h"
#include "fastops/storage.h"
#include "fastops/workspace.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int64_t kPanelElems = int64_t(1) << 19;  // elements of one packed im2col panel (1 MiB bf16)

// [begin, end) of thread t out of nt over `items`, in chunks that are multiples of `align`.
FASTOPS_FORCE_INLINE void thread_range(int64_t items, int64_t align, int64_t& begin, int64_t& end) {
#if defined(_OPENMP)
  const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
  const int64_t nt = 1, t = 0;
#endif
  int64_t chunk = (items + nt - 1) / nt;
  chunk = (chunk + align - 1) / align * align;
  begin = std::min(items, t * chunk);
  end = std::min(items, begin + chunk);
}

// Output indices o with 0 <= o * stride + off < in, as [lo, hi) clamped to [0, out).
FASTOPS_FORCE_INLINE void valid_range(int64_t off, int64_t stride, int64_t in, int64_t out, int64_t& lo,
                                      int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = in - 1 - off < 0 ? 0 : (in - 1 - off) / stride + 1;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
}

// Output indices [lo, hi) along one axis (hi >= lo) whose first and last taps (0 and k - 1) both
// read inside the input: every tap of them does, no padding.
FASTOPS_FORCE_INLINE void inner_range(int64_t pad, int64_t stride, int64_t dil, int64_t k, int64_t in, int64_t out,
                                      int64_t& lo, int64_t& hi) {
  int64_t lo0, hi0, lo1, hi1;
  valid_range(-pad, stride, in, out, lo0, hi0);
  valid_range((k - 1) * dil - pad, stride, in, out, lo1, hi1);
  lo = std::max(lo0, lo1);
  hi = std::max(lo, std::min(hi0, hi1));
}

// ---- im2col panels ---------------------------------------------------------------------------

// NHWC panel [rows, K] of output pixels m0 .. m0 + rows (index over N HO WO), group g.
template <typename T>
void pack_nhwc(const Conv2dShape& s, const T* x, int64_t g, int64_t m0, int64_t rows, T* panel) {
  const int64_t cg = s.cg(), K = s.k(), P = s.ho * s.wo;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t m = m0 + r, n = m / P, q = m % P, oh = q / s.wo, ow = q % s.wo;
    T* dst = panel + r * K;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
      for (int64_t j = 0; j < s.kw; ++j, dst += cg) {
        const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
        if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) {
          std::memset(static_cast<void*>(dst), 0, cg * sizeof(T));
        } else {
          std::memcpy(static_cast<void*>(dst), x + ((n * s.h + ih) * s.w + iw) * s.c + g * cg, cg * sizeof(T));
        }
      }
    }
  }
}

// NCHW panel [K, cols] of pixels p0 .. p0 + cols of image n, group g.
template <typename T>
void pack_nchw(const Conv2dShape& s, const T* x, int64_t n, int64_t g, int64_t p0, int64_t cols, T* panel) {
  const int64_t cg = s.cg(), taps = s.kh * s.kw, hw = s.h * s.w;
  const T* xg = x + (n * s.c + g * cg) * hw;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < cg * taps; ++k) {
    const int64_t ci = k / taps, i = (k / s.kw) % s.kh, j = k % s.kw;
    const T* plane = xg + ci * hw;
    T* dst = panel + k * cols;
    const int64_t offw = j * s.dil_w - s.pad_w;
    int64_t lo, hi;
    valid_range(offw, s.stride_w, s.w, s.wo, lo, hi);
    int64_t q = 0;
    for (int64_t oh = p0 / s.wo; q < cols; ++oh) {
      const int64_t ow0 = q == 0 ? p0 % s.wo : 0, ow1 = std::min(s.wo, ow0 + cols - q);
      const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
      T* d = dst + q - ow0;
      if (ih < 0 || ih >= s.h) {
        for (int64_t ow = ow0; ow < ow1; ++ow) d[ow] = T{};
      } else {
        const T* row = plane + ih * s.w + offw;
        for (int64_t ow = ow0; ow < ow1; ++ow)
          d[ow] = (ow >= lo && ow < hi) ? row[ow * s.stride_w] : T{};
      }
      q += ow1 - ow0;
    }
  }
}

// ---- col2im scatter (dgrad), float32 ----------------------------------------------------------

// dcol [rows, K] (kh, kw, ci) of pixels m0.. into acc [N, H, W, C], channels of group g.
void scatter_nhwc(const Conv2dShape& s, const float* dcol, int64_t g, int64_t m0, int64_t rows, float* acc) {
  const int64_t cg = s.cg(), K = s.k(), P = s.ho * s.wo;
#pragma omp parallel
  {
    int64_t c0, c1;
    thread_range(cg, 16, c0, c1);
    for (int64_t r = 0; r < rows && c0 < c1; ++r) {
      const int64_t m = m0 + r, n = m / P, q = m % P, oh = q / s.wo, ow = q % s.wo;
      const float* src = dcol + r * K;
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        for (int64_t j = 0; j < s.kw; ++j, src += cg) {
          const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
          if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
          float* dst = acc + ((n * s.h + ih) * s.w + iw) * s.c + g * cg;
#pragma omp simd
          for (int64_t ci = c0; ci < c1; ++ci) dst[ci] += src[ci];
        }
      }
    }
  }
}

// dcol [K, cols] (ci, kh, kw) of pixels p0.. of image n into acc [N, C, H, W], group g.
void scatter_nchw(const Conv2dShape& s, const float* dcol, int64_t n, int64_t g, int64_t p0, int64_t cols,
                  float* acc) {
  const int64_t cg = s.cg(), taps = s.kh * s.kw, hw = s.h * s.w;
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < cg; ++ci) {
    float* plane = acc + (n * s.c + g * cg + ci) * hw;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t i = t / s.kw, j = t % s.kw, offw = j * s.dil_w - s.pad_w;
      const float* src = dcol + (ci * taps + t) * cols;
      int64_t lo, hi;
      valid_range(offw, s.stride_w, s.w, s.wo, lo, hi);
      int64_t q = 0;
      for (int64_t oh = p0 / s.wo; q < cols; ++oh) {
        const int64_t ow0 = q == 0 ? p0 % s.wo : 0, ow1 = std::min(s.wo, ow0 + cols - q);
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        if (ih >= 0 && ih < s.h) {
          float* row = plane + ih * s.w + offw;
          const float* sr = src + q - ow0;
          for (int64_t ow = std::max(ow0, lo); ow < std::min(ow1, hi); ++ow) row[ow * s.stride_w] += sr[ow];
        }
        q += ow1 - ow0;
      }
    }
  }
}

// ---- small parallel helpers -----------------------------------------------------------------

template <typename T>
void store_from_float(const float* src, T* dst, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) dst[i] = from_float<T>(src[i]);
}

// dbias[o] = sum over n and pixels of dy, float32, fixed order per channel.
template <typename T>
void bias_grad(const Conv2dShape& s, const T* dy, T* db) {
  const int64_t P = s.ho * s.wo, M = s.n * P;
  if (s.channels_last) {
#pragma omp parallel
    {
      int64_t c0, c1;
      thread_range(s.o, 16, c0, c1);
      if (c0 < c1) {
        std::vector<float> acc(c1 - c0, 0.0f);
        for (int64_t m = 0; m < M; ++m) {
          const T* row = dy + m * s.o;
#pragma omp simd
          for (int64_t c = c0; c < c1; ++c) acc[c - c0] += to_float(row[c]);
        }
        for (int64_t c = c0; c < c1; ++c) db[c] = from_float<T>(acc[c - c0]);
      }
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < s.o; ++c) {
      float acc = 0.0f;
      for (int64_t n = 0; n < s.n; ++n) {
        const T* plane = dy + (n * s.o + c) * P;
        for (int64_t q = 0; q < P; ++q) acc += to_float(plane[q]);
      }
      db[c] = from_float<T>(acc);
    }
  }
}

GemmParams base_gemm(const Conv2dShape& s) {
  GemmParams g;
  g.ab_dtype = s.dtype;
  g.c_dtype = s.dtype;
  return g;
}

int64_t block_of(int64_t K, int64_t total) { return std::max<int64_t>(1, std::min(total, kPanelElems / K)); }

// Rows (output pixels) per block when every thread packs and multiplies its own blocks: at least
// kMinBlockRows so the GEMM's B packing (og x K per call) stays small against its 2 rows og K
// flops, at most what keeps the panel near kPanelElems, and a block count that is a multiple of
// the thread count so the threads finish together.
int64_t thread_block_rows(const Conv2dShape& s, int64_t M) {
  constexpr int64_t kMinBlockRows = 256;
  const int64_t threads = omp_get_max_threads();
  const int64_t target = std::max(kMinBlockRows, kPanelElems / std::max<int64_t>(s.k(), 1));
  int64_t blocks = (M + target - 1) / target;
  if (blocks * s.groups < threads) blocks = (threads + s.groups - 1) / s.groups;
  const int64_t per_round = threads / std::gcd(threads, s.groups);  // blocks * groups % threads == 0
  blocks = (blocks + per_round - 1) / per_round * per_round;
  return std::max<int64_t>(1, (M + blocks - 1) / blocks);
}

// The blocks every GEMM-path pass walks, in one fixed order (the wgrad sums follow it).
// NHWC: fn(m0, rows, g, panel) per block of pixels m0 .. m0 + rows (over N HO WO) and group g;
// NCHW: fn(n, p0, cols, g, panel) per block of pixels p0 .. p0 + cols of image n and group g.
// `panel` holds the packed im2col block when x is given, else it is null.
template <typename T, typename Fn>
void for_each_block_nhwc(const Conv2dShape& s, const T* x, const Fn& fn) {
  const int64_t K = s.k(), M = s.n * s.ho * s.wo, mb = block_of(K, M);
  std::vector<T> panel(x ? mb * K : 0);
  for (int64_t m0 = 0; m0 < M; m0 += mb) {
    const int64_t rows = std::min(mb, M - m0);
    for (int64_t g = 0; g < s.groups; ++g) {
      if (x) pack_nhwc(s, x, g, m0, rows, panel.data());
      fn(m0, rows, g, x ? panel.data() : nullptr);
    }
  }
}

// The implicit NHWC im2col matrix of pixels m0.. as a cpu::GatheredA: row i is output pixel m0 + i,
// segment t is kernel tap t = (kh, kw), and its Cg channels are read in place from x (a group's
// channels start at xg = x + g Cg); taps in the padding read as zeros.
template <typename T>
struct TapRows {
  const Conv2dShape* s;
  const T* xg;
  int64_t m0;
  // dst[t * ld + r] for pixels m0 + i0 + r, r < n: (n, oh, ow) stepped along the row, no division
  static void rows(const void* ctx, int64_t i0, int n, int64_t ld, const void** dst) {
    const TapRows& r = *static_cast<const TapRows*>(ctx);
    const Conv2dShape& s = *r.s;
    const int64_t P = s.ho * s.wo, m = r.m0 + i0;
    int64_t img = m / P, oh = m % P / s.wo, ow = m % P % s.wo;
    for (int i = 0; i < n; ++i) {
      const T* xn = r.xg + img * s.h * s.w * s.c;
      for (int64_t ti = 0, t = 0; ti < s.kh; ++ti) {
        const int64_t ih = conv_in_index(oh, ti, s.stride_h, s.pad_h, s.dil_h);
        for (int64_t tj = 0; tj < s.kw; ++tj, ++t) {
          const int64_t iw = conv_in_index(ow, tj, s.stride_w, s.pad_w, s.dil_w);
          const bool in = ih >= 0 && ih < s.h && iw >= 0 && iw < s.w;
          dst[t * ld + i] = in ? xn + (ih * s.w + iw) * s.c : nullptr;
        }
      }
      if (++ow == s.wo) {
        ow = 0;
        if (++oh == s.ho) oh = 0, ++img;
      }
    }
  }
  GatheredA gathered() const { return {&TapRows::rows, this, s->kh * s->kw, s->cg()}; }
};

template <typename T, typename Fn>
void for_each_block_nchw(const Conv2dShape& s, const T* x, int64_t pb, const Fn& fn) {
  const int64_t K = s.k(), P = s.ho * s.wo;
  std::vector<T> panel(x ? pb * K : 0);
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t p0 = 0; p0 < P; p0 += pb) {
      const int64_t cols = std::min(pb, P - p0);
      for (int64_t g = 0; g < s.groups; ++g) {
        if (x) pack_nchw(s, x, n, g, p0, cols, panel.data());
        fn(n, p0, cols, g, x ? panel.data() : nullptr);
      }
    }
  }
}

// ---- forward on the GEMM ----------------------------------------------------------------------

// w_kn, when given, is the NHWC weight as [G, K, Og] (each group's w_g^T, columns contiguous) and
// replaces p.w (the dgrad below builds its flipped weight in that layout, which packs fastest).
template <typename T>
void forward_gemm(const Conv2dForwardParams& p, const T* w_kn = nullptr,
                  const std::vector<PackedB>* prepacked = nullptr) {
  const Conv2dShape& s = p.s;
  const int64_t cg = s.cg(), og = s.og(), K = s.k(), P = s.ho * s.wo, M = s.n * P;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  GemmParams gp = base_gemm(s);
  gp.activation = p.activation;
  if (s.channels_last) {
    // y[m, g og + j] = sum_k panel[m, k] w[g og + j, k]
    gp.n = og;
    gp.k = K;
    gp.b = {nullptr, 0, 1, K};
    gp.c_stride_row = s.o;
    if (s.pointwise()) {
      for (int64_t g = 0; g < s.groups; ++g) {
        gp.m = M;
        gp.a = {x + g * cg, 0, s.c, 1};
        gp.b.ptr = w + g * og * K;
        gp.c = y + g * og;
        gp.bias = bias ? bias + g * og : nullptr;
        gemm(gp);
      }
      return;
    }
    // W_g^T is packed once per call (cpu::PackedB); each thread then packs the im2col panels of
    // its blocks and multiplies them against it on its own (no barrier per block); outputs of
    // different blocks are disjoint, so any split is exact.
    std::vector<PackedB> own;
    const std::vector<PackedB>& packed = prepacked ? *prepacked : own;
    if (p.w_nchw && !prepacked) {  // W_g^T [K = (kh, kw, ci), og] by taps: tap t is w[g og + o, ci, t]
      const int64_t taps = s.kh * s.kw;
      std::vector<GemmOperand> segs(taps);
      for (int64_t g = 0; g < s.groups; ++g) {
        for (int64_t tap = 0; tap < taps; ++tap) segs[tap] = {w + g * og * K + tap, 0, taps, cg * taps};
        own.emplace_back(segs.data(), taps, cg, og, s.dtype);
      }
    }
    for (int64_t g = 0; g < s.groups && !prepacked && !p.w_nchw; ++g)
      own.emplace_back(w_kn ? GemmOperand{w_kn + g * K * og, 0, og, 1} : GemmOperand{w + g * og * K, 0, 1, K}, K,
                          og, s.dtype);
    if (p.y_nchw) {  // NCHW y from the GEMM's store: blocks within an image, y's rows strided by P
      const int64_t per_img = (P + thread_block_rows(s, M) - 1) / thread_block_rows(s, M);
      const int64_t mbi = (P + per_img - 1) / per_img, items = s.n * per_img * s.groups;
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {
        const int64_t n = it / (per_img * s.groups), q0 = it / s.groups % per_img * mbi, g = it % s.groups;
        GemmParams tp = gp;
        tp.m = std::min(mbi, P - q0);
        tp.c = y + (n * s.o + g * og) * P + q0;
        tp.c_stride_row = 1;
        tp.c_stride_col = P;
        tp.bias = bias ? bias + g * og : nullptr;
        const TapRows<T> ctx{&s, x + g * cg, n * P + q0};
        packed[g].multiply_gathered(tp, ctx.gathered(), 0, og);
      }
      return;
    }
    // The im2col rows go straight into the GEMM's A panels (one segment per kernel tap). Blocks
    // write disjoint outputs, so each goes to whichever thread is free next (the result does not
    // depend on which thread ran it).
    const int64_t mb = thread_block_rows(s, M), items = (M + mb - 1) / mb * s.groups;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t m0 = it / s.groups * mb, g = it % s.groups;
      GemmParams tp = gp;
      tp.m = std::min(mb, M - m0);
      tp.c = y + m0 * s.o + g * og;
      tp.bias = bias ? bias + g * og : nullptr;
      const TapRows<T> ctx{&s, x + g * cg, m0};
      packed[g].multiply_gathered(tp, ctx.gathered(), 0, og);
    }
    return;
  }
  // NCHW: y[n, g og + j, q] = sum_k w[g og + j, k] panel[k, q]
  gp.m = og;
  gp.k = K;
  gp.a = {nullptr, 0, K, 1};
  gp.c_stride_row = P;
  gp.bias_per_row = true;
  if (s.pointwise()) {
    for (int64_t g = 0; g < s.groups; ++g) {
      gp.batch = s.n;
      gp.n = P;
      gp.a.ptr = w + g * og * K;
      gp.b = {x + g * cg * P, s.c * P, P, 1};
      gp.c = y + g * og * P;
      gp.c_stride_batch = s.o * P;
      gp.bias = bias ? bias + g * og : nullptr;
      gemm(gp);
    }
    return;
  }
  for_each_block_nchw(s, x, block_of(K, P), [&](int64_t n, int64_t p0, int64_t cols, int64_t g, const T* panel) {
    gp.n = cols;
    gp.a.ptr = w + g * og * K;
    gp.b = {panel, 0, cols, 1};
    gp.c = y + (n * s.o + g * og) * P + p0;
    gp.bias = bias ? bias + g * og : nullptr;
    gemm(gp);
  });
}

// ---- backward on the GEMM ---------------------------------------------------------------------

// dgrad of a stride-1 NHWC convolution is itself a forward convolution: dx = conv(dy, w') with
// w'[c, i, j, o] = w[o, c, kh-1-i, kw-1-j] per group and padding dil (k - 1) - pad, which then
// runs on the parallel forward blocks. Returns false where that padding would be negative.
template <typename T>
bool dgrad_as_forward(const Conv2dBackwardParams& p) {
  const Conv2dShape& s = p.s;
  Conv2dShape t = s;
  t.pad_h = s.dil_h * (s.kh - 1) - s.pad_h;
  t.pad_w = s.dil_w * (s.kw - 1) - s.pad_w;
  if (!s.channels_last || s.stride_h != 1 || s.stride_w != 1 || s.pointwise() || t.pad_h < 0 || t.pad_w < 0)
    return false;
  t.c = s.o;
  t.h = s.ho;
  t.w = s.wo;
  t.o = s.c;
  t.ho = s.h;
  t.wo = s.w;
  const int64_t cg = s.cg(), og = s.og(), taps = s.kh * s.kw;
  const T* w = static_cast<const T*>(p.w);  // [O, KH, KW, Cg] (NHWC K order)
  Conv2dForwardParams f;
  f.s = t;
  f.x = p.dy;
  f.w = nullptr;
  f.y = p.dx;
  if (PackedB::segments_fit(og, s.dtype)) {
    // w'_g [K' = (kh, kw, oc), Cg] packed straight from w: its rows of tap t are w's tap taps - 1 - t,
    // [og, Cg] with row stride taps Cg (the flip only reorders the taps).
    std::vector<PackedB> packed;
    std::vector<GemmOperand> segs(taps);
    for (int64_t g = 0; g < s.groups; ++g) {
      for (int64_t tap = 0; tap < taps; ++tap)
        segs[tap] = p.w_nchw ? GemmOperand{w + g * og * cg * taps + taps - 1 - tap, 0, cg * taps, taps}
                             : GemmOperand{w + (g * og * taps + taps - 1 - tap) * cg, 0, taps * cg, 1};
      packed.emplace_back(segs.data(), taps, og, cg, s.dtype);
    }
    forward_gemm<T>(f, nullptr, &packed);
    return true;
  }
  if (p.w_nchw) return false;  // the copy below reads the NHWC order
  // w' as [G, K', Cg] with K' = (kh, kw, oc): w'_g[(t, oc), ci] = w[g og + oc, taps - 1 - t, ci], whole
  // channel runs copied (the flip only reorders the taps).
  std::vector<T> flipped(s.o * s.k());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < s.groups * taps * og; ++r) {
    const int64_t g = r / (taps * og), tap = r / og % taps, oc = r % og;
    std::memcpy(static_cast<void*>(flipped.data() + r * cg), w + ((g * og + oc) * taps + taps - 1 - tap) * cg,
                cg * sizeof(T));
  }
  forward_gemm<T>(f, flipped.data());
  return true;
}

template <typename T>
void dgrad_gemm(const Conv2dBackwardParams& p) {
  if (dgrad_as_forward<T>(p)) return;
  const Conv2dShape& s = p.s;
  const int64_t cg = s.cg(), og = s.og(), K = s.k(), P = s.ho * s.wo, M = s.n * P;
  const T* dy = static_cast<const T*>(p.dy);
  const T* w = static_cast<const T*>(p.w);
  T* dx = static_cast<T*>(p.dx);
  const int64_t numel = s.n * s.c * s.h * s.w;
  GemmParams gp = base_gemm(s);
  if (s.pointwise()) {  // dx = dy x w_g, in place
    for (int64_t g = 0; g < s.groups; ++g) {
      gp.k = og;
      if (s.channels_last) {
        gp.m = M;
        gp.n = cg;
        gp.a = {dy + g * og, 0, s.o, 1};
        gp.b = {w + g * og * K, 0, K, 1};
        gp.c = dx + g * cg;
        gp.c_stride_row = s.c;
      } else {
        gp.batch = s.n;
        gp.m = cg;
        gp.n = P;
        gp.a = {w + g * og * K, 0, 1, K};
        gp.b = {dy + g * og * P, s.o * P, P, 1};
        gp.c = dx + g * cg * P;
        gp.c_stride_batch = s.c * P;
        gp.c_stride_row = P;
      }
      gemm(gp);
    }
    return;
  }
  std::vector<float> buffer(std::is_same_v<T, float> ? 0 : numel);
  float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(dx) : buffer.data();
  std::fill(acc, acc + numel, 0.0f);
  gp.c_dtype = DType::kFloat32;
  gp.k = og;
  if (s.channels_last) {
    std::vector<float> dcol(block_of(K, M) * K);
    for_each_block_nhwc(s, static_cast<const T*>(nullptr), [&](int64_t m0, int64_t rows, int64_t g, const T*) {
      gp.m = rows;
      gp.n = K;
      gp.a = {dy + m0 * s.o + g * og, 0, s.o, 1};
      gp.b = {w + g * og * K, 0, K, 1};
      gp.c = dcol.data();
      gp.c_stride_row = K;
      gemm(gp);
      scatter_nhwc(s, dcol.data(), g, m0, rows, acc);
    });
  } else {
    const int64_t pb = block_of(K, P);
    std::vector<float> dcol(pb * K);
    for_each_block_nchw(s, static_cast<const T*>(nullptr), pb,
                        [&](int64_t n, int64_t p0, int64_t cols, int64_t g, const T*) {
      gp.m = K;
      gp.n = cols;
      gp.a = {w + g * og * K, 0, 1, K};
      gp.b = {dy + (n * s.o + g * og) * P + p0, 0, P, 1};
      gp.c = dcol.data();
      gp.c_stride_row = cols;
      gemm(gp);
      scatter_nchw(s, dcol.data(), n, g, p0, cols, acc);
    });
  }
  if (!std::is_same_v<T, float>) store_from_float(acc, dx, numel);
}

// Columns k0 .. k1 of the NHWC im2col panel (K order (kh, kw, ci)) of pixels m0 .. m0 + rows, group g,
// as [rows, k1 - k0]; on the calling thread.
template <typename T>
void pack_nhwc_columns(const Conv2dShape& s, const T* x, int64_t g, int64_t m0, int64_t rows, int64_t k0, int64_t k1,
                       T* panel) {
  const int64_t cg = s.cg(), P = s.ho * s.wo, t0 = k0 / cg, t1 = (k1 + cg - 1) / cg;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t m = m0 + r, n = m / P, q = m % P, oh = q / s.wo, ow = q % s.wo;
    T* dst = panel + r * (k1 - k0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = std::max(k0, t * cg) - t * cg, c1 = std::min(k1, (t + 1) * cg) - t * cg;
      const int64_t ih = conv_in_index(oh, t / s.kw, s.stride_h, s.pad_h, s.dil_h);
      const int64_t iw = conv_in_index(ow, t % s.kw, s.stride_w, s.pad_w, s.dil_w);
      if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) {
        std::memset(static_cast<void*>(dst), 0, (c1 - c0) * sizeof(T));
      } else {
        std::memcpy(static_cast<void*>(dst), x + ((n * s.h + ih) * s.w + iw) * s.c + g * cg + c0, (c1 - c0) * sizeof(T));
      }
      dst += c1 - c0;
    }
  }
}

// NHWC wgrad: each thread owns a range of dw's columns (whole 32-column panels of one group's
// K = (kh, kw, ci)) and sums every block of pixels into it, blocks in order, with one-thread GEMMs:
// no partial sums, one parallel region, and every element one float32 sum in a fixed order
// (bitwise the same for any thread count). A single block writes dw in its dtype directly.
template <typename T>
void wgrad_nhwc_columns(const Conv2dShape& s, const T* dy, const T* x, T* dw) {
  constexpr int64_t kPanel = int64_t(1) << 18, kMinRows = 512, kCols = 32;
  const int64_t og = s.og(), K = s.k(), M = s.n * s.ho * s.wo;
  const int nt = omp_get_max_threads();
  const int64_t parts = std::min<int64_t>((nt + s.groups - 1) / s.groups, (K + kCols - 1) / kCols);
  const int64_t items = s.groups * parts, panels = (K + kCols - 1) / kCols;
  const int64_t want = std::max(kMinRows, kPanel / std::max<int64_t>(1, (K + parts - 1) / parts));
  const int64_t blocks = (M + want - 1) / want, mb = (M + blocks - 1) / blocks;
  const bool direct = blocks == 1 || std::is_same_v<T, float>;
  std::vector<float> buffer(direct ? 0 : s.o * K);
  float* acc = direct ? nullptr : buffer.data();
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(nt, items)))
  {
    const int64_t t = omp_get_thread_num(), n_t = omp_get_num_threads();
    std::vector<T> panel;
    for (int64_t it = items * t / n_t; it < items * (t + 1) / n_t; ++it) {
      const int64_t g = it / parts, part = it % parts;
      const int64_t k0 = std::min(K, panels * part / parts * kCols), k1 = std::min(K, panels * (part + 1) / parts * kCols);
      if (k0 >= k1) continue;
      panel.resize(mb * (k1 - k0));
      GemmParams gp = base_gemm(s);
      gp.m = og;
      gp.n = k1 - k0;
      gp.c_stride_row = K;
      gp.c_dtype = direct ? s.dtype : DType::kFloat32;
      for (int64_t m0 = 0; m0 < M; m0 += mb) {
        const int64_t rows = std::min(mb, M - m0);
        pack_nhwc_columns(s, x, g, m0, rows, k0, k1, panel.data());
        gp.k = rows;
        gp.a = {dy + m0 * s.o + g * og, 0, 1, s.o};
        gp.b = {panel.data(), 0, k1 - k0, 1};
        gp.c = direct ? static_cast<void*>(dw + g * og * K + k0) : static_cast<void*>(acc + g * og * K + k0);
        gp.beta = m0 == 0 ? 0.0f : 1.0f;
        gemm(gp);
      }
    }
  }
  if (!direct) store_from_float(acc, dw, s.o * K);
}

template <typename T>
void wgrad_gemm(const Conv2dBackwardParams& p) {
  const Conv2dShape& s = p.s;
  const int64_t cg = s.cg(), og = s.og(), K = s.k(), P = s.ho * s.wo, M = s.n * P;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  T* dw = static_cast<T*>(p.dw);
  GemmParams gp = base_gemm(s);
  gp.m = og;
  gp.n = K;
  gp.c_stride_row = K;
  if (s.pointwise() && s.channels_last) {  // one GEMM per group reduces over every pixel
    for (int64_t g = 0; g < s.groups; ++g) {
      gp.k = M;
      gp.a = {dy + g * og, 0, 1, s.o};
      gp.b = {x + g * cg, 0, s.c, 1};
      gp.c = dw + g * og * K;
      gemm(gp);
    }
    return;
  }
  if (s.channels_last && M > 0) {
    wgrad_nhwc_columns(s, dy, x, dw);
    return;
  }
  std::vector<float> buffer(std::is_same_v<T, float> ? 0 : s.o * K);
  float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(dw) : buffer.data();
  std::fill(acc, acc + s.o * K, 0.0f);  // also the answer when there are no pixels
  gp.c_dtype = DType::kFloat32;
  if (s.channels_last) {  // no pixels: zeros
  } else {  // a pointwise conv reads x in place: no panel
    const bool pw = s.pointwise();
    for_each_block_nchw(s, pw ? nullptr : x, pw ? P : block_of(K, P),
                        [&](int64_t n, int64_t p0, int64_t cols, int64_t g, const T* panel) {
      gp.k = cols;
      gp.a = {dy + (n * s.o + g * og) * P + p0, 0, P, 1};
      gp.b = pw ? GemmOperand{x + (n * s.c + g * cg) * P, 0, 1, P} : GemmOperand{panel, 0, 1, cols};
      gp.c = acc + g * og * K;
      gp.beta = (n == 0 && p0 == 0) ? 0.0f : 1.0f;
      gemm(gp);
    });
  }
  if (!std::is_same_v<T, float>) store_from_float(acc, dw, s.o * K);
}

// ---- depthwise --------------------------------------------------------------------------------

// Everything a depthwise work range needs; wt is the weight as float32 [KH KW, O] (tap-major).
struct DwJob {
  Conv2dShape s;
  const void* in = nullptr;   // x (forward, wgrad) or dy (dgrad)
  const void* in2 = nullptr;  // dy (wgrad)
  const void* bias = nullptr;
  void* out = nullptr;
  const float* wt = nullptr;
  Activation act = Activation::kNone;
  const float* wl = nullptr;  // wt in the lane order of the 32-channel blocks (dw_lanes); null: wt
  bool stream = false;        // the output is too large to stay in cache: streaming stores where they apply
};

template <typename T>
FASTOPS_FORCE_INLINE void store_act(const float* acc, T* dst, int64_t count, Activation act) {
  if (act == Activation::kRelu) {
#pragma omp simd
    for (int64_t c = 0; c < count; ++c) dst[c] = from_float<T>(acc[c] < 0.0f ? 0.0f : acc[c]);  // NaN stays NaN
  } else if (act == Activation::kNone) {
#pragma omp simd
    for (int64_t c = 0; c < count; ++c) dst[c] = from_float<T>(acc[c]);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < count; ++c) dst[c] = from_float<T>(math::activate(act, acc[c]));
  }
}

// 16 lanes of float32 as a GCC vector (one zmm on the AVX-512 entry, split on the others).
typedef float DwVec __attribute__((vector_size(64)));
typedef unsigned short DwVecU16 __attribute__((vector_size(32)));
typedef unsigned short DwVecU16x2 __attribute__((vector_size(64)));
typedef unsigned int DwVecU32 __attribute__((vector_size(64)));

// 16 channels from p as float32 lanes in order.
template <typename T>
FASTOPS_FORCE_INLINE DwVec dw_load16(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    DwVec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  } else {  // bfloat16: the 16 high bits of a float32, interleaved with zeros (one vpermi2w)
    DwVecU16 u;
    std::memcpy(&u, p, sizeof(u));
    const DwVecU16 zero = {};
    const DwVecU16x2 w = __builtin_shufflevector(zero, u, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24,
                                                 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    return reinterpret_cast<DwVec>(w);
  }
}

// 32 channels from p as two vectors of float32 lanes: for float32 channels 0-15 and 16-31; for
// bfloat16 the even channels and the odd ones (the low and high halves of each 32-bit word, one
// shift and one mask: no shuffle). dw_lanes puts weights and biases in the same order.
template <typename T>
FASTOPS_FORCE_INLINE void dw_load32(const T* p, DwVec& v0, DwVec& v1) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&v0, p, sizeof(v0));
    std::memcpy(&v1, p + 16, sizeof(v1));
  } else {
    DwVecU32 u;
    std::memcpy(&u, p, sizeof(u));
    v0 = reinterpret_cast<DwVec>(u << 16);
    v1 = reinterpret_cast<DwVec>(u & 0xffff0000u);
  }
}

// src [rows, O] float32 in the lane order dw_load32 gives bfloat16 channels, over the whole
// 32-channel groups; empty for the other dtypes (float32 is in order, fp16 has no blocks).
template <typename T>
std::vector<float> dw_lanes(const float* src, int64_t rows, int64_t o) {
  if constexpr (!std::is_same_v<T, BFloat16>) return {};
  std::vector<float> out(static_cast<size_t>(rows * o));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 + 32 <= o; c0 += 32)
      for (int l = 0; l < 16; ++l) {
        out[r * o + c0 + l] = src[r * o + c0 + 2 * l];
        out[r * o + c0 + 16 + l] = src[r * o + c0 + 2 * l + 1];
      }
  return out;
}

constexpr int kDwPix = 4;  // output (dgrad: input) pixels of a register block

// float32 bits rounded to bfloat16 in the high half (nearest even; NaN quieted), as from_float.
FASTOPS_FORCE_INLINE DwVecU32 dw_bf16_bits(DwVec v) {
  const DwVecU32 u = reinterpret_cast<DwVecU32>(v);
  const DwVecU32 nan = reinterpret_cast<DwVecU32>(v != v);
  return (nan & (u | 0x400000u)) | (~nan & (u + 0x7fffu + ((u >> 16) & 1u)));
}

// 32 bfloat16 channels from the even / odd lanes of dw_load32: the rounded words, as stored.
FASTOPS_FORCE_INLINE DwVecU32 dw_bf16_words(const DwVec (&acc)[2]) {
  return (dw_bf16_bits(acc[0]) >> 16) | (dw_bf16_bits(acc[1]) & 0xffff0000u);
}

// kVecs * 16 float32 from the lanes of dw_load16 / dw_load32 (for T's channels) to out in channel order.
template <typename T, int kVecs>
FASTOPS_FORCE_INLINE void dw_channel_order(const DwVec (&v)[kVecs], float* out) {
  if constexpr (kVecs == 2 && std::is_same_v<T, BFloat16>) {  // even / odd lanes interleaved back
    const DwVec lo = __builtin_shufflevector(v[0], v[1], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const DwVec hi = __builtin_shufflevector(v[0], v[1], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    std::memcpy(out, &lo, sizeof(lo));
    std::memcpy(out + 16, &hi, sizeof(hi));
  } else {
    std::memcpy(out, v, sizeof(v));
  }
}

// One pixel's kVecs * 16 channels from the lanes of dw_load16 / dw_load32 to dst, in T.
template <typename T, int kVecs>
FASTOPS_FORCE_INLINE void dw_store(const DwVec (&acc)[kVecs], T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, acc, sizeof(acc));
  } else if constexpr (std::is_same_v<T, BFloat16> && kVecs == 2) {
    const DwVecU32 w = dw_bf16_words(acc);
    std::memcpy(dst, &w, sizeof(w));
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    const DwVecU16 h = __builtin_convertvector(dw_bf16_bits(acc[0]) >> 16, DwVecU16);
    std::memcpy(dst, &h, sizeof(h));
  } else {  // channels in order (the blocks do not run for float16)
    for (int v = 0; v < kVecs; ++v)
      for (int l = 0; l < 16; ++l) dst[16 * v + l] = from_float<T>(acc[v][l]);
  }
}

// The sums of a register block of kPix pixels start at the bias (lane order; null: zero).
template <int kPix, int kVecs>
FASTOPS_FORCE_INLINE void dw_init(DwVec (&acc)[kPix][kVecs], const float* bias) {
#pragma GCC unroll 8
  for (int q = 0; q < kPix; ++q)
#pragma GCC unroll 2
    for (int v = 0; v < kVecs; ++v) acc[q][v] = bias ? dw_load16(bias + 16 * v) : DwVec{};
}

// One pixel's 32 channels from the lanes of dw_load32 to dst (64-byte aligned) with streaming
// stores: the line goes to memory without being read first or kept in the caches. Called from
// AVX-512 entries only.
#if FASTOPS_HAVE_X86_PATHS
template <typename T>
inline __attribute__((target("avx512f"))) void dw_stream32(const DwVec (&acc)[2], T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(dst, acc[0]);
    _mm512_stream_ps(dst + 16, acc[1]);
  } else {
    _mm512_stream_ps(reinterpret_cast<float*>(dst), reinterpret_cast<DwVec>(dw_bf16_words(acc)));
  }
}
#else
template <typename T>
FASTOPS_FORCE_INLINE void dw_stream32(const DwVec (&acc)[2], T* dst) {
  dw_store(acc, dst);
}
#endif

// act() of a register block's sums into dst (pixel q at dst + q * ld): relu and no activation
// straight from the registers, the others through store_act in channel order. stream (AVX-512
// entries, dst and ld 64-byte aligned): 32-channel blocks go through dw_stream32.
template <typename T, int kPix, int kVecs>
FASTOPS_FORCE_INLINE void dw_finish(DwVec (&acc)[kPix][kVecs], T* dst, int64_t ld, Activation act,
                                    bool stream = false) {
  if (act == Activation::kNone || act == Activation::kRelu) {
#pragma GCC unroll 8
    for (int q = 0; q < kPix; ++q) {
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v)
        if (act == Activation::kRelu) acc[q][v] = acc[q][v] < 0.0f ? DwVec{} : acc[q][v];  // NaN stays NaN
      if constexpr (kVecs == 2) {
        if (stream) {
          dw_stream32(acc[q], dst + q * ld);
          continue;
        }
      }
      dw_store(acc[q], dst + q * ld);
    }
    return;
  }
  alignas(64) float out[kPix][16 * kVecs];
#pragma GCC unroll 8
  for (int q = 0; q < kPix; ++q) dw_channel_order<T>(acc[q], out[q]);
  for (int q = 0; q < kPix; ++q) store_act(out[q], dst + q * ld, 16 * kVecs, act);
}

// The columns j0, j0 + js, ... of the kernel a block reads (a strided dgrad reads one residue class).
struct DwTaps {
  int64_t j0 = 0, js = 1;
};

// A register block of the NHWC depthwise paths (multiplier 1, float32 / bfloat16): kDwPix pixels
// x kVecs * 16 channels from c0, the sums in registers across the taps, then act() into dst (pixel
// q at dst + q * ld). row_of(i) is pixel 0's element of tap (i, taps.j0) (null: tap row i reads
// only padding); the k-th column of `taps` adds k * tap_step and pixel q adds q * pix_step
// elements. The taps must lie inside the row (no horizontal padding). bias: float32 in lane
// order, or null.
template <typename T, int kVecs, typename RowOf>
FASTOPS_FORCE_INLINE void dw_block(const DwJob& jb, const float* bias, int64_t c0, RowOf row_of, DwTaps taps,
                                   int64_t tap_step, int64_t pix_step, T* dst, int64_t ld, Activation act) {
  const Conv2dShape& s = jb.s;
  const float* w = kVecs == 2 && jb.wl ? jb.wl : jb.wt;  // 16-channel blocks read the natural order
  DwVec acc[kDwPix][kVecs];
  dw_init(acc, bias ? bias + c0 : nullptr);
  for (int64_t i = 0; i < s.kh; ++i) {
    const T* row = row_of(i);
    if (row == nullptr) continue;
    for (int64_t j = taps.j0, k = 0; j < s.kw; j += taps.js, ++k) {
      DwVec wv[kVecs];
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) wv[v] = dw_load16(w + (i * s.kw + j) * s.o + c0 + 16 * v);
      const T* xp = row + k * tap_step;
#pragma GCC unroll 4
      for (int q = 0; q < kDwPix; ++q) {
        if constexpr (kVecs == 2) {
          DwVec x0, x1;
          dw_load32(xp + q * pix_step, x0, x1);
          acc[q][0] += x0 * wv[0];
          acc[q][1] += x1 * wv[1];
        } else {
          acc[q][0] += dw_load16(xp + q * pix_step) * wv[0];
        }
      }
    }
  }
  dw_finish<T>(acc, dst, ld, act);
}

// Every channel of one register block's pixels: 32 at a time, then a 16-channel rest (C % 16 == 0).
template <typename T, typename RowOf>
FASTOPS_FORCE_INLINE void dw_blocks(const DwJob& jb, const float* bias, const float* bias_lanes, RowOf row_of,
                                    DwTaps taps, int64_t tap_step, int64_t pix_step, T* dst, int64_t ld,
                                    Activation act) {
  const int64_t c = jb.s.c;
  int64_t c0 = 0;
  for (; c0 + 32 <= c; c0 += 32)
    dw_block<T, 2>(jb, bias_lanes, c0, [&](int64_t i) { const T* r = row_of(i); return r ? r + c0 : r; }, taps,
                   tap_step, pix_step, dst + c0, ld, act);
  if (c0 < c)
    dw_block<T, 1>(jb, bias, c0, [&](int64_t i) { const T* r = row_of(i); return r ? r + c0 : r; }, taps, tap_step,
                   pix_step, dst + c0, ld, act);
}

// A register block of the NHWC depthwise forward with kernel width KW, stride S and dilation 1
// (multiplier 1, float32 / bfloat16, AVX-512: up to 16 vectors of sums): kPix output pixels x
// kVecs * 16 channels from c0. Each input pixel of a kernel row is loaded once and multiplied into
// every output pixel that reads it (dw_block loads it once per tap), the taps of each sum in the
// same order. row_of(i): the input row of kernel row i at column 0 and channel c0 (null: padding);
// iw0: the input column of pixel 0's first tap. kEdge: some of the S (kPix - 1) + KW columns from
// iw0 lie outside [0, w) and are skipped (padding). stream: as dw_finish.
template <typename T, int kVecs, int KW, int S, int kPix, bool kEdge, typename RowOf>
FASTOPS_FORCE_INLINE void dw_row_block(const DwJob& jb, const float* bias, int64_t c0, RowOf row_of, int64_t iw0,
                                       T* dst, Activation act, bool stream) {
  constexpr int kCols = S * (kPix - 1) + KW;
  const Conv2dShape& s = jb.s;
  const float* w = (kVecs == 2 && jb.wl ? jb.wl : jb.wt) + c0;  // 16-channel blocks read the natural order
  DwVec acc[kPix][kVecs];
  dw_init(acc, bias ? bias + c0 : nullptr);
  for (int64_t i = 0; i < s.kh; ++i) {
    const T* row = row_of(i);
    if (row == nullptr) continue;
    DwVec wv[KW][kVecs];
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j)
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) wv[j][v] = dw_load16(w + (i * KW + j) * s.o + 16 * v);
#pragma GCC unroll 32
    for (int p = 0; p < kCols; ++p) {
      if (kEdge && (iw0 + p < 0 || iw0 + p >= s.w)) continue;
      DwVec xv[kVecs];
      const T* xp = row + (iw0 + p) * s.c;
      if constexpr (kVecs == 2) dw_load32(xp, xv[0], xv[1]); else xv[0] = dw_load16(xp);
#pragma GCC unroll 8
      for (int j = 0; j < KW; ++j) {
        if (p < j || (p - j) % S != 0 || (p - j) / S >= kPix) continue;  // pixel (p - j) / S reads column p at tap j
#pragma GCC unroll 2
        for (int v = 0; v < kVecs; ++v) acc[(p - j) / S][v] += xv[v] * wv[j][v];
      }
    }
  }
  dw_finish<T>(acc, dst, s.o, act, stream);
}

// Output row oh of image n by dw_row_block: blocks of kPix pixels (the last one ends at the row's
// end, recomputing the same values of a few pixels), each over every 32 channels, then a
// 16-channel rest. Needs wo >= kPix, kw == KW, stride_w == S, dil_w == 1.
template <typename T, int KW, int S, int kPix>
FASTOPS_FORCE_INLINE void dw_forward_row(const DwJob& jb, const float* bias, const float* bias_lanes, int64_t n,
                                         int64_t oh, T* y_row, bool stream) {
  const Conv2dShape& s = jb.s;
  const T* x = static_cast<const T*>(jb.in) + n * s.h * s.w * s.c;
  for (int64_t ow0 = 0; ow0 < s.wo; ow0 += kPix) {
    const int64_t ow = std::min(ow0, s.wo - kPix), iw0 = ow * S - s.pad_w;
    const bool edge = iw0 < 0 || iw0 + S * (kPix - 1) + KW > s.w;
    T* dst = y_row + ow * s.o;
    for (int64_t c0 = 0; c0 < s.c; c0 += 32) {
      auto row_of = [&](int64_t i) -> const T* {
        const int64_t ih = conv_in_index(oh, i, s.stride_h, s.pad_h, s.dil_h);
        return ih < 0 || ih >= s.h ? nullptr : x + ih * s.w * s.c + c0;
      };
      if (c0 + 32 > s.c) {
        if (edge) dw_row_block<T, 1, KW, S, kPix, true>(jb, bias, c0, row_of, iw0, dst + c0, jb.act, false);
        else dw_row_block<T, 1, KW, S, kPix, false>(jb, bias, c0, row_of, iw0, dst + c0, jb.act, false);
      } else if (edge) {
        dw_row_block<T, 2, KW, S, kPix, true>(jb, bias_lanes, c0, row_of, iw0, dst + c0, jb.act, stream);
      } else {
        dw_row_block<T, 2, KW, S, kPix, false>(jb, bias_lanes, c0, row_of, iw0, dst + c0, jb.act, stream);
      }
    }
  }
}

// The dw_forward_row instance for s (1-7 by kernel width, stride and output width), 0: none.
int dw_row_kind(const Conv2dShape& s) {
  if (s.dil_w != 1) return 0;
  const int64_t kw = s.kw, st = s.stride_w;
  if (s.wo >= 8) {
    if (kw == 3 && st == 1) return 1;
    if (kw == 3 && st == 2) return 2;
    if (kw == 5 && st == 1) return 3;
    if (kw == 5 && st == 2) return 4;
    if (kw == 7 && st == 1) return 5;
  }
  if (s.wo >= 4 && kw == 3 && st == 1) return 6;
  if (s.wo >= 4 && kw == 3 && st == 2) return 7;
  return 0;
}

// NHWC forward over output rows (n, oh) in [b, e): vectorised over channels. kRows: the AVX-512
// entry, which runs dw_forward_row where it applies.
template <typename T, bool kRows = false>
FASTOPS_FORCE_INLINE void dw_forward_nhwc(const DwJob& jb, int64_t b, int64_t e) {
  const Conv2dShape& s = jb.s;
  const T* x = static_cast<const T*>(jb.in);
  const T* bias = static_cast<const T*>(jb.bias);
  T* y = static_cast<T*>(jb.out);
  const int64_t mult = s.o / s.c;
  std::vector<float> acc(s.o), bf(s.o, 0.0f);
  if (bias)
    for (int64_t c = 0; c < s.o; ++c) bf[c] = to_float(bias[c]);
  const std::vector<float> bl = dw_lanes<T>(bf.data(), 1, s.o);
  const float* bias_lanes = bias ? (bl.empty() ? bf.data() : bl.data()) : nullptr;
  // output columns [w_lo, w_hi) read no horizontal padding: the register-blocked path
  int64_t w_lo, w_hi;
  inner_range(s.pad_w, s.stride_w, s.dil_w, s.kw, s.w, s.wo, w_lo, w_hi);
  const bool blocked = mult == 1 && s.c % 16 == 0 && !std::is_same_v<T, Half>;
  const int kind = kRows && blocked ? dw_row_kind(s) : 0;
  const bool stream = kind && jb.stream && s.o % 32 == 0 && reinterpret_cast<uintptr_t>(y) % 64 == 0;
  for (int64_t r = b; r < e; ++r) {
    const int64_t n = r / s.ho, oh = r % s.ho;
    if constexpr (kRows && !std::is_same_v<T, Half>) {
      const float* bs = bias ? bf.data() : nullptr;
      T* y_row = y + (n * s.ho + oh) * s.wo * s.o;
      switch (kind) {
        case 1: dw_forward_row<T, 3, 1, 8>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        case 2: dw_forward_row<T, 3, 2, 8>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        case 3: dw_forward_row<T, 5, 1, 8>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        case 4: dw_forward_row<T, 5, 2, 8>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        case 5: dw_forward_row<T, 7, 1, 8>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        case 6: dw_forward_row<T, 3, 1, 4>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        case 7: dw_forward_row<T, 3, 2, 4>(jb, bs, bias_lanes, n, oh, y_row, stream); continue;
        default: break;
      }
    }
    for (int64_t ow = 0; ow < s.wo; ++ow) {
      if (blocked && ow >= w_lo && ow < w_hi && w_hi - w_lo >= kDwPix) {
        // the last block of the range ends at w_hi, recomputing (the same values of) a few pixels
        ow = std::min(ow, w_hi - kDwPix);
        const int64_t iw0 = conv_in_index(ow, 0, s.stride_w, s.pad_w, s.dil_w);
        auto row_of = [&](int64_t i) -> const T* {
          const int64_t ih = conv_in_index(oh, i, s.stride_h, s.pad_h, s.dil_h);
          return ih < 0 || ih >= s.h ? nullptr : x + ((n * s.h + ih) * s.w + iw0) * s.c;
        };
        dw_blocks<T>(jb, bias ? bf.data() : nullptr, bias_lanes, row_of, DwTaps{}, s.dil_w * s.c, s.stride_w * s.c,
                     y + ((n * s.ho + oh) * s.wo + ow) * s.o, s.o, jb.act);
        ow += kDwPix - 1;
        continue;
      }
      float* a = acc.data();
      std::memcpy(a, bf.data(), s.o * sizeof(float));
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        if (ih < 0 || ih >= s.h) continue;
        for (int64_t j = 0; j < s.kw; ++j) {
          const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
          if (iw < 0 || iw >= s.w) continue;
          const T* xp = x + ((n * s.h + ih) * s.w + iw) * s.c;
          const float* wp = jb.wt + (i * s.kw + j) * s.o;
          if (mult == 1) {
#pragma omp simd
            for (int64_t c = 0; c < s.c; ++c) a[c] += to_float(xp[c]) * wp[c];
          } else {
            for (int64_t c = 0; c < s.c; ++c) {
              const float xv = to_float(xp[c]);
              for (int64_t m = 0; m < mult; ++m) a[c * mult + m] += xv * wp[c * mult + m];
            }
          }
        }
      }
      store_act(a, y + ((n * s.ho + oh) * s.wo + ow) * s.o, s.o, jb.act);
    }
  }
#if FASTOPS_HAVE_X86_PATHS
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: drain them before the region ends
#endif
}

// Output pixels ow0 .. ow0 + 16 kV of row oh (dw_plane_nchw), in kV vectors across the taps.
template <typename T, int kV>
FASTOPS_FORCE_INLINE void dw_chunk_nchw(const DwJob& jb, const float* pad, int64_t len, const int64_t* col_of,
                                        float b0, const float* wo_taps, int64_t oh, int64_t ow0, T* out) {
  const Conv2dShape& s = jb.s;
  DwVec acc[kV];
#pragma GCC unroll 4
  for (int v = 0; v < kV; ++v) acc[v] = DwVec{} + b0;
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = conv_in_index(oh, i, s.stride_h, s.pad_h, s.dil_h);
    if (ih < 0 || ih >= s.h) continue;
    const float* row = pad + ih * s.stride_w * len + ow0;
    for (int64_t j = 0; j < s.kw; ++j) {
      const float* src = row + col_of[j];
      const DwVec wv = DwVec{} + wo_taps[(i * s.kw + j) * s.o];
#pragma GCC unroll 4
      for (int v = 0; v < kV; ++v) acc[v] += dw_load16(src + 16 * v) * wv;
    }
  }
  alignas(64) float buf[16 * kV];
  std::memcpy(buf, acc, sizeof(acc));
  store_act(buf, out + oh * s.wo + ow0, std::min<int64_t>(16 * kV, s.wo - ow0), jb.act);
}

// NCHW forward of one output plane: the input plane widened once into float32 rows padded with
// zeros and split into stride_w phases (pad: row ih at pad + ih stride_w len, phase p holding the
// padded columns q = k stride_w + p at k < len, q = iw + pad_w), so that every tap reads a run of
// consecutive floats; then each output row in chunks of up to 64 pixels held in registers across
// the taps.
// col_of[j]: where tap column j of output column 0 sits in a padded row (the phase of j dil_w, then
// its place in the phase).
template <typename T>
FASTOPS_FORCE_INLINE void dw_plane_nchw(const DwJob& jb, const T* plane, float b0, const float* wo_taps, float* pad,
                                        int64_t len, const int64_t* col_of, T* out) {
  const Conv2dShape& s = jb.s;
  const int64_t S = s.stride_w;
  for (int64_t p = 0; p < S; ++p) {
    int64_t k0, k1;  // k with iw = k S + p - pad_w inside [0, w)
    valid_range(p - s.pad_w, S, s.w, len, k0, k1);
    for (int64_t ih = 0; ih < s.h; ++ih) {
      float* row = pad + (ih * S + p) * len;
      const T* src = plane + ih * s.w + p - s.pad_w;
      std::fill(row, row + k0, 0.0f);
      if (S == 1) {
#pragma omp simd
        for (int64_t k = k0; k < k1; ++k) row[k] = to_float(src[k]);
      } else {
        for (int64_t k = k0; k < k1; ++k) row[k] = to_float(src[k * S]);
      }
      std::fill(row + k1, row + len, 0.0f);
    }
  }
  for (int64_t oh = 0; oh < s.ho; ++oh) {
    for (int64_t ow0 = 0; ow0 < s.wo; ow0 += 64) {
      switch (std::min<int64_t>(4, (s.wo - ow0 + 15) / 16)) {  // vectors that hold the chunk
        case 1: dw_chunk_nchw<T, 1>(jb, pad, len, col_of, b0, wo_taps, oh, ow0, out); break;
        case 2: dw_chunk_nchw<T, 2>(jb, pad, len, col_of, b0, wo_taps, oh, ow0, out); break;
        case 3: dw_chunk_nchw<T, 3>(jb, pad, len, col_of, b0, wo_taps, oh, ow0, out); break;
        default: dw_chunk_nchw<T, 4>(jb, pad, len, col_of, b0, wo_taps, oh, ow0, out); break;
      }
    }
  }
}

// NCHW forward over output planes (n, o) in [b, e): vectorised over the output width.
template <typename T>
FASTOPS_FORCE_INLINE void dw_forward_nchw(const DwJob& jb, int64_t b, int64_t e) {
  const Conv2dShape& s = jb.s;
  const T* x = static_cast<const T*>(jb.in);
  const T* bias = static_cast<const T*>(jb.bias);
  T* y = static_cast<T*>(jb.out);
  const int64_t mult = s.o / s.c;
  // phase length of dw_plane_nchw: every tap of every vector of a chunk inside
  const int64_t len = (s.wo + 15) / 16 * 16 + (s.kw - 1) * s.dil_w / s.stride_w + 1;
  std::vector<float> pad(static_cast<size_t>(s.h * s.stride_w * len));
  std::vector<int64_t> col_of(static_cast<size_t>(s.kw));
  for (int64_t j = 0; j < s.kw; ++j) col_of[j] = (j * s.dil_w) % s.stride_w * len + j * s.dil_w / s.stride_w;
  for (int64_t r = b; r < e; ++r) {
    const int64_t n = r / s.o, o = r % s.o, c = o / mult;
    dw_plane_nchw<T>(jb, x + (n * s.c + c) * s.h * s.w, bias ? to_float(bias[o]) : 0.0f, jb.wt + o, pad.data(), len,
                     col_of.data(), y + (n * s.o + o) * s.ho * s.wo);
  }
}

// NHWC dgrad over input rows (n, ih) in [b, e): gathers every output that reads the pixel.
template <typename T>
FASTOPS_FORCE_INLINE void dw_dgrad_nhwc(const DwJob& jb, int64_t b, int64_t e) {
  const Conv2dShape& s = jb.s;
  const T* dy = static_cast<const T*>(jb.in);
  T* dx = static_cast<T*>(jb.out);
  const int64_t mult = s.o / s.c;
  std::vector<float> acc(s.c);
  // The register-blocked path, per residue class rho of (iw + pad_w) mod stride_w: the class's
  // pixels iw = c_rho + m stride_w read the kernel columns j0, j0 + js, ... (j dil_w = rho mod
  // stride_w), whose dy columns step by one from pixel to pixel; m in [m_lo, m_hi) reads inside
  // dy's row for all of them.
  const int64_t S = s.stride_w, d = s.dil_w;
  const bool blocked = mult == 1 && s.c % 16 == 0 && !std::is_same_v<T, Half>;
  struct Class {
    DwTaps taps;
    int64_t c = 0, m_lo = 0, m_hi = 0;
  };
  std::vector<Class> cls(static_cast<size_t>(S));
  for (int64_t rho = 0; rho < S && blocked; ++rho) {
    Class& k = cls[rho];
    int64_t j0 = 0;
    while (j0 < s.kw && (j0 * d) % S != rho) ++j0;
    if (j0 == s.kw) continue;  // no tap reaches these pixels: zeros, from the loop below
    k.taps = DwTaps{j0, S / std::gcd(S, d)};
    const int64_t j_last = j0 + (s.kw - 1 - j0) / k.taps.js * k.taps.js;
    k.c = ((rho - s.pad_w) % S + S) % S;
    const int64_t lo = std::max<int64_t>(0, j_last * d - s.pad_w);           // first tap's column >= 0
    const int64_t hi = std::min(s.w - 1, (s.wo - 1) * S + j0 * d - s.pad_w);  // last tap's column < wo
    valid_range(k.c - lo, S, hi - lo + 1, (s.w - k.c + S - 1) / S, k.m_lo, k.m_hi);  // lo <= c + m S <= hi
    if (k.m_hi - k.m_lo < kDwPix) k.m_hi = k.m_lo;  // too few for a block: the loop below
  }
  for (int64_t r = b; r < e; ++r) {
    const int64_t n = r / s.h, ih = r % s.h;
    for (int64_t rho = 0; rho < S && blocked; ++rho) {
      const Class& k = cls[rho];
      for (int64_t m = k.m_lo; m < k.m_hi; m += kDwPix) {
        const int64_t iw = k.c + std::min(m, k.m_hi - kDwPix) * S;  // the last block ends at m_hi
        const int64_t ow = (iw + s.pad_w - k.taps.j0 * d) / S;      // dy's column for tap j0
        auto row_of = [&](int64_t i) -> const T* {
          const int64_t th = ih + s.pad_h - i * s.dil_h;
          if (th < 0 || th % s.stride_h != 0 || th / s.stride_h >= s.ho) return nullptr;
          return dy + ((n * s.ho + th / s.stride_h) * s.wo + ow) * s.o;
        };
        dw_blocks<T>(jb, nullptr, nullptr, row_of, k.taps, -(k.taps.js * d / S) * s.o, s.o,
                     dx + ((n * s.h + ih) * s.w + iw) * s.c, S * s.c, Activation::kNone);
      }
    }
    for (int64_t iw = 0; iw < s.w; ++iw) {
      if (blocked) {  // done by the blocks
        const Class& k = cls[(iw + s.pad_w) % S];
        const int64_t m = (iw - k.c) / S;
        if (m >= k.m_lo && m < k.m_hi) continue;
      }
      float* a = acc.data();
      std::fill(a, a + s.c, 0.0f);
      for (int64_t i = 0; i < s.kh; ++i) {
        const int64_t th = ih + s.pad_h - i * s.dil_h;
        if (th < 0 || th % s.stride_h != 0 || th / s.stride_h >= s.ho) continue;
        const int64_t oh = th / s.stride_h;
        for (int64_t j = 0; j < s.kw; ++j) {
          const int64_t tw = iw + s.pad_w - j * s.dil_w;
          if (tw < 0 || tw % s.stride_w != 0 || tw / s.stride_w >= s.wo) continue;
          const int64_t ow = tw / s.stride_w;
          const T* gp = dy + ((n * s.ho + oh) * s.wo + ow) * s.o;
          const float* wp = jb.wt + (i * s.kw + j) * s.o;
          if (mult == 1) {
#pragma omp simd
            for (int64_t c = 0; c < s.c; ++c) a[c] += to_float(gp[c]) * wp[c];
          } else {
            for (int64_t c = 0; c < s.c; ++c)
              for (int64_t m = 0; m < mult; ++m) a[c] += to_float(gp[c * mult + m]) * wp[c * mult + m];
          }
        }
      }
      T* dst = dx + ((n * s.h + ih) * s.w + iw) * s.c;
#pragma omp simd
      for (int64_t c = 0; c < s.c; ++c) dst[c] = from_float<T>(a[c]);
    }
  }
}

// The depthwise wgrad's pixel chunks: output rows [r0, r1) of one image, a split fixed by the
// shape (never by the thread count): every sum runs over a chunk's pixels in order, then over the
// chunks in order, whatever the threads. Each chunk takes all channels, so that its rows are
// read from memory once (a split by channels had every thread stream all of x and dy for its
// channels' share of each pixel's lines).
struct WgradChunks {
  static constexpr int64_t kTarget = 32;      // chunks in all, at most
  static constexpr int64_t kMinPixels = 128;  // per chunk, where the image has them: each register
                                              // block's set-up and final sums cost about as much
  int64_t per_image = 0, rows = 1;            // chunks per image, output rows per chunk
  explicit WgradChunks(const Conv2dShape& s) {
    if (s.ho <= 0) return;
    const int64_t want = std::min(s.ho, std::max<int64_t>(1, (kTarget + s.n - 1) / std::max<int64_t>(s.n, 1)));
    rows = std::min(s.ho, std::max((s.ho + want - 1) / want, (kMinPixels + s.wo - 1) / std::max<int64_t>(s.wo, 1)));
    per_image = (s.ho + rows - 1) / rows;
  }
  int64_t count(const Conv2dShape& s) const { return s.n * per_image; }
};

// Register-blocked K x K wgrad (multiplier 1, float32 / bfloat16) of channels [c0, c0 + 16 kVecs),
// kernel rows [R0, R1), over output rows [oh0, oh1) of image n: the sums of dy x per tap (and, with
// row 0, of dy) over those pixels in registers ((R1 - R0) K kVecs accumulators: 3x3 on 32
// channels, 5x5 on 16, 7x7 on 16 in two passes of 4 and 3 rows), then added to acc ([taps, O]) and
// bacc. Taps that read padding are skipped: kernel rows per output row, kernel columns on the
// pixels outside [w_lo, w_hi) (all K columns inside x there). Every sum runs over the pixels in
// order, as the generic loop's.
template <typename T, int K, int kVecs, int R0 = 0, int R1 = K>
FASTOPS_FORCE_INLINE void dw_wgrad_block(const DwJob& jb, int64_t c0, int64_t n, int64_t oh0, int64_t oh1,
                                         int64_t w_lo, int64_t w_hi, float* acc, float* bacc) {
  constexpr int kRows = R1 - R0;
  const Conv2dShape& s = jb.s;
  const T* x = static_cast<const T*>(jb.in) + c0;
  const T* dy = static_cast<const T*>(jb.in2) + c0;
  DwVec sum[kRows * K][kVecs] = {}, bsum[kVecs] = {};
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const T* xr[kRows];  // x's row of each kernel row R0 + i, null: padding
    for (int i = 0; i < kRows; ++i) {
      const int64_t ih = conv_in_index(oh, R0 + i, s.stride_h, s.pad_h, s.dil_h);
      xr[i] = ih < 0 || ih >= s.h ? nullptr : x + (n * s.h + ih) * s.w * s.c;
    }
    auto pixel = [&](int64_t ow, auto edge) {
      DwVec g[kVecs];
      const T* gp = dy + ((n * s.ho + oh) * s.wo + ow) * s.o;
      if constexpr (kVecs == 2) dw_load32(gp, g[0], g[1]); else g[0] = dw_load16(gp);
      if constexpr (R0 == 0) {
#pragma GCC unroll 2
        for (int v = 0; v < kVecs; ++v) bsum[v] += g[v];
      }
      const int64_t iw0 = conv_in_index(ow, 0, s.stride_w, s.pad_w, s.dil_w);
#pragma GCC unroll 7
      for (int i = 0; i < kRows; ++i) {
        if (xr[i] == nullptr) continue;
#pragma GCC unroll 7
        for (int j = 0; j < K; ++j) {
          const int64_t iw = iw0 + j * s.dil_w;
          if (decltype(edge)::value && (iw < 0 || iw >= s.w)) continue;
          const T* xp = xr[i] + iw * s.c;
          if constexpr (kVecs == 2) {
            DwVec x0, x1;
            dw_load32(xp, x0, x1);
            sum[i * K + j][0] += g[0] * x0;
            sum[i * K + j][1] += g[1] * x1;
          } else {
            sum[i * K + j][0] += g[0] * dw_load16(xp);
          }
        }
      }
    };
    for (int64_t ow = 0; ow < w_lo; ++ow) pixel(ow, std::true_type{});
    for (int64_t ow = w_lo; ow < w_hi; ++ow) pixel(ow, std::false_type{});
    for (int64_t ow = w_hi; ow < s.wo; ++ow) pixel(ow, std::true_type{});
  }
  alignas(64) float out[16 * kVecs];
  for (int t = 0; t < kRows * K; ++t) {
    dw_channel_order<T>(sum[t], out);
    for (int l = 0; l < 16 * kVecs; ++l) acc[(R0 * K + t) * s.o + c0 + l] += out[l];
  }
  if constexpr (R0 == 0) {
    dw_channel_order<T>(bsum, out);
    for (int l = 0; l < 16 * kVecs; ++l) bacc[c0 + l] += out[l];
  }
}

// NHWC wgrad (and dbias) of pixel chunks [b, e) (WgradChunks), float32 sums in order. out: per
// chunk, float32 [KH KW + 1, O] tap-major accumulators (zeroed here), the bias sums last.
template <typename T>
FASTOPS_FORCE_INLINE void dw_wgrad_nhwc(const DwJob& jb, int64_t b, int64_t e) {
  const Conv2dShape& s = jb.s;
  const T* x = static_cast<const T*>(jb.in);
  const T* dy = static_cast<const T*>(jb.in2);
  const int64_t mult = s.o / s.c, taps = s.kh * s.kw;
  const WgradChunks chunks(s);
  const bool blocks = mult == 1 && s.kh == s.kw && (s.kh == 3 || s.kh == 5 || s.kh == 7) && !std::is_same_v<T, Half>;
  int64_t w_lo, w_hi;  // output columns whose taps all lie inside x (w_lo <= w_hi)
  inner_range(s.pad_w, s.stride_w, s.dil_w, s.kw, s.w, s.wo, w_lo, w_hi);
  for (int64_t chunk = b; chunk < e; ++chunk) {
    const int64_t n = chunk / chunks.per_image, oh0 = chunk % chunks.per_image * chunks.rows;
    const int64_t oh1 = std::min(s.ho, oh0 + chunks.rows);
    float* acc = static_cast<float*>(jb.out) + chunk * (taps + 1) * s.o;
    float* bacc = acc + taps * s.o;
    std::fill(acc, bacc + s.o, 0.0f);
    int64_t c0 = 0;  // channels [0, c0) on the register blocks, the rest on the generic loop
    if (blocks && s.kh == 7) {  // 49 taps: rows 0-3, then 4-6, each pass over the chunk (dy read twice)
      for (; c0 + 16 <= s.o; c0 += 16) {
        dw_wgrad_block<T, 7, 1, 0, 4>(jb, c0, n, oh0, oh1, w_lo, w_hi, acc, bacc);
        dw_wgrad_block<T, 7, 1, 4, 7>(jb, c0, n, oh0, oh1, w_lo, w_hi, acc, bacc);
      }
    } else if (blocks && s.kh == 5) {
      for (; c0 + 16 <= s.o; c0 += 16) dw_wgrad_block<T, 5, 1>(jb, c0, n, oh0, oh1, w_lo, w_hi, acc, bacc);
    } else if (blocks) {
      for (; c0 + 32 <= s.o; c0 += 32) dw_wgrad_block<T, 3, 2>(jb, c0, n, oh0, oh1, w_lo, w_hi, acc, bacc);
      for (; c0 + 16 <= s.o; c0 += 16) dw_wgrad_block<T, 3, 1>(jb, c0, n, oh0, oh1, w_lo, w_hi, acc, bacc);
    }
    if (c0 == s.o) continue;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = 0; ow < s.wo; ++ow) {
        const T* gp = dy + ((n * s.ho + oh) * s.wo + ow) * s.o;
#pragma omp simd
        for (int64_t o = c0; o < s.o; ++o) bacc[o] += to_float(gp[o]);
        for (int64_t i = 0; i < s.kh; ++i) {
          const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
          if (ih < 0 || ih >= s.h) continue;
          for (int64_t j = 0; j < s.kw; ++j) {
            const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
            if (iw < 0 || iw >= s.w) continue;
            const T* xp = x + ((n * s.h + ih) * s.w + iw) * s.c;
            float* ap = acc + (i * s.kw + j) * s.o;
            if (mult == 1) {
#pragma omp simd
              for (int64_t o = c0; o < s.o; ++o) ap[o] += to_float(gp[o]) * to_float(xp[o]);
            } else {
              for (int64_t o = c0; o < s.o; ++o) ap[o] += to_float(gp[o]) * to_float(xp[o / mult]);
            }
          }
        }
      }
    }
  }
}

using DwFn = void (*)(const DwJob&, int64_t, int64_t);

// The optional arguments: the kernel's further template arguments on the AVX-512 entry (the
// others take their defaults).
#define FASTOPS_CONV_ENTRIES(name, ...)                                                                \
  template <typename T>                                                                                \
  FASTOPS_TARGET_AVX512 void name##_avx512(const DwJob& j, int64_t b, int64_t e) {                     \
    name<T __VA_OPT__(, ) __VA_ARGS__>(j, b, e);                                                       \
  }                                                                                                    \
  template <typename T>                                                                                \
  FASTOPS_TARGET_AVX2 void name##_avx2(const DwJob& j, int64_t b, int64_t e) { name<T>(j, b, e); }     \
  template <typename T>                                                                                \
  FASTOPS_TARGET_BASELINE void name##_base(const DwJob& j, int64_t b, int64_t e) { name<T>(j, b, e); } \
  template <typename T>                                                                                \
  DwFn name##_entry() { return select_isa<DwFn>(name##_base<T>, name##_avx2<T>, name##_avx512<T>); }

FASTOPS_CONV_ENTRIES(dw_forward_nhwc, true)
FASTOPS_CONV_ENTRIES(dw_forward_nchw)
FASTOPS_CONV_ENTRIES(dw_dgrad_nhwc)
FASTOPS_CONV_ENTRIES(dw_wgrad_nhwc)
#undef FASTOPS_CONV_ENTRIES

// Runs fn over [0, items) split in equal static chunks (multiples of align) across threads.
void parallel_range(DwFn fn, const DwJob& job, int64_t items, int64_t align = 1) {
#pragma omp parallel
  {
    int64_t b, e;
    thread_range(items, align, b, e);
    if (b < e) fn(job, b, e);
  }
}

// The weight [O, KH KW] as float32 [KH KW, O].
template <typename T>
std::vector<float> taps_major(const Conv2dShape& s, const T* w) {
  const int64_t taps = s.kh * s.kw;
  std::vector<float> wt(taps * s.o);
  for (int64_t o = 0; o < s.o; ++o)
    for (int64_t t = 0; t < taps; ++t) wt[t * s.o + o] = to_float(w[o * taps + t]);
  return wt;
}

// y = act(depthwise conv(x) + bias) for shape s, with the weight as float32 taps-major (taps_major).
template <typename T>
void dw_forward_taps(const Conv2dShape& s, const void* x, const std::vector<float>& wt, const void* bias, void* y,
                     Activation act) {
  const std::vector<float> wl = dw_lanes<T>(wt.data(), s.kh * s.kw, s.o);
  DwJob job{s, x, nullptr, bias, y, wt.data(), act, wl.empty() ? nullptr : wl.data()};
  // An output of a quarter of the last-level cache or more is not there when the next layer reads
  // it (measured, README): it is written with streaming stores, without reading its lines first.
  job.stream = s.n * s.ho * s.wo * s.o * int64_t(sizeof(T)) >= last_level_cache_bytes() / 4;
  if (s.channels_last) {
    parallel_range(dw_forward_nhwc_entry<T>(), job, s.n * s.ho);
  } else {
    parallel_range(dw_forward_nchw_entry<T>(), job, s.n * s.o);
  }
}

template <typename T>
void dw_forward(const Conv2dForwardParams& p) {
  dw_forward_taps<T>(p.s, p.x, taps_major(p.s, static_cast<const T*>(p.w)), p.bias, p.y, p.activation);
}

template <typename T>
void dw_backward(const Conv2dBackwardParams& p) {
  const Conv2dShape& s = p.s;
  const int64_t taps = s.kh * s.kw;
  const bool as_forward = s.o == s.c && s.stride_h == 1 && s.stride_w == 1 &&
                          s.pad_h <= (s.kh - 1) * s.dil_h && s.pad_w <= (s.kw - 1) * s.dil_w;
  // wgrad first: dgrad then reads dy again while it is still in cache, and dx's fresh lines do not
  // evict x and dy before wgrad reads them (one call, 3x3 batch 8 NHWC: 0.548 -> 0.481 ms at 512@14
  // float32, 1.582 -> 1.490 ms at 128@56 bfloat16)
  if (p.dw || p.dbias) {
    const int64_t chunks = WgradChunks(s).count(s), per_chunk = (taps + 1) * s.o;
    // each chunk's sums are zeroed by the thread that runs it
    const std::unique_ptr<float[]> part(new float[std::max<int64_t>(chunks * per_chunk, 1)]);
    std::vector<float> acc(per_chunk, 0.0f);
    DwJob job{s, p.x, p.dy, nullptr, part.get(), nullptr};
    parallel_range(dw_wgrad_nhwc_entry<T>(), job, chunks);
#pragma omp parallel for schedule(static) if (chunks * per_chunk >= (1 << 16))
    for (int64_t i = 0; i < per_chunk; ++i)  // the chunks' sums in order
      for (int64_t c = 0; c < chunks; ++c) acc[i] += part[c * per_chunk + i];
    if (p.dw) {
      T* dw = static_cast<T*>(p.dw);
      for (int64_t o = 0; o < s.o; ++o)
        for (int64_t t = 0; t < taps; ++t) dw[o * taps + t] = from_float<T>(acc[t * s.o + o]);
    }
    if (p.dbias) {
      T* db = static_cast<T*>(p.dbias);
      for (int64_t o = 0; o < s.o; ++o) db[o] = from_float<T>(acc[taps * s.o + o]);
    }
  }
  if (p.dx && as_forward) {
    // stride 1: dx is the forward convolution of dy with the taps flipped in both directions and
    // padding (k - 1) dil - pad, so it runs on the forward's kernels
    const std::vector<float> wt = taps_major(s, static_cast<const T*>(p.w));
    std::vector<float> flipped(wt.size());
    for (int64_t t = 0; t < taps; ++t) std::copy_n(&wt[(taps - 1 - t) * s.o], s.o, &flipped[t * s.o]);
    Conv2dShape f = s;
    f.h = s.ho, f.w = s.wo, f.ho = s.h, f.wo = s.w;
    f.pad_h = (s.kh - 1) * s.dil_h - s.pad_h, f.pad_w = (s.kw - 1) * s.dil_w - s.pad_w;
    dw_forward_taps<T>(f, p.dy, flipped, nullptr, p.dx, Activation::kNone);
  } else if (p.dx) {
    const std::vector<float> wt = taps_major(s, static_cast<const T*>(p.w));
    const std::vector<float> wl = dw_lanes<T>(wt.data(), taps, s.o);
    DwJob job{s, p.dy, nullptr, nullptr, p.dx, wt.data(), Activation::kNone, wl.empty() ? nullptr : wl.data()};
    parallel_range(dw_dgrad_nhwc_entry<T>(), job, s.n * s.h);
  }
}

// w [O, Cg, KH KW] -> [O, KH KW, Cg] (the NHWC K order), for the paths that read that order.
template <typename T>
std::vector<T> weight_nhwc(const Conv2dShape& s, const void* w) {
  std::vector<T> out(s.o * s.k());
  transpose_batched(w, out.data(), s.o, s.cg(), s.kh * s.kw, static_cast<int>(sizeof(T)));
  return out;
}

template <typename T>
void forward_typed(const Conv2dForwardParams& p) {
  if (p.w_nchw && p.s.channels_last && !p.s.depthwise() && p.s.kh * p.s.kw > 1 &&
      !PackedB::segments_fit(p.s.cg(), p.s.dtype)) {  // pairs would straddle taps: reorder a copy
    const std::vector<T> wt = weight_nhwc<T>(p.s, p.w);
    Conv2dForwardParams q = p;
    q.w = wt.data();
    q.w_nchw = false;
    return forward_typed<T>(q);
  }
  if (p.s.depthwise()) {
    dw_forward<T>(p);
  } else {
    forward_gemm<T>(p);
  }
}

template <typename T>
void backward_typed(const Conv2dBackwardParams& p) {
  if (p.w_nchw && p.s.channels_last && p.dx && !p.s.depthwise() && p.s.kh * p.s.kw > 1) {
    Conv2dBackwardParams d = p;  // dgrad first, with the weight in a layout its path reads
    d.dw = d.dbias = nullptr;
    std::vector<T> wt;
    if (!dgrad_as_forward<T>(d)) {
      wt = weight_nhwc<T>(p.s, p.w);
      d.w = wt.data();
      d.w_nchw = false;
      dgrad_gemm<T>(d);
    }
    Conv2dBackwardParams rest = p;  // wgrad and dbias do not read w
    rest.dx = nullptr;
    rest.w_nchw = false;
    return backward_typed<T>(rest);
  }
  if (p.s.depthwise() && p.s.channels_last) {
    dw_backward<T>(p);
    return;
  }
  if (p.dx) dgrad_gemm<T>(p);
  if (p.dw) wgrad_gemm<T>(p);
  if (p.dbias) bias_grad(p.s, static_cast<const T*>(p.dy), static_cast<T*>(p.dbias));
}

}  // namespace

namespace {

// Tile of ni x nj (at most kT x kT) elements at (i0, j0) of one matrix: read along j, write along i.
// kRegs (AVX-512): tiles go through the register transpose (transpose16_u32): full tiles of
// 32-bit elements in place, the rest (16-bit elements as words of two rows, w[i / 2][j] = src[i][j] |
// src[i + 1][j] << 16, which transposed are dst's rows; partial tiles) through zero-padded tiles in L1.
template <typename E, bool kRegs>
FASTOPS_FORCE_INLINE void transpose_tile(const E* src, E* dst, int64_t rows, int64_t cols, int64_t i0, int64_t j0,
                                         int64_t ni, int64_t nj) {
  constexpr int64_t kT = 32;
  if constexpr (kRegs && sizeof(E) == 4) {
    if (ni == kT && nj == kT) {
      for (int64_t a = 0; a < kT; a += 16)
        for (int64_t b = 0; b < kT; b += 16)
          transpose16_u32(reinterpret_cast<const uint32_t*>(src + (i0 + a) * cols + j0 + b), cols,
                          reinterpret_cast<uint32_t*>(dst + (j0 + b) * rows + i0 + a), rows);
      return;
    }
    alignas(64) uint32_t in[kT][kT] = {}, out[kT][kT];
    for (int64_t i = 0; i < ni; ++i) std::memcpy(in[i], src + (i0 + i) * cols + j0, nj * 4);
    for (int64_t a = 0; a < ni; a += 16)
      for (int64_t b = 0; b < nj; b += 16) transpose16_u32(&in[a][b], kT, &out[b][a], kT);
    for (int64_t j = 0; j < nj; ++j) std::memcpy(dst + (j0 + j) * rows + i0, out[j], ni * 4);
    return;
  }
  if constexpr (kRegs && sizeof(E) == 2) {
    alignas(64) uint32_t w[kT / 2][kT] = {}, out[kT][kT / 2];
    for (int64_t i = 0; 2 * i < ni; ++i) {
      const uint16_t* r0 = reinterpret_cast<const uint16_t*>(src + (i0 + 2 * i) * cols + j0);
      if (2 * i + 1 < ni) {
        const uint16_t* r1 = r0 + cols;
#pragma omp simd
        for (int64_t j = 0; j < nj; ++j) w[i][j] = uint32_t(r0[j]) | uint32_t(r1[j]) << 16;
      } else {
        for (int64_t j = 0; j < nj; ++j) w[i][j] = r0[j];
      }
    }
    for (int64_t b = 0; b < nj; b += 16) transpose16_u32(&w[0][b], kT, &out[b][0], kT / 2);
    for (int64_t j = 0; j < nj; ++j) std::memcpy(dst + (j0 + j) * rows + i0, out[j], ni * 2);
    return;
  }
  if (ni == kT && nj == kT) {  // full tile: fixed trip counts
    E t[kT][kT];
    for (int64_t i = 0; i < kT; ++i)
#pragma omp simd
      for (int64_t j = 0; j < kT; ++j) t[j][i] = src[(i0 + i) * cols + j0 + j];
    for (int64_t j = 0; j < kT; ++j)
#pragma omp simd
      for (int64_t i = 0; i < kT; ++i) dst[(j0 + j) * rows + i0 + i] = t[j][i];
    return;
  }
  for (int64_t j = 0; j < nj; ++j)
    for (int64_t i = 0; i < ni; ++i) dst[(j0 + j) * rows + i0 + i] = src[(i0 + i) * cols + j0 + j];
}

// Tiles [t0, t1) of the batch, numbered matrix major, then tile row, then tile column.
template <typename E, bool kRegs = false>
FASTOPS_FORCE_INLINE void transpose_range(const E* src, E* dst, int64_t rows, int64_t cols, int64_t t0, int64_t t1) {
  constexpr int64_t kT = 32;
  const int64_t ti = (rows + kT - 1) / kT, tj = (cols + kT - 1) / kT, per = ti * tj;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / per, i0 = t % per / tj * kT, j0 = t % tj * kT;
    transpose_tile<E, kRegs>(src + b * rows * cols, dst + b * rows * cols, rows, cols, i0, j0, std::min(kT, rows - i0),
                   std::min(kT, cols - j0));
  }
}

template <typename E>
FASTOPS_TARGET_AVX512 void transpose_range_avx512(const E* src, E* dst, int64_t rows, int64_t cols, int64_t t0,
                                                  int64_t t1) {
  transpose_range<E, true>(src, dst, rows, cols, t0, t1);
}
template <typename E>
FASTOPS_TARGET_AVX2 void transpose_range_avx2(const E* src, E* dst, int64_t rows, int64_t cols, int64_t t0, int64_t t1) {
  transpose_range(src, dst, rows, cols, t0, t1);
}
template <typename E>
FASTOPS_TARGET_BASELINE void transpose_range_base(const E* src, E* dst, int64_t rows, int64_t cols, int64_t t0,
                                                  int64_t t1) {
  transpose_range(src, dst, rows, cols, t0, t1);
}

template <typename E>
void transpose_typed(const E* src, E* dst, int64_t batch, int64_t rows, int64_t cols) {
  using Fn = void (*)(const E*, E*, int64_t, int64_t, int64_t, int64_t);
  const Fn fn = select_isa<Fn>(transpose_range_base<E>, transpose_range_avx2<E>, transpose_range_avx512<E>);
  const int64_t tiles = batch * ((rows + 31) / 32) * ((cols + 31) / 32);
  const bool par = !omp_in_parallel() && batch * rows * cols >= (int64_t(1) << 15);
#pragma omp parallel if (par)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    fn(src, dst, rows, cols, tiles * t / nt, tiles * (t + 1) / nt);
  }
}

}  // namespace

void transpose_batched(const void* src, void* dst, int64_t batch, int64_t rows, int64_t cols, int elem_bytes) {
  if (batch * rows * cols == 0) return;
  if (elem_bytes == 2) {
    transpose_typed(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), batch, rows, cols);
  } else {
    transpose_typed(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), batch, rows, cols);
  }
}

namespace {

// Whether forward_gemm writes an NCHW y from its store (y_nchw): the NHWC implicit GEMM, with
// images of whole 14-row register tiles or large enough that a partial tile costs little (the
// blocks may not cross images).
bool nchw_store_fused(const Conv2dShape& s) {
  const int64_t P = s.ho * s.wo;
  return s.channels_last && !s.depthwise() && !s.pointwise() && (P % 14 == 0 || P >= 14 * 16);
}

}  // namespace

void conv2d_forward(const Conv2dForwardParams& p) {
  if (p.s.n * p.s.o * p.s.ho * p.s.wo == 0) return;
  if (p.y_nchw && p.s.channels_last && !nchw_store_fused(p.s)) {  // NHWC into a buffer, then transposed
    const int64_t elem = p.s.dtype == DType::kFloat32 ? 4 : 2, P = p.s.ho * p.s.wo;
    const Workspace<char> tmp(static_cast<size_t>(p.s.n * p.s.o * P * elem));
    Conv2dForwardParams q = p;
    q.y = tmp.data();
    q.y_nchw = false;
    conv2d_forward(q);
    transpose_batched(tmp.data(), p.y, p.s.n, P, p.s.o, static_cast<int>(elem));
    return;
  }
  switch (p.s.dtype) {
    case DType::kFloat16: return forward_typed<Half>(p);
    case DType::kBFloat16: return forward_typed<BFloat16>(p);
    default: return forward_typed<float>(p);
  }
}

void conv2d_backward(const Conv2dBackwardParams& p) {
  switch (p.s.dtype) {
    case DType::kFloat16: return backward_typed<Half>(p);
    case DType::kBFloat16: return backward_typed<BFloat16>(p);
    default: return backward_typed<float>(p);
  }
}

}  // namespace cpu
}  // namespace fastops
