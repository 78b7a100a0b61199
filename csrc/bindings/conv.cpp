// Conv2d bindings: fastops._C.conv2d_forward / conv2d_backward (CPU kernels, csrc/cpu/conv.cpp;
// on CUDA tensors the CUDA kernels, csrc/cuda/conv.cu).
//
// `channels_last` picks the layout the CPU kernel runs in (fastops/ops/conv.py chooses it); the
// CUDA kernels always run NHWC. Inputs are made dense in that layout here; on the CPU, y and dx
// come back in x's layout (NCHW <-> NHWC by cpu::transpose_batched), dw in the weight's when it is
// NCHW; on CUDA in the kernel's (the caller restores the user's format).
// The weight is handed to the kernel as [O, K] in the layout's K order and its gradient comes back
// as a [O, C / groups, KH, KW] view of that buffer.
#include "bindings/common.h"
#include "fastops/conv.h"
#include "fastops/workspace.h"

namespace fastops {
namespace {

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

Conv2dShape make_shape(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, bool channels_last) {
  TORCH_CHECK(x.dim() == 4, "fastops.conv2d: input must be 4-D [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(w.dim() == 4, "fastops.conv2d: weight must be 4-D [O, C / groups, KH, KW], got shape ", w.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "fastops.conv2d: stride, padding and dilation must have 2 values each");
  check_same_device_dtype(x, "input", w, "weight");
  TORCH_CHECK(x.is_cpu() || (x.is_cuda() && or_cuda()[0]), "fastops.conv2d: input must be on cpu", or_cuda(),
              ", got ", x.device());
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0 && w.size(0) % groups == 0,
              "fastops.conv2d: groups (", groups, ") must divide input channels ", x.size(1),
              " and output channels ", w.size(0));
  TORCH_CHECK(w.size(1) * groups == x.size(1), "fastops.conv2d: weight expects ", w.size(1) * groups,
              " input channels (", w.size(1), " x groups ", groups, "), input has ", x.size(1));
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(stride[d] > 0 && dilation[d] > 0 && padding[d] >= 0,
                "fastops.conv2d: stride and dilation must be positive and padding non-negative, got stride ",
                stride, ", padding ", padding, ", dilation ", dilation);
  }
  Conv2dShape s;
  s.n = x.size(0);
  s.c = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  s.o = w.size(0);
  s.kh = w.size(2);
  s.kw = w.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  s.groups = groups;
  s.ho = conv_out_size(s.h, s.kh, s.stride_h, s.pad_h, s.dil_h);
  s.wo = conv_out_size(s.w, s.kw, s.stride_w, s.pad_w, s.dil_w);
  TORCH_CHECK(s.ho > 0 && s.wo > 0, "fastops.conv2d: kernel size (", s.kh, ", ", s.kw, ") with dilation ",
              dilation, " is larger than the padded input (", s.h + 2 * s.pad_h, ", ", s.w + 2 * s.pad_w, ")");
  s.channels_last = channels_last;
  s.dtype = to_dtype(x, "input");
  return s;
}

// The CUDA kernels' layout is NHWC; raises what they do not cover (fastops/conv.h).
void check_cuda_covers(const Conv2dShape& s, bool backward) {
  const char* why = conv2d_cuda_unsupported(s, backward);
  TORCH_CHECK_NOT_IMPLEMENTED(why == nullptr, "fastops.conv2d: the CUDA kernels do not cover this call: ", why);
}

// t, dense in `fmt`, at a 16-byte-aligned address (the CUDA loaders copy 16 bytes at a time).
at::Tensor dense_aligned(const at::Tensor& t, at::MemoryFormat fmt) {
  at::Tensor d = t.contiguous(fmt);
  if (d.is_cuda() && reinterpret_cast<uintptr_t>(d.data_ptr()) % 16 != 0) d = d.clone(fmt);
  return d;
}

// channels_last and not also contiguous (C > 1), as fastops/ops/conv.py's _is_cl.
bool is_cl(const at::Tensor& t) {
  return t.dim() == 4 && t.size(1) > 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

// A dense CPU tensor of 2- or 4-byte elements, whose layout cpu::transpose_batched can change.
bool transposable(const at::Tensor& t) {
  return t.is_cpu() && t.dim() == 4 && t.numel() > 0 && (t.element_size() == 2 || t.element_size() == 4);
}

// An uninitialised CPU tensor [N, C, H, W] in `fmt` on a block of the workspace cache
// (fastops/workspace.h), for a temporary that dies inside this call: the layout changes' copies,
// which the allocator would otherwise hand back to the OS and fault in again on every call.
at::Tensor workspace_empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat fmt) {
  std::vector<int64_t> strides(sizes.size(), 1);
  if (fmt == at::MemoryFormat::ChannelsLast) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else {
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * sizes[d + 1];
  }
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  size_t capacity = 0;
  void* block = cpu::workspace_take(std::max<size_t>(bytes, 1), &capacity);
  return at::from_blob(block, sizes, strides, [capacity](void* b) { cpu::workspace_give(b, capacity); }, options);
}

// t [N, C, H, W] dense in `fmt`: a CPU change between NCHW and NHWC runs on cpu::transpose_batched
// (parallel, cache-blocked tiles; torch's copy of a permuted tensor is several times slower), into
// a workspace tensor when the result is a temporary of this call.
at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt, bool temporary = false) {
  if (transposable(t)) {
    const int64_t n = t.size(0), c = t.size(1), hw = t.size(2) * t.size(3);
    const bool to_cl = fmt == at::MemoryFormat::ChannelsLast;
    if (to_cl ? (t.is_contiguous() && !t.is_contiguous(fmt)) : is_cl(t)) {
      at::Tensor d = temporary ? workspace_empty(t.sizes(), t.options(), fmt)
                               : at::empty(t.sizes(), t.options().memory_format(fmt));
      cpu::transpose_batched(t.data_ptr(), d.data_ptr(), n, to_cl ? c : hw, to_cl ? hw : c,
                             static_cast<int>(t.element_size()));
      return d;
    }
  }
  return dense_aligned(t, fmt);
}

// A CPU NCHW-contiguous weight the NHWC kernels read in place (Conv2dForwardParams::w_nchw).
bool nchw_weight_in_place(const at::Tensor& w) {
  return w.is_cpu() && w.dim() == 4 && w.is_contiguous() && (w.element_size() == 2 || w.element_size() == 4);
}

// The weight as the kernel reads it: [O, K] contiguous in the layout's K order.
at::Tensor kernel_weight(const at::Tensor& w, bool channels_last) {
  if (channels_last && transposable(w) && w.is_contiguous()) {  // [O, C, KH KW] -> [O, KH KW, C]
    at::Tensor d = at::empty({w.size(0), w.size(2), w.size(3), w.size(1)}, w.options());
    cpu::transpose_batched(w.data_ptr(), d.data_ptr(), w.size(0), w.size(1), w.size(2) * w.size(3),
                           static_cast<int>(w.element_size()));
    return d;
  }
  return dense_aligned(channels_last ? w.permute({0, 2, 3, 1}) : w, at::MemoryFormat::Contiguous);
}

at::Tensor conv2d_forward(const at::Tensor& x_in, const at::Tensor& w_in, const c10::optional<at::Tensor>& bias_in,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          int64_t activation, bool channels_last) {
  Conv2dForwardParams p;
  if (x_in.is_cuda()) channels_last = true;
  p.s = make_shape(x_in, w_in, stride, padding, dilation, groups, channels_last);
  if (x_in.is_cuda()) check_cuda_covers(p.s, false);
  TORCH_CHECK(activation >= 0 && activation <= 4, "fastops.conv2d: activation code must be in [0, 4], got ",
              activation);
  const at::Tensor x = in_format(x_in, format_of(channels_last), true);
  // an NCHW weight is packed by the kernel straight from its layout (w_nchw), not reordered here
  p.w_nchw = channels_last && nchw_weight_in_place(w_in);
  const at::Tensor w = p.w_nchw ? w_in : kernel_weight(w_in, channels_last);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    check_same_device_dtype(x, "input", *bias_in, "bias");
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == p.s.o, "fastops.conv2d: bias must be [", p.s.o,
                "], got shape ", bias_in->sizes());
    bias = bias_in->contiguous();
    p.bias = bias.data_ptr();
  }
  p.y_nchw = channels_last && x.is_cpu() && !is_cl(x_in);  // y in x's layout, from the kernel's store
  at::Tensor y = at::empty({p.s.n, p.s.o, p.s.ho, p.s.wo},
                           x.options().memory_format(format_of(channels_last && !p.y_nchw)));
  p.x = x.data_ptr();
  p.w = w.data_ptr();
  p.y = y.data_ptr();
  p.activation = static_cast<Activation>(activation);
  if (x.is_cuda()) {
#ifdef FASTOPS_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(cuda::conv2d_forward(p, at::cuda::getCurrentCUDAStream().stream()), "conv2d_forward");
#endif
  } else {
    cpu::conv2d_forward(p);
  }
  return y;
}

std::vector<at::Tensor> conv2d_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& w_in,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups, bool channels_last, std::vector<bool> mask) {
  TORCH_CHECK(mask.size() == 3, "fastops.conv2d_backward: output_mask must have 3 entries");
  Conv2dBackwardParams p;
  if (x_in.is_cuda()) channels_last = true;
  p.s = make_shape(x_in, w_in, stride, padding, dilation, groups, channels_last);
  if (p.s.depthwise()) p.s.channels_last = channels_last = true;  // the depthwise backward runs on NHWC
  if (x_in.is_cuda()) check_cuda_covers(p.s, true);
  check_same_device_dtype(dy_in, "grad_output", x_in, "input");
  TORCH_CHECK(dy_in.dim() == 4 && dy_in.size(0) == p.s.n && dy_in.size(1) == p.s.o && dy_in.size(2) == p.s.ho &&
                  dy_in.size(3) == p.s.wo,
              "fastops.conv2d_backward: grad_output must be [", p.s.n, ", ", p.s.o, ", ", p.s.ho, ", ", p.s.wo,
              "], got shape ", dy_in.sizes());
  const auto fmt = format_of(channels_last);
  const at::Tensor dy = in_format(dy_in, fmt, true), x = in_format(x_in, fmt, true);
  p.w_nchw = channels_last && nchw_weight_in_place(w_in);
  const at::Tensor w = p.w_nchw ? w_in : kernel_weight(w_in, channels_last);
  const bool empty = dy.numel() == 0;
  at::Tensor dx, dw, db;
  // an NHWC dx for an NCHW x is a temporary: the answer is its NCHW copy below
  const bool dx_back = channels_last && !is_cl(x_in) && x_in.is_cpu();
  if (mask[0]) {
    dx = empty ? at::zeros_like(x, fmt)
               : (dx_back && transposable(x) && x.size(1) > 1 ? workspace_empty(x.sizes(), x.options(), fmt) : at::empty_like(x, fmt));
  }
  if (mask[1]) {  // in the kernel's layout: [O, KH, KW, Cg] when channels_last
    const auto shape = channels_last ? std::vector<int64_t>{w_in.size(0), w_in.size(2), w_in.size(3), w_in.size(1)}
                                     : w_in.sizes().vec();
    dw = empty ? at::zeros(shape, w_in.options()) : at::empty(shape, w_in.options());
  }
  if (mask[2]) db = empty ? at::zeros({p.s.o}, x.options()) : at::empty({p.s.o}, x.options());
  if (!empty && x.numel() > 0) {
    p.dy = dy.data_ptr();
    p.x = x.data_ptr();
    p.w = w.data_ptr();
    p.dx = dx.defined() ? dx.data_ptr() : nullptr;
    p.dw = dw.defined() ? dw.data_ptr() : nullptr;
    p.dbias = db.defined() ? db.data_ptr() : nullptr;
    if (x.is_cuda()) {
#ifdef FASTOPS_WITH_CUDA
      const c10::cuda::CUDAGuard guard(x.device());
      check_cuda(cuda::conv2d_backward(p, at::cuda::getCurrentCUDAStream().stream()), "conv2d_backward");
#endif
    } else {
      cpu::conv2d_backward(p);
    }
  }
  if (!empty && x.numel() == 0 && db.defined()) {  // no input channels: the kernels never ran
    db.copy_(dy.sum({0, 2, 3}, /*keepdim=*/false, at::kFloat));
  }
  if (dw.defined() && channels_last) {
    if (transposable(dw) && !is_cl(w_in)) {  // back to the weight's [O, C, KH, KW]
      at::Tensor d = at::empty({dw.size(0), dw.size(3), dw.size(1), dw.size(2)}, dw.options());
      cpu::transpose_batched(dw.data_ptr(), d.data_ptr(), dw.size(0), dw.size(1) * dw.size(2), dw.size(3),
                             static_cast<int>(dw.element_size()));
      dw = d;
    } else {
      dw = dw.permute({0, 3, 1, 2});
    }
  }
  if (dx.defined() && dx_back) dx = in_format(dx, at::MemoryFormat::Contiguous);
  return {dx, dw, db};
}

}  // namespace

void bind_conv(pybind11::module_& m) {
  m.def("conv2d_forward", &fastops::conv2d_forward,
        "act(conv2d(x, w) + bias) in the layout `channels_last` picks; activation: 0 none, 1 relu, 4 silu, ...",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("activation"), py::arg("channels_last"),
        py::call_guard<py::gil_scoped_release>());
  m.def("conv2d_backward", &fastops::conv2d_backward,
        "(grad_input, grad_weight, grad_bias) of conv2d, each computed when output_mask says so",
        py::arg("grad_output"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("channels_last"), py::arg("output_mask"),
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastops
