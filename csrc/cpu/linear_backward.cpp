// Pointwise half of the linear + activation backward (fastops/linear.h): dz = grad * act'(z) and
// the bias gradient's column sums in one pass over grad and z, so the backward reads them once
// instead of running activation_grad's dozen torch ops plus a separate column reduction.
//
// AVX-512: 16 columns per step with vec_math.h (a masked vector for the tail of a row); other
// ISAs: the scalar math::activate_grad. Column sums are float32 in row order, each column owned
// by one thread (OpenMP over column ranges), so they do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "fastops/linear.h"
#include "fastops/math/activation.h"
#include "fastops/storage.h"
#include "isa.h"
#include "vec_math.h"

namespace fastops {
namespace cpu {
namespace {

struct Rows {
  const void* grad;
  const void* z;
  void* dz;
  int64_t grad_stride, z_stride, dz_stride;
};

template <typename T>
struct RowPtrs {
  const T* grad;
  const T* z;
  T* dz;
};
template <typename T>
FASTOPS_FORCE_INLINE RowPtrs<T> row(const Rows& a, int64_t i) {
  return {static_cast<const T*>(a.grad) + i * a.grad_stride, static_cast<const T*>(a.z) + i * a.z_stride,
          static_cast<T*>(a.dz) + i * a.dz_stride};
}

// Rows [r0, r1), columns [c0, c1); acc (indexed from c0) gets the rounded dz when not null.
template <typename T, Activation kAct>
FASTOPS_FORCE_INLINE void rows_scalar(const Rows& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float* acc) {
  for (int64_t i = r0; i < r1; ++i) {
    const auto [g, z, d] = row<T>(a, i);
    for (int64_t j = c0; j < c1; ++j) {
      d[j] = from_float<T>(to_float(g[j]) * math::activate_grad(kAct, to_float(z[j])));
      if (acc != nullptr) acc[j - c0] += to_float(d[j]);
    }
  }
}

#if FASTOPS_HAVE_X86_PATHS
template <typename T, Activation kAct>
FASTOPS_VEC512 void rows_avx512(const Rows& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float* acc) {
  for (int64_t i = r0; i < r1; ++i) {
    const auto [g, z, d] = row<T>(a, i);
    for (int64_t j = c0; j < c1; j += 16) {
      const __mmask16 m = vec512::first_lanes(static_cast<int>(std::min<int64_t>(16, c1 - j)));
      vec512::store(d + j, m, vec512::load(g + j, m) * vec512::activate_grad<kAct>(vec512::load(z + j, m)));
      if (acc != nullptr) {
        float* s = acc + (j - c0);
        _mm512_mask_storeu_ps(s, m, _mm512_maskz_loadu_ps(m, s) + vec512::load(d + j, m));  // rounded dz
      }
    }
  }
}
#endif

template <typename T, Activation kAct>
FASTOPS_TARGET_BASELINE void run_baseline(const Rows& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float* acc) {
  rows_scalar<T, kAct>(a, r0, r1, c0, c1, acc);
}

#if FASTOPS_HAVE_X86_PATHS
template <typename T, Activation kAct>
FASTOPS_TARGET_AVX512 void run_avx512(const Rows& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float* acc) {
  rows_avx512<T, kAct>(a, r0, r1, c0, c1, acc);
}
#endif

using RunFn = void (*)(const Rows&, int64_t, int64_t, int64_t, int64_t, float*);

template <typename T, Activation kAct>
RunFn pick() {
#if FASTOPS_HAVE_X86_PATHS
  if (active_isa() == Isa::kAvx512) return run_avx512<T, kAct>;
#endif
  return run_baseline<T, kAct>;
}

template <typename T>
RunFn pick_act(Activation act) {
  return math::with_activation(act, [](auto a) { return pick<T, decltype(a)::value>(); });
}

template <typename T>
void backward_typed(Activation act, int64_t rows, int64_t cols, const Rows& a, void* dbias) {
  const RunFn run = pick_act<T>(act);
  const bool par = !omp_in_parallel() && rows * cols >= (int64_t(1) << 15);
  const int max_threads = par ? omp_get_max_threads() : 1;
  if (dbias == nullptr) {
#pragma omp parallel for schedule(static) num_threads(max_threads)
    for (int64_t i = 0; i < rows; ++i) run(a, i, i + 1, 0, cols, nullptr);
    return;
  }
  std::vector<float> acc(static_cast<size_t>(cols), 0.0f);
  const int64_t blocks = (cols + 15) / 16;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads, blocks)));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t c0 = 16 * (blocks * t / n), c1 = std::min(cols, 16 * (blocks * (t + 1) / n));
    if (c0 < c1) run(a, 0, rows, c0, c1, acc.data() + c0);
  }
  T* db = static_cast<T*>(dbias);
  for (int64_t j = 0; j < cols; ++j) db[j] = from_float<T>(acc[j]);
}

}  // namespace

void activation_backward(DType dtype, Activation act, int64_t rows, int64_t cols, const void* grad,
                         int64_t grad_stride, const void* z, int64_t z_stride, void* dz, int64_t dz_stride,
                         void* dbias) {
  if (cols <= 0) return;
  const Rows a{grad, z, dz, grad_stride, z_stride, dz_stride};
  switch (dtype) {
    case DType::kFloat16: return backward_typed<Half>(act, rows, cols, a, dbias);
    case DType::kBFloat16: return backward_typed<BFloat16>(act, rows, cols, a, dbias);
    default: return backward_typed<float>(act, rows, cols, a, dbias);
  }
}

}  // namespace cpu
}  // namespace fastops
