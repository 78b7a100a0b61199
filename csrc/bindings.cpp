// The one file that sees torch: checks tensors, fills the torch-free Params, calls the kernels.
//
// Every function here expects what fastops/ops/*.py guarantees (contiguous tensors of a
// supported dtype on one device) and checks it again with messages naming the argument, so a
// direct call from Python with bad input raises instead of crashing.
#include <torch/extension.h>

#include "cpu/isa.h"
#include "fastops/softmax.h"
#include "fastops/attention.h"
#include "fastops/adam.h"

#ifdef FASTOPS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#ifndef FASTOPS_TORCH_VERSION
#define FASTOPS_TORCH_VERSION "unknown"
#endif
#ifndef FASTOPS_CUDA_ARCHS
#define FASTOPS_CUDA_ARCHS ""
#endif

namespace fastops {
namespace {

DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastops: ", name, " must be float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
}

void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "fastops: ", name, " must be contiguous, got strides ", t.strides());
}

// ---- attention ----
void check_same_device_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "fastops: ", an, " and ", bn,
              " must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastops: ", an, " and ", bn,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}
// ---- attention ----

void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "fastops: ", an, " and ", bn,
              " must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastops: ", an, " and ", bn,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.sizes() == b.sizes(), "fastops: ", an, " and ", bn, " must have the same shape, got ",
              a.sizes(), " and ", b.sizes());
}

// [outer, dim, inner] view of a contiguous tensor around dimension `dim` (already wrapped).
struct Split3 {
  int64_t outer, dim, inner;
};

Split3 split_around(const at::Tensor& t, int64_t dim) {
  const int64_t nd = std::max<int64_t>(t.dim(), 1);
  TORCH_CHECK_INDEX(dim >= 0 && dim < nd, "fastops: dim must be in [0, ", nd, "), got ", dim);
  if (t.dim() == 0) return {1, 1, 1};
  Split3 s{1, t.size(dim), 1};
  for (int64_t d = 0; d < dim; ++d) s.outer *= t.size(d);
  for (int64_t d = dim + 1; d < t.dim(); ++d) s.inner *= t.size(d);
  return s;
}

#ifdef FASTOPS_WITH_CUDA
void check_cuda(int err, const char* what) {
  TORCH_CHECK(err == 0, "fastops: CUDA launch of ", what, " failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}
#endif

at::Tensor softmax_forward(const at::Tensor& x, int64_t dim) {
  check_contiguous(x, "x");
  const Split3 s = split_around(x, dim);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const SoftmaxParams p{x.data_ptr(), y.data_ptr(), s.outer, s.dim, s.inner, to_dtype(x, "x")};
  if (x.is_cpu()) {
    cpu::softmax_forward(p);
    return y;
  }
#ifdef FASTOPS_WITH_CUDA
  if (x.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(cuda::softmax_forward(p, at::cuda::getCurrentCUDAStream().stream()), "softmax_forward");
    return y;
  }
#endif
  TORCH_CHECK(false, "fastops: x must be on cpu", FASTOPS_CUDA_ARCHS[0] ? " or cuda" : "", ", got ",
              x.device());
}

at::Tensor softmax_backward(const at::Tensor& dy, const at::Tensor& y, int64_t dim) {
  check_contiguous(dy, "grad_output");
  check_contiguous(y, "output");
  check_same(dy, "grad_output", y, "output");
  const Split3 s = split_around(y, dim);
  at::Tensor dx = at::empty_like(y, at::MemoryFormat::Contiguous);
  const SoftmaxBackwardParams p{dy.data_ptr(), y.data_ptr(), dx.data_ptr(), s.outer, s.dim, s.inner,
                                to_dtype(y, "output")};
  if (y.is_cpu()) {
    cpu::softmax_backward(p);
    return dx;
  }
#ifdef FASTOPS_WITH_CUDA
  if (y.is_cuda()) {
    const c10::cuda::CUDAGuard guard(y.device());
    check_cuda(cuda::softmax_backward(p, at::cuda::getCurrentCUDAStream().stream()), "softmax_backward");
    return dx;
  }
#endif
  TORCH_CHECK(false, "fastops: output must be on cpu", FASTOPS_CUDA_ARCHS[0] ? " or cuda" : "", ", got ",
              y.device());
}

// ---- adam ----
// fastops::adam_step_ on lists of tensors: one (device, param dtype) bucket of one param group.
void check_adam_list(const std::vector<at::Tensor>& list, size_t n, const char* name) {
  TORCH_CHECK(list.size() == n, "fastops.adam_step_: ", name, " must hold one tensor per param (", n,
              "), got ", list.size());
}

void check_adam_state(const at::Tensor& s, const at::Tensor& p, const char* name, size_t i) {
  TORCH_CHECK(s.device() == p.device(), "fastops.adam_step_: ", name, "[", i, "] must be on ", p.device(),
              ", got ", s.device());
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, "fastops.adam_step_: ", name, "[", i,
                   "] must be float32, got ", s.scalar_type());
  TORCH_CHECK(s.sizes() == p.sizes(), "fastops.adam_step_: ", name, "[", i, "] must have the shape of params[",
              i, "] ", p.sizes(), ", got ", s.sizes());
  TORCH_CHECK(s.is_contiguous(), "fastops.adam_step_: ", name, "[", i, "] must be contiguous");
}

const float* optional_scalar(const std::optional<at::Tensor>& t, const at::Device& device, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->device() == device && t->scalar_type() == at::kFloat && t->numel() == 1,
              "fastops.adam_step_: ", name, " must be a one-element float32 tensor on ", device, ", got ",
              t->scalar_type(), " with ", t->numel(), " elements on ", t->device());
  return t->data_ptr<float>();
}

void adam_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
               const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
               const std::vector<at::Tensor>& max_exp_avg_sqs, const std::vector<at::Tensor>& master_params,
               const std::vector<at::Tensor>& state_steps, double lr, double beta1, double beta2,
               double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled,
               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  if (n == 0) return;
  check_adam_list(grads, n, "grads");
  check_adam_list(exp_avgs, n, "exp_avgs");
  check_adam_list(exp_avg_sqs, n, "exp_avg_sqs");
  check_adam_list(state_steps, n, "state_steps");
  if (amsgrad) check_adam_list(max_exp_avg_sqs, n, "max_exp_avg_sqs");
  if (!master_params.empty()) check_adam_list(master_params, n, "master_params");
  const at::Device device = params[0].device();
  const DType dtype = to_dtype(params[0], "params[0]");
  std::vector<void*> p(n), g(n);
  std::vector<float*> m(n), v(n), vmax(amsgrad ? n : 0), master(master_params.size());
  std::vector<const float*> steps(n);
  std::vector<int64_t> numel(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string pi = "params[" + std::to_string(i) + "]", gi = "grads[" + std::to_string(i) + "]";
    check_contiguous(params[i], pi.c_str());
    check_contiguous(grads[i], gi.c_str());
    TORCH_CHECK(params[i].device() == device, "fastops.adam_step_: ", pi, " must be on ", device,
                " as params[0], got ", params[i].device());
    TORCH_CHECK_TYPE(params[i].scalar_type() == params[0].scalar_type(), "fastops.adam_step_: ", pi,
                     " must have the dtype of params[0] (", params[0].scalar_type(), "), got ",
                     params[i].scalar_type());
    check_same(grads[i], gi.c_str(), params[i], pi.c_str());
    check_adam_state(exp_avgs[i], params[i], "exp_avgs", i);
    check_adam_state(exp_avg_sqs[i], params[i], "exp_avg_sqs", i);
    if (amsgrad) check_adam_state(max_exp_avg_sqs[i], params[i], "max_exp_avg_sqs", i);
    if (!master.empty()) check_adam_state(master_params[i], params[i], "master_params", i);
    const at::Tensor& s = state_steps[i];
    TORCH_CHECK(s.device() == device && s.scalar_type() == at::kFloat && s.numel() == 1,
                "fastops.adam_step_: state_steps[", i, "] must be a one-element float32 tensor on ", device,
                ", got ", s.scalar_type(), " with ", s.numel(), " elements on ", s.device());
    p[i] = params[i].data_ptr();
    g[i] = grads[i].data_ptr();
    m[i] = exp_avgs[i].data_ptr<float>();
    v[i] = exp_avg_sqs[i].data_ptr<float>();
    if (amsgrad) vmax[i] = max_exp_avg_sqs[i].data_ptr<float>();
    if (!master.empty()) master[i] = master_params[i].data_ptr<float>();
    steps[i] = s.data_ptr<float>();
    numel[i] = params[i].numel();
  }
  const AdamParams a{static_cast<int64_t>(n), p.data(), g.data(), m.data(), v.data(),
                     amsgrad ? vmax.data() : nullptr, master.empty() ? nullptr : master.data(),
                     steps.data(), numel.data(), dtype, optional_scalar(grad_scale, device, "grad_scale"),
                     optional_scalar(found_inf, device, "found_inf"),
                     math::AdamOptions{lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize}};
  if (device.is_cpu()) {
    cpu::adam_step(a);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device);
    check_cuda(cuda::adam_step(a, at::cuda::getCurrentCUDAStream().stream()), "adam_step");
    return;
  }
#endif
  TORCH_CHECK(false, "fastops.adam_step_: params must be on cpu", FASTOPS_CUDA_ARCHS[0] ? " or cuda" : "",
              ", got ", device);
}
// ---- adam ----

// ---- attention ----
// q [N, H, L, E], k [N, Hkv, S, E], v [N, Hkv, S, Ev] with a contiguous last dim; mask (optional)
// bool or q's dtype, already expanded to [N, H, L, S] (stride 0 where broadcast).
Strides3 strides3(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fastops: ", name, " must be 4-D [N, heads, len, dim], got ", t.sizes());
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) <= 1, "fastops: ", name,
              " must have a contiguous last dim, got strides ", t.strides());
  return Strides3{t.stride(0), t.stride(1), t.stride(2)};
}

AttentionShape attention_shape(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                               double scale, double dropout_p, int64_t seed) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fastops: dropout_p must be in [0, 1), got ", dropout_p);
  check_same_device_dtype(q, "query", k, "key");
  check_same_device_dtype(q, "query", v, "value");
  TORCH_CHECK(q.is_cpu(), "fastops: attention kernels here take cpu tensors, got ", q.device());
  const int64_t N = q.size(0), H = q.size(1), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == N && v.size(0) == N && v.size(1) == Hkv && k.size(2) == v.size(2) &&
                  k.size(3) == q.size(3) && Hkv > 0 && H % Hkv == 0,
              "fastops: attention shapes do not match: query ", q.sizes(), ", key ", k.sizes(), ", value ",
              v.sizes());
  return AttentionShape{N,      H, Hkv, q.size(2), k.size(2), q.size(3), v.size(3), static_cast<float>(scale),
                        causal, to_dtype(q, "query"), static_cast<float>(dropout_p), static_cast<uint64_t>(seed)};
}

AttentionMask attention_mask(const std::optional<at::Tensor>& mask, const at::Tensor& q, const AttentionShape& sh) {
  AttentionMask m;
  if (!mask.has_value()) return m;
  const at::Tensor& t = *mask;
  TORCH_CHECK(t.dim() == 4 && t.size(0) == sh.N && t.size(1) == sh.H && t.size(2) == sh.L && t.size(3) == sh.S,
              "fastops: attn_mask must be expanded to [N, H, L, S] = [", sh.N, ", ", sh.H, ", ", sh.L, ", ",
              sh.S, "], got ", t.sizes());
  TORCH_CHECK(t.device() == q.device(), "fastops: attn_mask must be on ", q.device(), ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kBool || t.scalar_type() == q.scalar_type(),
                   "fastops: attn_mask must be bool or ", q.scalar_type(), ", got ", t.scalar_type());
  m.ptr = t.data_ptr();
  m.kind = t.scalar_type() == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
  m.stride_n = t.stride(0);
  m.stride_h = t.stride(1);
  m.stride_l = t.stride(2);
  m.stride_s = t.stride(3);
  return m;
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v,
                                                     const std::optional<at::Tensor>& mask, bool causal,
                                                     double scale, double dropout_p, int64_t seed) {
  AttentionForwardParams p{};
  p.shape = attention_shape(q, k, v, causal, scale, dropout_p, seed);
  const AttentionShape& sh = p.shape;
  at::Tensor out = at::empty({sh.N, sh.H, sh.L, sh.Ev}, q.options());
  at::Tensor lse = at::empty({sh.N, sh.H, sh.L}, q.options().dtype(at::kFloat));
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_strides = strides3(q, "query");
  p.k_strides = strides3(k, "key");
  p.v_strides = strides3(v, "value");
  p.out_strides = strides3(out, "out");
  p.mask = attention_mask(mask, q, sh);
  cpu::attention_forward(p);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& mask, bool causal,
    double scale, double dropout_p, int64_t seed, bool need_dmask) {
  AttentionBackwardParams p{};
  p.shape = attention_shape(q, k, v, causal, scale, dropout_p, seed);
  const AttentionShape& sh = p.shape;
  check_same(dout, "grad_out", out, "out");
  TORCH_CHECK(out.sizes() == at::IntArrayRef({sh.N, sh.H, sh.L, sh.Ev}), "fastops: out must be [N, H, L, Ev], got ",
              out.sizes());
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({sh.N, sh.H, sh.L}),
              "fastops: logsumexp must be contiguous float32 [N, H, L], got ", lse.scalar_type(), lse.sizes());
  at::Tensor dq = at::empty({sh.N, sh.H, sh.L, sh.E}, q.options());
  at::Tensor dk = at::empty({sh.N, sh.Hkv, sh.S, sh.E}, q.options());
  at::Tensor dv = at::empty({sh.N, sh.Hkv, sh.S, sh.Ev}, q.options());
  at::Tensor dmask = need_dmask ? at::zeros({sh.N, sh.H, sh.L, sh.S}, q.options().dtype(at::kFloat))
                                : at::empty({0}, q.options().dtype(at::kFloat));
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.dout = dout.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_strides = strides3(q, "query");
  p.k_strides = strides3(k, "key");
  p.v_strides = strides3(v, "value");
  p.out_strides = strides3(out, "out");
  p.dout_strides = strides3(dout, "grad_out");
  p.mask = attention_mask(mask, q, sh);
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dmask = need_dmask ? dmask.data_ptr<float>() : nullptr;
  cpu::attention_backward(p);
  return {dq, dk, dv, dmask};
}
// ---- attention ----

py::dict build_meta() {
  py::dict d;
  d["torch_version"] = FASTOPS_TORCH_VERSION;
  d["cuda_archs"] = std::string(FASTOPS_CUDA_ARCHS);
#ifdef FASTOPS_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["cpu_isas_compiled"] = cpu::compiled_isas();
  d["cpu_isa"] = std::string(cpu::isa_name(cpu::active_isa()));
  return d;
}

}  // namespace
}  // namespace fastops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastops compiled kernels (CPU always, CUDA when built with nvcc)";
  m.def("build_meta", &fastops::build_meta, "What this binary was built with and the CPU path in use");
  m.def("softmax_forward", &fastops::softmax_forward, "softmax over dim of a contiguous tensor",
        py::arg("x"), py::arg("dim"), py::call_guard<py::gil_scoped_release>());
  m.def("softmax_backward", &fastops::softmax_backward, "softmax input gradient from (grad_output, output)",
        py::arg("grad_output"), py::arg("output"), py::arg("dim"),
        py::call_guard<py::gil_scoped_release>());
  // ---- adam ----
  m.def("adam_step", &fastops::adam_step,
        "fused Adam/AdamW step over lists of contiguous tensors (one device, one param dtype)",
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("master_params"), py::arg("state_steps"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"),
        py::arg("maximize"), py::arg("decoupled"), py::arg("grad_scale") = py::none(),
        py::arg("found_inf") = py::none(), py::call_guard<py::gil_scoped_release>());
  // ---- adam ----
  // ---- attention ----
  m.def("attention_forward", &fastops::attention_forward,
        "flash-attention forward on cpu: (out [N, H, L, Ev], lse [N, H, L] float32)", py::arg("query"),
        py::arg("key"), py::arg("value"), py::arg("attn_mask"), py::arg("is_causal"), py::arg("scale"),
        py::arg("dropout_p"), py::arg("seed"), py::call_guard<py::gil_scoped_release>());
  m.def("attention_backward", &fastops::attention_backward,
        "flash-attention backward on cpu: (dq, dk, dv, dmask [N, H, L, S] float32 or empty)",
        py::arg("grad_out"), py::arg("query"), py::arg("key"), py::arg("value"), py::arg("out"),
        py::arg("logsumexp"), py::arg("attn_mask"), py::arg("is_causal"), py::arg("scale"),
        py::arg("dropout_p"), py::arg("seed"), py::arg("need_mask_grad"), py::call_guard<py::gil_scoped_release>());
  // ---- attention ----
}
