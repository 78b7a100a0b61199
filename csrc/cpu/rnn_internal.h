// Helpers of the CPU RNN layers shared by csrc/cpu/rnn.cpp (plain layers, which defines them) and
// csrc/cpu/rnn_proj.cpp (the LSTM layer with a projection, proj_size > 0). Internal: not part of
// the kernel interface in fastops/rnn.h.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastops/dtype.h"
#include "fastops/gemm_packed.h"
#include "fastops/macros.h"
#include "fastops/rnn.h"
#include "fastops/workspace.h"

namespace fastops {
namespace cpu {
namespace rnn_detail {

// The time index of the layer's s-th step (a reverse layer runs t = T-1 .. 0).
inline int64_t step_time(const RnnLayerParams& p, int64_t s) { return p.reverse ? p.steps - 1 - s : s; }

// Row b is active at step t (variable lengths, fastops/rnn.h).
FASTOPS_FORCE_INLINE bool active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

size_t storage_bytes(DType d);
void widen_any(DType d, const void* src, float* dst, int64_t n);   // storage -> float32
void narrow_any(DType d, const float* src, void* dst, int64_t n);  // float32 -> storage

// A float32 view of a storage buffer: the buffer itself for float32, else a widened copy.
struct F32View {
  std::vector<float> copy;
  const float* ptr = nullptr;
  F32View(DType d, const void* src, int64_t n) {
    if (d == DType::kFloat32) {
      ptr = static_cast<const float*>(src);
    } else {
      copy.resize(n);
      widen_any(d, src, copy.data(), n);
      ptr = copy.data();
    }
  }
};

// C[m, n] (row stride ldc) = beta * C + A[m, k] B[k, n], all addressed through element strides.
void mm(int64_t m, int64_t n, int64_t k, DType ab, const void* a, int64_t a_row, int64_t a_col, const void* b,
        int64_t b_row, int64_t b_col, float* c, int64_t ldc, float beta);

// The fused step over units [j0, j1) of row b, of one mode and dtype, for the running CPU.
using ForwardBlock = void (*)(const RnnStepParams&, int64_t, int64_t, int64_t);
using BackwardBlock = void (*)(const RnnStepBackwardParams&, int64_t, int64_t, int64_t);
ForwardBlock forward_block_fn(RnnMode m, DType d);
BackwardBlock backward_block_fn(RnnMode m, DType d);

// The threads of a layer's time loop: one OpenMP region for all steps, thread i owning the
// hidden units [begin, end) (whole GEMM panels) of every gate for the whole loop, so that its
// part of W_hh stays in its cache and a step needs one barrier.
constexpr int64_t kTeamMinWork = int64_t(1) << 17;  // multiply-adds per step below which one thread runs
struct Team {
  int threads = 1;
  int64_t panel = 1, panels = 0, hidden = 0;
  int64_t begin() const { return std::min(hidden, panels * omp_get_thread_num() / threads * panel); }
  int64_t end() const { return std::min(hidden, panels * (omp_get_thread_num() + 1) / threads * panel); }
};
Team make_team(int64_t panel, int64_t hidden, int64_t work_per_step);

// gh[b, g*H + j] = a W_hh^T (float32, row stride G*H) for units j in [j0, j1) of every gate; a is
// [rows, K] of p.dtype with row stride lda, whh its packed W_hh^T (one group per gate).
void recurrent_gates(const PackedB& whh, const RnnLayerParams& p, const void* a, int64_t lda, float* gh, int64_t j0,
                     int64_t j1, int64_t rows);
// Threads that each run their own rows of the batch through every step (no barrier per step:
// a row's recurrence reads only its own h), when every thread gets at least a full register
// tile of rows; 1 otherwise (the layer splits each step's hidden units instead).
int row_threads(int64_t batch, int64_t work_per_step);
// The fields of step t that the layer decides: mode, sizes, dtype, lengths, t; forward: gi (x W_ih^T
// of step t), gh and the biases; backward: saved. The caller adds the state pointers.
RnnStepParams step_params(const RnnLayerParams& p, int64_t t, const float* gi, const float* gh);
RnnStepBackwardParams backward_step_params(const RnnLayerParams& p, int64_t t);
// dst[i] = bfloat16(src[i]) for i < n (dst: BFloat16), on the widest vector path of this CPU.
using NarrowBf16 = void (*)(const float*, void*, int64_t);
NarrowBf16 narrow_bf16_fn();

}  // namespace rnn_detail
}  // namespace cpu
}  // namespace fastops
