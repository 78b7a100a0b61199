// RNN bindings: fastops._C.rnn_layer_forward / rnn_layer_backward (CPU: the whole time loop in
// C++) and rnn_step_forward / rnn_step_backward (one fused pointwise step, CPU or CUDA; the GPU
// layers run their loop in Python with the GEMMs from torch); rnn_persistent_plan /
// rnn_persistent_forward (CUDA: a whole layer direction in one cooperative launch).
#include "bindings/common.h"
#include "fastops/rnn.h"

namespace fastops {
namespace {

RnnMode to_mode(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 3, "fastops: rnn mode must be 0 (tanh), 1 (relu), 2 (lstm) or 3 (gru), got ",
              mode);
  return static_cast<RnnMode>(mode);
}

const char* device_hint() {
#ifdef FASTOPS_WITH_CUDA
  return "cpu or cuda";
#else
  return "cpu";
#endif
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "fastops: ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_storage(const at::Tensor& t, const char* name, const at::Tensor& like, at::IntArrayRef shape) {
  check_contiguous(t, name);
  check_same_device_dtype(t, name, like, "x");
  check_shape(t, name, shape);
}

void check_f32(const at::Tensor& t, const char* name, const at::Tensor& like, at::IntArrayRef shape) {
  check_contiguous(t, name);
  TORCH_CHECK(t.device() == like.device(), "fastops: ", name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "fastops: ", name, " must be float32, got ", t.scalar_type());
  check_shape(t, name, shape);
}

const float* opt_f32(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& like,
                     at::IntArrayRef shape) {
  if (!t.has_value()) return nullptr;
  check_f32(*t, name, like, shape);
  return t->data_ptr<float>();
}

const int64_t* opt_lengths(const c10::optional<at::Tensor>& t, int64_t batch) {
  if (!t.has_value()) return nullptr;
  check_contiguous(*t, "lengths");
  TORCH_CHECK(t->is_cpu(), "fastops: lengths must be on cpu, got ", t->device());
  TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "fastops: lengths must be int64, got ", t->scalar_type());
  check_shape(*t, "lengths", {batch});
  return t->data_ptr<int64_t>();
}

// Checks x [T, B, I] (contiguous, on the CPU) and fills p's dtype, steps, batch and input size.
void fill_input(RnnLayerParams& p, const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cpu(), "fastops: ", op, " runs on cpu tensors, got x on ", x.device());
  TORCH_CHECK(x.dim() == 3, "fastops: x must be [T, B, I], got ", x.sizes());
  check_contiguous(x, "x");
  p.dtype = to_dtype(x, "x");
  p.steps = x.size(0);
  p.batch = x.size(1);
  p.input = x.size(2);
}

// Fills the forward parameters from the tensors and checks them. Biases are float32 here.
RnnLayerParams layer_params(int64_t mode, const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
                            bool reverse) {
  RnnLayerParams p;
  p.mode = to_mode(mode);
  fill_input(p, x, "rnn_layer");
  TORCH_CHECK(h0.dim() == 2, "fastops: h0 must be [B, H], got ", h0.sizes());
  p.hidden = h0.size(1);
  const int64_t GH = math::rnn_gates(p.mode) * p.hidden;
  check_storage(h0, "h0", x, {p.batch, p.hidden});
  check_storage(w_ih, "w_ih", x, {GH, p.input});
  check_storage(w_hh, "w_hh", x, {GH, p.hidden});
  if (p.mode == RnnMode::kLstm) {
    TORCH_CHECK(c0.has_value(), "fastops: an LSTM layer needs c0");
    check_storage(*c0, "c0", x, {p.batch, p.hidden});
    p.c0 = c0->data_ptr();
  }
  p.reverse = reverse;
  p.x = x.data_ptr();
  p.h0 = h0.data_ptr();
  p.w_ih = w_ih.data_ptr();
  p.w_hh = w_hh.data_ptr();
  p.b_ih = opt_f32(b_ih, "b_ih", x, {GH});
  p.b_hh = opt_f32(b_hh, "b_hh", x, {GH});
  p.lengths = opt_lengths(lengths, p.batch);
  return p;
}

// (y, h_n, c_n, saved, c_all); c_n and c_all are empty for tanh/relu/GRU.
std::vector<at::Tensor> layer_forward(int64_t mode, const at::Tensor& x, const at::Tensor& h0,
                                      const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                      const c10::optional<at::Tensor>& lengths, bool reverse, bool keep_saved) {
  RnnLayerParams p = layer_params(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
  const bool lstm = p.mode == RnnMode::kLstm;
  const auto f32 = x.options().dtype(at::kFloat);
  const int64_t kept = keep_saved ? p.steps : 0;  // saved and c_all are [0, ...] for inference
  at::Tensor y = at::empty({p.steps, p.batch, p.hidden}, x.options());
  at::Tensor h_n = at::empty({p.batch, p.hidden}, x.options());
  at::Tensor c_n = at::empty({lstm ? p.batch : 0, p.hidden}, x.options());
  at::Tensor saved = at::empty({kept, p.batch, math::rnn_saved(p.mode), p.hidden}, f32);
  at::Tensor c_all = at::empty({lstm ? kept : 0, p.batch, p.hidden}, f32);
  p.y = y.data_ptr();
  p.h_n = h_n.data_ptr();
  p.c_n = c_n.data_ptr();
  p.saved = keep_saved ? saved.data_ptr<float>() : nullptr;
  p.c_all = keep_saved ? c_all.data_ptr<float>() : nullptr;
  {
    py::gil_scoped_release release;
    cpu::rnn_layer_forward(p);
  }
  return {y, h_n, c_n, saved, c_all};
}

// (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), float32; dc0 empty unless LSTM, db_* empty
// without biases.
std::vector<at::Tensor> layer_backward(int64_t mode, const at::Tensor& x, const at::Tensor& h0,
                                       const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                       const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                       const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
                                       bool reverse, const at::Tensor& y, const at::Tensor& saved,
                                       const at::Tensor& c_all, const c10::optional<at::Tensor>& dy,
                                       const c10::optional<at::Tensor>& dh_n, const c10::optional<at::Tensor>& dc_n) {
  RnnLayerBackwardParams q;
  q.fwd = layer_params(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
  RnnLayerParams& p = q.fwd;
  const bool lstm = p.mode == RnnMode::kLstm;
  const int64_t GH = math::rnn_gates(p.mode) * p.hidden;
  check_storage(y, "y", x, {p.steps, p.batch, p.hidden});
  check_f32(saved, "saved", x, {p.steps, p.batch, math::rnn_saved(p.mode), p.hidden});
  check_f32(c_all, "c_all", x, {lstm ? p.steps : 0, p.batch, p.hidden});
  p.y = y.data_ptr();
  p.saved = saved.data_ptr<float>();
  p.c_all = c_all.data_ptr<float>();
  if (dy.has_value()) {
    check_storage(*dy, "grad_y", x, {p.steps, p.batch, p.hidden});
    q.dy = dy->data_ptr();
  }
  if (dh_n.has_value()) {
    check_storage(*dh_n, "grad_h_n", x, {p.batch, p.hidden});
    q.dh_n = dh_n->data_ptr();
  }
  if (lstm && dc_n.has_value()) {
    check_storage(*dc_n, "grad_c_n", x, {p.batch, p.hidden});
    q.dc_n = dc_n->data_ptr();
  }
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty({p.steps, p.batch, p.input}, f32);
  at::Tensor dh0 = at::empty({p.batch, p.hidden}, f32);
  at::Tensor dc0 = at::empty({lstm ? p.batch : 0, p.hidden}, f32);
  at::Tensor dw_ih = at::empty({GH, p.input}, f32);
  at::Tensor dw_hh = at::empty({GH, p.hidden}, f32);
  at::Tensor db_ih = at::empty({p.b_ih ? GH : 0}, f32);
  at::Tensor db_hh = at::empty({p.b_hh ? GH : 0}, f32);
  q.dx = dx.data_ptr<float>();
  q.dh0 = dh0.data_ptr<float>();
  q.dc0 = dc0.data_ptr<float>();
  q.dw_ih = dw_ih.data_ptr<float>();
  q.dw_hh = dw_hh.data_ptr<float>();
  q.db_ih = p.b_ih ? db_ih.data_ptr<float>() : nullptr;
  q.db_hh = p.b_hh ? db_hh.data_ptr<float>() : nullptr;
  {
    py::gil_scoped_release release;
    cpu::rnn_layer_backward(q);
  }
  return {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh};
}

// One fused forward step in place: h (storage [B, H]) and, for LSTM, c (fp32 [B, H]) are
// updated; y_t (storage [B, H]) gets h' (0 on inactive rows); saved_t (fp32 [B, S, H]) is
// written. gi, gh: fp32 [B, G*H] with unit column stride (row stride free).
void step_forward(int64_t mode, const at::Tensor& gi, const at::Tensor& gh, const c10::optional<at::Tensor>& b_ih,
                  const c10::optional<at::Tensor>& b_hh, const at::Tensor& h, const c10::optional<at::Tensor>& c,
                  const at::Tensor& y_t, const at::Tensor& saved_t, const c10::optional<at::Tensor>& lengths,
                  int64_t t) {
  RnnStepParams p;
  p.mode = to_mode(mode);
  TORCH_CHECK(h.dim() == 2, "fastops: h must be [B, H], got ", h.sizes());
  check_contiguous(h, "h");
  p.dtype = to_dtype(h, "h");
  p.batch = h.size(0);
  p.hidden = h.size(1);
  const int64_t GH = math::rnn_gates(p.mode) * p.hidden;
  for (const auto* g : {&gi, &gh}) {
    const char* name = g == &gi ? "gi" : "gh";
    TORCH_CHECK(g->dim() == 2 && g->size(0) == p.batch && g->size(1) == GH && g->stride(1) == 1,
                "fastops: ", name, " must be [", p.batch, ", ", GH, "] with unit column stride, got ", g->sizes(),
                " strides ", g->strides());
    TORCH_CHECK_TYPE(g->scalar_type() == at::kFloat, "fastops: ", name, " must be float32, got ", g->scalar_type());
    TORCH_CHECK(g->device() == h.device(), "fastops: ", name, " must be on ", h.device(), ", got ", g->device());
  }
  check_same(y_t, "y_t", h, "h");
  check_contiguous(y_t, "y_t");
  check_f32(saved_t, "saved_t", h, {p.batch, math::rnn_saved(p.mode), p.hidden});
  p.gi = gi.data_ptr<float>();
  p.gh = gh.data_ptr<float>();
  p.gi_stride = gi.stride(0);
  p.gh_stride = gh.stride(0);
  p.b_ih = opt_f32(b_ih, "b_ih", h, {GH});
  p.b_hh = opt_f32(b_hh, "b_hh", h, {GH});
  p.h_prev = p.h_out = h.data_ptr();
  p.y_out = y_t.data_ptr();
  if (p.mode == RnnMode::kLstm) {
    TORCH_CHECK(c.has_value(), "fastops: an LSTM step needs c");
    check_f32(*c, "c", h, {p.batch, p.hidden});
    p.c_prev = p.c_out = c->data_ptr<float>();
  }
  p.saved = saved_t.data_ptr<float>();
  TORCH_CHECK(!lengths.has_value() || h.is_cpu(), "fastops: lengths are supported on cpu steps only");
  p.lengths = opt_lengths(lengths, p.batch);
  p.t = t;
  if (h.is_cpu()) {
    py::gil_scoped_release release;
    cpu::rnn_step_forward(p);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  if (h.is_cuda()) {
    const c10::cuda::CUDAGuard guard(h.device());
    check_cuda(cuda::rnn_step_forward(p, at::cuda::getCurrentCUDAStream().stream()), "rnn_step_forward");
    return;
  }
#endif
  TORCH_CHECK(false, "fastops: h must be on ", device_hint(), ", got ", h.device());
}

// One fused backward step in place: dh (fp32 [B, H]) from the gradient reaching h' to the
// direct part of d h_prev, dc (LSTM, fp32) from d c' to d c_prev; dgi, dgh (GRU) fp32 [B, G*H].
void step_backward(int64_t mode, const c10::optional<at::Tensor>& dy_t, const at::Tensor& dh,
                   const c10::optional<at::Tensor>& dc, const at::Tensor& saved_t, const c10::optional<at::Tensor>& c_t,
                   const c10::optional<at::Tensor>& c_prev, const c10::optional<at::Tensor>& h_prev,
                   const at::Tensor& dgi, const c10::optional<at::Tensor>& dgh, at::ScalarType dtype) {
  RnnStepBackwardParams p;
  p.mode = to_mode(mode);
  TORCH_CHECK(dh.dim() == 2, "fastops: dh must be [B, H], got ", dh.sizes());
  p.batch = dh.size(0);
  p.hidden = dh.size(1);
  const int64_t GH = math::rnn_gates(p.mode) * p.hidden;
  const std::vector<int64_t> bh{p.batch, p.hidden};
  check_f32(dh, "dh", dh, bh);
  check_f32(saved_t, "saved_t", dh, {p.batch, math::rnn_saved(p.mode), p.hidden});
  check_f32(dgi, "dgi", dh, {p.batch, GH});
  switch (dtype) {
    case at::kFloat: p.dtype = DType::kFloat32; break;
    case at::kHalf: p.dtype = DType::kFloat16; break;
    case at::kBFloat16: p.dtype = DType::kBFloat16; break;
    default: TORCH_CHECK_TYPE(false, "fastops: dtype must be float32, float16 or bfloat16, got ", dtype);
  }
  if (dy_t.has_value()) {
    check_contiguous(*dy_t, "dy_t");
    TORCH_CHECK_TYPE(dy_t->scalar_type() == dtype, "fastops: dy_t must be ", dtype, ", got ", dy_t->scalar_type());
    TORCH_CHECK(dy_t->device() == dh.device(), "fastops: dy_t must be on ", dh.device(), ", got ", dy_t->device());
    check_shape(*dy_t, "dy_t", bh);
    p.dy = dy_t->data_ptr();
  }
  p.dh = dh.data_ptr<float>();
  p.saved = saved_t.data_ptr<float>();
  p.dgi = dgi.data_ptr<float>();
  if (p.mode == RnnMode::kLstm) {
    TORCH_CHECK(dc.has_value() && c_t.has_value() && c_prev.has_value(), "fastops: an LSTM step needs dc, c_t, c_prev");
    check_f32(*dc, "dc", dh, bh);
    check_f32(*c_t, "c_t", dh, bh);
    check_f32(*c_prev, "c_prev", dh, bh);
    p.dc = dc->data_ptr<float>();
    p.c = c_t->data_ptr<float>();
    p.c_prev = c_prev->data_ptr<float>();
  }
  if (p.mode == RnnMode::kGru) {
    TORCH_CHECK(dgh.has_value() && h_prev.has_value(), "fastops: a GRU step needs dgh and h_prev");
    check_f32(*dgh, "dgh", dh, {p.batch, GH});
    check_f32(*h_prev, "h_prev", dh, bh);
    p.dgh = dgh->data_ptr<float>();
    p.h_prev = h_prev->data_ptr<float>();
  }
  if (dh.is_cpu()) {
    py::gil_scoped_release release;
    cpu::rnn_step_backward(p);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  if (dh.is_cuda()) {
    const c10::cuda::CUDAGuard guard(dh.device());
    check_cuda(cuda::rnn_step_backward(p, at::cuda::getCurrentCUDAStream().stream()), "rnn_step_backward");
    return;
  }
#endif
  TORCH_CHECK(false, "fastops: dh must be on ", device_hint(), ", got ", dh.device());
}


// ---- the CUDA persistent layer forward (csrc/cuda/rnn.cu) ------------------------------------

RnnPersistentParams persistent_params(int64_t mode, const at::Tensor& h0, at::ScalarType dtype, int64_t steps) {
  RnnPersistentParams p;
  p.mode = to_mode(mode);
  TORCH_CHECK(h0.dim() == 2, "fastops: h0 must be [B, H], got ", h0.sizes());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                   "fastops: dtype must be float32, float16 or bfloat16, got ", dtype);
  p.dtype = dtype == at::kHalf ? DType::kFloat16 : (dtype == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32);
  p.steps = steps;
  p.batch = h0.size(0);
  p.hidden = h0.size(1);
  return p;
}

// (reason, blocks, units per block, shared bytes per block): reason is empty when the persistent
// forward (or backward) kernel takes a layer of this mode with h0's dtype and shape [B, H] on
// h0's device.
std::tuple<std::string, int64_t, int64_t, int64_t> persistent_plan(int64_t mode, const at::Tensor& h0, bool backward) {
  RnnPersistentParams p = persistent_params(mode, h0, h0.scalar_type(), 1);
  p.backward = backward;
#ifdef FASTOPS_WITH_CUDA
  if (h0.is_cuda()) {
    const c10::cuda::CUDAGuard guard(h0.device());
    RnnPersistentPlan plan;
    std::string why = cuda::rnn_persistent_plan(p, &plan);
    return {why, plan.blocks, plan.units, plan.smem_bytes};
  }
#endif
  return {std::string("h0 on ") + h0.device().str() + ", not a cuda device of this build", 0, 0, 0};
}

// (y [T, B, H] storage, saved [T, B, S, H] fp32, c_all [T, B, H] fp32 (LSTM, else [0, B, H])) of
// one layer direction; gx = x W_ih^T (fp32 [T, B, G*H]); c0 fp32 (LSTM); h_n is y's last step.
std::vector<at::Tensor> persistent_forward(int64_t mode, const at::Tensor& gx, const c10::optional<at::Tensor>& b_ih,
                                           const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                                           const c10::optional<at::Tensor>& c0, const at::Tensor& w_hh, bool reverse) {
  TORCH_CHECK(gx.dim() == 3, "fastops: gx must be [T, B, G*H], got ", gx.sizes());
  RnnPersistentParams p = persistent_params(mode, h0, h0.scalar_type(), gx.size(0));
  const int64_t GH = math::rnn_gates(p.mode) * p.hidden;
  const bool lstm = p.mode == RnnMode::kLstm;
  check_contiguous(h0, "h0");
  check_f32(gx, "gx", h0, {p.steps, p.batch, GH});
  check_storage(w_hh, "w_hh", h0, {GH, p.hidden});
  p.b_ih = opt_f32(b_ih, "b_ih", h0, {GH});
  p.b_hh = opt_f32(b_hh, "b_hh", h0, {GH});
  if (lstm) {
    TORCH_CHECK(c0.has_value(), "fastops: an LSTM layer needs c0");
    p.c0 = opt_f32(c0, "c0", h0, {p.batch, p.hidden});
  }
  const auto f32 = h0.options().dtype(at::kFloat);
  at::Tensor y = at::empty({p.steps, p.batch, p.hidden}, h0.options());
  at::Tensor saved = at::empty({p.steps, p.batch, math::rnn_saved(p.mode), p.hidden}, f32);
  at::Tensor c_all = at::empty({lstm ? p.steps : 0, p.batch, p.hidden}, f32);
  at::Tensor gh = at::empty({p.batch, GH}, f32);
  p.reverse = reverse;
  p.gx = gx.data_ptr<float>();
  p.h0 = h0.data_ptr();
  p.w_hh = w_hh.data_ptr();
  p.y = y.data_ptr();
  p.saved = saved.data_ptr<float>();
  p.c_all = c_all.data_ptr<float>();
  p.gh = gh.data_ptr<float>();
#ifdef FASTOPS_WITH_CUDA
  if (h0.is_cuda()) {
    const c10::cuda::CUDAGuard guard(h0.device());
    RnnPersistentPlan plan;
    const std::string why = cuda::rnn_persistent_plan(p, &plan);
    TORCH_CHECK(why.empty(), "fastops: rnn_persistent_forward does not take this layer: ", why);
    check_cuda(cuda::rnn_persistent_forward(p, at::cuda::getCurrentCUDAStream().stream()), "rnn_persistent_forward");
    return {y, saved, c_all};
  }
#endif
  TORCH_CHECK(false, "fastops: rnn_persistent_forward runs on cuda tensors, got h0 on ", h0.device());
}

// Backward through time of one layer direction in one cooperative launch: dh (fp32 [B, H], d h_n
// in, d h0 out) and dc (LSTM) in place; dgi (and dgh, GRU) fp32 [T, B, G*H] written. h_prev: fp32
// [T, B, H], the h entering each step; c0 fp32 (LSTM).
void persistent_backward(int64_t mode, const c10::optional<at::Tensor>& dy, const at::Tensor& dh,
                         const c10::optional<at::Tensor>& dc, const at::Tensor& saved, const at::Tensor& c_all,
                         const c10::optional<at::Tensor>& c0, const at::Tensor& h_prev, const at::Tensor& w_hh,
                         const at::Tensor& dgi, const c10::optional<at::Tensor>& dgh, bool reverse) {
  TORCH_CHECK(h_prev.dim() == 3, "fastops: h_prev must be [T, B, H], got ", h_prev.sizes());
  RnnPersistentBackwardParams p;
  p.mode = to_mode(mode);
  p.dtype = to_dtype(w_hh, "w_hh");
  p.steps = h_prev.size(0);
  p.batch = h_prev.size(1);
  p.hidden = h_prev.size(2);
  p.reverse = reverse;
  const int64_t T = p.steps, B = p.batch, H = p.hidden, GH = math::rnn_gates(p.mode) * H;
  const bool lstm = p.mode == RnnMode::kLstm, gru = p.mode == RnnMode::kGru;
  check_f32(h_prev, "h_prev", h_prev, {T, B, H});
  check_f32(dh, "dh", h_prev, {B, H});
  check_f32(saved, "saved", h_prev, {T, B, math::rnn_saved(p.mode), H});
  check_f32(dgi, "dgi", h_prev, {T, B, GH});
  check_contiguous(w_hh, "w_hh");
  TORCH_CHECK(w_hh.device() == h_prev.device(), "fastops: w_hh must be on ", h_prev.device(), ", got ", w_hh.device());
  check_shape(w_hh, "w_hh", {GH, H});
  if (dy.has_value()) {
    check_storage(*dy, "dy", w_hh, {T, B, H});
    p.dy = dy->data_ptr();
  }
  if (lstm) {
    TORCH_CHECK(dc.has_value() && c0.has_value(), "fastops: an LSTM layer needs dc and c0");
    check_f32(*dc, "dc", h_prev, {B, H});
    check_f32(*c0, "c0", h_prev, {B, H});
    check_f32(c_all, "c_all", h_prev, {T, B, H});
    p.dc = dc->data_ptr<float>();
    p.c0 = c0->data_ptr<float>();
    p.c_all = c_all.data_ptr<float>();
  }
  if (gru) {
    TORCH_CHECK(dgh.has_value(), "fastops: a GRU layer needs dgh");
    check_f32(*dgh, "dgh", h_prev, {T, B, GH});
    p.dgh = dgh->data_ptr<float>();
  }
  p.dh = dh.data_ptr<float>();
  p.saved = saved.data_ptr<float>();
  p.h_prev = h_prev.data_ptr<float>();
  p.w_hh = w_hh.data_ptr();
  p.dgi = dgi.data_ptr<float>();
#ifdef FASTOPS_WITH_CUDA
  if (h_prev.is_cuda()) {
    const c10::cuda::CUDAGuard guard(h_prev.device());
    RnnPersistentParams shape = persistent_params(mode, dh, w_hh.scalar_type(), T);
    shape.backward = true;
    RnnPersistentPlan plan;
    const std::string why = cuda::rnn_persistent_plan(shape, &plan);
    TORCH_CHECK(why.empty(), "fastops: rnn_persistent_backward does not take this layer: ", why);
    check_cuda(cuda::rnn_persistent_backward(p, at::cuda::getCurrentCUDAStream().stream()), "rnn_persistent_backward");
    return;
  }
#endif
  TORCH_CHECK(false, "fastops: rnn_persistent_backward runs on cuda tensors, got h_prev on ", h_prev.device());
}

// ---- LSTM with a projection, proj_size > 0 (csrc/cpu/rnn_proj.cpp) -----------------------------

// Fills and checks the forward parameters: x [T, B, I], h0 [B, P], c0 [B, H], w_ih [4H, I],
// w_hh [4H, P], w_hr [P, H] (H and P from w_hr), float32 biases [4H].
RnnProjLayerParams proj_layer_params(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_hr,
                                     const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                     const c10::optional<at::Tensor>& lengths, bool reverse) {
  RnnProjLayerParams pp;
  RnnLayerParams& p = pp.layer;
  p.mode = RnnMode::kLstm;
  fill_input(p, x, "rnn_proj_layer");
  TORCH_CHECK(w_hr.dim() == 2, "fastops: w_hr must be [P, H], got ", w_hr.sizes());
  pp.proj = w_hr.size(0);
  p.hidden = w_hr.size(1);
  TORCH_CHECK(pp.proj > 0 && pp.proj < p.hidden, "fastops: w_hr must be [P, H] with 0 < P < H, got ", w_hr.sizes());
  const int64_t GH = 4 * p.hidden;
  check_storage(w_hr, "w_hr", x, {pp.proj, p.hidden});
  check_storage(h0, "h0", x, {p.batch, pp.proj});
  check_storage(c0, "c0", x, {p.batch, p.hidden});
  check_storage(w_ih, "w_ih", x, {GH, p.input});
  check_storage(w_hh, "w_hh", x, {GH, pp.proj});
  p.reverse = reverse;
  p.x = x.data_ptr();
  p.h0 = h0.data_ptr();
  p.c0 = c0.data_ptr();
  p.w_ih = w_ih.data_ptr();
  p.w_hh = w_hh.data_ptr();
  pp.w_hr = w_hr.data_ptr();
  p.b_ih = opt_f32(b_ih, "b_ih", x, {GH});
  p.b_hh = opt_f32(b_hh, "b_hh", x, {GH});
  p.lengths = opt_lengths(lengths, p.batch);
  return pp;
}

// (y [T, B, P], h_n [B, P], c_n [B, H], saved fp32 [T, B, 4, H], c_all fp32 [T, B, H],
// h_full [T, B, H]).
std::vector<at::Tensor> proj_layer_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                           const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_hr,
                                           const c10::optional<at::Tensor>& b_ih,
                                           const c10::optional<at::Tensor>& b_hh,
                                           const c10::optional<at::Tensor>& lengths, bool reverse) {
  RnnProjLayerParams pp = proj_layer_params(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse);
  RnnLayerParams& p = pp.layer;
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty({p.steps, p.batch, pp.proj}, x.options());
  at::Tensor h_n = at::empty({p.batch, pp.proj}, x.options());
  at::Tensor c_n = at::empty({p.batch, p.hidden}, x.options());
  at::Tensor saved = at::empty({p.steps, p.batch, math::rnn_saved(p.mode), p.hidden}, f32);
  at::Tensor c_all = at::empty({p.steps, p.batch, p.hidden}, f32);
  at::Tensor h_full = at::empty({p.steps, p.batch, p.hidden}, x.options());
  p.y = y.data_ptr();
  p.h_n = h_n.data_ptr();
  p.c_n = c_n.data_ptr();
  p.saved = saved.data_ptr<float>();
  p.c_all = c_all.data_ptr<float>();
  pp.h_full = h_full.data_ptr();
  {
    py::gil_scoped_release release;
    cpu::rnn_proj_layer_forward(pp);
  }
  return {y, h_n, c_n, saved, c_all, h_full};
}

// (dx, dh0 [B, P], dc0 [B, H], dw_ih, dw_hh [4H, P], dw_hr [P, H], db_ih, db_hh), float32; db_*
// empty without biases.
std::vector<at::Tensor> proj_layer_backward(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& w_hr, const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& lengths, bool reverse, const at::Tensor& y, const at::Tensor& saved,
    const at::Tensor& c_all, const at::Tensor& h_full, const c10::optional<at::Tensor>& dy,
    const c10::optional<at::Tensor>& dh_n, const c10::optional<at::Tensor>& dc_n) {
  RnnProjLayerBackwardParams q;
  q.fwd = proj_layer_params(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse);
  RnnProjLayerParams& pp = q.fwd;
  RnnLayerParams& p = pp.layer;
  const int64_t T = p.steps, B = p.batch, H = p.hidden, P = pp.proj, GH = 4 * H;
  check_storage(y, "y", x, {T, B, P});
  check_f32(saved, "saved", x, {T, B, math::rnn_saved(p.mode), H});
  check_f32(c_all, "c_all", x, {T, B, H});
  check_storage(h_full, "h_full", x, {T, B, H});
  p.y = y.data_ptr();
  p.saved = saved.data_ptr<float>();
  p.c_all = c_all.data_ptr<float>();
  pp.h_full = h_full.data_ptr();
  if (dy.has_value()) {
    check_storage(*dy, "grad_y", x, {T, B, P});
    q.dy = dy->data_ptr();
  }
  if (dh_n.has_value()) {
    check_storage(*dh_n, "grad_h_n", x, {B, P});
    q.dh_n = dh_n->data_ptr();
  }
  if (dc_n.has_value()) {
    check_storage(*dc_n, "grad_c_n", x, {B, H});
    q.dc_n = dc_n->data_ptr();
  }
  const auto f32 = x.options().dtype(at::kFloat);
  std::vector<at::Tensor> grads;  // dx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh
  auto grad = [&](at::IntArrayRef shape) {
    grads.push_back(at::empty(shape, f32));
    return grads.back().data_ptr<float>();
  };
  q.dx = grad({T, B, p.input});
  q.dh0 = grad({B, P});
  q.dc0 = grad({B, H});
  q.dw_ih = grad({GH, p.input});
  q.dw_hh = grad({GH, P});
  q.dw_hr = grad({P, H});
  q.db_ih = grad({p.b_ih ? GH : 0});
  q.db_hh = grad({p.b_hh ? GH : 0});
  if (!p.b_ih) q.db_ih = nullptr;
  if (!p.b_hh) q.db_hh = nullptr;
  {
    py::gil_scoped_release release;
    cpu::rnn_proj_layer_backward(q);
  }
  return grads;
}

}  // namespace

void bind_rnn(pybind11::module_& m) {
  m.def("rnn_layer_forward", &layer_forward,
        "one RNN/LSTM/GRU layer direction on cpu: (y, h_n, c_n, saved, c_all); keep_saved=False (inference) "
        "returns saved and c_all with 0 steps",
        py::arg("mode"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("keep_saved") = true);
  m.def("rnn_layer_backward", &layer_backward,
        "gradients of one layer direction on cpu: (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), float32",
        py::arg("mode"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("saved"),
        py::arg("c_all"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"));
  m.def("rnn_step_forward", &step_forward, "one fused RNN step in place (cpu or cuda)", py::arg("mode"),
        py::arg("gi"), py::arg("gh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h"), py::arg("c"), py::arg("y_t"),
        py::arg("saved_t"), py::arg("lengths"), py::arg("t"));
  m.def("rnn_step_backward", &step_backward, "one fused RNN backward step in place (cpu or cuda)", py::arg("mode"),
        py::arg("dy_t"), py::arg("dh"), py::arg("dc"), py::arg("saved_t"), py::arg("c_t"), py::arg("c_prev"),
        py::arg("h_prev"), py::arg("dgi"), py::arg("dgh"), py::arg("dtype"));
  m.def("rnn_persistent_plan", &persistent_plan,
        "(reason, blocks, units, shared bytes) of the CUDA persistent layer forward; reason empty when it applies",
        py::arg("mode"), py::arg("h0"), py::arg("backward") = false);
  m.def("rnn_persistent_forward", &persistent_forward,
        "one layer direction in one cooperative CUDA launch: (y, saved, c_all)", py::arg("mode"), py::arg("gx"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"), py::arg("reverse"));
  m.def("rnn_proj_layer_forward", &proj_layer_forward,
        "one LSTM layer direction with a projection (proj_size > 0) on cpu: (y, h_n, c_n, saved, c_all, h_full)",
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("w_hr"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"));
  m.def("rnn_proj_layer_backward", &proj_layer_backward,
        "gradients of a projected LSTM layer direction on cpu: (dx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh), "
        "float32",
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("w_hr"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("saved"),
        py::arg("c_all"), py::arg("h_full"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"));
  m.def("rnn_persistent_backward", &persistent_backward,
        "backward through time of one layer direction in one cooperative CUDA launch (dh, dc in place; dgi, dgh)",
        py::arg("mode"), py::arg("dy"), py::arg("dh"), py::arg("dc"), py::arg("saved"), py::arg("c_all"),
        py::arg("c0"), py::arg("h_prev"), py::arg("w_hh"), py::arg("dgi"), py::arg("dgh"), py::arg("reverse"));
}

}  // namespace fastops
