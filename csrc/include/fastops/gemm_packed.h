// A GEMM right operand packed once and multiplied many times (the RNN recurrent weights: the
// same W_hh^T at every time step). Same kernels, packing and summation order as cpu::gemm
// (fastops/gemm.h), so results are bitwise those of cpu::gemm on the same operands; gone are
// the per-call packing of B and the per-call OpenMP region, and each call covers a range of
// columns, so that a thread can own a block of columns (and keep its part of B in its cache)
// inside a parallel region that spans many products.
//
// B may be several column groups side by side, B = [B_0 | B_1 | ... ], each [k, n] (group g's
// operand at b.ptr + g * group_stride elements): the gates of an RNN, so that the columns of
// unit j of every gate can go to one thread. Each group starts at a fresh panel.
#pragma once

#include <cstdint>
#include <memory>

#include "fastops/gemm.h"

namespace fastops {
namespace cpu {

// A left operand read in place from row segments, for PackedB::multiply_gathered:
//   A[i, s * seg_len + q] = R(i, s)[q]   for s < segments, q < seg_len (k = segments * seg_len),
// elements of the PackedB's dtype; a null R(i, s) reads as zeros. rows(ctx, i0, n, ld, dst) writes
// dst[s * ld + r] = R(i0 + r, s) for r < n and every s: one call per register tile of rows, so
// the gatherer walks consecutive rows incrementally. An implicit im2col matrix (row = an output
// pixel, segment = a kernel tap, q = an input channel) is read straight into the GEMM's A panels
// (or broadcast from in place by the direct kernels) this way, without being materialised.
struct GatheredA {
  void (*rows)(const void* ctx, int64_t i0, int n, int64_t ld, const void** dst) = nullptr;
  const void* ctx = nullptr;
  int64_t segments = 0, seg_len = 0;
};

// dst[j * ldd + i] = src[i * lds + j] for i, j < 16: one 16 x 16 block of 32-bit words transposed
// in registers (the packing's transpose). Needs AVX-512 (callers check the active ISA).
void transpose16_u32(const uint32_t* src, int64_t lds, uint32_t* dst, int64_t ldd);

class PackedB {
 public:
  PackedB() = default;
  // Packs B [k, n] (element strides in `b`, stride_batch ignored) of storage dtype `ab`, in
  // `groups` groups. Runs OpenMP over panels when called outside a parallel region.
  PackedB(const GemmOperand& b, int64_t k, int64_t n, DType ab, int64_t groups = 1, int64_t group_stride = 0);
  // One group whose B [k = segments seg_k, n] is given as row blocks: rows s seg_k .. (s + 1) seg_k
  // are segs[s] ([seg_k, n], element strides; stride_batch ignored), packed straight from them (a
  // convolution's weight with its taps reordered, never copied). Same panels as the constructor
  // above on the assembled B. bfloat16 pairs need an even seg_k (segments_fit() tells whether it fits).
  PackedB(const GemmOperand* segs, int64_t segments, int64_t seg_k, int64_t n, DType ab);
  static bool segments_fit(int64_t seg_k, DType ab);
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  DType dtype() const { return dtype_; }
  // Column ranges given to multiply() start and end at multiples of this (or end at n).
  int64_t panel_cols() const { return nr_; }

  // For every group g: C_g[i, j] = alpha * sum_p A[i, p] B_g[p, j] + beta * C_g[i, j] (+ bias[j])
  // for i < p.m and j0 <= j < j1, C_g at p.c + g * c_group_stride elements; on the calling thread
  // only (safe inside a parallel region; A is packed once per call). p.a must have this dtype;
  // p.b, p.k, p.n and p.batch are ignored (k, n and 1 are used); p.activation applies.
  void multiply(const GemmParams& p, int64_t j0, int64_t j1, int64_t c_group_stride = 0) const;
  // multiply() with A taken from `a` (p.a is ignored; p.m rows, a.segments * a.seg_len == k()),
  // one group (c_group_stride 0). Bitwise the same as multiply() on the materialised A.
  void multiply_gathered(const GemmParams& p, const GatheredA& a, int64_t j0, int64_t j1) const;

 private:
  std::shared_ptr<char> data_;
  int64_t k_ = 0, n_ = 0, groups_ = 1, group_elems_ = 0;
  int nr_ = 1;
  DType dtype_ = DType::kFloat32;
};

}  // namespace cpu
}  // namespace fastops
