// Adam bindings: fastops._C.adam_step.
#include "bindings/common.h"
#include "fastops/adam.h"

namespace fastops {
namespace {

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
  TORCH_CHECK(false, "fastops.adam_step_: params must be on cpu", or_cuda(),
              ", got ", device);
}

}  // namespace

void bind_adam(pybind11::module_& m) {
  m.def("adam_step", &fastops::adam_step,
        "fused Adam/AdamW step over lists of contiguous tensors (one device, one param dtype)",
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("master_params"), py::arg("state_steps"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"),
        py::arg("maximize"), py::arg("decoupled"), py::arg("grad_scale") = py::none(),
        py::arg("found_inf") = py::none(), py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastops
