// Attention bindings: fastops._C.attention_forward / attention_backward (cpu, and cuda when the
// build holds the CUDA kernels: float16 / bfloat16, head dims up to 256).
#include "bindings/common.h"
#include "fastops/attention.h"

namespace fastops {
namespace {

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
#ifdef FASTOPS_WITH_CUDA
  TORCH_CHECK(q.is_cpu() || q.is_cuda(), "fastops: attention kernels take cpu or cuda tensors, got ", q.device());
#else
  TORCH_CHECK(q.is_cpu(), "fastops: attention kernels here take cpu tensors, got ", q.device());
#endif
  const int64_t N = q.size(0), H = q.size(1), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == N && v.size(0) == N && v.size(1) == Hkv && k.size(2) == v.size(2) &&
                  k.size(3) == q.size(3) && Hkv > 0 && H % Hkv == 0,
              "fastops: attention shapes do not match: query ", q.sizes(), ", key ", k.sizes(), ", value ",
              v.sizes());
  return AttentionShape{N,      H, Hkv, q.size(2), k.size(2), q.size(3), v.size(3), static_cast<float>(scale),
                        causal, to_dtype(q, "query"), static_cast<float>(dropout_p), static_cast<uint64_t>(seed)};
}

#ifdef FASTOPS_WITH_CUDA
// What the CUDA kernels take (fastops/ops/attention.py sends every other case elsewhere).
constexpr int64_t kCudaMaxForwardHeadDim = 256;
constexpr int64_t kCudaMaxBackwardHeadDim = 256;

void check_cuda_coverage(const AttentionShape& sh, int64_t max_head_dim) {
  TORCH_CHECK_TYPE(sh.dtype != DType::kFloat32,
                   "fastops: the CUDA attention kernels take float16 or bfloat16 query/key/value, got float32");
  TORCH_CHECK(sh.E > 0 && sh.Ev > 0 && sh.E <= max_head_dim && sh.Ev <= max_head_dim,
              "fastops: the CUDA attention kernels here take head dims in [1, ", max_head_dim, "], got E = ", sh.E,
              ", Ev = ", sh.Ev);
  TORCH_CHECK(sh.S > 0, "fastops: the CUDA attention kernels need at least one key (S > 0), got S = 0");
}
#endif

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

// The fields both passes fill alike: q, k, v, out (pointers and strides) and the mask.
template <typename Params>
void set_inputs(Params& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                const std::optional<at::Tensor>& mask) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.q_strides = strides3(q, "query");
  p.k_strides = strides3(k, "key");
  p.v_strides = strides3(v, "value");
  p.out_strides = strides3(out, "out");
  p.mask = attention_mask(mask, q, p.shape);
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
  set_inputs(p, q, k, v, out, mask);
  p.lse = lse.data_ptr<float>();
  if (q.is_cpu()) {
    cpu::attention_forward(p);
    return {out, lse};
  }
#ifdef FASTOPS_WITH_CUDA
  check_cuda_coverage(sh, kCudaMaxForwardHeadDim);
  const c10::cuda::CUDAGuard guard(q.device());
  check_cuda(cuda::attention_forward(p, at::cuda::getCurrentCUDAStream().stream()), "attention_forward");
#endif
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
  set_inputs(p, q, k, v, out, mask);
  p.dout = dout.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.dout_strides = strides3(dout, "grad_out");
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dmask = need_dmask ? dmask.data_ptr<float>() : nullptr;
  if (q.is_cpu()) {
    cpu::attention_backward(p);
    return {dq, dk, dv, dmask};
  }
#ifdef FASTOPS_WITH_CUDA
  check_cuda_coverage(sh, kCudaMaxBackwardHeadDim);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor delta = at::empty({sh.N, sh.H, sh.L}, q.options().dtype(at::kFloat));
  p.delta = delta.data_ptr<float>();
  check_cuda(cuda::attention_backward(p, at::cuda::getCurrentCUDAStream().stream()), "attention_backward");
#endif
  return {dq, dk, dv, dmask};
}

}  // namespace

void bind_attention(pybind11::module_& m) {
  m.def("attention_forward", &fastops::attention_forward,
        "flash-attention forward (cpu, cuda): (out [N, H, L, Ev], lse [N, H, L] float32)", py::arg("query"),
        py::arg("key"), py::arg("value"), py::arg("attn_mask"), py::arg("is_causal"), py::arg("scale"),
        py::arg("dropout_p"), py::arg("seed"), py::call_guard<py::gil_scoped_release>());
  m.def("attention_backward", &fastops::attention_backward,
        "flash-attention backward (cpu, cuda): (dq, dk, dv, dmask [N, H, L, S] float32 or empty)",
        py::arg("grad_out"), py::arg("query"), py::arg("key"), py::arg("value"), py::arg("out"),
        py::arg("logsumexp"), py::arg("attn_mask"), py::arg("is_causal"), py::arg("scale"),
        py::arg("dropout_p"), py::arg("seed"), py::arg("need_mask_grad"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastops
