// RNN cells and layers on the CPU (fastops/rnn.h): fused pointwise steps and whole layers.
//
// A layer runs its time loop here, with no Python per step: x W_ih^T for all steps as one GEMM
// into float32, then per step h W_hh^T (cpu::gemm, OpenMP inside) and the fused step (gate
// nonlinearities, cell update, what backward needs saved), OpenMP over (row, block of units).
// Backward runs the steps in reverse, each a fused pointwise pass plus one GEMM dh += dgh W_hh,
// keeping every step's gate gradients; dx, dW_ih, dW_hh are then three large GEMMs and the bias
// gradients ordered column sums, so results do not depend on the thread count.
// fp16/bf16: the weights are widened to float32 once per backward call, so every product and sum
// of the backward is float32 (the forward's GEMMs read bf16/fp16 and accumulate in float32).
#include <algorithm>
#include <cstring>
#include <vector>

#include "fastops/gemm.h"
#include "fastops/rnn.h"
#include "fastops/storage.h"
#include "isa.h"

namespace fastops {
namespace cpu {
namespace {

constexpr int64_t kUnitBlock = 64;          // units per OpenMP work item
constexpr int64_t kParallelMinWork = 4096;  // units below which one thread is faster

struct Cvt {
  template <typename T>
  static FASTOPS_FORCE_INLINE float load(T v) { return to_float(v); }
  template <typename T>
  static FASTOPS_FORCE_INLINE T store(float v) { return from_float<T>(v); }
};

FASTOPS_FORCE_INLINE bool active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// ---- one step, a block of units of one row ------------------------------------------------

template <RnnMode M, typename T>
FASTOPS_FORCE_INLINE void forward_block(const RnnStepParams& p, int64_t b, int64_t j0, int64_t j1) {
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

// One forward and one backward entry per ISA (isa.h): the same loops compiled for each target.
#define FASTOPS_RNN_ISA_ENTRIES(SUFFIX, TARGET)                                                          \
  template <RnnMode M, typename T>                                                                      \
  TARGET void forward_block_##SUFFIX(const RnnStepParams& p, int64_t b, int64_t j0, int64_t j1) {       \
    forward_block<M, T>(p, b, j0, j1);                                                                  \
  }                                                                                                     \
  template <RnnMode M, typename T>                                                                      \
  TARGET void backward_block_##SUFFIX(const RnnStepBackwardParams& p, int64_t b, int64_t j0, int64_t j1) { \
    backward_block<M, T>(p, b, j0, j1);                                                                 \
  }
FASTOPS_RNN_ISA_ENTRIES(avx512, FASTOPS_TARGET_AVX512)
FASTOPS_RNN_ISA_ENTRIES(avx2, FASTOPS_TARGET_AVX2)
FASTOPS_RNN_ISA_ENTRIES(base, FASTOPS_TARGET_BASELINE)
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

// ---- helpers for the layers ---------------------------------------------------------------

size_t storage_bytes(DType d) { return d == DType::kFloat32 ? 4 : 2; }

template <typename T>
void widen(const void* src, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src);
#pragma omp parallel for simd schedule(static) if (n >= (1 << 16))
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

void narrow_any(DType d, const float* src, void* dst, int64_t n) {
  switch (d) {
    case DType::kFloat16: return narrow<Half>(src, dst, n);
    case DType::kBFloat16: return narrow<BFloat16>(src, dst, n);
    default: return narrow<float>(src, dst, n);
  }
}

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

// dst[c * rows + r] = float(src[r * cols + c]): a float32 transposed copy, in 32 x 32 tiles.
template <typename T>
void transpose_to(const void* src, int64_t rows, int64_t cols, float* dst) {
  const T* s = static_cast<const T*>(src);
  constexpr int64_t kTile = 32;
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
  for (int64_t c0 = 0; c0 < cols; c0 += kTile)
    for (int64_t r0 = 0; r0 < rows; r0 += kTile)
      for (int64_t c = c0; c < std::min(c0 + kTile, cols); ++c)
        for (int64_t r = r0; r < std::min(r0 + kTile, rows); ++r) dst[c * rows + r] = to_float(s[r * cols + c]);
}

std::vector<float> transposed(DType d, const void* src, int64_t rows, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  switch (d) {
    case DType::kFloat16: transpose_to<Half>(src, rows, cols, out.data()); break;
    case DType::kBFloat16: transpose_to<BFloat16>(src, rows, cols, out.data()); break;
    default: transpose_to<float>(src, rows, cols, out.data()); break;
  }
  return out;
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

int64_t forward_time(const RnnLayerParams& p, int64_t s) { return p.reverse ? p.steps - 1 - s : s; }

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
  const int64_t GH = math::rnn_gates(p.mode) * H, S = math::rnn_saved(p.mode);
  const size_t es = storage_bytes(p.dtype);
  const bool lstm = p.mode == RnnMode::kLstm;
  if (B == 0 || H == 0) return;
  std::memcpy(p.h_n, p.h0, static_cast<size_t>(B * H) * es);
  if (T == 0) {
    if (lstm) std::memcpy(p.c_n, p.c0, static_cast<size_t>(B * H) * es);
    return;
  }
  std::vector<float> gx(static_cast<size_t>(T * B * GH)), gh(static_cast<size_t>(B * GH));
  // gx[T*B, GH] = x[T*B, I] W_ih^T
  mm(T * B, GH, I, p.dtype, p.x, I, 1, p.w_ih, 1, I, gx.data(), GH, 0.0f);
  std::vector<float> c0;
  if (lstm) {
    c0.resize(static_cast<size_t>(B * H));
    widen_any(p.dtype, p.c0, c0.data(), B * H);
  }
  char* y = static_cast<char*>(p.y);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = forward_time(p, s);
    mm(B, GH, H, p.dtype, p.h_n, H, 1, p.w_hh, 1, H, gh.data(), GH, 0.0f);  // gh = h W_hh^T
    RnnStepParams sp;
    sp.mode = p.mode;
    sp.batch = B;
    sp.hidden = H;
    sp.dtype = p.dtype;
    sp.gi = gx.data() + t * B * GH;
    sp.gh = gh.data();
    sp.gi_stride = sp.gh_stride = GH;
    sp.b_ih = p.b_ih;
    sp.b_hh = p.b_hh;
    sp.h_prev = p.h_n;
    sp.h_out = p.h_n;
    sp.y_out = y + static_cast<size_t>(t * B * H) * es;
    if (lstm) {
      sp.c_prev = s == 0 ? c0.data() : p.c_all + forward_time(p, s - 1) * B * H;
      sp.c_out = p.c_all + t * B * H;
    }
    sp.saved = p.saved + t * B * S * H;
    sp.lengths = p.lengths;
    sp.t = t;
    rnn_step_forward(sp);
  }
  if (lstm) narrow_any(p.dtype, p.c_all + forward_time(p, T - 1) * B * H, p.c_n, B * H);
}

void rnn_layer_backward(const RnnLayerBackwardParams& q) {
  const RnnLayerParams& p = q.fwd;
  const int64_t T = p.steps, B = p.batch, I = p.input, H = p.hidden;
  const int64_t G = math::rnn_gates(p.mode), GH = G * H;
  const int64_t S = math::rnn_saved(p.mode);
  const size_t es = storage_bytes(p.dtype);
  const bool lstm = p.mode == RnnMode::kLstm, gru = p.mode == RnnMode::kGru;
  // Running gradients: dh0 / dc0 hold d h, d c of the state entering the current step.
  if (q.dh_n) widen_any(p.dtype, q.dh_n, q.dh0, B * H);
  else std::memset(q.dh0, 0, sizeof(float) * B * H);
  if (lstm) {
    if (q.dc_n) widen_any(p.dtype, q.dc_n, q.dc0, B * H);
    else std::memset(q.dc0, 0, sizeof(float) * B * H);
  }
  const bool empty = T == 0 || B == 0;
  std::vector<float> dgi(static_cast<size_t>(T * B * GH)), dgh_own(gru ? dgi.size() : 0);
  float* dgh = gru ? dgh_own.data() : dgi.data();
  // h entering step t, float32: y of the previous step when that step was active for the row,
  // else h0 (a reverse layer starts each row at its last step from h0).
  std::vector<float> hprev(static_cast<size_t>(T * B * H));
  const F32View h0(p.dtype, p.h0, B * H);
  const F32View yv(p.dtype, p.y, T * B * H);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t tp = p.reverse ? t + 1 : t - 1;
    for (int64_t b = 0; b < B; ++b) {
      const bool from_y = tp >= 0 && tp < T && active(p.lengths, b, tp);
      std::memcpy(hprev.data() + (t * B + b) * H, (from_y ? yv.ptr + (tp * B + b) * H : h0.ptr + b * H),
                  sizeof(float) * H);
    }
  }
  std::vector<float> c0;
  if (lstm) {
    c0.resize(static_cast<size_t>(B * H));
    widen_any(p.dtype, p.c0, c0.data(), B * H);
  }
  // Every backward GEMM reads A along rows and B along k (both unit stride): W_hh, W_ih and the
  // operands of the weight gradients are transposed into float32 copies first.
  const std::vector<float> whh_t = transposed(p.dtype, p.w_hh, GH, H);  // [H, GH]
  const char* dy = static_cast<const char*>(q.dy);
  for (int64_t s = T - 1; s >= 0 && !empty; --s) {
    const int64_t t = forward_time(p, s);
    RnnStepBackwardParams sp;
    sp.mode = p.mode;
    sp.batch = B;
    sp.hidden = H;
    sp.dtype = p.dtype;
    sp.dy = dy ? dy + static_cast<size_t>(t * B * H) * es : nullptr;
    sp.dh = q.dh0;
    sp.dc = q.dc0;
    sp.saved = p.saved + t * B * S * H;
    if (lstm) {
      sp.c = p.c_all + t * B * H;
      sp.c_prev = s == 0 ? c0.data() : p.c_all + forward_time(p, s - 1) * B * H;
    }
    sp.h_prev = hprev.data() + t * B * H;
    sp.dgi = dgi.data() + t * B * GH;
    sp.dgh = dgh + t * B * GH;
    sp.lengths = p.lengths;
    sp.t = t;
    rnn_step_backward(sp);
    // dh += dgh[B, GH] W_hh[GH, H]
    mm(B, H, GH, DType::kFloat32, dgh + t * B * GH, GH, 1, whh_t.data(), 1, GH, q.dh0, H, 1.0f);
  }
  if (empty) {
    std::memset(q.dx, 0, sizeof(float) * T * B * I);
    std::memset(q.dw_ih, 0, sizeof(float) * GH * I);
    std::memset(q.dw_hh, 0, sizeof(float) * GH * H);
    if (q.db_ih) std::memset(q.db_ih, 0, sizeof(float) * GH);
    if (q.db_hh) std::memset(q.db_hh, 0, sizeof(float) * GH);
    return;
  }
  const int64_t TB = T * B;
  const std::vector<float> wih_t = transposed(p.dtype, p.w_ih, GH, I);  // [I, GH]
  mm(TB, I, GH, DType::kFloat32, dgi.data(), GH, 1, wih_t.data(), 1, GH, q.dx, I, 0.0f);  // dx = dgi W_ih
  // dW_ih = dgi^T x, dW_hh = dgh^T hprev: sums over all T*B rows, from [GH, TB] and [I|H, TB] copies
  const std::vector<float> dgi_t = transposed(DType::kFloat32, dgi.data(), TB, GH);
  const std::vector<float> dgh_t = gru ? transposed(DType::kFloat32, dgh, TB, GH) : std::vector<float>();
  const float* dgh_tp = gru ? dgh_t.data() : dgi_t.data();
  {
    const std::vector<float> x_t = transposed(p.dtype, p.x, TB, I);
    mm(GH, I, TB, DType::kFloat32, dgi_t.data(), TB, 1, x_t.data(), 1, TB, q.dw_ih, I, 0.0f);
  }
  {
    const std::vector<float> hprev_t = transposed(DType::kFloat32, hprev.data(), TB, H);
    mm(GH, H, TB, DType::kFloat32, dgh_tp, TB, 1, hprev_t.data(), 1, TB, q.dw_hh, H, 0.0f);
  }
  float* db[2] = {q.db_ih, q.db_hh};
  const float* src[2] = {dgi_t.data(), dgh_tp};
  for (int w = 0; w < 2; ++w) {
    if (!db[w]) continue;
    float* out = db[w];
    const float* g = src[w];
#pragma omp parallel for schedule(static) if (GH * TB >= (1 << 16))
    for (int64_t k = 0; k < GH; ++k) {  // each a sum over rows in order: thread-count independent
      float acc = 0.0f;
      for (int64_t r = 0; r < TB; ++r) acc += g[k * TB + r];
      out[k] = acc;
    }
  }
}

}  // namespace cpu
}  // namespace fastops
