// Softmax bindings: fastops._C.softmax_forward / softmax_backward, and softmax_small, the eager
// small-call path of fastops.functional.softmax under `auto`.
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <atomic>

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

// ---- the eager small-call path ------------------------------------------------------------------
// A tiny softmax costs torch about 1 us; fastops' Python wrapper alone adds 0.3-0.5 us. So under
// plain `auto`, fastops.functional.softmax first hands the call to softmax_small, which decides in
// C++ from the size and dtype alone: below the op's measured crossover it runs torch's kernel
// (at::softmax, through the dispatcher: autograd, autocast and vmap included), or fastops' own CPU
// kernel where that was measured faster still (small contiguous last-dim rows, no graph to record).
// Anything else, and any setting that is not plain auto, returns None: the Python path decides.
// Limits per dtype (float32, float16, bfloat16), in elements; 0 = off. Set from Python.
struct SmallCallLimits {
  std::array<std::atomic<int64_t>, 3> torch_below{};  // the crossover: torch's kernel below it
  std::array<std::atomic<int64_t>, 3> kernel_upto{};  // fastops' CPU kernel up to this many
  std::atomic<int64_t> torch_calls{0}, kernel_calls{0};  // for fastops.explain()
};

SmallCallLimits& small_limits() {
  static SmallCallLimits limits;
  return limits;
}

int small_dtype_index(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: return -1;
  }
}

// A plain CPU tensor that fastops' kernel may read directly: no wrapper or mode keys (vmap,
// functionalization, Python subclasses) and no autocast region that would change its dtype.
bool plain_cpu_tensor(const at::Tensor& x) {
  const c10::DispatchKeySet plain{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                  c10::DispatchKey::AutogradCPU, c10::DispatchKey::AutocastCPU};
  return plain.isSupersetOf(x.key_set()) && !at::autocast::is_autocast_enabled(at::kCPU);
}

py::object softmax_small(py::handle obj, int64_t dim) {
  // exactly torch.Tensor: subclasses with __torch_function__ take the Python path
  if (!THPVariable_CheckExact(obj.ptr()) || at::impl::torch_function_mode_enabled()) return py::none();
  const at::Tensor& x = THPVariable_Unpack(obj.ptr());
  const int d = small_dtype_index(x.scalar_type());
  if (d < 0 || !x.is_cpu() || x.layout() != at::kStrided) return py::none();
  SmallCallLimits& limits = small_limits();
  const int64_t n = x.numel();
  if (n >= limits.torch_below[d].load(std::memory_order_relaxed)) return py::none();
  const bool kernel = n <= limits.kernel_upto[d].load(std::memory_order_relaxed) && x.dim() >= 1 &&
                      (dim == -1 || dim == x.dim() - 1) && x.is_contiguous() && plain_cpu_tensor(x) &&
                      !(x.requires_grad() && at::GradMode::is_enabled());
  if (!kernel) {
    limits.torch_calls.fetch_add(1, std::memory_order_relaxed);
    return py::cast(at::softmax(x, dim));
  }
  limits.kernel_calls.fetch_add(1, std::memory_order_relaxed);
  return py::cast(softmax_forward(x, x.dim() - 1));
}

void set_softmax_small_limits(const std::vector<int64_t>& torch_below, const std::vector<int64_t>& kernel_upto) {
  TORCH_CHECK_VALUE(torch_below.size() == 3 && kernel_upto.size() == 3,
                    "fastops: softmax small-call limits take 3 values each (float32, float16, bfloat16), got ",
                    torch_below.size(), " and ", kernel_upto.size());
  SmallCallLimits& limits = small_limits();
  for (int i = 0; i < 3; ++i) {
    limits.torch_below[i].store(torch_below[i], std::memory_order_relaxed);
    limits.kernel_upto[i].store(kernel_upto[i], std::memory_order_relaxed);
  }
}

// (calls sent to torch, calls run on the cpu kernel) since the last reset; reset=True zeroes them.
std::pair<int64_t, int64_t> softmax_small_calls(bool reset) {
  SmallCallLimits& limits = small_limits();
  if (reset) return {limits.torch_calls.exchange(0), limits.kernel_calls.exchange(0)};
  return {limits.torch_calls.load(), limits.kernel_calls.load()};
}

}  // namespace

void bind_softmax(pybind11::module_& m) {
  m.def("softmax_forward", &fastops::softmax_forward, "softmax over dim of a contiguous tensor",
        py::arg("x"), py::arg("dim"), py::call_guard<py::gil_scoped_release>());
  m.def("softmax_backward", &fastops::softmax_backward, "softmax input gradient from (grad_output, output)",
        py::arg("grad_output"), py::arg("output"), py::arg("dim"),
        py::call_guard<py::gil_scoped_release>());
  // keeps the GIL: a tiny call is cheaper than releasing and taking it back
  m.def("softmax_small", &fastops::softmax_small,
        "fastops.functional.softmax's small-call path under plain auto: a tensor, or None to decline",
        py::arg("x"), py::arg("dim") = -1);
  m.def("set_softmax_small_limits", &fastops::set_softmax_small_limits,
        "elements per dtype (float32, float16, bfloat16): torch below, fastops' cpu kernel up to",
        py::arg("torch_below"), py::arg("kernel_upto"));
  m.def("softmax_small_calls", &fastops::softmax_small_calls,
        "(torch calls, kernel calls) taken by softmax_small", py::arg("reset") = false);
}

}  // namespace fastops
