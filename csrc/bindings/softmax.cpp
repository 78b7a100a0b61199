// Softmax bindings: fastops._C.softmax_forward / softmax_backward.
#include "bindings/common.h"
#include "fastops/softmax.h"

namespace fastops {
namespace {

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
  TORCH_CHECK(false, "fastops: x must be on cpu", or_cuda(), ", got ",
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
  TORCH_CHECK(false, "fastops: output must be on cpu", or_cuda(), ", got ",
              y.device());
}

}  // namespace

void bind_softmax(pybind11::module_& m) {
  m.def("softmax_forward", &fastops::softmax_forward, "softmax over dim of a contiguous tensor",
        py::arg("x"), py::arg("dim"), py::call_guard<py::gil_scoped_release>());
  m.def("softmax_backward", &fastops::softmax_backward, "softmax input gradient from (grad_output, output)",
        py::arg("grad_output"), py::arg("output"), py::arg("dim"),
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastops
