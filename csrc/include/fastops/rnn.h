// RNN kernel interface (tanh/relu RNN, LSTM, GRU): torch-free parameters and entry points.
//
// Sizes: T time steps, B batch rows, I input features, H hidden units, G gates (1, 4 or 3 for
// tanh/relu, LSTM, GRU; fastops/math/rnn.h), S saved floats per unit (rnn_saved). Storage
// tensors are contiguous and of `dtype`; every "fp32" buffer is float32, so fp16/bf16 runs keep
// the cell state, the gate pre-activations and every gradient sum in float32.
//
// Variable lengths (PackedSequence): `lengths` (int64 [B], or null for all T) marks step t of
// row b active when t < lengths[b]. An inactive step leaves the row's h and c as they were and
// writes y = 0, so a forward layer stops at each row's end and a reverse layer (t = T-1 .. 0)
// starts each row at its own last step, from h0.
#pragma once

#include <cstdint>
#include <string>

#include "fastops/dtype.h"
#include "fastops/math/rnn.h"

namespace fastops {

using math::RnnMode;

// One time step's fused pointwise pass, after the two GEMMs.
struct RnnStepParams {
  RnnMode mode = RnnMode::kTanh;
  int64_t batch = 0, hidden = 0;
  DType dtype = DType::kFloat32;
  const float* gi = nullptr;  // fp32 [B, G*H], row stride gi_stride: x W_ih^T (bias not added)
  const float* gh = nullptr;  // fp32 [B, G*H], row stride gh_stride: h W_hh^T (bias not added)
  int64_t gi_stride = 0, gh_stride = 0;
  const float* b_ih = nullptr;  // fp32 [G*H] or null
  const float* b_hh = nullptr;  // fp32 [G*H] or null
  const void* h_prev = nullptr;  // storage [B, H]
  void* h_out = nullptr;         // storage [B, H]; may be h_prev (updated in place)
  void* y_out = nullptr;         // storage [B, H] or null: h', 0 on inactive rows
  const float* c_prev = nullptr;  // LSTM: fp32 [B, H]
  float* c_out = nullptr;         // LSTM: fp32 [B, H]; may be c_prev
  float* saved = nullptr;         // fp32 [B, S, H] for backward
  const int64_t* lengths = nullptr;
  int64_t t = 0;
};

// Backward of one step. dh holds the recurrent gradient reaching h' on entry (dy is added
// inside) and the direct part of d h_prev on exit (GRU: z dh; else 0): the caller then adds
// dgh W_hh. dc (LSTM) goes from d c' to d c_prev in place. Inactive rows: dgi = dgh = 0 and
// dh, dc pass through unchanged.
struct RnnStepBackwardParams {
  RnnMode mode = RnnMode::kTanh;
  int64_t batch = 0, hidden = 0;
  DType dtype = DType::kFloat32;
  const void* dy = nullptr;  // storage [B, H] or null
  float* dh = nullptr;       // fp32 [B, H], in/out
  float* dc = nullptr;       // LSTM: fp32 [B, H], in/out
  const float* saved = nullptr;   // fp32 [B, S, H] from the forward step
  const float* c = nullptr;       // LSTM: fp32 [B, H], this step's c'
  const float* c_prev = nullptr;  // LSTM: fp32 [B, H]
  const float* h_prev = nullptr;  // GRU: fp32 [B, H]
  float* dgi = nullptr;  // fp32 [B, G*H]: gradient of x W_ih^T + b_ih
  float* dgh = nullptr;  // GRU: fp32 [B, G*H]: gradient of h W_hh^T + b_hh (else it equals dgi)
  const int64_t* lengths = nullptr;
  int64_t t = 0;
};

// A whole layer, one direction: the input projection of all steps as one GEMM, then per step
// h W_hh^T and the fused step. Workspace is allocated inside.
struct RnnLayerParams {
  RnnMode mode = RnnMode::kTanh;
  int64_t steps = 0, batch = 0, input = 0, hidden = 0;
  DType dtype = DType::kFloat32;
  bool reverse = false;
  const void* x = nullptr;     // storage [T, B, I]
  const void* h0 = nullptr;    // storage [B, H]
  const void* c0 = nullptr;    // LSTM: storage [B, H]
  const void* w_ih = nullptr;  // storage [G*H, I]
  const void* w_hh = nullptr;  // storage [G*H, H]
  const float* b_ih = nullptr;  // fp32 [G*H] or null
  const float* b_hh = nullptr;
  const int64_t* lengths = nullptr;
  void* y = nullptr;      // storage [T, B, H]
  void* h_n = nullptr;    // storage [B, H]
  void* c_n = nullptr;    // LSTM: storage [B, H]
  float* saved = nullptr;  // fp32 [T, B, S, H]; null with c_all: inference, nothing kept for backward
  float* c_all = nullptr;  // LSTM: fp32 [T, B, H], c' of every step
};

// Gradients of a layer, all written as fp32 (the binding casts them to the storage dtype).
// Weight and bias gradients are big GEMMs / column sums over all steps in a fixed order.
struct RnnLayerBackwardParams {
  RnnLayerParams fwd;  // the forward's inputs and saved outputs (y, saved, c_all)
  const void* dy = nullptr;    // storage [T, B, H] or null
  const void* dh_n = nullptr;  // storage [B, H] or null
  const void* dc_n = nullptr;  // LSTM: storage [B, H] or null
  float* dx = nullptr;      // fp32 [T, B, I]
  float* dh0 = nullptr;     // fp32 [B, H]
  float* dc0 = nullptr;     // LSTM: fp32 [B, H]
  float* dw_ih = nullptr;   // fp32 [G*H, I]
  float* dw_hh = nullptr;   // fp32 [G*H, H]
  float* db_ih = nullptr;   // fp32 [G*H] or null
  float* db_hh = nullptr;
};

// ---- the per-unit step bodies, shared by the CPU loops and the CUDA kernels -----------------
// Cvt converts storage <-> float32: Cvt::load(T) -> float, Cvt::template store<T>(float) -> T.
// Mode M is a template argument so that each loop body is branch-free.

// g[k] + bias[k] (bias may be null).
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float rnn_biased(const float* g, const float* bias, int64_t k) {
  return g[k] + (bias ? bias[k] : 0.0f);
}

// Forward of unit j of row b, active (t < length) or not.
template <RnnMode M, typename T, typename Cvt>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE void rnn_step_forward_unit(const RnnStepParams& p, int64_t b, int64_t j,
                                                                    bool active) {
  const int64_t H = p.hidden;
  const int64_t u = b * H + j;
  constexpr int S = math::rnn_saved(M);
  const T* h_prev = static_cast<const T*>(p.h_prev);
  T* h_out = static_cast<T*>(p.h_out);
  T* y_out = static_cast<T*>(p.y_out);
  if (!active) {
    const T hp = h_prev[u];
    h_out[u] = hp;
    if (y_out) y_out[u] = Cvt::template store<T>(0.0f);
    if (M == RnnMode::kLstm) p.c_out[u] = p.c_prev[u];
    for (int s = 0; s < S; ++s) p.saved[b * S * H + s * H + j] = 0.0f;  // defined, never read
    return;
  }
  const float* gi = p.gi + b * p.gi_stride;
  const float* gh = p.gh + b * p.gh_stride;
  float* saved = p.saved + b * S * H + j;
  float h;
  if (M == RnnMode::kLstm) {
    float a[4];
    for (int g = 0; g < 4; ++g) a[g] = rnn_biased(gi, p.b_ih, g * H + j) + rnn_biased(gh, p.b_hh, g * H + j);
    const math::LstmForward r = math::lstm_forward(a[0], a[1], a[2], a[3], p.c_prev[u]);
    saved[0] = r.i;
    saved[H] = r.f;
    saved[2 * H] = r.g;
    saved[3 * H] = r.o;
    p.c_out[u] = r.c;
    h = r.h;
  } else if (M == RnnMode::kGru) {
    const float gh_n = rnn_biased(gh, p.b_hh, 2 * H + j);
    const math::GruForward r = math::gru_forward(
        rnn_biased(gi, p.b_ih, j), rnn_biased(gi, p.b_ih, H + j), rnn_biased(gi, p.b_ih, 2 * H + j),
        rnn_biased(gh, p.b_hh, j), rnn_biased(gh, p.b_hh, H + j), gh_n, Cvt::load(h_prev[u]));
    saved[0] = r.r;
    saved[H] = r.z;
    saved[2 * H] = r.n;
    saved[3 * H] = gh_n;
    h = r.h;
  } else {
    h = math::rnn_simple_forward(M == RnnMode::kRelu, rnn_biased(gi, p.b_ih, j) + rnn_biased(gh, p.b_hh, j));
    saved[0] = h;
  }
  const T hs = Cvt::template store<T>(h);
  h_out[u] = hs;
  if (y_out) y_out[u] = hs;
}

// Backward of unit j of row b.
template <RnnMode M, typename T, typename Cvt>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE void rnn_step_backward_unit(const RnnStepBackwardParams& p, int64_t b,
                                                                     int64_t j, bool active) {
  const int64_t H = p.hidden;
  const int64_t u = b * H + j;
  constexpr int G = math::rnn_gates(M);
  constexpr int S = math::rnn_saved(M);
  float* dgi = p.dgi + b * G * H + j;
  if (!active) {  // dh and dc pass through unchanged
    for (int g = 0; g < G; ++g) dgi[g * H] = 0.0f;
    if (M == RnnMode::kGru)
      for (int g = 0; g < G; ++g) p.dgh[b * G * H + g * H + j] = 0.0f;
    return;
  }
  const float dh = p.dh[u] + (p.dy ? Cvt::load(static_cast<const T*>(p.dy)[u]) : 0.0f);
  const float* saved = p.saved + b * S * H + j;
  if (M == RnnMode::kLstm) {
    const math::LstmBackward r =
        math::lstm_backward(dh, p.dc[u], saved[0], saved[H], saved[2 * H], saved[3 * H], p.c[u], p.c_prev[u]);
    dgi[0] = r.di;
    dgi[H] = r.df;
    dgi[2 * H] = r.dg;
    dgi[3 * H] = r.do_;
    p.dc[u] = r.dc_prev;
    p.dh[u] = 0.0f;
  } else if (M == RnnMode::kGru) {
    const math::GruBackward r = math::gru_backward(dh, saved[0], saved[H], saved[2 * H], saved[3 * H], p.h_prev[u]);
    float* dgh = p.dgh + b * G * H + j;
    dgi[0] = r.dr;
    dgi[H] = r.dz;
    dgi[2 * H] = r.dn;
    dgh[0] = r.dr;
    dgh[H] = r.dz;
    dgh[2 * H] = r.dgh_n;
    p.dh[u] = r.dh_prev;
  } else {
    dgi[0] = math::rnn_simple_backward(M == RnnMode::kRelu, dh, saved[0]);
    p.dh[u] = 0.0f;
  }
}

namespace cpu {
void rnn_step_forward(const RnnStepParams& p);
void rnn_step_backward(const RnnStepBackwardParams& p);
void rnn_layer_forward(const RnnLayerParams& p);
void rnn_layer_backward(const RnnLayerBackwardParams& p);
}  // namespace cpu

// ---- LSTM with a projection (torch.nn.LSTM proj_size = P > 0): csrc/cpu/rnn_proj.cpp ----------
// Per step the LSTM cell (the step body above) gives h_full = o * tanh(c') [B, H]; the state and
// output are its projection r = h_full W_hr^T [B, P]. So h0, y and h_n are [.., B, P], W_hh is
// [4H, P] (multiplies r), c is [.., B, H]. Inactive rows (lengths) carry r and c, y = 0 and
// h_full = 0. Each step has two barriers: the cell on the thread's hidden units, then the
// projection on the thread's columns of r.
struct RnnProjLayerParams {
  RnnLayerParams layer;  // mode kLstm; hidden H; h0 [B, P], w_hh [4H, P], y [T, B, P], h_n [B, P]
  int64_t proj = 0;      // P, 0 < P < H
  const void* w_hr = nullptr;  // storage [P, H]
  void* h_full = nullptr;      // storage [T, B, H]: o * tanh(c') of every step (saved for backward)
};

// Gradients of a projected layer, float32. dW_hr = sum_t dr_t^T h_full_t is one GEMM at the end.
struct RnnProjLayerBackwardParams {
  RnnProjLayerParams fwd;      // the forward's inputs and saved outputs (y, saved, c_all, h_full)
  const void* dy = nullptr;    // storage [T, B, P] or null
  const void* dh_n = nullptr;  // storage [B, P] or null
  const void* dc_n = nullptr;  // storage [B, H] or null
  float* dx = nullptr;         // fp32 [T, B, I]
  float* dh0 = nullptr;        // fp32 [B, P]
  float* dc0 = nullptr;        // fp32 [B, H]
  float* dw_ih = nullptr;      // fp32 [4H, I]
  float* dw_hh = nullptr;      // fp32 [4H, P]
  float* dw_hr = nullptr;      // fp32 [P, H]
  float* db_ih = nullptr;      // fp32 [4H] or null
  float* db_hh = nullptr;
};

namespace cpu {
void rnn_proj_layer_forward(const RnnProjLayerParams& p);
void rnn_proj_layer_backward(const RnnProjLayerBackwardParams& p);
}  // namespace cpu

namespace cuda {
// `stream` is a cudaStream_t. Return 0 on success, else the cudaError_t of the failed launch.
int rnn_step_forward(const RnnStepParams& p, void* stream);
int rnn_step_backward(const RnnStepBackwardParams& p, void* stream);
}  // namespace cuda

// ---- CUDA persistent layer forward: one cooperative launch over all T steps -----------------
// Each block owns a slice of hidden units j and keeps their W_hh rows (every gate: j, H+j, ...)
// in shared memory for the whole sequence. Per step it reads h_{t-1} (y of the previous step, or
// h0) into shared memory, computes h W_hh^T of its units for every batch row, runs the step body
// rnn_step_forward_unit above, and the grid synchronises (grid.sync()) before the next step.
// Same outputs as the per-step loop: y (h_n is y's last step), saved, c_all. No lengths.
constexpr int64_t kRnnPersistentMaxBatch = 8;

struct RnnPersistentParams {
  RnnMode mode = RnnMode::kTanh;
  int64_t steps = 0, batch = 0, hidden = 0;
  DType dtype = DType::kFloat32;
  bool reverse = false;
  const float* gx = nullptr;    // fp32 [T, B, G*H]: x W_ih^T of every step (bias not added)
  const float* b_ih = nullptr;  // fp32 [G*H] or null
  const float* b_hh = nullptr;
  const void* h0 = nullptr;     // storage [B, H]
  const float* c0 = nullptr;    // LSTM: fp32 [B, H]
  const void* w_hh = nullptr;   // storage [G*H, H]
  void* y = nullptr;            // storage [T, B, H]
  float* saved = nullptr;       // fp32 [T, B, S, H]
  float* c_all = nullptr;       // LSTM: fp32 [T, B, H]
  float* gh = nullptr;          // fp32 [B, G*H] workspace (h W_hh^T of the current step)
  bool backward = false;        // for rnn_persistent_plan: plan the backward kernel instead
};

// The backward through time of one layer direction in one cooperative launch: block k keeps the
// W_hh columns of its units (all G*H rows) in shared memory; per step (t = the forward's last
// step first) it adds dgh of the step before W_hh to dh of its units, runs the per-step body
// rnn_step_backward_unit, and the grid synchronises. On exit dh = d h0 and dc = d c0; dgi (and
// dgh for GRU) hold every step's gate gradients for the weight GEMMs. No lengths.
struct RnnPersistentBackwardParams {
  RnnMode mode = RnnMode::kTanh;
  int64_t steps = 0, batch = 0, hidden = 0;
  DType dtype = DType::kFloat32;
  bool reverse = false;
  const void* dy = nullptr;       // storage [T, B, H] or null
  float* dh = nullptr;            // fp32 [B, H] in/out: d h_n in, d h0 out
  float* dc = nullptr;            // LSTM: fp32 [B, H] in/out: d c_n in, d c0 out
  const float* saved = nullptr;   // fp32 [T, B, S, H]
  const float* c_all = nullptr;   // LSTM: fp32 [T, B, H]
  const float* c0 = nullptr;      // LSTM: fp32 [B, H]
  const float* h_prev = nullptr;  // fp32 [T, B, H]: h entering each step
  const void* w_hh = nullptr;     // storage [G*H, H]
  float* dgi = nullptr;           // fp32 [T, B, G*H]
  float* dgh = nullptr;           // GRU: fp32 [T, B, G*H] (else the gradient of h W_hh^T is dgi)
};

// The launch the persistent kernel makes for a problem on the current device.
struct RnnPersistentPlan {
  int blocks = 0, threads = 0;
  int64_t units = 0;       // hidden units per block (the last block may have fewer)
  int64_t smem_bytes = 0;  // dynamic shared memory per block: the W_hh slice and h_{t-1}
};

namespace cuda {
// Empty when the persistent kernel takes p (mode, dtype, batch, hidden) on the current device,
// with *plan filled; else the reason it does not (the per-step path runs instead).
std::string rnn_persistent_plan(const RnnPersistentParams& p, RnnPersistentPlan* plan);
// 0 on success, else the cudaError_t (cudaErrorInvalidConfiguration when the plan does not fit).
int rnn_persistent_forward(const RnnPersistentParams& p, void* stream);
int rnn_persistent_backward(const RnnPersistentBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace fastops
