"""fastops ops with torch's signatures: fastops.functional.softmax, ...

Each function checks its arguments, picks a backend (see fastops.explain()) and calls the
fastops custom op, which is autograd-aware and traceable by torch.compile. Two shortcuts keep
the per-call cost low in eager mode: where `auto` picks torch (no kernel covers the case, or
the shape is below the measured crossover) the call goes straight to torch, and where no
autograd graph is being recorded the kernel is called without the custom op around it.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastops import _dispatch
from fastops.ops import softmax as _softmax
from fastops.ops import attention as _attention
from fastops.ops import matmul as _matmul

__all__ = ["softmax", "scaled_dot_product_attention", "matmul", "linear"]


def softmax(x: torch.Tensor, dim: int = -1, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """softmax(x, dim) = exp(x - max) / sum(exp(x - max)) along `dim`, as torch.softmax.

    x: any shape (0-d and zero-size included), float32/float16/bfloat16 on the fastops kernels,
    float64 through torch. dtype: cast x to this dtype first (as torch's `dtype=`).
    Returns a contiguous tensor of x's shape and dtype; sums accumulate in float32.
    Backward: grad_x = y * (grad - sum(grad * y, dim)), from the saved output y.
    """
    if dtype is None and _dispatch.small_cpu_call("softmax_forward", x):
        return torch.softmax(x, dim)
    _softmax.check_input(x)
    if dtype is not None:
        x = x.to(dtype)
    dim = _softmax.wrap_dim(x, dim)
    if torch.compiler.is_compiling():
        return _softmax.softmax_op(x, dim, "auto")
    choice = _dispatch.select("softmax_forward", x, dim)
    if choice.kernel.backend == "torch":
        return torch.softmax(x, dim)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return choice.kernel.fn(x, dim)  # no graph to record: skip the custom op's bookkeeping
    return _softmax.softmax_op(x, dim, _dispatch.chosen_name(choice))


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """softmax(query key^T * scale + mask) value, as torch.nn.functional.scaled_dot_product_attention.

    query (..., Hq, L, E), key (..., Hkv, S, E), value (..., Hkv, S, Ev) -> (..., Hq, L, Ev);
    any rank >= 2 (2-D and 3-D: no head dim). float32/float16/bfloat16 on the fastops kernels
    (float32 math), float64 through the torch reference (same custom op, same autograd).
    attn_mask: bool (True = attend) or additive of query's dtype, broadcastable to (..., L, S);
    an additive mask that requires grad gets its gradient. is_causal: key j <= query i,
    top-left aligned (L != S as torch). scale: default 1/sqrt(E). enable_gqa: Hq % Hkv == 0,
    query head h reads kv head h // (Hq / Hkv). A query row with every key masked gives 0
    (and zero gradients), as torch. 0 < dropout_p < 1: counter-based dropout inside the kernels
    (the same bits on every backend and in backward; not torch's RNG stream). dropout_p == 1 and
    batch dims that broadcast run on torch (see fastops.explain()). Memory beyond inputs and
    outputs: O(L) per (batch, head).
    """
    return _attention.sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with torch.matmul's semantics: 1-D operands gain and lose a dim, batch dims broadcast.

    a (..., m, k), b (..., k, n) -> (broadcast(...), m, n); float32/float16/bfloat16 on the fastops
    kernels (float32 accumulation, output in the inputs' dtype), float64 through torch. Operands
    are read through their strides (transposed views are not copied). Backward: dA = dC B^T,
    dB = A^T dC, summed over broadcast batch dims; deterministic.
    """
    return _matmul.matmul(a, b)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: Optional[str] = None) -> torch.Tensor:
    """act(x weight^T + bias), as torch.nn.functional.linear followed by the activation.

    x (..., in_features), weight (out_features, in_features), bias (out_features) or None ->
    (..., out_features). activation: None, "relu", "gelu", "gelu_tanh" or "silu", computed in the
    GEMM's epilogue (float32) with the bias. Backward saves the output (relu) or the
    pre-activation (gelu, gelu_tanh, silu); dbias is the column sum of the output gradient.
    """
    return _matmul.linear(x, weight, bias, activation)
