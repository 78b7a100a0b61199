// The LSTM layer with a projection (torch.nn.LSTM proj_size = P > 0) on the CPU (fastops/rnn.h,
// RnnProjLayerParams): the plain layer's loop (csrc/cpu/rnn.cpp) with the state r = h_full W_hr^T.
//
// Forward: x W_ih^T for all steps as one GEMM into float32; W_hh^T [P, 4H] (one panel group per
// gate) and W_hr^T [H, P] packed once (cpu::PackedB); then one OpenMP region for all steps. Per
// step, thread i (a) computes r_{t-1} W_hh^T for its hidden units of every gate and runs the shared
// LSTM step body on them, writing h_full_t = o * tanh(c') (storage dtype, kept for backward);
// barrier; (b) r_t[:, its columns] = h_full_t W_hr^T, then y_t and the running r; barrier.
// Backward, steps in reverse, with the running gradients dr [B, P] and dc [B, H]:
// (a) on the thread's columns of r: dr_t = dr + dy_t (kept for dW_hr), dr = 0; barrier;
// (b) on its hidden units: dh_full = dr_t W_hr, then the shared LSTM backward step body (gate
// gradients dgi_t, dc in place); barrier; (c) on its columns of r: dr += dgi_t W_hh. dx, dW_ih and
// dW_hh (one GEMM dgi^T [x | r_prev]), dW_hr = dr^T h_full and the bias sums are GEMMs over all
// steps at the end, so results do not depend on the thread count.
// Dtypes as the plain layer: fp16/bf16 storage, float32 cell state and accumulation; the
// backward's GEMMs read bf16 operands for bf16 (gate gradients and dr rounded once) and float32
// otherwise (fp16 weights widened once).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "fastops/gemm.h"
#include "fastops/gemm_packed.h"
#include "fastops/rnn.h"
#include "fastops/storage.h"
#include "rnn_internal.h"

namespace fastops {
namespace cpu {
using namespace rnn_detail;
namespace {

constexpr int64_t kGates = 4;  // LSTM
constexpr int64_t kSaved = math::rnn_saved(RnnMode::kLstm);

// A team over the columns [0, n) of `panel`-wide panels with the thread count of `like` (the two
// phases of a step share one parallel region).
Team columns_team(const Team& like, int64_t panel, int64_t n) {
  Team t = like;
  t.panel = panel;
  t.hidden = n;
  t.panels = (n + panel - 1) / panel;
  return t;
}

// Rows [x_{t,b} | r entering step t] for every (t, b), width I + P, as stored, into raw: r_{t-1}
// is y of the previous step when that step was active for the row, else h0 (a reverse layer
// starts each row at its last step from h0).
void input_and_state_rows(const RnnProjLayerParams& pp, void* raw) {
  const RnnLayerParams& p = pp.layer;
  const int64_t T = p.steps, B = p.batch, I = p.input, P = pp.proj, ld = I + P;
  const size_t es = storage_bytes(p.dtype);
  const char* x = static_cast<const char*>(p.x);
  const char* y = static_cast<const char*>(p.y);
  const char* h0 = static_cast<const char*>(p.h0);
#pragma omp parallel for schedule(static) if (T * B * ld >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t tp = p.reverse ? t + 1 : t - 1;
    for (int64_t b = 0; b < B; ++b) {
      const bool from_y = tp >= 0 && tp < T && active(p.lengths, b, tp);
      const char* state =
          from_y ? y + static_cast<size_t>((tp * B + b) * P) * es : h0 + static_cast<size_t>(b * P) * es;
      const char* xr = x + static_cast<size_t>((t * B + b) * I) * es;
      char* r = static_cast<char*>(raw) + static_cast<size_t>((t * B + b) * ld) * es;
      std::memcpy(r, xr, static_cast<size_t>(I) * es);
      std::memcpy(r + static_cast<size_t>(I) * es, state, static_cast<size_t>(P) * es);
    }
  }
}

// Step (a) of the backward on columns [q0, q1) of one row: dr_t = dr + dy_t (dy as stored, or
// null), then dr = 0 (step (c) adds the recurrent part).
template <typename T>
void take_dr(const void* dy, float* dr, float* dr_t, int64_t q0, int64_t q1) {
  const T* d = static_cast<const T*>(dy);
  for (int64_t k = q0; k < q1; ++k) {
    dr_t[k] = dr[k] + (d ? to_float(d[k]) : 0.0f);
    dr[k] = 0.0f;
  }
}
using TakeDr = void (*)(const void*, float*, float*, int64_t, int64_t);
TakeDr take_dr_fn(DType d) {
  switch (d) {
    case DType::kFloat16: return &take_dr<Half>;
    case DType::kBFloat16: return &take_dr<BFloat16>;
    default: return &take_dr<float>;
  }
}

}  // namespace

void rnn_proj_layer_forward(const RnnProjLayerParams& pp) {
  const RnnLayerParams& p = pp.layer;
  const int64_t T = p.steps, B = p.batch, I = p.input, H = p.hidden, P = pp.proj;
  const int64_t GH = kGates * H;
  const size_t es = storage_bytes(p.dtype);
  if (B == 0 || H == 0) return;
  if (T == 0) {
    std::memcpy(p.h_n, p.h0, static_cast<size_t>(B * P) * es);
    std::memcpy(p.c_n, p.c0, static_cast<size_t>(B * H) * es);
    return;
  }
  // uninitialized: every element is written before it is read
  const Workspace<float> gx(static_cast<size_t>(T * B * GH)), gh(static_cast<size_t>(B * GH)),
      pr(static_cast<size_t>(B * P));
  mm(T * B, GH, I, p.dtype, p.x, I, 1, p.w_ih, 1, I, gx.data(), GH, 0.0f);  // gx = x W_ih^T
  // W_hh^T [P, 4H], one group per gate: B_g[k, j] = W_hh[g*H + j, k]; W_hr^T [H, P]: B[j, q] = W_hr[q, j]
  const PackedB whh(GemmOperand{p.w_hh, 0, 1, P}, P, H, p.dtype, kGates, H * P);
  const PackedB whr(GemmOperand{pp.w_hr, 0, 1, H}, H, P, p.dtype);
  std::vector<float> c0(static_cast<size_t>(B * H));
  widen_any(p.dtype, p.c0, c0.data(), B * H);
  // the running r [B, P]: read by every thread in (a), written by column owners in (b)
  std::vector<char> r(static_cast<size_t>(B * P) * es);
  std::memcpy(r.data(), p.h0, r.size());
  const ForwardBlock block = forward_block_fn(RnnMode::kLstm, p.dtype);
  const Team units = make_team(whh.panel_cols(), H, B * GH * P + B * P * H);
  const Team cols = columns_team(units, whr.panel_cols(), P);
  char* y = static_cast<char*>(p.y);
  char* hf = static_cast<char*>(pp.h_full);
#pragma omp parallel num_threads(units.threads)
  {
    const int64_t j0 = units.begin(), j1 = units.end(), q0 = cols.begin(), q1 = cols.end();
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = step_time(p, s);
      char* hf_t = hf + static_cast<size_t>(t * B * H) * es;
      if (j0 < j1) {  // (a) the cell on units [j0, j1) of every gate
        recurrent_gates(whh, p, r.data(), P, gh.data(), j0, j1, B);  // gh = r W_hh^T
        RnnStepParams sp = step_params(p, t, gx.data() + t * B * GH, gh.data());
        sp.h_prev = sp.h_out = hf_t;  // the LSTM body reads h_prev only to carry inactive rows
        sp.y_out = nullptr;
        sp.c_prev = s == 0 ? c0.data() : p.c_all + step_time(p, s - 1) * B * H;
        sp.c_out = p.c_all + t * B * H;
        sp.saved = p.saved + t * B * kSaved * H;
        for (int64_t b = 0; b < B; ++b) {
          block(sp, b, j0, j1);
          if (!active(p.lengths, b, t))  // defined (dW_hr reads it, times dr_t = 0)
            std::memset(hf_t + static_cast<size_t>(b * H + j0) * es, 0, static_cast<size_t>(j1 - j0) * es);
        }
      }
#pragma omp barrier
      if (q0 < q1) {  // (b) r[:, q0:q1] = h_full_t W_hr^T, y_t
        GemmParams g;
        g.m = B;
        g.a = GemmOperand{hf_t, 0, H, 1};
        g.c = pr.data();
        g.c_stride_row = P;
        g.ab_dtype = p.dtype;
        g.c_dtype = DType::kFloat32;
        whr.multiply(g, q0, q1);
        const size_t off = static_cast<size_t>(q0) * es, n = static_cast<size_t>(q1 - q0) * es;
        for (int64_t b = 0; b < B; ++b) {
          char* y_tb = y + static_cast<size_t>((t * B + b) * P) * es + off;
          char* r_b = r.data() + static_cast<size_t>(b * P) * es + off;
          if (active(p.lengths, b, t)) {
            narrow_any(p.dtype, pr.data() + b * P + q0, r_b, q1 - q0);
            std::memcpy(y_tb, r_b, n);
          } else {
            std::memset(y_tb, 0, n);  // r carries
          }
        }
      }
#pragma omp barrier
    }
  }
  std::memcpy(p.h_n, r.data(), r.size());
  narrow_any(p.dtype, p.c_all + step_time(p, T - 1) * B * H, p.c_n, B * H);
}

void rnn_proj_layer_backward(const RnnProjLayerBackwardParams& q) {
  const RnnProjLayerParams& pp = q.fwd;
  const RnnLayerParams& p = pp.layer;
  const int64_t T = p.steps, B = p.batch, I = p.input, H = p.hidden, P = pp.proj;
  const int64_t GH = kGates * H, TB = T * B;
  const size_t es = storage_bytes(p.dtype);
  // Running gradients: dh0 (= dr) / dc0 hold d r, d c of the state entering the current step.
  if (q.dh_n) widen_any(p.dtype, q.dh_n, q.dh0, B * P);
  else std::memset(q.dh0, 0, sizeof(float) * B * P);
  if (q.dc_n) widen_any(p.dtype, q.dc_n, q.dc0, B * H);
  else std::memset(q.dc0, 0, sizeof(float) * B * H);
  if (T == 0 || B == 0 || H == 0) {
    std::memset(q.dx, 0, sizeof(float) * T * B * I);
    std::memset(q.dw_ih, 0, sizeof(float) * GH * I);
    std::memset(q.dw_hh, 0, sizeof(float) * GH * P);
    std::memset(q.dw_hr, 0, sizeof(float) * P * H);
    if (q.db_ih) std::memset(q.db_ih, 0, sizeof(float) * GH);
    if (q.db_hh) std::memset(q.db_hh, 0, sizeof(float) * GH);
    return;
  }
  // bf16: the GEMM operands are bfloat16 (dgi_n, dr_n: rounded once); else float32.
  const bool narrow_ops = p.dtype == DType::kBFloat16;
  const DType ab = narrow_ops ? DType::kBFloat16 : DType::kFloat32;
  // uninitialized (workspace cache): every element is written before it is read, inactive rows
  // included (their gate gradients and dr_t are zeros)
  const Workspace<float> dgi(static_cast<size_t>(TB * GH)), dr_all(static_cast<size_t>(TB * P));
  const Workspace<float> dhf(static_cast<size_t>(B * H));
  const Workspace<BFloat16> dgi_n(narrow_ops ? dgi.size() : 0), dr_n(narrow_ops ? dr_all.size() : 0);
  std::vector<float> c0(static_cast<size_t>(B * H));
  widen_any(p.dtype, p.c0, c0.data(), B * H);
  const F32View whh32(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : p.w_hh, narrow_ops ? 0 : GH * P);
  const F32View whr32(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : pp.w_hr, narrow_ops ? 0 : P * H);
  const PackedB whh(GemmOperand{narrow_ops ? p.w_hh : whh32.ptr, 0, P, 1}, GH, P, ab);   // W_hh [4H, P]
  const PackedB whr(GemmOperand{narrow_ops ? pp.w_hr : whr32.ptr, 0, H, 1}, P, H, ab);  // W_hr [P, H]
  const BackwardBlock block = backward_block_fn(RnnMode::kLstm, p.dtype);
  const NarrowBf16 to_bf16 = narrow_bf16_fn();
  const Team units = make_team(whr.panel_cols(), H, B * P * H + B * GH * P);
  const Team cols = columns_team(units, whh.panel_cols(), P);
  const char* dy = static_cast<const char*>(q.dy);
  const TakeDr take = take_dr_fn(p.dtype);
  float* dr = q.dh0;
#pragma omp parallel num_threads(units.threads)
  {
    const int64_t j0 = units.begin(), j1 = units.end(), q0 = cols.begin(), q1 = cols.end();
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = step_time(p, s);
      float* dr_t = dr_all.data() + t * B * P;
      if (q0 < q1) {  // (a) dr_t = dr + dy_t on the thread's columns; dr restarts from the recurrent part
        for (int64_t b = 0; b < B; ++b) {
          if (active(p.lengths, b, t))
            take(dy ? dy + static_cast<size_t>((t * B + b) * P) * es : nullptr, dr + b * P, dr_t + b * P, q0, q1);
          else  // y_t = 0 there and r carries: dr passes through
            std::fill(dr_t + b * P + q0, dr_t + b * P + q1, 0.0f);
        }
        if (narrow_ops)
          for (int64_t b = 0; b < B; ++b)
            to_bf16(dr_t + b * P + q0, dr_n.data() + (t * B + b) * P + q0, q1 - q0);
      }
#pragma omp barrier
      if (j0 < j1) {  // (b) dh_full = dr_t W_hr, then the cell backward on units [j0, j1)
        GemmParams g;
        g.m = B;
        g.a = narrow_ops ? GemmOperand{dr_n.data() + t * B * P, 0, P, 1} : GemmOperand{dr_t, 0, P, 1};
        g.ab_dtype = ab;
        g.c = dhf.data();
        g.c_stride_row = H;
        whr.multiply(g, j0, j1);
        RnnStepBackwardParams sp = backward_step_params(p, t);
        sp.dy = nullptr;  // in dr_t already
        sp.dh = dhf.data();
        sp.dc = q.dc0;
        sp.c = p.c_all + t * B * H;
        sp.c_prev = s == 0 ? c0.data() : p.c_all + step_time(p, s - 1) * B * H;
        sp.dgi = dgi.data() + t * B * GH;
        sp.dgh = sp.dgi;
        for (int64_t b = 0; b < B; ++b) block(sp, b, j0, j1);
        if (narrow_ops)  // this thread's units of every gate, rounded once for the GEMMs
          for (int64_t row = t * B * kGates; row < (t + 1) * B * kGates; ++row)
            to_bf16(dgi.data() + row * H + j0, dgi_n.data() + row * H + j0, j1 - j0);
      }
#pragma omp barrier
      if (q0 < q1) {  // (c) dr[:, q0:q1] += dgi_t W_hh[:, q0:q1]
        GemmParams g;
        g.m = B;
        g.a = narrow_ops ? GemmOperand{dgi_n.data() + t * B * GH, 0, GH, 1}
                         : GemmOperand{dgi.data() + t * B * GH, 0, GH, 1};
        g.ab_dtype = ab;
        g.c = dr;
        g.c_stride_row = P;
        g.beta = 1.0f;
        whh.multiply(g, q0, q1);
      }
      // the next step's (a) touches only this thread's columns of dr: no third barrier
    }
  }
  const void* dgi_ab = narrow_ops ? static_cast<const void*>(dgi_n.data()) : dgi.data();
  {  // dx = dgi W_ih
    const F32View wih(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : p.w_ih, narrow_ops ? 0 : GH * I);
    mm(TB, I, GH, ab, dgi_ab, GH, 1, narrow_ops ? p.w_ih : wih.ptr, I, 1, q.dx, I, 0.0f);
  }
  {  // [dW_ih | dW_hh] = dgi^T [x | r_prev]
    const int64_t ld = I + P;
    const Workspace<char> raw(static_cast<size_t>(TB * ld) * es);
    input_and_state_rows(pp, raw.data());
    const F32View cat32(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : raw.data(),
                        narrow_ops ? 0 : TB * ld);  // float32: the rows themselves
    const void* cat = narrow_ops ? static_cast<const void*>(raw.data()) : cat32.ptr;
    const Workspace<float> dw(static_cast<size_t>(GH * ld));
    mm(GH, ld, TB, ab, dgi_ab, 1, GH, cat, ld, 1, dw.data(), ld, 0.0f);
    for (int64_t row = 0; row < GH; ++row) {
      std::memcpy(q.dw_ih + row * I, dw.data() + row * ld, sizeof(float) * I);
      std::memcpy(q.dw_hh + row * P, dw.data() + row * ld + I, sizeof(float) * P);
    }
  }
  {  // dW_hr = dr^T h_full (inactive rows: dr_t = 0, h_full = 0)
    const F32View hf32(narrow_ops ? DType::kFloat32 : p.dtype, narrow_ops ? nullptr : pp.h_full,
                       narrow_ops ? 0 : TB * H);
    mm(P, H, TB, ab, narrow_ops ? static_cast<const void*>(dr_n.data()) : dr_all.data(), 1, P,
       narrow_ops ? pp.h_full : hf32.ptr, H, 1, q.dw_hr, H, 0.0f);
  }
  if (q.db_ih || q.db_hh) {  // column sums of dgi (float32) as a GEMM: ones[1, TB] dgi, fixed order
    const float one = 1.0f;
    float* db = q.db_ih ? q.db_ih : q.db_hh;
    mm(1, GH, TB, DType::kFloat32, &one, 0, 0, dgi.data(), GH, 1, db, GH, 0.0f);
    if (q.db_ih && q.db_hh) std::memcpy(q.db_hh, q.db_ih, sizeof(float) * GH);
  }
}

}  // namespace cpu
}  // namespace fastops
