// RNN cell gate math (forward from pre-activations, and backward), shared by the CPU and CUDA
// kernels; fastops/triton/rnn.py mirrors it. Everything is per (batch row, hidden unit j): the
// GEMMs x W_ih^T and h W_hh^T run outside, these functions take their float32 results.
//
// Gate order as torch: LSTM (i, f, g, o), GRU (r, z, n). With gi = x W_ih^T + b_ih and
// gh = h W_hh^T + b_hh (per gate, at unit j):
//   tanh/relu: h' = act(gi + gh)
//   LSTM:      i, f, o = sigmoid(gi + gh), g = tanh(gi + gh); c' = f c + i g; h' = o tanh(c')
//   GRU:       r, z = sigmoid(gi + gh); n = tanh(gi_n + r gh_n); h' = (1 - z) n + z h
// What forward saves for backward (`saved`, float32, kSavedPerUnit values per unit):
//   tanh/relu: h'          LSTM: i, f, g, o          GRU: r, z, n, gh_n
#pragma once

#include "fastops/macros.h"
#include "fastops/math/activation.h"
#include "fastops/math/exp.h"

namespace fastops {
namespace math {

enum class RnnMode : int { kTanh = 0, kRelu = 1, kLstm = 2, kGru = 3 };

// Gates per hidden unit (rows of W_ih / W_hh are gates * hidden) and saved floats per unit.
FASTOPS_HOST_DEVICE constexpr int rnn_gates(RnnMode m) {
  return m == RnnMode::kLstm ? 4 : (m == RnnMode::kGru ? 3 : 1);
}
FASTOPS_HOST_DEVICE constexpr int rnn_saved(RnnMode m) {
  return (m == RnnMode::kLstm || m == RnnMode::kGru) ? 4 : 1;
}

// ---- forward -----------------------------------------------------------------------------

// Every cell formula below is a template over the lane type V (float, or a CPU vector of 16
// floats) and Ops, which supplies the nonlinearities for V: ScalarGateOps here, vec512::GateOps in
// csrc/cpu/vec_math.h. So the formulas exist once for the scalar loops, the CUDA kernels and the
// CPU's vector loops. Ops::pos(h, v) is h > 0 ? v : 0 (relu and its derivative).
struct ScalarGateOps {
  static FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float sigmoid(float x) { return math::sigmoid(x); }
  static FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float tanh(float x) { return tanh_f32(x); }
  static FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float pos(float h, float v) { return h > 0.0f ? v : 0.0f; }
};

// tanh / relu cell: a = gi + gh. Returns h'.
template <typename Ops, typename V>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE V rnn_simple_forward_t(bool relu, V a) {
  return relu ? Ops::pos(a, a) : Ops::tanh(a);
}
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float rnn_simple_forward(bool relu, float a) {
  return rnn_simple_forward_t<ScalarGateOps>(relu, a);
}

template <typename V>
struct LstmForwardT {
  V i, f, g, o, c, h;
};
using LstmForward = LstmForwardT<float>;

// Pre-activations a_* = gi_* + gh_*, previous cell c_prev; V is float or a vector of lanes.
template <typename Ops, typename V>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE LstmForwardT<V> lstm_forward_t(V a_i, V a_f, V a_g, V a_o, V c_prev) {
  LstmForwardT<V> r;
  r.i = Ops::sigmoid(a_i);
  r.f = Ops::sigmoid(a_f);
  r.g = Ops::tanh(a_g);
  r.o = Ops::sigmoid(a_o);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * Ops::tanh(r.c);
  return r;
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE LstmForward lstm_forward(float a_i, float a_f, float a_g, float a_o,
                                                                  float c_prev) {
  return lstm_forward_t<ScalarGateOps>(a_i, a_f, a_g, a_o, c_prev);
}

template <typename V>
struct GruForwardT {
  V r, z, n, h;
};
using GruForward = GruForwardT<float>;

// gi_*, gh_* per gate (biases included), h_prev.
template <typename Ops, typename V>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE GruForwardT<V> gru_forward_t(V gi_r, V gi_z, V gi_n, V gh_r, V gh_z, V gh_n,
                                                                     V h_prev) {
  GruForwardT<V> o;
  o.r = Ops::sigmoid(gi_r + gh_r);
  o.z = Ops::sigmoid(gi_z + gh_z);
  o.n = Ops::tanh(gi_n + o.r * gh_n);
  o.h = (1.0f - o.z) * o.n + o.z * h_prev;
  return o;
}
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE GruForward gru_forward(float gi_r, float gi_z, float gi_n, float gh_r,
                                                                float gh_z, float gh_n, float h_prev) {
  return gru_forward_t<ScalarGateOps>(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, h_prev);
}

// ---- backward ----------------------------------------------------------------------------
// dh: gradient reaching h' (output gradient plus the recurrent one), float32.

// tanh / relu: d(pre-activation) from dh and the saved h'.
template <typename Ops, typename V>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE V rnn_simple_backward_t(bool relu, V dh, V h) {
  return relu ? Ops::pos(h, dh) : dh * (1.0f - h * h);
}
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE float rnn_simple_backward(bool relu, float dh, float h) {
  return rnn_simple_backward_t<ScalarGateOps>(relu, dh, h);
}

template <typename V>
struct LstmBackwardT {
  V di, df, dg, do_, dc_prev;  // gradients of the four pre-activations; of c_prev
};
using LstmBackward = LstmBackwardT<float>;

// dc: gradient reaching c' from the next step; c: c' (this step's cell), c_prev. Ops and V as in
// lstm_forward_t.
template <typename Ops, typename V>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE LstmBackwardT<V> lstm_backward_t(V dh, V dc, V i, V f, V g, V o, V c,
                                                                         V c_prev) {
  const V tc = Ops::tanh(c);
  const V dct = dc + dh * o * (1.0f - tc * tc);
  LstmBackwardT<V> r;
  r.di = dct * g * i * (1.0f - i);
  r.df = dct * c_prev * f * (1.0f - f);
  r.dg = dct * i * (1.0f - g * g);
  r.do_ = dh * tc * o * (1.0f - o);
  r.dc_prev = dct * f;
  return r;
}

FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE LstmBackward lstm_backward(float dh, float dc, float i, float f, float g,
                                                                    float o, float c, float c_prev) {
  return lstm_backward_t<ScalarGateOps>(dh, dc, i, f, g, o, c, c_prev);
}

template <typename V>
struct GruBackwardT {
  V dr, dz, dn;  // gradients of the pre-activations gi_r + gh_r, gi_z + gh_z, gi_n (= d gi_*)
  V dgh_n;       // gradient of gh_n (= dn * r)
  V dh_prev;     // the direct part z * dh (the recurrent part comes from d gh W_hh)
};
using GruBackward = GruBackwardT<float>;

template <typename V>
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE GruBackwardT<V> gru_backward_t(V dh, V r, V z, V n, V gh_n, V h_prev) {
  GruBackwardT<V> o;
  const V dn_pre = dh * (1.0f - z) * (1.0f - n * n);
  o.dn = dn_pre;
  o.dgh_n = dn_pre * r;
  o.dr = dn_pre * gh_n * r * (1.0f - r);
  o.dz = dh * (h_prev - n) * z * (1.0f - z);
  o.dh_prev = dh * z;
  return o;
}
FASTOPS_HOST_DEVICE FASTOPS_FORCE_INLINE GruBackward gru_backward(float dh, float r, float z, float n, float gh_n,
                                                                  float h_prev) {
  return gru_backward_t(dh, r, z, n, gh_n, h_prev);
}

}  // namespace math
}  // namespace fastops
