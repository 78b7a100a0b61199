"""Pointwise activations and their derivatives for Triton epilogues (GEMM, conv).

Mirrors csrc/include/fastops/math/activation.h formula for formula, in float32:

    0 none        x                         1
    1 relu        max(x, 0)                 x > 0
    2 gelu        x * Phi(x) (erf form)     Phi(x) + x * phi(x)
    3 gelu_tanh   0.5 x (1 + tanh(u))       0.5 (1 + t) + 0.5 x (1 - t^2) u'(x),  u = k (x + c x^3)
    4 silu        x * sigmoid(x)            s (1 + x (1 - s))

`ACT` is a tl.constexpr, so each kernel variant compiles only its own branch. tanh is written
through exp (no libdevice, which the interpreter lacks): tanh(u) = 2 sigmoid(2u) - 1.
"""
from __future__ import annotations

import triton
import triton.language as tl

# The codes of fastops::Activation (csrc/include/fastops/gemm.h) by name; None means "none".
CODES = {None: 0, "none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
NAMES = ("none", "relu", "gelu", "gelu_tanh", "silu")

# Constants are literals inside the jit functions: a kernel may only read constexpr globals,
# and the interpreter mishandles constexpr * tensor. 0.7071... = 1/sqrt(2),
# 0.3989... = 1/sqrt(2 pi), 0.7978... = sqrt(2/pi), 0.044715 the tanh-form cubic term.


def code(activation) -> int:
    """The integer code of an activation name (None, "relu", "gelu", "gelu_tanh", "silu");
    ValueError naming the valid ones otherwise."""
    if activation not in CODES:
        raise ValueError(f"fastops: activation must be one of None, {', '.join(map(repr, NAMES[1:]))}, "
                         f"got {activation!r}")
    return CODES[activation]


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def activate(x, ACT: tl.constexpr):
    """act(x) for float32 x."""
    if ACT == 1:
        return tl.where(x > 0.0, x, 0.0)
    elif ACT == 2:
        return 0.5 * x * (1.0 + tl.erf(x * 0.70710678118654752))
    elif ACT == 3:
        return 0.5 * x * (1.0 + _tanh((x + x * x * x * 0.044715) * 0.79788456080286536))
    elif ACT == 4:
        return x * _sigmoid(x)
    else:
        return x


@triton.jit
def activate_grad(x, ACT: tl.constexpr):
    """d act(x) / dx at the float32 pre-activation x."""
    if ACT == 1:
        return tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == 2:
        pdf = tl.exp(-0.5 * x * x) * 0.39894228040143268
        return 0.5 * (1.0 + tl.erf(x * 0.70710678118654752)) + x * pdf
    elif ACT == 3:
        t = _tanh((x + x * x * x * 0.044715) * 0.79788456080286536)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.79788456080286536 * (1.0 + x * x * 0.134145)
    elif ACT == 4:
        s = _sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    else:
        return x * 0.0 + 1.0


def activate_ref(x, activation):
    """torch reference of activate() (float computation in x's dtype)."""
    import torch
    c = code(activation)
    if c == 1:
        return torch.relu(x)
    if c == 2:
        return torch.nn.functional.gelu(x)
    if c == 3:
        return torch.nn.functional.gelu(x, approximate="tanh")
    if c == 4:
        return torch.nn.functional.silu(x)
    return x
