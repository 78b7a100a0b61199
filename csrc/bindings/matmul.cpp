// Matmul bindings: fastops._C.gemm (returns a new C) and fastops._C.gemm_out (writes into C).
//
// Operands are read through their strides (a transposed view is never copied); a 3-D operand
// with batch 1, or a 2-D one next to a 3-D one, is broadcast over the batch with stride 0.
// CPU tensors run fastops::cpu::gemm; CUDA tensors fastops::cuda::gemm (csrc/cuda/matmul.cu).
#include "bindings/common.h"
#include "fastops/gemm.h"
#include "fastops/linear.h"

namespace fastops {
namespace {

constexpr int kMaxActivation = static_cast<int>(Activation::kSilu);

// The batch size of the 2-D/3-D operands a, b ("mat1"/"mat2" in torch's messages).
int64_t batch_of(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 || a.dim() == 3, "fastops.gemm: a must be 2-D or 3-D, got ", a.dim(), "-D");
  TORCH_CHECK(b.dim() == 2 || b.dim() == 3, "fastops.gemm: b must be 2-D or 3-D, got ", b.dim(), "-D");
  const int64_t ba = a.dim() == 3 ? a.size(0) : 1, bb = b.dim() == 3 ? b.size(0) : 1;
  TORCH_CHECK(ba == bb || ba == 1 || bb == 1, "fastops.gemm: batch sizes of a (", ba, ") and b (", bb,
              ") must match or be 1");
  return std::max(ba, bb);
}

GemmOperand operand(const at::Tensor& t) {
  GemmOperand o;
  o.ptr = t.data_ptr();
  const int64_t d = t.dim();
  o.stride_row = t.stride(d - 2);
  o.stride_col = t.stride(d - 1);
  o.stride_batch = (d == 3 && t.size(0) > 1) ? t.stride(0) : 0;
  return o;
}

void check_inputs(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), "fastops.gemm: a and b must be on the same device, got ", a.device(),
              " and ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastops.gemm: expected a and b to have the same dtype, but got: ",
              a.scalar_type(), " != ", b.scalar_type());
  to_dtype(a, "a");
  TORCH_CHECK(a.size(-1) == b.size(-2), "fastops.gemm: a and b shapes cannot be multiplied (", a.sizes(), " and ",
              b.sizes(), ")");
}

void run(const GemmParams& p, const at::Tensor& like) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  if (like.is_cpu()) {
    cpu::gemm(p);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  if (like.is_cuda()) {
    const c10::cuda::CUDAGuard guard(like.device());
    check_cuda(cuda::gemm(p, at::globalContext().allowTF32CuBLAS(), at::cuda::getCurrentCUDAStream().stream()),
               "gemm");
    return;
  }
#endif
  TORCH_CHECK(false, "fastops.gemm: a must be on cpu", or_cuda(), ", got ", like.device());
}

// C = act(alpha * a @ b + beta * C + bias) into `c` ([batch, m, n] or [m, n], any strides, no
// overlap with a or b); bias: [n] (or [m] with bias_per_row) of c's dtype.
void fill_params(GemmParams& p, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                 const c10::optional<at::Tensor>& bias, bool bias_per_row, int64_t activation, double alpha,
                 double beta, at::Tensor& bias_hold) {
  TORCH_CHECK(activation >= 0 && activation <= kMaxActivation, "fastops.gemm: activation must be in [0, ",
              kMaxActivation, "], got ", activation);
  p.batch = batch_of(a, b);
  p.m = a.size(-2);
  p.k = a.size(-1);
  p.n = b.size(-1);
  p.a = operand(a);
  p.b = operand(b);
  p.c = c.data_ptr();
  const int64_t d = c.dim();
  p.c_stride_row = c.stride(d - 2);
  p.c_stride_col = c.stride(d - 1);
  p.c_stride_batch = d == 3 ? c.stride(0) : 0;
  p.ab_dtype = to_dtype(a, "a");
  p.c_dtype = to_dtype(c, "out");
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  p.activation = static_cast<Activation>(activation);
  p.bias_per_row = bias_per_row;
  if (bias.has_value() && bias->defined()) {
    const int64_t want = bias_per_row ? p.m : p.n;
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == want, "fastops.gemm: bias must have shape [", want, "], got ",
                bias->sizes());
    TORCH_CHECK(bias->device() == c.device(), "fastops.gemm: bias must be on ", c.device(), ", got ",
                bias->device());
    TORCH_CHECK_TYPE(bias->scalar_type() == c.scalar_type(), "fastops.gemm: bias must have the output dtype ",
                     c.scalar_type(), ", got ", bias->scalar_type());
    bias_hold = bias->contiguous();
    p.bias = bias_hold.data_ptr();
  }
}

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& bias,
                int64_t activation, c10::optional<at::ScalarType> out_dtype, double alpha, bool bias_per_row) {
  check_inputs(a, b);
  const int64_t batch = batch_of(a, b);
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const auto dtype = out_dtype.value_or(a.scalar_type());
  std::vector<int64_t> shape{a.size(-2), b.size(-1)};
  if (batched) shape.insert(shape.begin(), batch);
  at::Tensor c = at::empty(shape, a.options().dtype(dtype));
  to_dtype(c, "out_dtype");
  GemmParams p;
  at::Tensor bias_hold;
  fill_params(p, a, b, c, bias, bias_per_row, activation, alpha, 0.0, bias_hold);
  run(p, a);
  return c;
}

void gemm_out(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, const c10::optional<at::Tensor>& bias,
              int64_t activation, double alpha, double beta, bool bias_per_row) {
  check_inputs(a, b);
  const int64_t batch = batch_of(a, b);
  const bool batched = a.dim() == 3 || b.dim() == 3;
  std::vector<int64_t> shape{a.size(-2), b.size(-1)};
  if (batched) shape.insert(shape.begin(), batch);
  TORCH_CHECK(c.sizes() == c10::IntArrayRef(shape), "fastops.gemm_out: out must have shape ",
              c10::IntArrayRef(shape), ", got ", c.sizes());
  TORCH_CHECK(c.device() == a.device(), "fastops.gemm_out: out must be on ", a.device(), ", got ", c.device());
  TORCH_CHECK(!c.numel() || (!c.is_alias_of(a) && !c.is_alias_of(b)),
              "fastops.gemm_out: out must not share memory with a or b");
  GemmParams p;
  at::Tensor bias_hold;
  fill_params(p, a, b, c, bias, bias_per_row, activation, alpha, beta, bias_hold);
  run(p, a);
}

// (dz, dbias) of linear + activation on CPU (fastops/linear.h): grad and z [rows, cols] with
// contiguous columns; dbias is empty unless want_bias.
std::tuple<at::Tensor, at::Tensor> activation_backward(const at::Tensor& grad, const at::Tensor& z,
                                                       int64_t activation, bool want_bias) {
  TORCH_CHECK(activation >= 0 && activation <= kMaxActivation, "fastops.activation_backward: activation must be in [0, ",
              kMaxActivation, "], got ", activation);
  TORCH_CHECK(grad.dim() == 2 && z.dim() == 2, "fastops.activation_backward: grad and z must be 2-D, got ", grad.dim(),
              "-D and ", z.dim(), "-D");
  TORCH_CHECK(grad.sizes() == z.sizes(), "fastops.activation_backward: grad and z must have the same shape, got ",
              grad.sizes(), " and ", z.sizes());
  check_same_device_dtype(grad, "grad", z, "z");
  TORCH_CHECK(grad.is_cpu(), "fastops.activation_backward: grad must be on cpu, got ", grad.device());
  const DType dt = to_dtype(grad, "grad");
  const int64_t rows = grad.size(0), cols = grad.size(1);
  TORCH_CHECK((grad.stride(1) == 1 && z.stride(1) == 1) || cols <= 1,
              "fastops.activation_backward: grad and z must have contiguous columns, got strides ", grad.strides(),
              " and ", z.strides());
  at::Tensor dz = at::empty({rows, cols}, grad.options());
  at::Tensor db = at::empty({want_bias ? cols : 0}, grad.options());
  {
    pybind11::gil_scoped_release release;
    cpu::activation_backward(dt, static_cast<Activation>(activation), rows, cols, grad.data_ptr(), grad.stride(0),
                             z.data_ptr(), z.stride(0), dz.data_ptr(), cols, want_bias ? db.data_ptr() : nullptr);
  }
  return {dz, db};
}

}  // namespace

void bind_matmul(pybind11::module_& m) {
  m.def("activation_backward", &fastops::activation_backward,
        "(dz, dbias) = (grad * act'(z), column sums of dz) of linear + activation on CPU, one pass",
        py::arg("grad"), py::arg("z"), py::arg("activation"), py::arg("want_bias"));
  m.def("gemm", &fastops::gemm,
        "act(alpha * a @ b + bias) as a new tensor: a [B?, m, k], b [B?, k, n] (any strides, batch 1 or 2-D "
        "broadcast), bias [n] (or [m] with bias_per_row) of the output dtype; fp32 accumulation",
        py::arg("a"), py::arg("b"), py::arg("bias") = py::none(), py::arg("activation") = 0,
        py::arg("out_dtype") = py::none(), py::arg("alpha") = 1.0, py::arg("bias_per_row") = false,
        py::call_guard<py::gil_scoped_release>());
  m.def("gemm_out", &fastops::gemm_out, "out = act(alpha * a @ b + beta * out + bias) in place (any strides)",
        py::arg("a"), py::arg("b"), py::arg("out"), py::arg("bias") = py::none(), py::arg("activation") = 0,
        py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("bias_per_row") = false,
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastops
