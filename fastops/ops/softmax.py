"""Softmax as custom ops: fastops::softmax and fastops::softmax_backward, with their kernels.

    softmax(x, dim, backend) -> y          x: any shape, float32/float16/bfloat16 (float64 via torch)
    softmax_backward(grad, y, dim, backend) -> grad_x = y * (grad - sum(grad * y, dim))

Kernels see x as a contiguous [outer, dim, inner] block (non-contiguous inputs are copied once),
accumulate in float32 and return a contiguous tensor of x's dtype, as torch does. `backend` is a
name from fastops.BACKENDS (or "auto:<name>", auto's choice already made): the eager wrapper
passes the one it selected, compiled graphs pass "auto" and the choice is made when the graph
runs; backward runs on the backend the forward was given.
"""
from __future__ import annotations

import math

import torch

from fastops import _dispatch, _dropin, _ext

FAMILY = "softmax"


# ---- argument checks shared by the eager wrapper, the op and the fake ---------------------------

def wrap_dim(x: torch.Tensor, dim: int) -> int:
    """dim in [0, max(x.ndim, 1)); IndexError with torch's wording otherwise."""
    nd = x.dim() or 1
    if not -nd <= dim < nd:
        raise IndexError(f"fastops.softmax: dim out of range (expected to be in range of "
                         f"[{-nd}, {nd - 1}], but got {dim})")
    return dim % nd


def check_input(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fastops.softmax: {name} must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise NotImplementedError(f"fastops.softmax: {name} must be a floating-point tensor "
                                  f"(float32, float16, bfloat16 or float64), got {x.dtype}")


def check_backward_inputs(grad: torch.Tensor, y: torch.Tensor) -> None:
    if grad.device != y.device:
        raise RuntimeError(f"fastops.softmax_backward: grad_output and output must be on the same "
                           f"device, got {grad.device} and {y.device}")
    if grad.dtype != y.dtype:
        raise RuntimeError(f"fastops.softmax_backward: grad_output must have the dtype of output "
                           f"({y.dtype}), got {grad.dtype}")
    if grad.shape != y.shape:
        raise RuntimeError(f"fastops.softmax_backward: grad_output must have the shape of output "
                           f"{list(y.shape)}, got {list(grad.shape)}")


def split3(shape, dim: int) -> tuple[int, int, int]:
    """(outer, dim, inner) of a contiguous tensor of `shape` around `dim` (wrapped)."""
    if len(shape) == 0:
        return 1, 1, 1
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


# ---- kernels -----------------------------------------------------------------------------------

def _forward_c(x, dim):
    return _ext.C.softmax_forward(x.contiguous(), dim)


def _backward_c(grad, y, dim):
    return _ext.C.softmax_backward(grad.contiguous(), y.contiguous(), dim)


def _forward_triton(x, dim):
    from fastops.triton import softmax as tk
    x = x.contiguous()
    return tk.softmax_forward(x, *split3(x.shape, dim))


def _backward_triton(grad, y, dim):
    from fastops.triton import softmax as tk
    y = y.contiguous()
    return tk.softmax_backward(grad.contiguous(), y, *split3(y.shape, dim))


def _forward_torch(x, dim):
    return torch._softmax(x, dim, False)


def _backward_torch(grad, y, dim):
    return torch._softmax_backward_data(grad, y, dim, y.dtype)


# Crossovers (elements) below which `auto` calls torch, from `python -m fastops.bench --ops softmax`
# on the development machine (2-core AMD EPYC, AVX-512; 2026-11-23, see README): float32 forward
# reaches torch's speed at about 2^20 elements (1.0-1.1x above, 0.3-0.9x below, where the ~4 us
# of Python dispatch dominates); bfloat16 forward stayed at 0.6-0.8x of torch at every size.
# Backward follows the forward's choice. A GPU run of the benchmark should add "cuda" entries.
CROSSOVER = {"cpu": 1 << 20, "cpu:bfloat16": _dispatch.NEVER}

_dispatch.register_op("softmax_forward", FAMILY, {
    "cuda": _forward_c, "triton": _forward_triton, "cpu": _forward_c, "torch": _forward_torch,
}, crossover=CROSSOVER)
_dispatch.register_op("softmax_backward", FAMILY, {
    "cuda": _backward_c, "triton": _backward_triton, "cpu": _backward_c, "torch": _backward_torch,
}, crossover=CROSSOVER)


# ---- the eager small-call path (fastops.functional.softmax under plain auto) ----------------------

# Elements per dtype up to which fastops' cpu kernel beats torch's on a single contiguous call
# with no graph to record, both called from C++ (development machine, 2026-11-24, CPU time per
# call, medians of 15): float32 1.10-1.32x torch's Python call up to 1x4096 where at::softmax
# through the same path gives 1.07-1.24x; float16 and bfloat16 only up to 1x256 (0.6-0.9x above).
SMALL_KERNEL_UPTO = {"float32": 4096, "float16": 256, "bfloat16": 256}


def _no_small_call(x, dim=-1):
    return None


if _ext.C is not None:
    small_call = _ext.C.softmax_small
    _dispatch.register_small_call_path("softmax_forward", _ext.C.set_softmax_small_limits,
                                       _ext.C.softmax_small_calls, SMALL_KERNEL_UPTO)

    @torch.compiler.substitute_in_graph(small_call, skip_signature_check=True)
    def _small_call_traced(x, dim=-1):
        return None  # a traced graph takes the custom op (the choice is made when the graph runs)
else:
    small_call = _no_small_call


# ---- custom ops --------------------------------------------------------------------------------

@torch.library.custom_op("fastops::softmax", mutates_args=())
def softmax_op(x: torch.Tensor, dim: int, backend: str) -> torch.Tensor:
    check_input(x)
    return _dispatch.run_op("softmax_forward", backend, x, wrap_dim(x, dim))


@softmax_op.register_fake
def _softmax_fake(x, dim, backend):
    check_input(x)
    wrap_dim(x, dim)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastops::softmax_backward", mutates_args=())
def softmax_backward_op(grad: torch.Tensor, y: torch.Tensor, dim: int, backend: str) -> torch.Tensor:
    check_backward_inputs(grad, y)
    return _dispatch.run_op("softmax_backward", backend, grad, y, wrap_dim(y, dim))


@softmax_backward_op.register_fake
def _softmax_backward_fake(grad, y, dim, backend):
    check_backward_inputs(grad, y)
    wrap_dim(y, dim)
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _softmax_setup(ctx, inputs, output):
    _, ctx.dim, ctx.backend = inputs
    ctx.save_for_backward(output)


def _softmax_bwd(ctx, grad):
    (y,) = ctx.saved_tensors
    return softmax_backward_op(grad, y, ctx.dim, ctx.backend), None, None


softmax_op.register_autograd(_softmax_bwd, setup_context=_softmax_setup)


def _softmax_backward_setup(ctx, inputs, output):
    grad, y, ctx.dim, ctx.backend = inputs
    ctx.save_for_backward(grad, y)


def _softmax_backward_bwd(ctx, gg):
    """Double backward of dx = y * (g - sum(g * y)): d/dg = y * (gg - sum(gg * y)) (the same map),
    d/dy = gg * (g - sum(g * y)) - g * sum(gg * y)."""
    grad, y = ctx.saved_tensors
    d_grad = softmax_backward_op(gg, y, ctx.dim, ctx.backend)
    d_y = gg * (grad - (grad * y).sum(ctx.dim, keepdim=True)) - grad * (gg * y).sum(ctx.dim, keepdim=True)
    return d_grad, d_y, None, None


softmax_backward_op.register_autograd(_softmax_backward_bwd, setup_context=_softmax_backward_setup)


# ---- aten overrides for fastops.enable() --------------------------------------------------------

def _aten_softmax(original, x, dim, half_to_float):
    if half_to_float:
        _dispatch.fallback("softmax_forward", x, "half_to_float=True (float16 in, float32 out) is torch's")
        return original(x, dim, half_to_float)
    choice = _dispatch.select("softmax_forward", x, dim)
    if choice.kernel.backend == "torch":
        return original(x, dim, half_to_float)
    return choice.kernel.fn(x, wrap_dim(x, dim))


def _aten_softmax_backward(original, grad, y, dim, input_dtype):
    if input_dtype != y.dtype:
        _dispatch.fallback("softmax_backward", grad, f"input_dtype {input_dtype} differs from the output's")
        return original(grad, y, dim, input_dtype)
    choice = _dispatch.select("softmax_backward", grad, y, dim)
    if choice.kernel.backend == "torch":
        return original(grad, y, dim, input_dtype)
    return choice.kernel.fn(grad, y, wrap_dim(y, dim))


_dropin.register_override(FAMILY, "aten::_softmax", _aten_softmax)
_dropin.register_override(FAMILY, "aten::_softmax_backward_data", _aten_softmax_backward)
