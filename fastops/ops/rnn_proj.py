"""LSTM with a projection (torch.nn.LSTM proj_size > 0) as custom ops: fastops::rnn_proj_layer and
fastops::rnn_proj_layer_backward. One op runs one direction of one layer:

    rnn_proj_layer(x [T, B, I], h0 [B, P], c0 [B, H], w_ih [4H, I], w_hh [4H, P], w_hr [P, H],
                   b_ih [4H] or None, b_hh [4H] or None, lengths int64 [B] or None, reverse, backend)
      -> (y [T, B, P], h_n [B, P], c_n [B, H], saved [T, B, 4, H] float32, c_all [T, B, H] float32,
          h_full [T, B, H])
    rnn_proj_layer_backward(dy, dh_n, dc_n, <the forward's inputs>, y, saved, c_all, h_full, reverse,
                            backend) -> (dx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh)

torch's semantics: the LSTM cell (gates i, f, g, o, fastops/ops/rnn.py) gives h_full = o * tanh(c')
[B, H]; the state and output are r = h_full W_hr^T [B, P] (0 < P < H), so W_hh multiplies r.
h_full (the inputs' dtype) is kept for backward (dW_hr = sum_t dr_t^T h_full_t). Cell state and
every gradient sum are float32 (float64 for float64 inputs, which run on torch). lengths: inactive
steps carry r and c and give y = 0 (PackedSequence).

Backends: cpu runs the whole time loop in C++ (fastops._C.rnn_proj_layer_*, csrc/cpu/rnn_proj.cpp:
one OpenMP region, two barriers per step); triton and cuda run the loop here with their fused step
kernels and the GEMMs (the projection included) in torch, one per step; torch runs that loop with
torch ops (the reference, and the float64 path).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastops import _dispatch, _ext
from fastops.ops import rnn as _rnn

LSTM = _rnn.LSTM
OP, BWD_OP = "rnn_proj_layer", "rnn_proj_layer_backward"


# ---- the loop for triton, cuda and torch: GEMMs in torch, one fused step per time step ------------

def _active(lengths, t, B, device):
    return None if lengths is None else (t < lengths).view(B, 1).to(device)


def _loop_forward(backend, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse):
    step_fwd, _ = _rnn._step_fns(backend)
    if backend == "cuda" and lengths is not None:
        step_fwd = _rnn._ref.step_forward_ref  # the CUDA step has no lengths
    x = x.contiguous()
    T, B, I = x.shape
    P, H = w_hr.shape
    acc = _rnn.acc_dtype(x.dtype)
    gx = _rnn.gates_f32(x.reshape(T * B, I), w_ih).reshape(T, B, 4 * H)
    bi, bh = _rnn._opt(b_ih, acc), _rnn._opt(b_hh, acc)
    lens = None if lengths is None else lengths.to(x.device)
    r = h0.clone(memory_format=torch.contiguous_format)
    c = c0.to(acc).clone()
    y = torch.empty(T, B, P, dtype=x.dtype, device=x.device)
    h_full = torch.zeros(T, B, H, dtype=x.dtype, device=x.device)  # inactive rows stay 0
    scratch = torch.empty(B, H, dtype=x.dtype, device=x.device)
    saved = torch.empty(T, B, 4, H, dtype=acc, device=x.device)
    c_all = torch.empty(T, B, H, dtype=acc, device=x.device)
    for t in _rnn._time_order(T, reverse):
        gh = _rnn.gates_f32(r, w_hh)
        step_fwd(LSTM, gx[t], gh, bi, bh, h_full[t], c, scratch, saved[t], lens, t)
        c_all[t].copy_(c)
        r_new = _rnn.gates_f32(h_full[t], w_hr).to(x.dtype)
        active = _active(lens, t, B, x.device)
        if active is None:
            r = r_new
            y[t].copy_(r_new)
        else:
            r = torch.where(active, r_new, r)
            y[t].copy_(torch.where(active, r_new, 0.0))
    return y, r, c.to(x.dtype), saved, c_all, h_full


def _loop_backward(backend, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all,
                   h_full, reverse):
    _, step_bwd = _rnn._step_fns(backend)
    T, B, I = x.shape
    P, H = w_hr.shape
    acc = _rnn.acc_dtype(x.dtype)
    lens = None if lengths is None else lengths.to(x.device)
    dy = None if dy is None else dy.contiguous()
    dr = dh_n.to(acc).clone() if dh_n is not None else torch.zeros(B, P, dtype=acc, device=x.device)
    dc = dc_n.to(acc).clone() if dc_n is not None else torch.zeros(B, H, dtype=acc, device=x.device)
    rprev = _rnn._hprev(x, h0, y, lens, reverse).contiguous()  # r entering each step
    c0a = c0.to(acc)
    whh, whr = w_hh.to(acc), w_hr.to(acc)
    dgi = torch.empty(T, B, 4 * H, dtype=acc, device=x.device)
    dr_all = torch.empty(T, B, P, dtype=acc, device=x.device)
    order = list(_rnn._time_order(T, reverse))
    for s in range(T - 1, -1, -1):
        t = order[s]
        active = _active(lens, t, B, x.device)
        dr_t = dr if dy is None else dr + dy[t].to(acc)
        if active is None:
            dr = torch.zeros_like(dr)
        else:
            dr_t = torch.where(active, dr_t, 0.0)
            dr = torch.where(active, 0.0, dr)
        dr_all[t].copy_(dr_t)
        dh = (dr_t @ whr).contiguous()
        step_bwd(LSTM, None, dh, dc, saved[t], c_all[t], c0a if s == 0 else c_all[order[s - 1]], None, dgi[t], None,
                 lens, t)
        dr = dr.addmm(dgi[t], whh)
    dgi2 = dgi.reshape(T * B, 4 * H)
    dx = (dgi2 @ w_ih.to(acc)).reshape(T, B, I)
    dw_ih = dgi2.t() @ x.reshape(T * B, I).to(acc)
    dw_hh = dgi2.t() @ rprev.reshape(T * B, P)
    dw_hr = dr_all.reshape(T * B, P).t() @ h_full.reshape(T * B, H).to(acc)
    db_ih = dgi2.sum(0) if b_ih is not None else dgi2.new_empty(0)
    db_hh = dgi2.sum(0) if b_hh is not None else dgi2.new_empty(0)
    return dx, dr, dc, dw_ih, dw_hh, dw_hr, db_ih, db_hh


def _forward_loop(backend):
    def fn(*args):
        return _loop_forward(backend, *args)
    return fn


def _backward_loop(backend):
    def fn(*args):
        return _loop_backward(backend, *args)
    return fn


# ---- cpu: the whole time loop in C++ --------------------------------------------------------------

def _cpu_args(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse):
    f32 = torch.float32
    return (x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih.contiguous(), w_hh.contiguous(), w_hr.contiguous(),
            _rnn._opt(b_ih, f32), _rnn._opt(b_hh, f32), _rnn._opt(lengths), reverse)


def _forward_cpu(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse):
    return tuple(_ext.C.rnn_proj_layer_forward(*_cpu_args(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse)))


def _backward_cpu(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all, h_full, reverse):
    return tuple(_ext.C.rnn_proj_layer_backward(
        *_cpu_args(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse), y.contiguous(), saved.contiguous(),
        c_all.contiguous(), h_full.contiguous(), _rnn._opt(dy), _rnn._opt(dh_n), _rnn._opt(dc_n)))


_dispatch.register_op(OP, _rnn.FAMILY, {
    "cuda": _forward_loop("cuda"), "triton": _forward_loop("triton"), "cpu": _forward_cpu,
    "torch": _forward_loop("torch"),
})
_dispatch.register_op(BWD_OP, _rnn.FAMILY, {
    "cuda": _backward_loop("cuda"), "triton": _backward_loop("triton"), "cpu": _backward_cpu,
    "torch": _backward_loop("torch"),
})


# ---- checks shared by the op and its fake --------------------------------------------------------

def check_proj_layer(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths) -> None:
    name = "fastops.rnn_proj_layer"
    torch._check(x.dim() == 3, lambda: f"{name}: x must be [T, B, I], got shape {list(x.shape)}")
    torch._check(w_hr.dim() == 2 and 0 < w_hr.shape[0] < w_hr.shape[1],
                 lambda: f"{name}: w_hr must be [P, H] with 0 < P < H, got shape {list(w_hr.shape)}")
    P, H = w_hr.shape
    B = x.shape[1]
    for arg, t, shape in (("h0", h0, (B, P)), ("c0", c0, (B, H)), ("w_ih", w_ih, (4 * H, x.shape[2])),
                          ("w_hh", w_hh, (4 * H, P))):
        torch._check(tuple(t.shape) == shape,
                     lambda: f"{name}: {arg} must have shape {list(shape)}, got {list(t.shape)}")
    for arg, t in (("b_ih", b_ih), ("b_hh", b_hh)):
        torch._check(t is None or tuple(t.shape) == (4 * H,),
                     lambda: f"{name}: {arg} must have shape [{4 * H}], got {list(t.shape)}")
    for arg, t in (("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("w_hr", w_hr), ("b_ih", b_ih),
                   ("b_hh", b_hh)):
        torch._check_type(t is None or t.dtype == x.dtype,
                          lambda: f"{name}: {arg} must have x's dtype {x.dtype}, got {t.dtype}")
    torch._check(lengths is None or (lengths.dtype == torch.int64 and tuple(lengths.shape) == (B,)),
                 lambda: f"{name}: lengths must be int64 [B]")


# ---- custom ops ----------------------------------------------------------------------------------

@torch.library.custom_op("fastops::rnn_proj_layer", mutates_args=())
def rnn_proj_layer_op(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                      w_hr: torch.Tensor, b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
                      lengths: Optional[torch.Tensor], reverse: bool, backend: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_proj_layer(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths)
    return _dispatch.run_op(OP, backend, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse)


@rnn_proj_layer_op.register_fake
def _fake(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse, backend):
    check_proj_layer(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths)
    T, B, _ = x.shape
    P, H = w_hr.shape
    acc = _rnn.acc_dtype(x.dtype)
    return (x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H), x.new_empty(T, B, 4, H, dtype=acc),
            x.new_empty(T, B, H, dtype=acc), x.new_empty(T, B, H))


@torch.library.custom_op("fastops::rnn_proj_layer_backward", mutates_args=())
def rnn_proj_layer_backward_op(dy: Optional[torch.Tensor], dh_n: Optional[torch.Tensor], dc_n: Optional[torch.Tensor],
                               x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: torch.Tensor,
                               w_hh: torch.Tensor, w_hr: torch.Tensor, b_ih: Optional[torch.Tensor],
                               b_hh: Optional[torch.Tensor], lengths: Optional[torch.Tensor], y: torch.Tensor,
                               saved: torch.Tensor, c_all: torch.Tensor, h_full: torch.Tensor, reverse: bool,
                               backend: str) -> list[torch.Tensor]:
    check_proj_layer(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths)
    choice = _dispatch.select_for_op(BWD_OP, backend, x)  # on x: dy may be None
    grads = choice.kernel.fn(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all,
                             h_full, reverse)
    return [g.to(x.dtype) for g in grads]


@rnn_proj_layer_backward_op.register_fake
def _backward_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all, h_full, reverse,
                   backend):
    check_proj_layer(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths)
    GH = w_ih.shape[0]
    return [torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), torch.empty_like(w_hr), x.new_empty(GH if b_ih is not None else 0),
            x.new_empty(GH if b_hh is not None else 0)]


def _setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, ctx.reverse, ctx.backend = inputs
    y, _, _, saved, c_all, h_full = output
    ctx.has_b_ih, ctx.has_b_hh, ctx.has_len = b_ih is not None, b_hh is not None, lengths is not None
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all, h_full)


def _bwd(ctx, gy, gh_n, gc_n, _gsaved, _gc_all, _gh_full):
    x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all, h_full = ctx.saved_tensors
    b_ih = b_ih if ctx.has_b_ih else None
    b_hh = b_hh if ctx.has_b_hh else None
    lengths = lengths if ctx.has_len else None
    dx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh = rnn_proj_layer_backward_op(
        gy, gh_n, gc_n, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, saved, c_all, h_full, ctx.reverse,
        ctx.backend)
    return (dx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih if ctx.has_b_ih else None, db_hh if ctx.has_b_hh else None,
            None, None, None)


rnn_proj_layer_op.register_autograd(_bwd, setup_context=_setup)


# ---- backend choice and the eager entry point (fastops.nn.LSTM, run_stack, enable()) ---------------

def choose(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse=False):
    """The backend name the op should run for x, or None when torch's own LSTM should."""
    if torch.compiler.is_compiling():
        return "auto"
    choice = _dispatch.select(OP, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse)
    if choice.kernel.backend == "torch":
        return None
    why = _rnn.policy_why_torch(x, LSTM, choice.kernel.backend, batch=h0.shape[0],
                                training=_rnn._training((x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh)), proj=True)
    if why is not None:
        _dispatch.fallback(OP, x, why)
        return None
    return _dispatch.chosen_name(choice)


def layer_eager(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse: bool, backend: str):
    """(y, h_n, c_n) of one layer direction; skips the custom op's bookkeeping when no autograd
    graph is recorded."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh))
    if needs_grad or backend == "auto":
        y, h_n, c_n, _, _, _ = rnn_proj_layer_op(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse, backend)
    else:
        check_proj_layer(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths)
        y, h_n, c_n, _, _, _ = _dispatch.run_op(OP, backend, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths,
                                                reverse)
    return y, h_n, c_n
