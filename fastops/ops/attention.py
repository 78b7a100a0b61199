"""Scaled dot-product attention as custom ops: fastops::sdpa_forward and fastops::sdpa_backward.

Kernel layout (dims: N batch, H query heads, Hkv key/value heads with H % Hkv == 0, L queries,
S keys, E query/key head dim, Ev value head dim):

    sdpa_forward(q [N, H, L, E], k [N, Hkv, S, E], v [N, Hkv, S, Ev], attn_mask, is_causal, scale,
                 backend) -> (out [N, H, L, Ev] q.dtype, lse [N, H, L] float32 (float64 for float64 q))
    sdpa_backward(grad_out, q, k, v, out, lse, attn_mask, is_causal, scale, need_mask_grad, backend)
                 -> (dq, dk, dv, dmask [N, H, L, S] float32, or an empty tensor)

attn_mask: None, or bool (True = attend) / additive of q's dtype, expanded to [N, H, L, S]
(stride 0 on broadcast dims). Scores s = scale * q k^T + mask; causal keeps key j <= query i
(top-left aligned, as torch, also for L != S). lse is +inf for a row with no unmasked key: its
output and gradients are 0, as torch's SDPA gives. The forward saves q, k, v, out, lse and the
mask; the backward recomputes the probabilities from them (flash-attention). float32 math for
float16/bfloat16 storage. fastops.functional.scaled_dot_product_attention maps torch's shapes
(..., L, E) onto this layout.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastops import _dispatch, _dropin, _ext

FAMILY = "attention"
_NAME = "fastops.scaled_dot_product_attention"


# ---- argument checks and layout (shared by the functional, the aten override and the fakes) ----

class Prepared:
    """The kernel view of one call: q4/k4/v4/mask4 in the [N, H, L, E] layout, the scale, and the
    shape of the output in torch's layout. `why_torch` is set when the call cannot be laid out
    this way (then torch runs it as given)."""

    def __init__(self, q4=None, k4=None, v4=None, mask4=None, scale=0.0, out_shape=None, why_torch=None):
        self.q4, self.k4, self.v4, self.mask4 = q4, k4, v4, mask4
        self.scale, self.out_shape, self.why_torch = scale, out_shape, why_torch


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(f"{_NAME}: {msg}")


def check_inputs(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> None:
    """Raises what torch raises (RuntimeError; TypeError for non-tensors) naming the argument.
    Messages are only formatted on failure: this runs on every call."""
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_NAME}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            _require(False, f"{name} must have at least 2 dims (..., len, head_dim), got shape {list(t.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        _require(False, f"query, key and value must have the same dtype, got query {q.dtype}, key {k.dtype}, "
                 f"value {v.dtype}")
    if not q.device == k.device == v.device:
        _require(False, f"query, key and value must be on one device, got {q.device}, {k.device}, {v.device}")
    if not q.is_floating_point():
        _require(False, f"query must be a floating-point tensor, got {q.dtype}")
    if not q.dim() == k.dim() == v.dim():
        _require(False, f"query, key and value must have the same number of dims, got {q.dim()}, {k.dim()}, "
                 f"{v.dim()}")
    if k.shape[-1] != q.shape[-1]:
        _require(False, f"key's head dim (last) must equal query's {q.shape[-1]}, got key shape {list(k.shape)}")
    if v.shape[-2] != k.shape[-2]:
        _require(False, f"value's length (dim -2) must equal key's {k.shape[-2]}, got value shape {list(v.shape)}")
    if k.shape[:-2] != v.shape[:-2]:
        _require(False, f"key and value must have the same batch dims, got {list(k.shape[:-2])} and "
                 f"{list(v.shape[:-2])}")
    if enable_gqa and q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
        if not (k.shape[-3] > 0 and q.shape[-3] % k.shape[-3] == 0):
            _require(False, f"with enable_gqa, query heads (dim -3) must be a multiple of key/value heads, got "
                     f"{q.shape[-3]} and {k.shape[-3]}")
    if attn_mask is not None:
        _check_mask(q, k, attn_mask, is_causal)
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p <= 1.0):
        _require(False, f"dropout_p must be in [0, 1], got {dropout_p!r}")
    if scale is not None and not math.isfinite(scale):
        _require(False, f"scale must be finite or None, got {scale!r}")


def _check_mask(q, k, attn_mask, is_causal) -> None:
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"{_NAME}: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
    _require(attn_mask.dtype == torch.bool or attn_mask.dtype == q.dtype,
             f"attn_mask must be bool or have query's dtype {q.dtype}, got {attn_mask.dtype}")
    _require(attn_mask.device == q.device, f"attn_mask must be on {q.device}, got {attn_mask.device}")
    _require(not is_causal, "attn_mask must be None when is_causal=True (as torch)")
    target = (*q.shape[:-2], q.shape[-2], k.shape[-2])
    try:
        ok = torch.broadcast_shapes(attn_mask.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    _require(ok, f"attn_mask of shape {list(attn_mask.shape)} does not broadcast to (..., L, S) = {list(target)}")


def prepare(q, k, v, attn_mask, is_causal, scale, enable_gqa) -> Prepared:
    """Views the (checked) arguments in the kernel layout; no copies unless a last dim is strided."""
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    if q.dim() == 2:
        q4, k4, v4 = (t.unsqueeze(0).unsqueeze(0) for t in (q, k, v))
    else:
        if q.shape[:-3] != k.shape[:-3]:
            return Prepared(why_torch=f"query and key batch dims {list(q.shape[:-3])} and {list(k.shape[:-3])} "
                                      "differ (broadcast batch dims)")
        if q.shape[-3] != k.shape[-3] and not enable_gqa:
            return Prepared(why_torch="query and key head counts differ without enable_gqa (broadcast)")
        N = math.prod(q.shape[:-3])
        q4 = q.reshape(N, q.shape[-3], L, E)
        k4 = k.reshape(N, k.shape[-3], S, E)
        v4 = v.reshape(N, v.shape[-3], S, Ev)
    q4, k4, v4 = (t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous() for t in (q4, k4, v4))
    mask4 = None
    if attn_mask is not None:
        mask4 = attn_mask.expand(*q.shape[:-2], L, S).reshape(q4.shape[0], q4.shape[1], L, S)
    return Prepared(q4, k4, v4, mask4, scale, (*q.shape[:-1], Ev))


def _check_kernel_args(q, k, v, attn_mask) -> None:
    if not (q.dim() == 4 and k.dim() == 4 and v.dim() == 4):
        _require(False, "kernel inputs must be 4-D [N, H, L, E]")
    if not (k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0):
        _require(False, f"query heads {q.shape[1]} must be a multiple of key heads {k.shape[1]}")
    if attn_mask is not None and attn_mask.shape != (q.shape[0], q.shape[1], q.shape[2], k.shape[2]):
        _require(False, f"attn_mask must be expanded to [N, H, L, S], got {list(attn_mask.shape)}")


def lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# ---- kernels -----------------------------------------------------------------------------------

def _forward_c(q, k, v, mask, is_causal, scale, dropout_p, seed):
    return _ext.C.attention_forward(q, k, v, mask, is_causal, scale, dropout_p, seed)


def _backward_c(grad, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, need_mask_grad):
    if grad.numel() == 0:  # an expanded empty grad keeps its 0 strides through .contiguous()
        grad = grad.new_zeros(grad.shape)
    grad = grad if grad.shape[-1] <= 1 or grad.stride(-1) == 1 else grad.contiguous()
    return _ext.C.attention_backward(grad, q, k, v, out, lse.contiguous(), mask, is_causal, scale, dropout_p,
                                     seed, need_mask_grad)


def _forward_triton(q, k, v, mask, is_causal, scale, dropout_p, seed):
    from fastops.triton import attention as tk
    return tk.attention_forward(q, k, v, mask, is_causal, scale, dropout_p, seed)


def _backward_triton(grad, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, need_mask_grad):
    from fastops.triton import attention as tk
    return tk.attention_backward(grad, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed,
                                 need_mask_grad)


# ---- counter-based dropout (csrc/include/fastops/math/dropout.h, mirrored in int64 arithmetic) ----

_U32 = 0xFFFFFFFF


def _fmix32(h):
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _U32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _U32
    return h ^ (h >> 16)


def dropout_threshold(p: float) -> int:
    """floor(p * 2^32) of p rounded to float32, as the kernels compute it."""
    return min(int(float(torch.tensor(p, dtype=torch.float32)) * 4294967296.0), _U32)


def dropout_factor(seed: int, dropout_p: float, shape, device, dtype) -> torch.Tensor:
    """[N, H, L, S] of dtype: 0 where the kernels drop p_ij for this seed, 1 / (1 - dropout_p) where
    they keep it (the bits of element ((n * H + h) * L + i) * S + j, math/dropout.h)."""
    N, H, L, S = shape
    idx = torch.arange(N * H * L * S, dtype=torch.int64, device=device).reshape(N, H, L, S)
    seed_lo, seed_hi = seed & _U32, (seed >> 32) & _U32
    k = _fmix32(seed_lo ^ _fmix32((idx >> 32) ^ seed_hi))
    kept = _fmix32((idx & _U32) ^ k) >= dropout_threshold(dropout_p)
    keep_scale = float(torch.tensor(1.0, dtype=torch.float32) / (1.0 - torch.tensor(dropout_p, dtype=torch.float32)))
    return kept.to(dtype) * keep_scale


def _scores(q, k, mask, is_causal, scale):
    """float32 (float64 for float64 q) scores [N, H, L, S] with masked entries at -inf."""
    acc = lse_dtype(q)
    group = q.shape[1] // k.shape[1]
    kf = k.to(acc).repeat_interleave(group, dim=1)
    s = q.to(acc) @ kf.transpose(-1, -2) * scale
    if is_causal:
        keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.to(acc)
    return s


def _safe_lse(s):
    lse = torch.logsumexp(s, dim=-1)
    return torch.where(lse == float("-inf"), torch.full_like(lse, float("inf")), lse)


def forward_ref(q, k, v, mask, is_causal, scale, dropout_p=0.0, seed=0):
    """The torch kernel: the same math as the fastops kernels, materialising the scores."""
    s = _scores(q, k, mask, is_causal, scale)
    lse = _safe_lse(s)
    group = q.shape[1] // k.shape[1]
    p = torch.exp(s - lse.unsqueeze(-1))
    if dropout_p > 0.0:
        p = p * dropout_factor(seed, dropout_p, s.shape, s.device, s.dtype)
    out = p @ v.to(s.dtype).repeat_interleave(group, dim=1)
    return out.to(q.dtype), lse


def backward_ref(grad, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, need_mask_grad):
    acc = lse_dtype(q)
    N, H, L, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    s = _scores(q, k, mask, is_causal, scale)
    p = torch.exp(s - lse.to(acc).unsqueeze(-1))
    g = grad.to(acc)
    vf = v.to(acc).repeat_interleave(group, dim=1)
    kf = k.to(acc).repeat_interleave(group, dim=1)
    z = dropout_factor(seed, dropout_p, s.shape, s.device, s.dtype) if dropout_p > 0.0 else 1.0
    dv = ((p * z).transpose(-1, -2) @ g).reshape(N, Hkv, group, S, -1).sum(2)
    dp = (g @ vf.transpose(-1, -2)) * z
    delta = (g * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = ds @ kf * scale
    dk = (ds.transpose(-1, -2) @ q.to(acc) * scale).reshape(N, Hkv, group, S, -1).sum(2)
    dmask = ds.to(lse_dtype(q)) if need_mask_grad else ds.new_empty(0)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), dmask


def _supports(q, k, v, mask, is_causal, scale, dropout_p, seed):
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        return "a zero head dim"
    if k.shape[2] == 0:
        return "no keys (S = 0)"
    return None


def _supports_backward(grad, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, need_mask_grad):
    return _supports(q, k, v, mask, is_causal, scale, dropout_p, seed)


# What the CUDA C++ kernels (csrc/cuda/attention.cu) cover: float16 / bfloat16 on tensor cores
# (mma.sync, sm_80+), head dims (max of E and Ev) up to 256. float32 and larger head dims go to
# the Triton kernels (auto tries cuda, then triton).
CUDA_MAX_HEAD_DIM = 256


def _supports_cuda(q, k, v, mask, is_causal, scale, dropout_p, seed):
    why = _supports(q, k, v, mask, is_causal, scale, dropout_p, seed)
    if why is not None:
        return why
    if q.dtype == torch.float32:
        return "float32: the CUDA kernels run float16/bfloat16 on tensor cores (Triton covers float32)"
    d = max(q.shape[-1], v.shape[-1])
    if d > CUDA_MAX_HEAD_DIM:
        return f"head dim {d} > {CUDA_MAX_HEAD_DIM}, the CUDA kernels' largest"
    return None


def _supports_cuda_backward(grad, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, need_mask_grad):
    return _supports_cuda(q, k, v, mask, is_causal, scale, dropout_p, seed)


# Query elements (N * H * L * E) below which `auto` calls torch on the CPU: fastops' Python dispatch
# (~20 us) outweighs the kernel there. Measured on the 2-core machine of README.md (q = k = v,
# E = 64: torch ahead at 1x1x64x64, fastops ahead from 1x2x128x64 in bfloat16 and 1x4x128x64 in
# float32); `python -m fastops.bench --ops attention` prints fresh ones.
CROSSOVER = {"cpu": 16384}

_dispatch.register_op("sdpa_forward", FAMILY, {
    "cuda": _forward_c, "triton": _forward_triton, "cpu": _forward_c, "torch": forward_ref,
}, supports={"cuda": _supports_cuda, "triton": _supports, "cpu": _supports}, crossover=CROSSOVER)
_dispatch.register_op("sdpa_backward", FAMILY, {
    "cuda": _backward_c, "triton": _backward_triton, "cpu": _backward_c, "torch": backward_ref,
}, supports={"cuda": _supports_cuda_backward, "triton": _supports_backward, "cpu": _supports_backward},
    crossover=CROSSOVER)


# ---- custom ops --------------------------------------------------------------------------------

@torch.library.custom_op("fastops::sdpa_forward", mutates_args=())
def sdpa_forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                    is_causal: bool, scale: float, dropout_p: float, seed: int, backend: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    _check_kernel_args(q, k, v, attn_mask)
    if not 0.0 <= dropout_p < 1.0:
        _require(False, f"dropout_p must be in [0, 1) here, got {dropout_p}")
    out, lse = _dispatch.run_op("sdpa_forward", backend, q, k, v, attn_mask, is_causal, scale, dropout_p, seed)
    return out, lse


@sdpa_forward_op.register_fake
def _sdpa_forward_fake(q, k, v, attn_mask, is_causal, scale, dropout_p, seed, backend):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: "kernel inputs must be 4-D")
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "query heads must be a multiple of key heads")
    torch._check(k.shape[-1] == q.shape[-1] and v.shape[2] == k.shape[2], lambda: "q/k/v shapes mismatch")
    N, H, L, _ = q.shape
    out = q.new_empty((N, H, L, v.shape[-1]))
    return out, q.new_empty((N, H, L), dtype=lse_dtype(q))


@torch.library.custom_op("fastops::sdpa_backward", mutates_args=())
def sdpa_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     lse: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool, scale: float,
                     dropout_p: float, seed: int, need_mask_grad: bool, backend: str
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_kernel_args(q, k, v, attn_mask)
    if grad.shape != out.shape:
        _require(False, f"grad_out must have out's shape {list(out.shape)}, got {list(grad.shape)}")
    dq, dk, dv, dmask = _dispatch.run_op("sdpa_backward", backend, grad, q, k, v, out, lse, attn_mask, is_causal, scale,
                            dropout_p, seed, need_mask_grad)
    return dq, dk, dv, dmask


@sdpa_backward_op.register_fake
def _sdpa_backward_fake(grad, q, k, v, out, lse, attn_mask, is_causal, scale, dropout_p, seed, need_mask_grad,
                        backend):
    torch._check(grad.shape == out.shape, lambda: "grad_out must have out's shape")
    N, H, L, _ = q.shape
    dmask_shape = (N, H, L, k.shape[2]) if need_mask_grad else (0,)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            q.new_empty(dmask_shape, dtype=lse_dtype(q)))


def _forward_setup(ctx, inputs, output):
    q, k, v, mask, ctx.is_causal, ctx.scale, ctx.dropout_p, ctx.seed, ctx.backend = inputs
    out, lse = output
    ctx.need_mask_grad = mask is not None and mask.dtype != torch.bool and ctx.needs_input_grad[3]
    ctx.save_for_backward(q, k, v, out, lse, mask)


def _forward_bwd(ctx, grad, _grad_lse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    dq, dk, dv, dmask = sdpa_backward_op(grad, q, k, v, out, lse, mask, ctx.is_causal, ctx.scale,
                                         ctx.dropout_p, ctx.seed, ctx.need_mask_grad, ctx.backend)
    dmask = dmask.to(mask.dtype) if ctx.need_mask_grad else None
    return dq, dk, dv, dmask, None, None, None, None, None


sdpa_forward_op.register_autograd(_forward_bwd, setup_context=_forward_setup)


def new_seed() -> int:
    """A 63-bit dropout seed drawn from torch's default generator (torch.manual_seed governs it)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


# ---- the functional entry point (fastops.functional.scaled_dot_product_attention) ---------------

def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if _dispatch.small_cpu_call("sdpa_forward", query):  # below the measured crossover: torch as is
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa)
    check_inputs(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    def torch_sdpa():
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa)

    if torch.compiler.is_compiling() and dropout_p > 0.0:
        return torch_sdpa()  # the seed would be drawn outside the graph: torch's own dropout
    if dropout_p >= 1.0:
        _dispatch.fallback("sdpa_forward", query, f"dropout_p={dropout_p} drops everything")
        return torch_sdpa()
    prep = prepare(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    if prep.why_torch is not None:
        _dispatch.fallback("sdpa_forward", query, prep.why_torch)
        return torch_sdpa()
    seed = new_seed() if dropout_p > 0.0 else 0
    args = (prep.q4, prep.k4, prep.v4, prep.mask4, bool(is_causal), prep.scale, float(dropout_p), seed)
    if torch.compiler.is_compiling():
        return sdpa_forward_op(*args, "auto")[0].reshape(prep.out_shape)
    choice = _dispatch.select("sdpa_forward", *args)
    if choice.kernel.backend == "torch" and query.dtype != torch.float64 and dropout_p == 0.0:
        return torch_sdpa()
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, attn_mask))
    if not needs_graph:
        out = choice.kernel.fn(*args)[0]
    else:
        # a torch choice re-selects inside the op, so explain() keeps the fallback's reason
        name = "auto" if choice.kernel.backend == "torch" else _dispatch.chosen_name(choice)
        out = sdpa_forward_op(*args, name)[0]
    return out.reshape(prep.out_shape)


# ---- aten overrides for fastops.enable() --------------------------------------------------------

def _aten_sdpa(original, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
               enable_gqa=False):
    """torch's SDPA op is composite: overriding it above autograd (and below it for inference mode)
    routes every torch backend choice (flash, efficient, cuDNN, math; CPU and CUDA) through
    fastops' own op with its own autograd. Fallbacks re-enter the aten op and reach torch."""
    return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                enable_gqa=enable_gqa)


_dropin.register_override(FAMILY, "aten::scaled_dot_product_attention", _aten_sdpa, composite=True,
                          keys=("AutogradCPU", "AutogradCUDA", "CPU", "CUDA"))
