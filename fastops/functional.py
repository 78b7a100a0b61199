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
from fastops.ops.softmax import small_call as _softmax_small_call
from fastops.ops import attention as _attention
from fastops.ops import conv as _conv
from fastops.ops import rnn as _rnn
from fastops.ops import matmul as _matmul

__all__ = ["softmax", "scaled_dot_product_attention", "conv2d", "rnn_tanh_cell", "rnn_relu_cell", "lstm_cell", "gru_cell", "matmul", "linear"]



def softmax(x: torch.Tensor, dim: int = -1, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """softmax(x, dim) = exp(x - max) / sum(exp(x - max)) along `dim`, as torch.softmax.

    x: any shape (0-d and zero-size included), float32/float16/bfloat16 on the fastops kernels,
    float64 through torch. dtype: cast x to this dtype first (as torch's `dtype=`).
    Returns a contiguous tensor of x's shape and dtype; sums accumulate in float32.
    Backward: grad_x = y * (grad - sum(grad * y, dim)), from the saved output y.
    """
    if dtype is None:
        y = _softmax_small_call(x, dim)  # plain-auto CPU calls below the crossover, decided in C++
        if y is not None:
            return y
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


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0,
           dilation=1, groups: int = 1, activation: Optional[str] = None) -> torch.Tensor:
    """act(conv2d(input, weight) + bias), as torch.nn.functional.conv2d plus a fused activation.

    input [N, C, H, W] or unbatched [C, H, W]; weight [O, C / groups, KH, KW]; bias [O] or None.
    stride, dilation: int or pair; padding: int, pair, "valid" or "same" (stride 1 only; an odd
    total pads the right/bottom one more, as torch). activation: None, "relu" or "silu", applied
    after the bias inside the kernel. Returns [N, O, HO, WO] (or [O, HO, WO]) of input's dtype,
    channels_last when input or weight is, else contiguous (as torch). float32/float16/bfloat16 on
    the fastops kernels with float32 accumulation, float64 through torch. Backward gives the
    input, weight and bias gradients (deterministic: fixed reduction order, no atomics).
    """
    return _conv.conv2d(input, weight, bias, stride, padding, dilation, groups, activation)
# ---- RNN cells (torch._VF semantics; fastops/ops/rnn.py) ----------------------------------------
# input [B, I] or unbatched [I]; hx (and cx) [B, H] or [H]; w_ih [G*H, I], w_hh [G*H, H],
# b_ih/b_hh [G*H] or None; G = 1 (tanh/relu), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n). One dtype
# for all (float32/float16/bfloat16 on the kernels, float32 gate math and cell state; float64
# through torch). Gradients reach every tensor argument.
def rnn_tanh_cell(input: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                  b_ih: Optional[torch.Tensor] = None, b_hh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh), as torch._VF.rnn_tanh_cell."""
    return _rnn.cell(_rnn.TANH, input, hx, None, w_ih, w_hh, b_ih, b_hh)
def rnn_relu_cell(input: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                  b_ih: Optional[torch.Tensor] = None, b_hh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h' = relu(x W_ih^T + b_ih + h W_hh^T + b_hh), as torch._VF.rnn_relu_cell."""
    return _rnn.cell(_rnn.RELU, input, hx, None, w_ih, w_hh, b_ih, b_hh)
def lstm_cell(input: torch.Tensor, hx, w_ih: torch.Tensor, w_hh: torch.Tensor,
              b_ih: Optional[torch.Tensor] = None, b_hh: Optional[torch.Tensor] = None):
    """(h', c') of an LSTM cell from hx = (h, c), as torch._VF.lstm_cell: i, f, o = sigmoid(.),
    g = tanh(.), c' = f c + i g, h' = o tanh(c')."""
    h, c = hx
    return _rnn.cell(_rnn.LSTM, input, h, c, w_ih, w_hh, b_ih, b_hh)
def gru_cell(input: torch.Tensor, hx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
             b_ih: Optional[torch.Tensor] = None, b_hh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h' of a GRU cell, as torch._VF.gru_cell: r, z = sigmoid(.), n = tanh(x W_in^T + b_in +
    r (h W_hn^T + b_hn)), h' = (1 - z) n + z h."""
    return _rnn.cell(_rnn.GRU, input, hx, None, w_ih, w_hh, b_ih, b_hh)
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
