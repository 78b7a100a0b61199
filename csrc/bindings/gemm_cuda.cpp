// Raw binding of the CUDA GEMM for its tests: fastops._C.gemm_cuda(a, b, c, bias, alpha, beta,
// activation, allow_tf32, bias_per_row) writes
//   c[b, i, j] = act(alpha * sum_p a[b, i, p] * b[b, p, j] + beta * c[b, i, j] + bias[j or i])
// into c in place (fastops::cuda::gemm, csrc/cuda/matmul.cu). a [m, k] or [batch, m, k],
// b [k, n] or [batch, k, n], c [m, n] or [batch, m, n], any strides (a 2-D or size-1-batch operand
// is broadcast over the batch); a and b share one dtype, c and bias (contiguous, n elements, or m
// with bias_per_row) another. The matmul family's own bindings are the public entry points.
#include <ATen/MemoryOverlap.h>

#include "bindings/common.h"
#include "fastops/gemm.h"

namespace fastops {
namespace {

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "silu") return Activation::kSilu;
  TORCH_CHECK_VALUE(false, "fastops.gemm_cuda: activation must be one of none, relu, gelu, gelu_tanh, silu, got '",
                    name, "'");
}

#ifdef FASTOPS_WITH_CUDA
// [batch, rows, cols] view of a 2-D or 3-D operand: a 2-D one (or a batch of 1) is broadcast.
GemmOperand operand(const at::Tensor& t, int64_t batch, const char* name) {
  TORCH_CHECK(t.dim() == 2 || t.dim() == 3, "fastops.gemm_cuda: ", name, " must be 2-D or 3-D, got ", t.dim(),
              "-D");
  const int64_t d = t.dim() - 2;
  TORCH_CHECK(t.dim() == 2 || t.size(0) == batch || t.size(0) == 1, "fastops.gemm_cuda: ", name,
              " must have batch size ", batch, " or 1, got ", t.size(0));
  const int64_t sb = (t.dim() == 3 && t.size(0) == batch && batch > 1) ? t.stride(0) : 0;
  return GemmOperand{t.data_ptr(), sb, t.stride(d), t.stride(d + 1)};
}
#endif

void gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const std::optional<at::Tensor>& bias,
               double alpha, double beta, const std::string& activation, bool allow_tf32, bool bias_per_row) {
  const Activation act = parse_activation(activation);
#ifdef FASTOPS_WITH_CUDA
  TORCH_CHECK(c.is_cuda(), "fastops.gemm_cuda: c must be a CUDA tensor, got ", c.device());
  check_same_device_dtype(a, "a", b, "b");
  TORCH_CHECK(a.device() == c.device(), "fastops.gemm_cuda: a and c must be on the same device, got ",
              a.device(), " and ", c.device());
  TORCH_CHECK(c.dim() == 2 || c.dim() == 3, "fastops.gemm_cuda: c must be 2-D or 3-D, got ", c.dim(), "-D");
  const int64_t batch = c.dim() == 3 ? c.size(0) : 1;
  TORCH_CHECK(c.dim() == 3 || (a.dim() == 2 && b.dim() == 2),
              "fastops.gemm_cuda: a and b must be 2-D when c is 2-D, got ", a.dim(), "-D and ", b.dim(), "-D");
  GemmParams p;
  p.batch = batch;
  p.a = operand(a, batch, "a");
  p.b = operand(b, batch, "b");
  p.m = a.size(-2);
  p.k = a.size(-1);
  p.n = b.size(-1);
  TORCH_CHECK(b.size(-2) == p.k, "fastops.gemm_cuda: b must have ", p.k, " rows (a's columns), got ", b.size(-2));
  TORCH_CHECK(c.size(-2) == p.m && c.size(-1) == p.n, "fastops.gemm_cuda: c must be [", p.m, ", ", p.n,
              "] per batch entry, got ", c.sizes());
  p.ab_dtype = to_dtype(a, "a");
  p.c_dtype = to_dtype(c, "c");
  p.c = c.data_ptr();
  p.c_stride_batch = c.dim() == 3 ? c.stride(0) : 0;
  p.c_stride_row = c.stride(-2);
  p.c_stride_col = c.stride(-1);
  if (c.numel() > 0) {
    at::assert_no_internal_overlap(c);
    at::assert_no_overlap(c, a);
    at::assert_no_overlap(c, b);
  }
  if (bias.has_value()) {
    check_same_device_dtype(*bias, "bias", c, "c");
    const int64_t want = bias_per_row ? p.m : p.n;
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == want && bias->is_contiguous(), "fastops.gemm_cuda: bias must be a contiguous [",
                want, "] tensor, got shape ", bias->sizes(), " with strides ", bias->strides());
    p.bias = bias->data_ptr();
  }
  p.bias_per_row = bias_per_row;
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  p.activation = act;
  const c10::cuda::CUDAGuard guard(c.device());
  check_cuda(cuda::gemm(p, allow_tf32, at::cuda::getCurrentCUDAStream().stream()), "gemm");
#else
  (void)a, (void)b, (void)c, (void)bias, (void)alpha, (void)beta, (void)act, (void)allow_tf32, (void)bias_per_row;
  TORCH_CHECK(false, "fastops.gemm_cuda: this build of fastops has no CUDA kernels (built without nvcc or with "
              "FASTOPS_BUILD_CUDA=0)");
#endif
}

}  // namespace

void bind_gemm_cuda(pybind11::module_& m) {
  m.def("gemm_cuda", &fastops::gemm_cuda,
        "c = act(alpha * a @ b + beta * c + bias) in place with the CUDA tensor-core / SIMT GEMM (test entry)",
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("bias"), py::arg("alpha"), py::arg("beta"),
        py::arg("activation"), py::arg("allow_tf32"), py::arg("bias_per_row"),
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastops
