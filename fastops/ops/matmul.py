"""Matmul and Linear as custom ops: fastops::matmul and fastops::linear, with their kernels.

    matmul(a [..., m, k], b [..., k, n], backend) -> c [broadcast(...), m, n]     (torch.matmul on >= 2-D)
    linear(x [..., k], weight [n, k], bias [n] | None, activation, keep_preact, backend)
        -> (y = act(x weight^T + bias) [..., n], z = the pre-activation, or an empty tensor)

Every backend implements one kernel, gemm(a, b, bias, act) -> act(a @ b + bias) for 2-D/3-D
operands whose batch is equal or 1 (read through their strides: a transposed view such as
weight.t() is never copied), float32 accumulation, the output in the inputs' dtype:
cpu = fastops._C.gemm (csrc/cpu/gemm.cpp), triton = fastops/triton/matmul.py, torch = the
reference; cuda = fastops._C.gemm on CUDA tensors (csrc/cuda/matmul.cu, TF32 as torch's allow_tf32 says).
Batch dims of matmul broadcast as torch's; a 2-D b folds a's batch into its rows.

Backward: dA = dC B^T and dB = A^T dC through fastops::matmul again, summed over broadcast
batch dims; for linear dz = dy * act'(z) (relu: from the saved output), dx = dz W,
dW = dz^T x over all rows at once, dbias = column sum of dz. The activation is fused into the
GEMM's epilogue whenever the pre-activation is not needed (inference, none/relu); for
gelu/gelu_tanh/silu with grad the GEMM writes z (bias fused) and y = act(z) follows, z saved.
Every output element is one fixed-order float32 sum: forward and backward are deterministic.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastops import _dispatch, _dropin, _ext

FAMILY = "matmul"
ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")
_CODES = {None: 0, "none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
_NAMES = ("none", "relu", "gelu", "gelu_tanh", "silu")
_NEEDS_PREACT = (2, 3, 4)  # activations whose derivative needs z (relu's comes from y)


# ---- argument checks (torch's exception types, the argument named) ------------------------------

def activation_code(activation) -> int:
    if activation not in _CODES:
        raise ValueError(f"fastops.linear: activation must be one of None, 'relu', 'gelu', 'gelu_tanh', "
                         f"'silu', got {activation!r}")
    return _CODES[activation]


def check_matmul(a, b, name: str = "fastops.matmul") -> None:
    for arg, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a Tensor, got {type(t).__name__}")
    if a.dim() < 1 or b.dim() < 1:
        raise RuntimeError(f"{name}: both arguments to matmul need to be at least 1D, but they are "
                           f"{a.dim()}D and {b.dim()}D")
    if a.dtype != b.dtype:
        raise RuntimeError(f"{name}: expected a and b to have the same dtype, but got: {a.dtype} != {b.dtype}")
    if a.device != b.device:
        raise RuntimeError(f"{name}: expected a and b to be on the same device, but got {a.device} and {b.device}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.dim() >= 2 else b.shape[0]
    if ka != kb:
        raise RuntimeError(f"{name}: a and b shapes cannot be multiplied ({_fmt(a.shape)} and {_fmt(b.shape)}): "
                           f"a's last dim ({ka}) must equal b's {'second to last' if b.dim() >= 2 else 'only'} "
                           f"dim ({kb})")
    if a.dim() > 2 and b.dim() > 2:
        try:
            torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError:
            raise RuntimeError(f"{name}: batch dims of a {list(a.shape[:-2])} and b {list(b.shape[:-2])} "
                               f"do not broadcast") from None


def check_linear(x, weight, bias, name: str = "fastops.linear") -> None:
    for arg, t in (("input", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a Tensor, got {type(t).__name__}")
    if x.dim() < 1:
        raise RuntimeError(f"{name}: input must have at least 1 dim, got a 0-D tensor")
    if weight.dim() != 2:
        raise RuntimeError(f"{name}: weight must be 2-D [out_features, in_features], got shape {list(weight.shape)}")
    if x.dtype != weight.dtype:
        raise RuntimeError(f"{name}: expected input and weight to have the same dtype, but got: "
                           f"{x.dtype} != {weight.dtype}")
    if x.device != weight.device:
        raise RuntimeError(f"{name}: expected input and weight on the same device, got {x.device} and {weight.device}")
    if x.shape[-1] != weight.shape[1]:
        raise RuntimeError(f"{name}: input and weight shapes cannot be multiplied ({_fmt(x.shape)} and "
                           f"{_fmt(weight.shape)}^T): input's last dim ({x.shape[-1]}) must equal in_features "
                           f"({weight.shape[1]})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{name}: bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise RuntimeError(f"{name}: bias must have shape [{weight.shape[0]}] (out_features), got "
                               f"{list(bias.shape)}")
        if bias.dtype != x.dtype:
            raise RuntimeError(f"{name}: expected bias to have the input's dtype {x.dtype}, got {bias.dtype}")
        if bias.device != x.device:
            raise RuntimeError(f"{name}: expected bias on {x.device}, got {bias.device}")


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


# ---- kernels: gemm(a, b, bias, act) on 2-D/3-D operands ----------------------------------------

def _gemm_c(a, b, bias, act):
    return _ext.C.gemm(a, b, bias, act)


def _gemm_triton(a, b, bias, act):
    from fastops.triton import matmul as tk
    return tk.gemm(a, b, bias, _NAMES[act])


def activate_torch(z: torch.Tensor, act: int) -> torch.Tensor:
    if act == 1:
        return torch.relu(z)
    if act == 2:
        return torch.nn.functional.gelu(z)
    if act == 3:
        return torch.nn.functional.gelu(z, approximate="tanh")
    if act == 4:
        return torch.nn.functional.silu(z)
    return z


def activation_grad(z: torch.Tensor, act: int) -> torch.Tensor:
    """d act(z) / dz in z's dtype, computed in float32 (csrc/include/fastops/math/activation.h)."""
    zf = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    if act == 1:
        g = (zf > 0).to(zf.dtype)
    elif act == 2:
        g = 0.5 * (1.0 + torch.erf(zf * 0.70710678118654752)) + zf * 0.39894228040143268 * torch.exp(-0.5 * zf * zf)
    elif act == 3:
        k = 0.79788456080286536
        t = torch.tanh(k * (zf + 0.044715 * zf * zf * zf))
        g = 0.5 * (1.0 + t) + 0.5 * zf * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * zf * zf)
    elif act == 4:
        s = torch.sigmoid(zf)
        g = s * (1.0 + zf * (1.0 - s))
    else:
        g = torch.ones_like(zf)
    return g


def _gemm_torch(a, b, bias, act):
    c = torch.matmul(a, b)
    if bias is not None:
        c = c + bias
    return activate_torch(c, act)


# Crossovers (elements of a / x) below which `auto` calls torch on CPU. Measured on the development
# machine (2-core AMD EPYC Zen 4, 2026-11-24; single-thread CPU time, the machine being shared):
# linear-shaped float32 calls reach torch's speed at x = 64 x 4096 or 256 x 1024 (1.09-1.14x; 0.24x
# at 1 x 4096 -> 4096, 0.9x at 128 x 1024), bfloat16 ones only near 1024 x 1024 (0.45-0.8x below:
# packing the transposed weight costs more than torch's whole GEMV-like call). On CPUs with AMX
# (2-core Xeon, 2026-11-25 00:45 UTC, bfloat16, medians of 7 in one process, torch / fastops on AMX
# tiles): 1.24x at 1024^3 and 1.5-1.7x at 32 x 256 x 1024, but 0.58x at 2048 x 256 x 1024, 0.68x at
# 4096 x 1024 x 1024 and 0.86x at 512 x 4096 x 512, so bfloat16 stays on torch's AMX kernels there.
CROSSOVER = {"cpu": 1 << 18, "cpu:bfloat16": _dispatch.NEVER if _dispatch.cpu_has_amx() else 1 << 20}

# cuda and cpu are the same binding: it runs fastops::cuda::gemm (csrc/cuda/matmul.cu) on CUDA tensors.
_KERNELS = {"cuda": _gemm_c, "triton": _gemm_triton, "cpu": _gemm_c, "torch": _gemm_torch}
_dispatch.register_op("matmul", FAMILY, dict(_KERNELS), crossover=CROSSOVER)
_dispatch.register_op("linear", FAMILY, dict(_KERNELS), crossover=CROSSOVER)


# ---- the shape logic shared by every backend ------------------------------------------------------

def rows2d(t: torch.Tensor) -> torch.Tensor:
    """t [..., c] as [rows, c] (a view when the strides allow; any size, zero included)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def matmul_shape(a_shape, b_shape) -> list:
    """torch.matmul's output shape for a, b of >= 2 dims."""
    batch = torch.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    return [*batch, a_shape[-2], b_shape[-1]]


def matmul_with(fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (both >= 2-D, batch dims broadcast) through a gemm kernel `fn` on 2-D/3-D operands."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    out_shape = matmul_shape(a.shape, b.shape)
    if b.dim() == 2:  # rows of every batch item of a against one b: one 2-D GEMM
        return fn(rows2d(a), b, None, 0).view(out_shape)
    batch = out_shape[:-2]
    nb = 1
    for d in batch:
        nb *= d

    def as3(t, rows, cols):
        if t.dim() == 2 or t.shape[:-2].numel() == 1:
            return t.reshape(rows, cols)  # one matrix: broadcast with stride 0 by the kernel
        return t.expand(*batch, rows, cols).reshape(nb, rows, cols)

    c = fn(as3(a, m, k), as3(b, k, n), None, 0)
    return c.reshape(out_shape)


def linear_with(fn, x, weight, bias, act: int, keep_preact: bool):
    """(y, z) of linear through the gemm kernel `fn`: z is the pre-activation when kept."""
    n = weight.shape[0]
    x2 = rows2d(x)
    if keep_preact and act in _NEEDS_PREACT:
        z = fn(x2, weight.t(), bias, 0)
        y = activate_torch(z, act)
        return y.view(*x.shape[:-1], n), z.view(*x.shape[:-1], n)
    y = fn(x2, weight.t(), bias, act)
    return y.view(*x.shape[:-1], n), x.new_empty(0)


# ---- custom ops --------------------------------------------------------------------------------

@torch.library.custom_op("fastops::matmul", mutates_args=())
def matmul_op(a: torch.Tensor, b: torch.Tensor, backend: str) -> torch.Tensor:
    check_matmul(a, b)
    torch._check(a.dim() >= 2 and b.dim() >= 2, lambda: "fastops::matmul takes >= 2-D operands")
    choice = _dispatch.select_for_op("matmul", backend, a, b)
    return matmul_with(choice.kernel.fn, a, b)


@matmul_op.register_fake
def _matmul_fake(a, b, backend):
    check_matmul(a, b)
    torch._check(a.dim() >= 2 and b.dim() >= 2, lambda: "fastops::matmul takes >= 2-D operands")
    return a.new_empty(matmul_shape(a.shape, b.shape))


def _matmul_setup(ctx, inputs, output):
    a, b, ctx.backend = inputs
    ctx.save_for_backward(a, b)


def _matmul_bwd(ctx, grad):
    a, b = ctx.saved_tensors
    da = db = None
    if ctx.needs_input_grad[0]:
        if a.dim() == 2 and b.dim() > 2:  # sum over b's batch inside one GEMM: [m, B n] @ [B n, k]
            m = a.shape[0]
            da = matmul_op(grad.movedim(-2, 0).reshape(m, -1), b.mT.reshape(-1, a.shape[1]), ctx.backend)
        else:
            da = _reduced(matmul_op, grad, b.mT, a.shape, ctx.backend)
    if ctx.needs_input_grad[1]:
        if b.dim() == 2:  # every row of every batch item met the same b: one GEMM over all rows
            db = matmul_op(rows2d(a).mT, rows2d(grad), ctx.backend)
        else:
            db = _reduced(matmul_op, a.mT, grad, b.shape, ctx.backend)
    return da, db, None


def _reduced(op, x, y, shape, backend):
    """x @ y summed to `shape` over broadcast batch dims. With a reduction, low-precision inputs
    are multiplied in float32 and rounded once, after the sum (not once per batch item)."""
    out_shape = matmul_shape(x.shape, y.shape)
    if list(out_shape) == list(shape):
        return op(x, y, backend)
    low = x.dtype in (torch.float16, torch.bfloat16)
    xs, ys = (x.float(), y.float()) if low else (x, y)
    return op(xs, ys, backend).sum_to_size(shape).to(x.dtype)


matmul_op.register_autograd(_matmul_bwd, setup_context=_matmul_setup)


@torch.library.custom_op("fastops::linear", mutates_args=())
def linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: int,
              keep_preact: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_linear(x, weight, bias)
    choice = _dispatch.select_for_op("linear", backend, x, weight, bias)
    return linear_with(choice.kernel.fn, x, weight, bias, activation, keep_preact)


@linear_op.register_fake
def _linear_fake(x, weight, bias, activation, keep_preact, backend):
    check_linear(x, weight, bias)
    shape = (*x.shape[:-1], weight.shape[0])
    z = x.new_empty(shape) if keep_preact and activation in _NEEDS_PREACT else x.new_empty(0)
    return x.new_empty(shape), z


def _linear_setup(ctx, inputs, output):
    x, weight, bias, ctx.act, keep, ctx.backend = inputs
    y, z = output
    ctx.has_bias = bias is not None
    saved = z if ctx.act in _NEEDS_PREACT else (y if ctx.act == 1 else None)
    ctx.save_for_backward(x, weight, saved)


def _fused_act_backward(ctx, grad, saved, want_bias: bool) -> bool:
    """True when the CPU kernel computes (dz, bias grad) in one pass (fastops/linear.h): the cpu
    backend on float32/16/bf16 CPU tensors with an activation, outside torch.compile's tracing."""
    return (ctx.act != 0 and ctx.backend.split(":")[-1] == "cpu" and grad.device.type == "cpu"
            and grad.dtype in (torch.float32, torch.float16, torch.bfloat16) and saved.shape == grad.shape
            and not torch.compiler.is_compiling())


def _linear_bwd(ctx, grad, _grad_z):
    x, weight, saved = ctx.saved_tensors
    n = weight.shape[0]
    want_bias = ctx.has_bias and ctx.needs_input_grad[2]
    db = None
    if ctx.act != 0:
        torch._check(saved.numel() > 0 or grad.numel() == 0,
                     lambda: "fastops.linear: backward of this activation needs keep_preact=True")
    if _fused_act_backward(ctx, grad, saved, want_bias):
        g2, s2 = rows2d(grad), rows2d(saved)
        dz2, db = _ext.C.activation_backward(g2 if g2.stride(-1) == 1 else g2.contiguous(),
                                             s2 if s2.stride(-1) == 1 else s2.contiguous(), ctx.act, want_bias)
        dz = dz2.view(grad.shape)
        db = db if want_bias else None
    elif ctx.act == 0:
        dz = grad
    elif ctx.act == 1:
        dz = grad * (saved > 0).to(grad.dtype)
    else:
        dz = (grad.float() * activation_grad(saved, ctx.act)).to(grad.dtype)
    dz2 = rows2d(dz)
    dx = dw = None
    if ctx.needs_input_grad[0]:
        dx = matmul_op(dz2, weight, ctx.backend).view(x.shape)
    if ctx.needs_input_grad[1]:
        dw = matmul_op(dz2.mT, rows2d(x), ctx.backend)
    if want_bias and db is None:
        db = dz2.sum(0, dtype=torch.float32).to(dz.dtype) if dz.dtype != torch.float64 else dz2.sum(0)
    return dx, dw, db, None, None, None


linear_op.register_autograd(_linear_bwd, setup_context=_linear_setup)


# ---- functional entry points (fastops.functional.matmul / linear) ----------------------------------

def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _dispatch.small_cpu_call("matmul", a) and isinstance(b, torch.Tensor):
        return torch.matmul(a, b)
    check_matmul(a, b)
    a_vec, b_vec = a.dim() == 1, b.dim() == 1  # torch: a vector gains a dim, dropped after
    if a_vec:
        a = a.unsqueeze(0)
    if b_vec:
        b = b.unsqueeze(-1)
    if torch.compiler.is_compiling():
        c = matmul_op(a, b, "auto")
    else:
        choice = _dispatch.select("matmul", a, b)
        if choice.kernel.backend == "torch":
            c = torch.matmul(a, b)
        elif not _needs_grad(a, b):
            c = matmul_with(choice.kernel.fn, a, b)  # no graph to record: skip the op's bookkeeping
        else:
            c = matmul_op(a, b, _dispatch.chosen_name(choice))
    if b_vec:
        c = c.squeeze(-1)
    if a_vec:
        c = c.squeeze(-1 if b_vec else -2)
    return c


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: Optional[str] = None) -> torch.Tensor:
    act = activation_code(activation)
    if _dispatch.small_cpu_call("linear", x) and isinstance(weight, torch.Tensor):
        return activate_torch(torch.nn.functional.linear(x, weight, bias), act)
    check_linear(x, weight, bias)
    keep = _needs_grad(x, weight, bias)
    if torch.compiler.is_compiling():
        return linear_op(x, weight, bias, act, keep, "auto")[0]
    choice = _dispatch.select("linear", x, weight, bias)
    if choice.kernel.backend == "torch":
        return activate_torch(torch.nn.functional.linear(x, weight, bias), act)
    if not keep:
        return linear_with(choice.kernel.fn, x, weight, bias, act, False)[0]
    return linear_op(x, weight, bias, act, keep, _dispatch.chosen_name(choice))[0]


# ---- aten overrides for fastops.enable() -----------------------------------------------------------

def _aten_mm(original, a, b):
    choice = _dispatch.select("matmul", a, b)
    if choice.kernel.backend == "torch" or a.dtype != b.dtype:
        return original(a, b)
    return choice.kernel.fn(a, b, None, 0)


def _aten_bmm(original, a, b):
    choice = _dispatch.select("matmul", a, b)
    if choice.kernel.backend == "torch" or a.dtype != b.dtype:
        return original(a, b)
    return choice.kernel.fn(a, b, None, 0)


def _aten_addmm(original, bias, a, b, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        _dispatch.fallback("linear", a, f"addmm with beta={beta}, alpha={alpha} (only 1, 1 is fused)")
        return original(bias, a, b, beta=beta, alpha=alpha)
    n = b.shape[-1]
    if not (bias.dim() == 1 or (bias.dim() == 2 and bias.shape[0] == 1)) or bias.shape[-1] != n \
            or bias.dtype != a.dtype or a.dtype != b.dtype:
        _dispatch.fallback("linear", a, f"addmm input of shape {list(bias.shape)} is not a [{n}] bias row")
        return original(bias, a, b, beta=beta, alpha=alpha)
    choice = _dispatch.select("linear", a, b, bias)
    if choice.kernel.backend == "torch":
        return original(bias, a, b, beta=beta, alpha=alpha)
    return choice.kernel.fn(a, b, bias.reshape(n), 0)


_dropin.register_override(FAMILY, "aten::mm", _aten_mm)
_dropin.register_override(FAMILY, "aten::bmm", _aten_bmm)
_dropin.register_override(FAMILY, "aten::addmm", _aten_addmm)
