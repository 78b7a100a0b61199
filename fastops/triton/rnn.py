"""RNN step kernels in Triton: the fused pointwise pass of one time step, forward and backward.

Mirrors csrc/include/fastops/math/rnn.h (gate order, saved values, tanh polynomial) and the
step contract of csrc/include/fastops/rnn.h: the GEMMs x W_ih^T and h W_hh^T run outside (torch),
these kernels add the biases, apply the gate nonlinearities, update h (storage dtype, in place)
and c (float32, in place), write y_t and what backward needs (saved_t, float32 [B, S, H]; 0 on inactive rows).
Backward takes the gradient reaching h' (dh, float32, plus dy_t inside), leaves the direct
part of d h_prev in dh, d c_prev in dc, and writes dgi (and dgh for GRU). Rows with
t >= lengths[b] are inactive: state carried, y_t = 0, gate gradients 0.

One program per (row, block of BLOCK_H units). The torch references (step_forward_ref,
step_backward_ref) sit at the end: the torch backend and the tests use them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops.ops.rnn_reference import (GATES, GRU, LSTM, RELU, SAVED, TANH,  # noqa: F401
                                      step_backward_ref, step_forward_ref)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    """tanh_f32 of fastops/math/rnn.h: odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above."""
    ax = tl.abs(x)
    z = x * x
    p = -5.70498872745e-3
    p = p * z + 2.06390887954e-2
    p = p * z - 5.37397155531e-2
    p = p * z + 1.33314422036e-1
    p = p * z - 3.33332819422e-1
    small = p * z * x + x
    big_abs = 1.0 - 2.0 / (tl.exp(2.0 * ax) + 1.0)
    big = tl.where(x < 0.0, -big_abs, big_abs)
    return tl.where(ax < 0.625, small, big)


@triton.jit
def _gate(g_ptr, bias_ptr, g: tl.constexpr, H, offs, mask, HAS_BIAS: tl.constexpr):
    v = tl.load(g_ptr + g * H + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        v += tl.load(bias_ptr + g * H + offs, mask=mask, other=0.0)
    return v


@triton.jit
def _unit_block(len_ptr, H, t, HAS_LENGTHS: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's row b, its units offs (mask: offs < H), their flat index u = b * H + offs,
    and whether step t is active for the row."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    active = True
    if HAS_LENGTHS:
        active = t < tl.load(len_ptr + b)
    return b, offs, offs < H, b * H + offs, active


@triton.jit
def _rnn_step_fwd_kernel(gi_ptr, gh_ptr, bih_ptr, bhh_ptr, h_ptr, c_ptr, y_ptr, saved_ptr, len_ptr,
                         gi_stride, gh_stride, H, t,
                         MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                         BLOCK_H: tl.constexpr):
    b, offs, mask, u, active = _unit_block(len_ptr, H, t, HAS_LENGTHS, BLOCK_H)
    S: tl.constexpr = 1 if MODE < 2 else 4
    gi = gi_ptr + b * gi_stride
    gh = gh_ptr + b * gh_stride
    sv = saved_ptr + b * S * H + offs
    h_prev = tl.load(h_ptr + u, mask=mask, other=0.0).to(tl.float32)
    if MODE == 2:
        a_i = _gate(gi, bih_ptr, 0, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 0, H, offs, mask, HAS_BIAS)
        a_f = _gate(gi, bih_ptr, 1, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 1, H, offs, mask, HAS_BIAS)
        a_g = _gate(gi, bih_ptr, 2, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 2, H, offs, mask, HAS_BIAS)
        a_o = _gate(gi, bih_ptr, 3, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 3, H, offs, mask, HAS_BIAS)
        i = _sigmoid(a_i)
        f = _sigmoid(a_f)
        g = _tanh(a_g)
        o = _sigmoid(a_o)
        c_prev = tl.load(c_ptr + u, mask=mask, other=0.0)
        c = f * c_prev + i * g
        h = o * _tanh(c)
        tl.store(sv, tl.where(active, i, 0.0), mask=mask)
        tl.store(sv + H, tl.where(active, f, 0.0), mask=mask)
        tl.store(sv + 2 * H, tl.where(active, g, 0.0), mask=mask)
        tl.store(sv + 3 * H, tl.where(active, o, 0.0), mask=mask)
        tl.store(c_ptr + u, tl.where(active, c, c_prev), mask=mask)
    elif MODE == 3:
        r = _sigmoid(_gate(gi, bih_ptr, 0, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 0, H, offs, mask, HAS_BIAS))
        z = _sigmoid(_gate(gi, bih_ptr, 1, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 1, H, offs, mask, HAS_BIAS))
        gh_n = _gate(gh, bhh_ptr, 2, H, offs, mask, HAS_BIAS)
        n = _tanh(_gate(gi, bih_ptr, 2, H, offs, mask, HAS_BIAS) + r * gh_n)
        h = (1.0 - z) * n + z * h_prev
        tl.store(sv, tl.where(active, r, 0.0), mask=mask)
        tl.store(sv + H, tl.where(active, z, 0.0), mask=mask)
        tl.store(sv + 2 * H, tl.where(active, n, 0.0), mask=mask)
        tl.store(sv + 3 * H, tl.where(active, gh_n, 0.0), mask=mask)
    else:
        a = _gate(gi, bih_ptr, 0, H, offs, mask, HAS_BIAS) + _gate(gh, bhh_ptr, 0, H, offs, mask, HAS_BIAS)
        if MODE == 1:
            h = tl.maximum(a, 0.0)
        else:
            h = _tanh(a)
        tl.store(sv, tl.where(active, h, 0.0), mask=mask)
    h = tl.where(active, h, h_prev)
    tl.store(h_ptr + u, h.to(h_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + u, tl.where(active, h, 0.0).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rnn_step_bwd_kernel(dy_ptr, dh_ptr, dc_ptr, saved_ptr, c_ptr, cprev_ptr, hprev_ptr, dgi_ptr, dgh_ptr,
                         len_ptr, H, t,
                         MODE: tl.constexpr, HAS_DY: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                         BLOCK_H: tl.constexpr):
    b, offs, mask, u, active = _unit_block(len_ptr, H, t, HAS_LENGTHS, BLOCK_H)
    S: tl.constexpr = 1 if MODE < 2 else 4
    G: tl.constexpr = 1 if MODE < 2 else (4 if MODE == 2 else 3)
    dh_in = tl.load(dh_ptr + u, mask=mask, other=0.0)
    dh = dh_in
    if HAS_DY:
        dh += tl.load(dy_ptr + u, mask=mask, other=0.0).to(tl.float32)
    dh = tl.where(active, dh, 0.0)  # inactive rows: gate gradients 0, dh and dc unchanged
    sv = saved_ptr + b * S * H + offs
    dgi = dgi_ptr + b * G * H + offs
    if MODE == 2:
        i = tl.load(sv, mask=mask, other=0.0)
        f = tl.load(sv + H, mask=mask, other=0.0)
        g = tl.load(sv + 2 * H, mask=mask, other=0.0)
        o = tl.load(sv + 3 * H, mask=mask, other=0.0)
        c = tl.load(c_ptr + u, mask=mask, other=0.0)
        c_prev = tl.load(cprev_ptr + u, mask=mask, other=0.0)
        dc_in = tl.load(dc_ptr + u, mask=mask, other=0.0)
        tc = _tanh(c)
        dct = tl.where(active, dc_in, 0.0) + dh * o * (1.0 - tc * tc)
        tl.store(dgi, tl.where(active, dct * g * i * (1.0 - i), 0.0), mask=mask)
        tl.store(dgi + H, tl.where(active, dct * c_prev * f * (1.0 - f), 0.0), mask=mask)
        tl.store(dgi + 2 * H, tl.where(active, dct * i * (1.0 - g * g), 0.0), mask=mask)
        tl.store(dgi + 3 * H, tl.where(active, dh * tc * o * (1.0 - o), 0.0), mask=mask)
        tl.store(dc_ptr + u, tl.where(active, dct * f, dc_in), mask=mask)
        tl.store(dh_ptr + u, tl.where(active, 0.0, dh_in), mask=mask)
    elif MODE == 3:
        r = tl.load(sv, mask=mask, other=0.0)
        z = tl.load(sv + H, mask=mask, other=0.0)
        n = tl.load(sv + 2 * H, mask=mask, other=0.0)
        gh_n = tl.load(sv + 3 * H, mask=mask, other=0.0)
        h_prev = tl.load(hprev_ptr + u, mask=mask, other=0.0)
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dr = dn * gh_n * r * (1.0 - r)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dgh = dgh_ptr + b * G * H + offs
        tl.store(dgi, tl.where(active, dr, 0.0), mask=mask)
        tl.store(dgi + H, tl.where(active, dz, 0.0), mask=mask)
        tl.store(dgi + 2 * H, tl.where(active, dn, 0.0), mask=mask)
        tl.store(dgh, tl.where(active, dr, 0.0), mask=mask)
        tl.store(dgh + H, tl.where(active, dz, 0.0), mask=mask)
        tl.store(dgh + 2 * H, tl.where(active, dn * r, 0.0), mask=mask)
        tl.store(dh_ptr + u, tl.where(active, dh * z, dh_in), mask=mask)
    else:
        h = tl.load(sv, mask=mask, other=0.0)
        if MODE == 1:
            da = tl.where(h > 0.0, dh, 0.0)
        else:
            da = dh * (1.0 - h * h)
        tl.store(dgi, tl.where(active, da, 0.0), mask=mask)
        tl.store(dh_ptr + u, tl.where(active, 0.0, dh_in), mask=mask)


def _block(H: int) -> int:
    return min(triton.next_power_of_2(max(H, 1)), 256)


def step_forward(mode, gi, gh, b_ih, b_hh, h, c, y_t, saved_t, lengths, t):
    """One fused forward step in place (the contract of fastops._C.rnn_step_forward)."""
    B, H = h.shape
    if B == 0 or H == 0:
        return
    block = _block(H)
    dummy = gi
    _rnn_step_fwd_kernel[(B, triton.cdiv(H, block))](
        gi, gh, b_ih if b_ih is not None else dummy, b_hh if b_hh is not None else dummy, h,
        c if c is not None else dummy, y_t, saved_t, lengths if lengths is not None else dummy,
        gi.stride(0), gh.stride(0), H, t,
        MODE=mode, HAS_BIAS=b_ih is not None, HAS_LENGTHS=lengths is not None, BLOCK_H=block)


def step_backward(mode, dy_t, dh, dc, saved_t, c_t, c_prev, h_prev, dgi, dgh, dtype):
    """One fused backward step in place (the contract of fastops._C.rnn_step_backward)."""
    step_backward_masked(mode, dy_t, dh, dc, saved_t, c_t, c_prev, h_prev, dgi, dgh, None, 0)


def step_backward_masked(mode, dy_t, dh, dc, saved_t, c_t, c_prev, h_prev, dgi, dgh, lengths, t):
    B, H = dh.shape
    if B == 0 or H == 0:
        return
    block = _block(H)
    d = dh
    _rnn_step_bwd_kernel[(B, triton.cdiv(H, block))](
        dy_t if dy_t is not None else d, dh, dc if dc is not None else d, saved_t,
        c_t if c_t is not None else d, c_prev if c_prev is not None else d, h_prev if h_prev is not None else d,
        dgi, dgh if dgh is not None else d, lengths if lengths is not None else d, H, t,
        MODE=mode, HAS_DY=dy_t is not None, HAS_LENGTHS=lengths is not None, BLOCK_H=block)


_REPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def report_specs() -> list[dict]:
    """Both step kernels, every mode, for a 256-unit block, with biases/dy and without lengths."""
    specs = []
    for ty in _REPORT_DTYPES.values():
        for mode, name in ((TANH, "tanh"), (RELU, "relu"), (LSTM, "lstm"), (GRU, "gru")):
            fwd_sig = {"gi_ptr": "*fp32", "gh_ptr": "*fp32", "bih_ptr": "*fp32", "bhh_ptr": "*fp32",
                       "h_ptr": f"*{ty}", "c_ptr": "*fp32", "y_ptr": f"*{ty}", "saved_ptr": "*fp32",
                       "len_ptr": "*i64", "gi_stride": "i32", "gh_stride": "i32", "H": "i32", "t": "i32"}
            bwd_sig = {"dy_ptr": f"*{ty}", "dh_ptr": "*fp32", "dc_ptr": "*fp32", "saved_ptr": "*fp32",
                       "c_ptr": "*fp32", "cprev_ptr": "*fp32", "hprev_ptr": "*fp32", "dgi_ptr": "*fp32",
                       "dgh_ptr": "*fp32", "len_ptr": "*i64", "H": "i32", "t": "i32"}
            for kname, fn, sig, consts in (
                    ("rnn_step_fwd", _rnn_step_fwd_kernel, fwd_sig,
                     {"MODE": mode, "HAS_BIAS": True, "HAS_LENGTHS": False, "BLOCK_H": 256}),
                    ("rnn_step_bwd", _rnn_step_bwd_kernel, bwd_sig,
                     {"MODE": mode, "HAS_DY": True, "HAS_LENGTHS": False, "BLOCK_H": 256})):
                specs.append({
                    "kernel": f"{kname}_{name}[{ty}]", "fn": fn, "signature": sig, "constexprs": consts,
                    "config": f"BLOCK_H=256,warps=4", "num_warps": 4, "num_stages": 1,
                    "divisible_by_16": ("H",),
                })
    return specs
