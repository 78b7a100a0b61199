// The pointwise half of the linear + activation backward, torch-free (csrc/cpu/linear_backward.cpp).
#pragma once

#include <cstdint>

#include "fastops/dtype.h"
#include "fastops/gemm.h"

namespace fastops {
namespace cpu {

// dz[i, j] = grad[i, j] * act'(z[i, j]) rounded to `dtype` (grad, z, dz and dbias share it), for
// i < rows, j < cols (row strides in elements, columns contiguous), where z is the
// pre-activation (relu: z or its output y, same sign). When dbias is not null, also
// dbias[j] = sum_i dz[i, j] of the rounded dz, in float32 over i in increasing order whatever
// the thread count (deterministic), then rounded. One pass over grad and z; OpenMP over column
// ranges when dbias is wanted, over rows when not.
void activation_backward(DType dtype, Activation act, int64_t rows, int64_t cols, const void* grad,
                         int64_t grad_stride, const void* z, int64_t z_stride, void* dz, int64_t dz_stride,
                         void* dbias);

}  // namespace cpu
}  // namespace fastops
