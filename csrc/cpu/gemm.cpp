// CPU GEMM (fastops/gemm.h): reference implementation, correct for every stride and dtype.
// OpenMP over (batch, row); each output is a float32 sum over p in order, so results do not
// depend on the thread count.
#include "fastops/gemm.h"

#include "fastops/math/activation.h"
#include "fastops/storage.h"

namespace fastops {
namespace cpu {
namespace {

template <typename T>
FASTOPS_FORCE_INLINE float load(const void* base, int64_t off) {
  return to_float(static_cast<const T*>(base)[off]);
}

template <typename AB, typename C>
void gemm_ref(const GemmParams& p) {
  const int64_t rows = p.batch * p.m;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / p.m, i = r % p.m;
    const int64_t a_off = b * p.a.stride_batch + i * p.a.stride_row;
    const int64_t b_off = b * p.b.stride_batch;
    C* c = static_cast<C*>(p.c) + b * p.c_stride_batch + i * p.c_stride_row;
    for (int64_t j = 0; j < p.n; ++j) {
      float acc = 0.0f;
      for (int64_t q = 0; q < p.k; ++q)
        acc += load<AB>(p.a.ptr, a_off + q * p.a.stride_col) *
               load<AB>(p.b.ptr, b_off + q * p.b.stride_row + j * p.b.stride_col);
      float v = p.alpha * acc;
      if (p.beta != 0.0f) v += p.beta * to_float(c[j * p.c_stride_col]);
      if (p.bias) v += load<C>(p.bias, p.bias_per_row ? i : j);
      c[j * p.c_stride_col] = from_float<C>(math::activate(p.activation, v));
    }
  }
}

template <typename AB>
void gemm_ab(const GemmParams& p) {
  switch (p.c_dtype) {
    case DType::kFloat16: return gemm_ref<AB, Half>(p);
    case DType::kBFloat16: return gemm_ref<AB, BFloat16>(p);
    default: return gemm_ref<AB, float>(p);
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

}  // namespace cpu
}  // namespace fastops
