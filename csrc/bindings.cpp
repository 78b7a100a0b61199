// The one file that sees torch: checks tensors, fills the torch-free Params, calls the kernels.
//
// Every function here expects what fastops/ops/*.py guarantees (contiguous tensors of a
// supported dtype on one device) and checks it again with messages naming the argument, so a
// direct call from Python with bad input raises instead of crashing.
#include <torch/extension.h>

#include "cpu/isa.h"
#include "fastops/softmax.h"

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
}
