// Softmax forward and backward on the CPU: OpenMP over rows, SIMD through the ISA entries.
//
// Rows (inner == 1) are reduced in three vectorised passes: max; exp(x - max) stored and
// summed; scale by 1 / sum. Strided rows (inner > 1) are processed a block of kColumns
// adjacent columns at a time, so every pass still reads contiguous memory.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastops/math/softmax.h"
#include "fastops/softmax.h"
#include "fastops/storage.h"
#include "isa.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastops {
namespace cpu {
namespace {

constexpr int64_t kColumns = 64;             // columns per block in the strided path
constexpr int64_t kParallelMinWork = 16384;  // elements below which one thread is faster

// ---- rows: x[r, 0:dim], contiguous -------------------------------------------------------

// exp(x - max) is computed once per element: pass 2 stores it in `buf` (the float32 output
// itself, or a float32 scratch row for 16-bit outputs) while summing, pass 3 scales by 1 / sum.
template <typename T>
FASTOPS_FORCE_INLINE void forward_rows(const T* x, T* y, float* scratch, int64_t begin, int64_t end,
                                       int64_t dim) {
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    float* buf = std::is_same_v<T, float> ? reinterpret_cast<float*>(yr) : scratch;
    float m = math::neg_infinity();
#pragma omp simd reduction(max : m)
    for (int64_t d = 0; d < dim; ++d) m = std::max(m, to_float(xr[d]));
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < dim; ++d) {
      const float e = math::exp_f32(to_float(xr[d]) - m);
      buf[d] = e;
      s += e;
    }
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) yr[d] = from_float<T>(buf[d] * inv);
  }
}

template <typename T>
FASTOPS_FORCE_INLINE void backward_rows(const T* dy, const T* y, T* dx, int64_t begin, int64_t end,
                                        int64_t dim) {
  for (int64_t r = begin; r < end; ++r) {
    const T* dyr = dy + r * dim;
    const T* yr = y + r * dim;
    T* dxr = dx + r * dim;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < dim; ++d) dot += to_float(dyr[d]) * to_float(yr[d]);
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d)
      dxr[d] = from_float<T>(math::softmax_grad(to_float(dyr[d]), to_float(yr[d]), dot));
  }
}

// ---- strided rows: x[o, 0:dim, i], blocks of adjacent i ------------------------------------

// Block `b` of the (outer x ceil(inner / kColumns)) blocks: its first element and width.
struct ColumnBlock {
  int64_t base;
  int64_t width;
};

FASTOPS_FORCE_INLINE ColumnBlock column_block(int64_t b, int64_t dim, int64_t inner) {
  const int64_t per_outer = (inner + kColumns - 1) / kColumns;
  const int64_t o = b / per_outer;
  const int64_t i0 = (b % per_outer) * kColumns;
  return ColumnBlock{o * dim * inner + i0, std::min(kColumns, inner - i0)};
}

template <typename T>
FASTOPS_FORCE_INLINE void forward_columns(const T* x, T* y, int64_t begin, int64_t end, int64_t dim,
                                          int64_t inner) {
  float m[kColumns];
  float s[kColumns];
  for (int64_t b = begin; b < end; ++b) {
    const ColumnBlock blk = column_block(b, dim, inner);
    const T* xb = x + blk.base;
    T* yb = y + blk.base;
    const int64_t w = blk.width;
    std::fill(m, m + w, math::neg_infinity());
    std::fill(s, s + w, 0.0f);
    for (int64_t d = 0; d < dim; ++d) {
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) m[i] = std::max(m[i], to_float(xb[d * inner + i]));
    }
    for (int64_t d = 0; d < dim; ++d) {
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) s[i] += math::exp_f32(to_float(xb[d * inner + i]) - m[i]);
    }
    for (int64_t d = 0; d < dim; ++d) {
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) {
        const math::SoftmaxState st{m[i], s[i]};
        yb[d * inner + i] = from_float<T>(math::softmax_output(to_float(xb[d * inner + i]), st));
      }
    }
  }
}

template <typename T>
FASTOPS_FORCE_INLINE void backward_columns(const T* dy, const T* y, T* dx, int64_t begin, int64_t end,
                                           int64_t dim, int64_t inner) {
  float dot[kColumns];
  for (int64_t b = begin; b < end; ++b) {
    const ColumnBlock blk = column_block(b, dim, inner);
    const int64_t w = blk.width;
    std::fill(dot, dot + w, 0.0f);
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t off = blk.base + d * inner;
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) dot[i] += to_float(dy[off + i]) * to_float(y[off + i]);
    }
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t off = blk.base + d * inner;
#pragma omp simd
      for (int64_t i = 0; i < w; ++i)
        dx[off + i] = from_float<T>(math::softmax_grad(to_float(dy[off + i]), to_float(y[off + i]), dot[i]));
    }
  }
}

// ---- one entry per ISA: processes work items [begin, end) ------------------------------------

template <typename T>
struct Entries {
  using Forward = void (*)(const T*, T*, float*, int64_t, int64_t, int64_t, int64_t);
  using Backward = void (*)(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);
};

template <typename T>
FASTOPS_FORCE_INLINE void forward_items(const T* x, T* y, float* scratch, int64_t begin, int64_t end,
                                        int64_t dim, int64_t inner) {
  if (inner == 1) {
    forward_rows(x, y, scratch, begin, end, dim);
  } else {
    forward_columns(x, y, begin, end, dim, inner);
  }
}

template <typename T>
FASTOPS_FORCE_INLINE void backward_items(const T* dy, const T* y, T* dx, int64_t begin, int64_t end,
                                         int64_t dim, int64_t inner) {
  if (inner == 1) {
    backward_rows(dy, y, dx, begin, end, dim);
  } else {
    backward_columns(dy, y, dx, begin, end, dim, inner);
  }
}

template <typename T>
FASTOPS_TARGET_AVX512 void forward_avx512(const T* x, T* y, float* s, int64_t b, int64_t e, int64_t d,
                                         int64_t i) {
  forward_items(x, y, s, b, e, d, i);
}
template <typename T>
FASTOPS_TARGET_AVX2 void forward_avx2(const T* x, T* y, float* s, int64_t b, int64_t e, int64_t d,
                                         int64_t i) {
  forward_items(x, y, s, b, e, d, i);
}
template <typename T>
FASTOPS_TARGET_BASELINE void forward_baseline(const T* x, T* y, float* s, int64_t b, int64_t e, int64_t d,
                                         int64_t i) {
  forward_items(x, y, s, b, e, d, i);
}
template <typename T>
FASTOPS_TARGET_AVX512 void backward_avx512(const T* dy, const T* y, T* dx, int64_t b, int64_t e, int64_t d,
                                           int64_t i) {
  backward_items(dy, y, dx, b, e, d, i);
}
template <typename T>
FASTOPS_TARGET_AVX2 void backward_avx2(const T* dy, const T* y, T* dx, int64_t b, int64_t e, int64_t d,
                                       int64_t i) {
  backward_items(dy, y, dx, b, e, d, i);
}
template <typename T>
FASTOPS_TARGET_BASELINE void backward_baseline(const T* dy, const T* y, T* dx, int64_t b, int64_t e,
                                               int64_t d, int64_t i) {
  backward_items(dy, y, dx, b, e, d, i);
}

// Work items: rows when inner == 1, else column blocks.
int64_t num_items(int64_t outer, int64_t inner) {
  return inner == 1 ? outer : outer * ((inner + kColumns - 1) / kColumns);
}

// Runs fn(begin, end) over [0, items) split across OpenMP threads when the work is large.
template <typename Fn>
void parallel_items(int64_t items, int64_t work, const Fn& fn) {
  if (work < kParallelMinWork) {
    fn(int64_t{0}, items);
    return;
  }
#pragma omp parallel
  {
#if defined(_OPENMP)
    const int64_t nt = omp_get_num_threads();
    const int64_t t = omp_get_thread_num();
#else
    const int64_t nt = 1, t = 0;
#endif
    const int64_t chunk = (items + nt - 1) / nt;
    const int64_t begin = std::min(items, t * chunk);
    const int64_t end = std::min(items, begin + chunk);
    if (begin < end) fn(begin, end);
  }
}

template <typename T>
void forward_typed(const SoftmaxParams& p) {
  const auto fn = select_isa<typename Entries<T>::Forward>(forward_baseline<T>, forward_avx2<T>,
                                                           forward_avx512<T>);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  // 16-bit outputs keep exp(x - max) of one row in float32 scratch; float32 uses y itself.
  const bool scratch_needed = !std::is_same_v<T, float> && p.inner == 1;
  parallel_items(num_items(p.outer, p.inner), p.outer * p.dim * p.inner, [&](int64_t b, int64_t e) {
    std::vector<float> scratch(scratch_needed ? p.dim : 0);
    fn(x, y, scratch.data(), b, e, p.dim, p.inner);
  });
}

template <typename T>
void backward_typed(const SoftmaxBackwardParams& p) {
  const auto fn = select_isa<typename Entries<T>::Backward>(backward_baseline<T>, backward_avx2<T>,
                                                            backward_avx512<T>);
  const T* dy = static_cast<const T*>(p.dy);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  parallel_items(num_items(p.outer, p.inner), p.outer * p.dim * p.inner,
                 [&](int64_t b, int64_t e) { fn(dy, y, dx, b, e, p.dim, p.inner); });
}

}  // namespace

void softmax_forward(const SoftmaxParams& p) {
  if (p.outer * p.dim * p.inner == 0) return;
  switch (p.dtype) {
    case DType::kFloat32: return forward_typed<float>(p);
    case DType::kFloat16: return forward_typed<Half>(p);
    case DType::kBFloat16: return forward_typed<BFloat16>(p);
  }
}

void softmax_backward(const SoftmaxBackwardParams& p) {
  if (p.outer * p.dim * p.inner == 0) return;
  switch (p.dtype) {
    case DType::kFloat32: return backward_typed<float>(p);
    case DType::kFloat16: return backward_typed<Half>(p);
    case DType::kBFloat16: return backward_typed<BFloat16>(p);
  }
}

}  // namespace cpu
}  // namespace fastops
