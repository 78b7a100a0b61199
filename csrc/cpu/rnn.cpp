// RNN cells and layers on the CPU (fastops/rnn.h): fused pointwise steps and whole layers.
//
// A layer runs its time loop here, with no Python per step: x W_ih^T for all steps as one GEMM
// into float32; W_hh^T packed once (cpu::PackedB, one panel group per gate); then one OpenMP
// region for all steps, thread i owning a block of hidden units (whole GEMM panels) of every gate:
// per step it computes h W_hh^T for its own gate columns and runs the fused step (gate
// nonlinearities, cell update, what backward needs saved) on those units while they are in cache;
// h ping-pongs between two buffers, so one barrier a step orders everything.
// A batch of at least two register tiles of rows per thread (B >= 28 on two threads) splits by
// rows instead: each thread runs its rows through every step on its own (h W_hh^T for all gates
// of its rows, then their cell), with no barrier at all, since a row's recurrence reads only its own
// h; every element is still the same sum in the same order, so the answer is bitwise the same.
// Backward runs the steps in reverse the same way: the fused pointwise pass on the thread's units,
// a barrier, then dh[:, own units] += dgh W_hh[:, own units] (or a thread's own rows of all of it,
// with no barrier, when split by rows); every step's gate gradients are
// kept, and dx, dW_ih, dW_hh are large GEMMs at the end (LSTM / tanh / relu: dW_ih and dW_hh as
// one, dgi^T [x | h_prev]) and the bias gradients ordered column sums, so results do not depend
// on the thread count.
// fp16: the weights are widened to float32 once per backward call, so every product of the
// backward is float32. bf16: the backward's GEMMs read bfloat16 operands (the weights, x and the
// previous h as stored; the gate gradients rounded to bfloat16 once, as torch's bf16 RNN does)
// and accumulate in float32 (AVX512-BF16 `vdpbf16ps` where the CPU has it); the running dh / dc,
// the bias sums and every gate gradient in the pointwise pass stay float32. The forward's GEMMs
// read bf16/fp16 and accumulate in float32.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "fastops/gemm.h"
#include "fastops/gemm_packed.h"
#include "fastops/rnn.h"
#include "fastops/storage.h"
#include "isa.h"
#include "rnn_internal.h"
#include "vec_math.h"

namespace fastops {
namespace cpu {
using namespace rnn_detail;  // active(), the layer helpers (rnn_internal.h)
namespace {

constexpr int64_t kUnitBlock = 64;          // units per OpenMP work item
constexpr int64_t kParallelMinWork = 4096;  // units below which one thread is faster

struct Cvt {
  template <typename T>
  static FASTOPS_FORCE_INLINE float load(T v) { return to_float(v); }
  template <typename T>
  static FASTOPS_FORCE_INLINE T store(float v) { return from_float<T>(v); }
};

// ---- one step, a block of units of one row ------------------------------------------------

// fp16/bf16 rows go through the float32 body into a float row, then one conversion pass: the
// compiler vectorizes the float body, not one that converts inside.
template <RnnMode M, typename T>
FASTOPS_FORCE_INLINE void forward_row_narrow(const RnnStepParams& p, int64_t b, int64_t j0, int64_t j1) {
  constexpr int S = math::rnn_saved(M);
  const int64_t H = p.hidden;
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < 2 * H) row.resize(static_cast<size_t>(2 * H));
  float* hp = row.data();
  float* ho = row.data() + H;
  const T* h_prev = static_cast<const T*>(p.h_prev) + b * H;
  if (M == RnnMode::kGru) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) hp[j] = to_float(h_prev[j]);
  }
  RnnStepParams q = p;  // row b as row 0 of float32 buffers
  q.dtype = DType::kFloat32;
  q.gi = p.gi + b * p.gi_stride;
  q.gh = p.gh + b * p.gh_stride;
  q.saved = p.saved + b * S * H;
  q.h_prev = hp;
  q.h_out = ho;
  q.y_out = nullptr;
  if (M == RnnMode::kLstm) {
    q.c_prev = p.c_prev + b * H;
    q.c_out = p.c_out + b * H;
  }
  q.lengths = nullptr;
#pragma omp simd
  for (int64_t j = j0; j < j1; ++j) rnn_step_forward_unit<M, float, Cvt>(q, 0, j, true);
  T* h_out = static_cast<T*>(p.h_out) + b * H;
  T* y_out = p.y_out ? static_cast<T*>(p.y_out) + b * H : nullptr;
#pragma omp simd
  for (int64_t j = j0; j < j1; ++j) h_out[j] = from_float<T>(ho[j]);
  if (y_out) std::memcpy(y_out + j0, h_out + j0, sizeof(T) * (j1 - j0));
}

template <RnnMode M, typename T>
FASTOPS_FORCE_INLINE void forward_block(const RnnStepParams& p, int64_t b, int64_t j0, int64_t j1) {
  if constexpr (!std::is_same_v<T, float>) {
    if (active(p.lengths, b, p.t)) return forward_row_narrow<M, T>(p, b, j0, j1);
  }
  if (active(p.lengths, b, p.t)) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) rnn_step_forward_unit<M, T, Cvt>(p, b, j, true);
  } else {
    for (int64_t j = j0; j < j1; ++j) rnn_step_forward_unit<M, T, Cvt>(p, b, j, false);
  }
}

template <RnnMode M, typename T>
FASTOPS_FORCE_INLINE void backward_block(const RnnStepBackwardParams& p, int64_t b, int64_t j0, int64_t j1) {
  if (active(p.lengths, b, p.t)) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) rnn_step_backward_unit<M, T, Cvt>(p, b, j, true);
  } else {
    for (int64_t j = j0; j < j1; ++j) rnn_step_backward_unit<M, T, Cvt>(p, b, j, false);
  }
}

#if FASTOPS_HAVE_X86_PATHS
// The steps of an active row on 16 lanes, for the AVX-512 entries (what the compiler makes of
// rnn_step_*_unit spills, and ran at a third of this speed): the cell formulas of
// fastops/math/rnn.h with vec512::GateOps, the biases added as rnn_biased does.
FASTOPS_VEC512 __m512 biased_vec512(const float* g, const float* bias, int64_t k, __mmask16 m) {
  return bias ? vec512::load(g + k, m) + vec512::load(bias + k, m) : vec512::load(g + k, m);
}

// saved may be null (inference: nothing kept for backward).
template <RnnMode M, typename T>
FASTOPS_VEC512 void forward_row_vec512(const RnnStepParams& p, int64_t b, int64_t j0, int64_t j1) {
  namespace v = vec512;
  constexpr int G = math::rnn_gates(M), S = math::rnn_saved(M);
  const int64_t H = p.hidden, u0 = b * H;
  const float* gi = p.gi + b * p.gi_stride;
  const float* gh = p.gh + b * p.gh_stride;
  float* saved = p.saved ? p.saved + b * S * H : nullptr;
  const T* h_prev = static_cast<const T*>(p.h_prev) + u0;
  T* h_out = static_cast<T*>(p.h_out) + u0;
  T* y_out = p.y_out ? static_cast<T*>(p.y_out) + u0 : nullptr;
  for (int64_t j = j0; j < j1; j += 16) {
    const __mmask16 m = v::first_lanes(static_cast<int>(j1 - j));
    __m512 xi[G], xh[G], keep[S], h;
    for (int g = 0; g < G; ++g) {
      xi[g] = biased_vec512(gi, p.b_ih, g * H + j, m);
      xh[g] = biased_vec512(gh, p.b_hh, g * H + j, m);
    }
    if constexpr (M == RnnMode::kLstm) {
      const auto r = math::lstm_forward_t<v::GateOps>(xi[0] + xh[0], xi[1] + xh[1], xi[2] + xh[2], xi[3] + xh[3],
                                                      v::load(p.c_prev + u0 + j, m));
      keep[0] = r.i, keep[1] = r.f, keep[2] = r.g, keep[3] = r.o;
      v::store(p.c_out + u0 + j, m, r.c);
      h = r.h;
    } else if constexpr (M == RnnMode::kGru) {
      const auto r = math::gru_forward_t<v::GateOps>(xi[0], xi[1], xi[2], xh[0], xh[1], xh[2], v::load(h_prev + j, m));
      keep[0] = r.r, keep[1] = r.z, keep[2] = r.n, keep[3] = xh[2];
      h = r.h;
    } else {
      h = keep[0] = math::rnn_simple_forward_t<v::GateOps>(M == RnnMode::kRelu, xi[0] + xh[0]);
    }
    if (saved)
      for (int k = 0; k < S; ++k) v::store(saved + k * H + j, m, keep[k]);
    v::store(h_out + j, m, h);
    if (y_out) v::store(y_out + j, m, h);
  }
}

template <RnnMode M, typename T>
FASTOPS_VEC512 void backward_row_vec512(const RnnStepBackwardParams& p, int64_t b, int64_t j0, int64_t j1) {
  namespace v = vec512;
  constexpr int G = math::rnn_gates(M), S = math::rnn_saved(M);
  const int64_t H = p.hidden, u0 = b * H;
  const float* saved = p.saved + b * S * H;
  float* dgi = p.dgi + b * G * H;
  const T* dy = p.dy ? static_cast<const T*>(p.dy) + u0 : nullptr;
  for (int64_t j = j0; j < j1; j += 16) {
    const __mmask16 m = v::first_lanes(static_cast<int>(j1 - j));
    const __m512 dh = dy ? v::load(p.dh + u0 + j, m) + v::load(dy + j, m) : v::load(p.dh + u0 + j, m);
    __m512 sv[S];
    for (int k = 0; k < S; ++k) sv[k] = v::load(saved + k * H + j, m);
    __m512 dh_prev = _mm512_setzero_ps();
    if constexpr (M == RnnMode::kLstm) {
      const auto r = math::lstm_backward_t<v::GateOps>(dh, v::load(p.dc + u0 + j, m), sv[0], sv[1], sv[2], sv[3],
                                                       v::load(p.c + u0 + j, m), v::load(p.c_prev + u0 + j, m));
      v::store(dgi + j, m, r.di);
      v::store(dgi + H + j, m, r.df);
      v::store(dgi + 2 * H + j, m, r.dg);
      v::store(dgi + 3 * H + j, m, r.do_);
      v::store(p.dc + u0 + j, m, r.dc_prev);
    } else if constexpr (M == RnnMode::kGru) {
      const auto r = math::gru_backward_t(dh, sv[0], sv[1], sv[2], sv[3], v::load(p.h_prev + u0 + j, m));
      float* dgh = p.dgh + b * G * H;
      v::store(dgi + j, m, r.dr);
      v::store(dgi + H + j, m, r.dz);
      v::store(dgi + 2 * H + j, m, r.dn);
      v::store(dgh + j, m, r.dr);
      v::store(dgh + H + j, m, r.dz);
      v::store(dgh + 2 * H + j, m, r.dgh_n);
      dh_prev = r.dh_prev;
    } else {
      v::store(dgi + j, m, math::rnn_simple_backward_t<v::GateOps>(M == RnnMode::kRelu, dh, sv[0]));
    }
    v::store(p.dh + u0 + j, m, dh_prev);
  }
}

// dst[i] = bfloat16(src[i]), i < n, as from_float rounds.
FASTOPS_TARGET_AVX512 void narrow_bf16_avx512(const float* src, void* dst, int64_t n) {
  BFloat16* d = static_cast<BFloat16*>(dst);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = vec512::first_lanes(static_cast<int>(std::min<int64_t>(16, n - i)));
    vec512::store(d + i, m, vec512::load(src + i, m));
  }
}
#endif

// One forward and one backward entry per ISA (isa.h): the same loops compiled for each target;
// the AVX-512 entries run active rows on {forward,backward}_row_vec512.
#define FASTOPS_RNN_ISA_ENTRIES(SUFFIX, TARGET, VEC_ROWS)                                                \
  template <RnnMode M, typename T>                                                                      \
  TARGET void forward_block_##SUFFIX(const RnnStepParams& p, int64_t b, int64_t j0, int64_t j1) {       \
    if constexpr (VEC_ROWS) {                                                                           \
      if (active(p.lengths, b, p.t)) return forward_row_vec512<M, T>(p, b, j0, j1);                     \
    }                                                                                                   \
    forward_block<M, T>(p, b, j0, j1);                                                                  \
  }                                                                                                     \
  template <RnnMode M, typename T>                                                                      \
  TARGET void backward_block_##SUFFIX(const RnnStepBackwardParams& p, int64_t b, int64_t j0, int64_t j1) { \
    if constexpr (VEC_ROWS) {                                                                           \
      if (active(p.lengths, b, p.t)) return backward_row_vec512<M, T>(p, b, j0, j1);                    \
    }                                                                                                   \
    backward_block<M, T>(p, b, j0, j1);                                                                 \
  }
FASTOPS_RNN_ISA_ENTRIES(avx512, FASTOPS_TARGET_AVX512, FASTOPS_HAVE_X86_PATHS)
FASTOPS_RNN_ISA_ENTRIES(avx2, FASTOPS_TARGET_AVX2, false)
FASTOPS_RNN_ISA_ENTRIES(base, FASTOPS_TARGET_BASELINE, false)
#undef FASTOPS_RNN_ISA_ENTRIES

// Runs block(p, b, j0, j1) over every (row, block of kUnitBlock units), in parallel when large.
template <typename P>
void for_blocks(const P& p, void (*block)(const P&, int64_t, int64_t, int64_t)) {
  const int64_t per_row = (p.hidden + kUnitBlock - 1) / kUnitBlock;
  const int64_t items = p.batch * per_row;
#pragma omp parallel for schedule(static) if (p.batch * p.hidden >= kParallelMinWork)
  for (int64_t w = 0; w < items; ++w) {
    const int64_t b = w / per_row, j0 = (w % per_row) * kUnitBlock;
    block(p, b, j0, j0 + kUnitBlock < p.hidden ? j0 + kUnitBlock : p.hidden);
  }
}

template <RnnMode M, typename T>
void step_forward_t(const RnnStepParams& p) {
  for_blocks<RnnStepParams>(p, select_isa(&forward_block_base<M, T>, &forward_block_avx2<M, T>,
                                          &forward_block_avx512<M, T>));
}

template <RnnMode M, typename T>
void step_backward_t(const RnnStepBackwardParams& p) {
  for_blocks<RnnStepBackwardParams>(p, select_isa(&backward_block_base<M, T>, &backward_block_avx2<M, T>,
                                                  &backward_block_avx512<M, T>));
}

template <typename T>
void step_forward_mode(const RnnStepParams& p) {
  switch (p.mode) {
    case RnnMode::kRelu: return step_forward_t<RnnMode::kRelu, T>(p);
    case RnnMode::kLstm: return step_forward_t<RnnMode::kLstm, T>(p);
    case RnnMode::kGru: return step_forward_t<RnnMode::kGru, T>(p);
    default: return step_forward_t<RnnMode::kTanh, T>(p);
  }
}

template <typename T>
void step_backward_mode(const RnnStepBackwardParams& p) {
  switch (p.mode) {
    case RnnMode::kRelu: return step_backward_t<RnnMode::kRelu, T>(p);
    case RnnMode::kLstm: return step_backward_t<RnnMode::kLstm, T>(p);
    case RnnMode::kGru: return step_backward_t<RnnMode::kGru, T>(p);
    default: return step_backward_t<RnnMode::kTanh, T>(p);
  }
}

}  // namespace

// ---- helpers for the layers (declared in rnn_internal.h, shared with rnn_proj.cpp) -------------
namespace rnn_detail {

size_t storage_bytes(DType d) { return d == DType::kFloat32 ? 4 : 2; }

template <typename T>
void widen(const void* src, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src);
  if (n < (1 << 16) || omp_in_parallel()) {  // no OpenMP region at all: callers run it per row
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = to_float(s[i]);
    return;
  }
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(s[i]);
}

void widen_any(DType d, const void* src, float* dst, int64_t n) {
  switch (d) {
    case DType::kFloat16: return widen<Half>(src, dst, n);
    case DType::kBFloat16: return widen<BFloat16>(src, dst, n);
    default: return widen<float>(src, dst, n);
  }
}

template <typename T>
void narrow(const float* src, void* dst, int64_t n) {
  T* d = static_cast<T*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = from_float<T>(src[i]);
}

NarrowBf16 narrow_bf16_fn() {
#if FASTOPS_HAVE_X86_PATHS
  return select_isa<NarrowBf16>(&narrow<BFloat16>, &narrow<BFloat16>, &narrow_bf16_avx512);
#else
  return &narrow<BFloat16>;
#endif
}

void narrow_any(DType d, const float* src, void* dst, int64_t n) {
  switch (d) {
    case DType::kFloat16: return narrow<Half>(src, dst, n);
    case DType::kBFloat16: return narrow<BFloat16>(src, dst, n);
    default: return narrow<float>(src, dst, n);
  }
}

// C[m, n] (row stride ldc) = beta * C + A[m, k] B[k, n], all addressed through element strides.
void mm(int64_t m, int64_t n, int64_t k, DType ab, const void* a, int64_t a_row, int64_t a_col, const void* b,
        int64_t b_row, int64_t b_col, float* c, int64_t ldc, float beta) {
  GemmParams g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = GemmOperand{a, 0, a_row, a_col};
  g.b = GemmOperand{b, 0, b_row, b_col};
  g.c = c;
  g.c_stride_row = ldc;
  g.c_stride_col = 1;
  g.ab_dtype = ab;
  g.c_dtype = DType::kFloat32;
  g.beta = beta;
  gemm(g);
}

// The block functions of one mode and dtype, for the running CPU.
template <RnnMode M, typename T>
ForwardBlock forward_block_isa() {
  return select_isa(&forward_block_base<M, T>, &forward_block_avx2<M, T>, &forward_block_avx512<M, T>);
}
template <RnnMode M, typename T>
BackwardBlock backward_block_isa() {
  return select_isa(&backward_block_base<M, T>, &backward_block_avx2<M, T>, &backward_block_avx512<M, T>);
}

template <typename T>
ForwardBlock forward_block_mode(RnnMode m) {
  switch (m) {
    case RnnMode::kRelu: return forward_block_isa<RnnMode::kRelu, T>();
    case RnnMode::kLstm: return forward_block_isa<RnnMode::kLstm, T>();
    case RnnMode::kGru: return forward_block_isa<RnnMode::kGru, T>();
    default: return forward_block_isa<RnnMode::kTanh, T>();
  }
}
template <typename T>
BackwardBlock backward_block_mode(RnnMode m) {
  switch (m) {
    case RnnMode::kRelu: return backward_block_isa<RnnMode::kRelu, T>();
    case RnnMode::kLstm: return backward_block_isa<RnnMode::kLstm, T>();
    case RnnMode::kGru: return backward_block_isa<RnnMode::kGru, T>();
    default: return backward_block_isa<RnnMode::kTanh, T>();
  }
}
ForwardBlock forward_block_fn(RnnMode m, DType d) {
  switch (d) {
    case DType::kFloat16: return forward_block_mode<Half>(m);
    case DType::kBFloat16: return forward_block_mode<BFloat16>(m);
    default: return forward_block_mode<float>(m);
  }
}
BackwardBlock backward_block_fn(RnnMode m, DType d) {
  switch (d) {
    case DType::kFloat16: return backward_block_mode<Half>(m);
    case DType::kBFloat16: return backward_block_mode<BFloat16>(m);
    default: return backward_block_mode<float>(m);
  }
}

Team make_team(int64_t panel, int64_t hidden, int64_t work_per_step) {
  Team t;
  t.panel = panel;
  t.hidden = hidden;
  t.panels = (hidden + panel - 1) / panel;
  const int64_t most = omp_in_parallel() ? 1 : omp_get_max_threads();
  t.threads = static_cast<int>(std::max<int64_t>(1, work_per_step < kTeamMinWork ? 1 : std::min(most, t.panels)));
  return t;
}

int row_threads(int64_t batch, int64_t work_per_step) {
  constexpr int64_t kMinRows = 14;  // the CPU GEMM's register tile height
  const int64_t most = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (work_per_step < kTeamMinWork) return 1;
  const int64_t t = std::min<int64_t>(most, batch / kMinRows);
  return t >= 2 ? static_cast<int>(t) : 1;
}

void recurrent_gates(const PackedB& whh, const RnnLayerParams& p, const void* a, int64_t lda, float* gh, int64_t j0,
                     int64_t j1, int64_t rows) {
  GemmParams g;
  g.m = rows;
  g.a = GemmOperand{a, 0, lda, 1};
  g.c = gh;
  g.c_stride_row = math::rnn_gates(p.mode) * p.hidden;
  g.ab_dtype = p.dtype;
  g.c_dtype = DType::kFloat32;
  whh.multiply(g, j0, j1, p.hidden);
}

RnnStepParams step_params(const RnnLayerParams& p, int64_t t, const float* gi, const float* gh) {
  RnnStepParams sp;
  sp.mode = p.mode;
  sp.batch = p.batch;
  sp.hidden = p.hidden;
  sp.dtype = p.dtype;
  sp.gi = gi;
  sp.gh = gh;
  sp.gi_stride = sp.gh_stride = math::rnn_gates(p.mode) * p.hidden;
  sp.b_ih = p.b_ih;
  sp.b_hh = p.b_hh;
  sp.lengths = p.lengths;
  sp.t = t;
  return sp;
}

RnnStepBackwardParams backward_step_params(const RnnLayerParams& p, int64_t t) {
  RnnStepBackwardParams sp;
  sp.mode = p.mode;
  sp.batch = p.batch;
  sp.hidden = p.hidden;
  sp.dtype = p.dtype;
  sp.saved = p.saved + t * p.batch * math::rnn_saved(p.mode) * p.hidden;
  sp.lengths = p.lengths;
  sp.t = t;
  return sp;
}

}  // namespace rnn_detail

namespace {
// Asks for rows r < rows, columns [j0, j1) of a float32 [rows, H] block into L2: the next step's
// x W_ih^T, read from memory while this step's GEMM computes (the cell stalls on it otherwise).
void prefetch_units(const float* base, int64_t rows, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = j0; j < j1; j += 16) __builtin_prefetch(base + r * H + j, 0, 2);
}

}  // namespace

void rnn_step_forward(const RnnStepParams& p) {
  if (p.batch <= 0 || p.hidden <= 0) return;
  switch (p.dtype) {
    case DType::kFloat16: return step_forward_mode<Half>(p);
    case DType::kBFloat16: return step_forward_mode<BFloat16>(p);
    default: return step_forward_mode<float>(p);
  }
}

void rnn_step_backward(const RnnStepBackwardParams& p) {
  if (p.batch <= 0 || p.hidden <= 0) return;
  switch (p.dtype) {
    case DType::kFloat16: return step_backward_mode<Half>(p);
    case DType::kBFloat16: return step_backward_mode<BFloat16>(p);
    default: return step_backward_mode<float>(p);
  }
}

void rnn_layer_forward(const RnnLayerParams& p) {
  const int64_t T = p.steps, B = p.batch, I = p.input, H = p.hidden;
  const int64_t G = math::rnn_gates(p.mode), GH = G * H, S = math::rnn_saved(p.mode);
  const size_t es = storage_bytes(p.dtype);
  const bool lstm = p.mode == RnnMode::kLstm;
  if (B == 0 || H == 0) return;
  if (T == 0) {
    std::memcpy(p.h_n, p.h0, static_cast<size_t>(B * H) * es);
    if (lstm) std::memcpy(p.c_n, p.c0, static_cast<size_t>(B * H) * es);
    return;
  }
  // uninitialized: every element is written before it is read
  const Workspace<float> gx(static_cast<size_t>(T * B * GH)), gh(static_cast<size_t>(B * GH));
  // gx[T*B, GH] = x[T*B, I] W_ih^T
  mm(T * B, GH, I, p.dtype, p.x, I, 1, p.w_ih, 1, I, gx.data(), GH, 0.0f);
  // W_hh^T [H, GH] packed once, one group per gate: B_g[p, j] = W_hh[g*H + j, p]
  const PackedB whh(GemmOperand{p.w_hh, 0, 1, H}, H, H, p.dtype, G, H * H);
  // Inference (p.saved null): c ping-pongs between two buffers instead of filling c_all, and the
  // steps write no `saved` (the 16-lane rows skip it) or, where the scalar bodies run (no AVX-512,
  // rows past their length), write it into one step's scratch that stays in cache.
  const bool keep = p.saved != nullptr;
  const bool vec_rows = FASTOPS_HAVE_X86_PATHS && active_isa() == Isa::kAvx512 && p.lengths == nullptr;
  std::vector<float> scratch(keep || vec_rows ? 0 : static_cast<size_t>(B * S * H));
  std::vector<float> c0(lstm ? static_cast<size_t>((keep ? 1 : 3) * B * H) : 0);
  if (lstm) widen_any(p.dtype, p.c0, c0.data(), B * H);
  // c leaving step s (c entering step 0 is c0)
  auto c_of = [&](int64_t s) { return keep ? p.c_all + step_time(p, s) * B * H : c0.data() + (1 + s % 2) * B * H; };
  // h ping-pongs between two buffers
  std::vector<char> hbuf(static_cast<size_t>(2 * B * H) * es);
  std::memcpy(hbuf.data(), p.h0, static_cast<size_t>(B * H) * es);
  const ForwardBlock block = forward_block_fn(p.mode, p.dtype);
  char* y = static_cast<char*>(p.y);
  // step s on batch rows [b0, b1) and hidden units [j0, j1) of every gate
  auto step = [&](int64_t s, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
    const int64_t t = step_time(p, s);
    char* h_prev = hbuf.data() + static_cast<size_t>((s % 2) * B * H) * es;
    char* h_out = hbuf.data() + static_cast<size_t>(((s + 1) % 2) * B * H) * es;
    if (s + 1 < T) prefetch_units(gx.data() + (step_time(p, s + 1) * B + b0) * GH, (b1 - b0) * G, H, j0, j1);
    recurrent_gates(whh, p, h_prev + static_cast<size_t>(b0 * H) * es, H, gh.data() + b0 * GH, j0, j1, b1 - b0);
    RnnStepParams sp = step_params(p, t, gx.data() + t * B * GH, gh.data());
    sp.h_prev = h_prev;
    sp.h_out = h_out;
    sp.y_out = y + static_cast<size_t>(t * B * H) * es;
    if (lstm) {
      sp.c_prev = s == 0 ? c0.data() : c_of(s - 1);
      sp.c_out = c_of(s);
    }
    sp.saved = keep ? p.saved + t * B * S * H : (vec_rows ? nullptr : scratch.data());
    for (int64_t b = b0; b < b1; ++b) block(sp, b, j0, j1);
  };
  const int by_rows = row_threads(B, B * GH * H);
  if (by_rows > 1) {
#pragma omp parallel num_threads(by_rows)
    {
      const int64_t r = omp_get_thread_num(), b0 = B * r / by_rows, b1 = B * (r + 1) / by_rows;
      for (int64_t s = 0; s < T; ++s) step(s, b0, b1, 0, H);
    }
  } else {
    const Team team = make_team(whh.panel_cols(), H, B * GH * H);
#pragma omp parallel num_threads(team.threads)
    {
      const int64_t j0 = team.begin(), j1 = team.end();
      for (int64_t s = 0; s < T; ++s) {
        if (j0 < j1) step(s, 0, B, j0, j1);
        // h ping-pongs between two buffers, so one barrier per step orders every read and write
#pragma omp barrier
      }
    }
  }
  std::memcpy(p.h_n, hbuf.data() + static_cast<size_t>((T % 2) * B * H) * es, static_cast<size_t>(B * H) * es);
  if (lstm) narrow_any(p.dtype, c_of(T - 1), p.c_n, B * H);
}

void rnn_layer_backward(const RnnLayerBackwardParams& q) {
  const RnnLayerParams& p = q.fwd;
  const int64_t T = p.steps, B = p.batch, I = p.input, H = p.hidden;
  const int64_t G = math::rnn_gates(p.mode), GH = G * H;
  const size_t es = storage_bytes(p.dtype);
  const bool lstm = p.mode == RnnMode::kLstm, gru = p.mode == RnnMode::kGru;
  // Running gradients: dh0 / dc0 hold d h, d c of the state entering the current step.
  if (q.dh_n) widen_any(p.dtype, q.dh_n, q.dh0, B * H);
  else std::memset(q.dh0, 0, sizeof(float) * B * H);
  if (lstm) {
    if (q.dc_n) widen_any(p.dtype, q.dc_n, q.dc0, B * H);
    else std::memset(q.dc0, 0, sizeof(float) * B * H);
  }
  if (T == 0 || B == 0 || H == 0) {
    std::memset(q.dx, 0, sizeof(float) * T * B * I);
    std::memset(q.dw_ih, 0, sizeof(float) * GH * I);
    std::memset(q.dw_hh, 0, sizeof(float) * GH * H);
    if (q.db_ih) std::memset(q.db_ih, 0, sizeof(float) * GH);
    if (q.db_hh) std::memset(q.db_hh, 0, sizeof(float) * GH);
    return;
  }
  const Workspace<float> dgi(static_cast<size_t>(T * B * GH)), dgh_own(gru ? dgi.size() : 0);
  float* dgh = gru ? dgh_own.data() : dgi.data();
  // bf16: the GEMM operands are bfloat16 (dgi_n, dgh_n: the gate gradients rounded once).
  const bool narrow_ops = p.dtype == DType::kBFloat16;
  const DType ab = narrow_ops ? DType::kBFloat16 : DType::kFloat32;
  const Workspace<BFloat16> dgi_n(narrow_ops ? dgi.size() : 0), dgh_n(narrow_ops && gru ? dgi.size() : 0);
  BFloat16* dgh_nptr = gru ? dgh_n.data() : dgi_n.data();
  // h entering step t: y of the previous step when that step was active for the row, else h0
  // (a reverse layer starts each row at its last step from h0). float32 (hprev) for the GRU
  // step and the float32 GEMMs; as stored (hprev_n, bf16) for the bf16 GEMMs.
  // LSTM / tanh / relu: dgh is dgi, so dW_ih and dW_hh are one product dgi^T [x | hprev]: the
  // rows of hprev then sit right of a copy of x's (row stride I + H), and dgi^T is packed once.
  const bool cat = !gru;
  const int64_t ldh = cat ? I + H : H, hoff = cat ? I : 0;
  const bool need_f32 = !narrow_ops || gru;
  const Workspace<float> hprev(need_f32 ? static_cast<size_t>(T * B * ldh) : 0);
  const Workspace<BFloat16> hprev_n(narrow_ops ? static_cast<size_t>(T * B * ldh) : 0);
  {
    const F32View h0(need_f32 ? p.dtype : DType::kFloat32, need_f32 ? p.h0 : nullptr, need_f32 ? B * H : 0);
    const F32View yv(need_f32 ? p.dtype : DType::kFloat32, need_f32 ? p.y : nullptr, need_f32 ? T * B * H : 0);
#pragma omp parallel for schedule(static) if (T * B * H >= (1 << 16))
    for (int64_t t = 0; t < T; ++t) {
      const int64_t tp = p.reverse ? t + 1 : t - 1;
      for (int64_t b = 0; b < B; ++b) {
        const bool from_y = tp >= 0 && tp < T && active(p.lengths, b, tp);
        const int64_t src = from_y ? (tp * B + b) * H : b * H, row = (t * B + b) * ldh;
        if (need_f32) {
          std::memcpy(hprev.data() + row + hoff, (from_y ? yv.ptr : h0.ptr) + src, sizeof(float) * H);
          if (cat) widen_any(p.dtype, static_cast<const char*>(p.x) + (t * B + b) * I * es, hprev.data() + row, I);
        }
        if (narrow_ops) {
          std::memcpy(hprev_n.data() + row + hoff, static_cast<const BFloat16*>(from_y ? p.y : p.h0) + src,
                      sizeof(BFloat16) * H);
          if (cat) std::memcpy(hprev_n.data() + row, static_cast<const BFloat16*>(p.x) + (t * B + b) * I,
                               sizeof(BFloat16) * I);
        }
      }
    }
  }
  std::vector<float> c0;
  if (lstm) {
    c0.resize(static_cast<size_t>(B * H));
    widen_any(p.dtype, p.c0, c0.data(), B * H);
  }
  // float32 / fp16: every product is float32, the weights widened once (a view for float32);
  // bf16: W_hh as stored.
  const F32View whh(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : p.w_hh, narrow_ops ? 0 : GH * H);
  const PackedB whh_packed(GemmOperand{narrow_ops ? p.w_hh : whh.ptr, 0, H, 1}, GH, H, ab);  // W_hh [GH, H]
  const BackwardBlock block = backward_block_fn(p.mode, p.dtype);
  const NarrowBf16 to_bf16 = narrow_bf16_fn();
  const char* dy = static_cast<const char*>(q.dy);
  // the cell of step s on batch rows [b0, b1), units [j0, j1) of every gate: d gates into dgi / dgh
  auto cell = [&](int64_t s, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
    const int64_t t = step_time(p, s);
    RnnStepBackwardParams sp = backward_step_params(p, t);
    sp.dy = dy ? dy + static_cast<size_t>(t * B * H) * es : nullptr;
    sp.dh = q.dh0;
    sp.dc = q.dc0;
    if (lstm) {
      sp.c = p.c_all + t * B * H;
      sp.c_prev = s == 0 ? c0.data() : p.c_all + step_time(p, s - 1) * B * H;
    }
    sp.h_prev = hprev.data() + t * B * H;
    sp.dgi = dgi.data() + t * B * GH;
    sp.dgh = dgh + t * B * GH;
    for (int64_t b = b0; b < b1; ++b) block(sp, b, j0, j1);
    if (narrow_ops) {  // these units of every gate, rounded once for the GEMMs
      for (int64_t r = (t * B + b0) * G; r < (t * B + b1) * G; ++r) {
        to_bf16(dgi.data() + r * H + j0, dgi_n.data() + r * H + j0, j1 - j0);
        if (gru) to_bf16(dgh + r * H + j0, dgh_n.data() + r * H + j0, j1 - j0);
      }
    }
  };
  // dh[b0:b1, j0:j1] += dgh[b0:b1, GH] W_hh[GH, j0:j1]: d h entering step s
  auto carry = [&](int64_t s, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
    const int64_t r0 = step_time(p, s) * B + b0;
    GemmParams g;
    g.m = b1 - b0;
    g.a = narrow_ops ? GemmOperand{dgh_nptr + r0 * GH, 0, GH, 1} : GemmOperand{dgh + r0 * GH, 0, GH, 1};
    g.ab_dtype = ab;
    g.c = q.dh0 + b0 * H;
    g.c_stride_row = H;
    g.beta = 1.0f;
    whh_packed.multiply(g, j0, j1);
  };
  const int by_rows = row_threads(B, B * GH * H);
  if (by_rows > 1) {  // each thread's rows on their own: no barrier
#pragma omp parallel num_threads(by_rows)
    {
      const int64_t r = omp_get_thread_num(), b0 = B * r / by_rows, b1 = B * (r + 1) / by_rows;
      for (int64_t s = T - 1; s >= 0; --s) {
        cell(s, b0, b1, 0, H);
        carry(s, b0, b1, 0, H);
      }
    }
  } else {
    const Team team = make_team(whh_packed.panel_cols(), H, B * GH * H);
#pragma omp parallel num_threads(team.threads)
    {
      const int64_t j0 = team.begin(), j1 = team.end();
      for (int64_t s = T - 1; s >= 0; --s) {
        if (j0 < j1) cell(s, 0, B, j0, j1);
        // every thread's gate gradients of this step are in dgh before any thread reads them
#pragma omp barrier
        if (j0 < j1) carry(s, 0, B, j0, j1);
        // the next step reads and writes only this thread's columns of dh, and dgi / dgh of
        // another step: no second barrier
      }
    }
  }
  const int64_t TB = T * B;
  {
    const F32View wih(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : p.w_ih,
                      narrow_ops ? 0 : GH * I);
    // dx = dgi W_ih
    mm(TB, I, GH, ab, narrow_ops ? static_cast<const void*>(dgi_n.data()) : dgi.data(), GH, 1,
       narrow_ops ? p.w_ih : wih.ptr, I, 1, q.dx, I, 0.0f);
  }
  // the weight gradients: sums over all T*B rows, read in place
  const void* hp = narrow_ops ? static_cast<const void*>(hprev_n.data()) : hprev.data();
  if (cat) {  // [dW_ih | dW_hh] = dgi^T [x | hprev]
    const Workspace<float> dw(static_cast<size_t>(GH * ldh));
    mm(GH, ldh, TB, ab, narrow_ops ? static_cast<const void*>(dgi_n.data()) : dgi.data(), 1, GH, hp, ldh, 1,
       dw.data(), ldh, 0.0f);
#pragma omp parallel for schedule(static) if (GH * ldh >= (1 << 16))
    for (int64_t r = 0; r < GH; ++r) {
      std::memcpy(q.dw_ih + r * I, dw.data() + r * ldh, sizeof(float) * I);
      std::memcpy(q.dw_hh + r * H, dw.data() + r * ldh + I, sizeof(float) * H);
    }
  } else {  // GRU: dW_ih = dgi^T x, dW_hh = dgh^T hprev
    const F32View xv(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : p.x, narrow_ops ? 0 : TB * I);
    mm(GH, I, TB, ab, narrow_ops ? static_cast<const void*>(dgi_n.data()) : dgi.data(), 1, GH,
       narrow_ops ? p.x : xv.ptr, I, 1, q.dw_ih, I, 0.0f);
    mm(GH, H, TB, ab, narrow_ops ? static_cast<const void*>(dgh_nptr) : dgh, 1, GH, hp, H, 1, q.dw_hh, H, 0.0f);
  }
  float* db[2] = {q.db_ih, q.db_hh};
  const float* src[2] = {dgi.data(), dgh};
  constexpr int64_t kCols = 256;
  for (int w = 0; w < 2; ++w) {
    if (!db[w]) continue;
    if (w == 1 && !gru && db[0]) {  // the same sums: dgh is dgi
      std::memcpy(db[1], db[0], sizeof(float) * GH);
      continue;
    }
    float* out = db[w];
    const float* g = src[w];
    // column sums, each over rows in order: thread-count independent
#pragma omp parallel for schedule(static) if (GH * TB >= (1 << 16))
    for (int64_t k0 = 0; k0 < GH; k0 += kCols) {
      const int64_t k1 = std::min(GH, k0 + kCols);
      float acc[kCols] = {};
      for (int64_t r = 0; r < TB; ++r) {
        const float* row = g + r * GH;
#pragma omp simd
        for (int64_t k = k0; k < k1; ++k) acc[k - k0] += row[k];
      }
      for (int64_t k = k0; k < k1; ++k) out[k] = acc[k - k0];
    }
  }
}

}  // namespace cpu
}  // namespace fastops
