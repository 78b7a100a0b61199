"""RNN layers and cells as custom ops: fastops::rnn_layer and fastops::rnn_layer_backward.

One op runs one direction of one layer (a cell is a layer of one step):

    rnn_layer(x [T, B, I], h0 [B, H], c0 [B, H] or None, w_ih [G*H, I], w_hh [G*H, H],
              b_ih [G*H] or None, b_hh [G*H] or None, lengths int64 [B] or None, mode, reverse,
              backend) -> (y [T, B, H], h_n [B, H], c_n [B, H] (LSTM, else [0, H]),
                           saved [T, B, S, H] float32, c_all [T, B, H] float32 (LSTM, else [0, B, H]))
    rnn_layer_backward(dy, dh_n, dc_n, <the forward's inputs>, y, saved, c_all, mode, reverse,
                       backend) -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) in the inputs' dtypes

mode: 0 tanh, 1 relu, 2 LSTM (gates i, f, g, o), 3 GRU (r, z, n); G = 1, 1, 4, 3 gates. x, h0,
c0 and the weights share one dtype; y/h_n/c_n have it. Gate pre-activations, the cell state and
every gradient sum are float32 (float64 for float64 inputs, which run on torch). lengths:
row b is active at step t < lengths[b] (PackedSequence): inactive steps carry h and c and give
y = 0. reverse runs t = T-1 .. 0. saved holds what backward needs (LSTM i, f, g, o; GRU r, z, n,
h W_hn^T + b_hn; tanh/relu h'), c_all every step's cell state.

Backends: cpu runs the whole time loop in C++ (fastops._C.rnn_layer_*); triton and cuda run the
loop here, GEMMs in torch (float32) and one fused step kernel per step; torch runs the same
loop with torch ops (the reference, and the float64 path).
LSTM with proj_size > 0 has its own ops, fastops::rnn_proj_layer(_backward), in
fastops/ops/rnn_proj.py; run_stack and the aten::lstm override here call them.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from fastops import _dispatch, _dropin, _ext
from fastops.ops import rnn_reference as _ref  # the torch references and mode constants

FAMILY = "rnn"
TANH, RELU, LSTM, GRU = 0, 1, 2, 3
MODES = {"RNN_TANH": TANH, "RNN_RELU": RELU, "LSTM": LSTM, "GRU": GRU}
GATES = {TANH: 1, RELU: 1, LSTM: 4, GRU: 3}
SAVED = {TANH: 1, RELU: 1, LSTM: 4, GRU: 4}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _opt(t: Optional[torch.Tensor], dtype=None):
    if t is None:
        return None
    return t.contiguous() if dtype is None else t.to(dtype).contiguous()


def _time_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


# ---- the loop for triton, cuda and torch: GEMMs in torch, one fused step per time step --------

def _step_fns(backend: str):
    if backend == "triton":
        from fastops.triton import rnn as tk
        return tk.step_forward, tk.step_backward_masked
    if backend == "cuda":
        C = _ext.C

        def fwd(*args):
            C.rnn_step_forward(*args)

        def bwd(mode, dy, dh, dc, saved, c_t, c_prev, h_prev, dgi, dgh, lengths, t):
            if lengths is not None:  # the CUDA step has no lengths: zero inactive rows' gradients here
                return _ref.step_backward_ref(mode, dy, dh, dc, saved, c_t, c_prev, h_prev, dgi, dgh, lengths, t)
            C.rnn_step_backward(mode, dy, dh, dc, saved, c_t, c_prev, h_prev, dgi, dgh, dy.dtype if dy is not None
                                else torch.float32)
        return fwd, bwd
    return _ref.step_forward_ref, _ref.step_backward_ref


@functools.lru_cache(maxsize=None)
def mm_out_dtype_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch.mm(..., out_dtype=torch.float32) (aten::mm.dtype) runs on this device type for
    `dtype` operands: probed once on 1x1 tensors, so that a real call never has to catch errors
    (an out-of-memory error from it must reach the caller, not turn into a bigger upcast GEMM)."""
    try:
        one = torch.ones(1, 1, dtype=dtype, device=device_type)
        return torch.mm(one, one, out_dtype=torch.float32).dtype == torch.float32
    except (NotImplementedError, RuntimeError, TypeError):
        return False


def gates_f32(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ w [N, K]^T in float32. CUDA fp16/bf16: the operands as stored with float32
    accumulation and output (aten::mm.dtype: tensor cores, exact products, as an upcast GEMM up to
    summation order); elsewhere, or where that overload is missing, an upcast float32 GEMM."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and w.dtype == a.dtype \
            and mm_out_dtype_supported("cuda", a.dtype):
        return torch.mm(a, w.t(), out_dtype=torch.float32)
    acc = acc_dtype(a.dtype)
    return a.to(acc) @ w.to(acc).t()


def _loop_forward(backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse):
    step_fwd, _ = _step_fns(backend)
    if backend == "cuda" and lengths is not None:
        step_fwd = _ref.step_forward_ref
    T, B, I = x.shape
    H = h0.shape[1]
    acc = acc_dtype(x.dtype)
    gx = gates_f32(x.reshape(T * B, I), w_ih).reshape(T, B, w_ih.shape[0])
    bi, bh = _opt(b_ih, acc), _opt(b_hh, acc)
    lens = None if lengths is None else lengths.to(x.device)
    h = h0.clone(memory_format=torch.contiguous_format)
    y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    saved = torch.empty(T, B, SAVED[mode], H, dtype=acc, device=x.device)
    lstm = mode == LSTM
    c = c0.to(acc).clone() if lstm else None
    c_all = torch.empty(T if lstm else 0, B, H, dtype=acc, device=x.device)
    for t in _time_order(T, reverse):
        gh = gates_f32(h, w_hh)
        step_fwd(mode, gx[t], gh, bi, bh, h, c, y[t], saved[t], lens, t)
        if lstm:
            c_all[t].copy_(c)
    c_n = c.to(x.dtype) if lstm else x.new_empty(0, H)
    return y, h, c_n, saved, c_all


def _hprev(x, h0, y, lengths, reverse):
    """h entering each step, float: y of the previous step where it was active, else h0."""
    T = y.shape[0]
    acc = acc_dtype(x.dtype)
    yp = y.to(acc)
    h0a = h0.to(acc).unsqueeze(0)
    if T == 0:
        return yp
    prev = torch.cat([h0a, yp[:-1]]) if not reverse else torch.cat([yp[1:], h0a])
    if lengths is not None:
        steps = torch.arange(T, device=lengths.device)
        tp = steps + (1 if reverse else -1)
        ok = (tp.unsqueeze(1) >= 0) & (tp.unsqueeze(1) < lengths.unsqueeze(0))  # [T, B]
        prev = torch.where(ok.to(x.device).unsqueeze(2), prev, h0a)
    return prev


def _loop_backward(backend, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all,
                   mode, reverse):
    _, step_bwd = _step_fns(backend)
    T, B, I = x.shape
    H = h0.shape[1]
    GH = GATES[mode] * H
    acc = acc_dtype(x.dtype)
    lstm, gru = mode == LSTM, mode == GRU
    lens = None if lengths is None else lengths.to(x.device)
    dy = None if dy is None else dy.contiguous()  # autograd may hand an expanded (stride 0) gradient
    dh = dh_n.to(acc).clone() if dh_n is not None else torch.zeros(B, H, dtype=acc, device=x.device)
    dc = None
    if lstm:
        dc = dc_n.to(acc).clone() if dc_n is not None else torch.zeros(B, H, dtype=acc, device=x.device)
    hprev = _hprev(x, h0, y, lens, reverse).contiguous()
    c0a = c0.to(acc) if lstm else None
    whh = w_hh.to(acc)
    dgi = torch.empty(T, B, GH, dtype=acc, device=x.device)
    dgh = torch.empty_like(dgi) if gru else dgi
    order = list(_time_order(T, reverse))
    done = backend == "cuda" and _persistent_backward(x, h0, mode, dy, dh, dc, saved, c_all, c0a, hprev, w_hh, dgi,
                                                      dgh, lengths, reverse)
    for s in range(T - 1, -1, -1) if not done else ():  # the per-step loop
        t = order[s]
        c_prev = None
        if lstm:
            c_prev = c0a if s == 0 else c_all[order[s - 1]]
        step_bwd(mode, None if dy is None else dy[t], dh, dc, saved[t], c_all[t] if lstm else None, c_prev,
                 hprev[t], dgi[t], dgh[t] if gru else None, lens, t)
        dh.addmm_(dgh[t], whh)
    dgi2, dgh2 = dgi.reshape(T * B, GH), dgh.reshape(T * B, GH)
    dx = (dgi2 @ w_ih.to(acc)).reshape(T, B, I)
    dw_ih = dgi2.t() @ x.reshape(T * B, I).to(acc)
    dw_hh = dgh2.t() @ hprev.reshape(T * B, H)
    db_ih = dgi2.sum(0) if b_ih is not None else dgi2.new_empty(0)
    db_hh = dgh2.sum(0) if b_hh is not None else dgi2.new_empty(0)
    dc0 = dc if lstm else dh.new_empty(0, H)
    return dx, dh, dc0, dw_ih, dw_hh, db_ih, db_hh


# ---- kernels per backend -----------------------------------------------------------------------

def _forward_cpu(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse, keep_saved=True):
    """keep_saved=False: inference, saved and c_all come back with 0 steps (nothing written for a backward)."""
    return tuple(_ext.C.rnn_layer_forward(mode, x.contiguous(), h0.contiguous(), _opt(c0), w_ih.contiguous(),
                                          w_hh.contiguous(), _opt(b_ih, torch.float32), _opt(b_hh, torch.float32),
                                          _opt(lengths), reverse, keep_saved))


def _backward_cpu(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all, mode, reverse):
    return tuple(_ext.C.rnn_layer_backward(mode, x.contiguous(), h0.contiguous(), _opt(c0), w_ih.contiguous(),
                                           w_hh.contiguous(), _opt(b_ih, torch.float32), _opt(b_hh, torch.float32),
                                           _opt(lengths), reverse, y.contiguous(), saved.contiguous(),
                                           c_all.contiguous(), _opt(dy), _opt(dh_n), _opt(dc_n)))


def _forward_loop(backend):
    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse):
        return _loop_forward(backend, x.contiguous(), h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse)
    return fn


def _backward_loop(backend):
    def fn(*args):
        return _loop_backward(backend, *args)
    return fn


# The auto policy of the cpu backend, per mode, dtype, batch and whether a backward follows: the
# cpu layer runs where it was measured faster than torch's own (torch.nn.LSTM/GRU/RNN: oneDNN /
# native), forward alone for inference (no autograd graph recorded), forward+backward for
# training, at T=64, H=256, B = 1..32 (batch sweeps under the bench lock, as `python -m
# fastops.bench --ops rnn,rnn_gru,rnn_tanh,rnn_relu`) on the development machine: 2-core AMD Zen 4
# (AVX-512, AVX512-BF16, no AMX), 2 threads, medians of 7 alternating runs at load 1-2 (other
# helpers' builds), 2026-11-24. torch / fastops time ratios (> 1: the cpu layer is faster), fwd /
# fwd+bwd; "now" is B=32 after the 16-lane cell rows (`--quick`, load 1.1-1.7, 09:03-09:06 UTC):
#   LSTM fp32  B=1 0.81/0.86  B=4 0.87/0.95  B=8 0.86/0.92  B=32 0.82/0.84, now 0.87-0.98/0.86-0.88
#              now at small batch (fastops.nn.LSTM vs torch.nn.LSTM, medians of 9-15 interleaved runs, 3
#              runs at load 1.2-1.5, 09:31 UTC): B=1 1.01-1.31/0.85-1.14  B=2 1.16-1.21/1.06-1.10
#              B=4 0.96-1.12/1.00-1.22  B=8 0.85-0.95/0.85-0.93  B=16 0.78/0.76
#              -> cpu for inference up to B=4, torch for training (B=1 is not ahead)
#   LSTM bf16  B=1 1.19/1.73  B=4 0.92/1.20  B=8 0.79/1.07  B=16 0.73/0.94  B=32 0.72/0.84, now
#              0.77-0.84/0.78-0.83; now at small batch: B=1 1.14-1.27/1.54-1.59  B=2 1.24-1.37/1.43-1.52
#              B=4 1.03-1.11/1.19-1.28  B=8 0.80-1.01/1.08-1.12  B=16 0.91/0.92
#              -> cpu for inference up to B=4, for training up to B=8
#   GRU  fp32  B=1 2.44/3.00  B=8 1.71/1.64  B=32 1.34/1.27, now 1.45/1.48  -> cpu
#   GRU  bf16  B=1 5.81/9.28  B=8 1.70/2.00  B=32 0.85/1.27, now 1.01/1.16  -> cpu
#   tanh fp32  B=1 1.42/3.40  B=8 1.75/2.06  B=32 0.97/1.05, now 1.20/1.34  -> cpu
#   tanh bf16  B=1 5.93/6.92  B=8 2.28/2.86  B=32 1.13/1.36, now 1.54/1.57  -> cpu
#   relu fp32  B=1 1.44/3.64  B=8 1.45/2.01  B=32 0.91/1.07, now 1.06/1.22  -> cpu
#   relu bf16  B=1 6.80/8.20  B=8 3.65/3.85  B=32 1.56/1.67, now 1.10/1.51  -> cpu
# float16 was not measured (torch). README "RNN" has the figures.
# On CPUs with AMX (the bf16 GEMMs on AMX tiles; 2-core Xeon, 2026-11-25 00:55 UTC, T=64 H=256,
# medians of 5 in one process, torch / fastops fwd / fwd+bwd): LSTM bf16 B=1 1.20/3.04, B=8
# 0.94/1.73, B=32 0.98/1.26 -> cpu for training at every batch; LSTM fp32 B=1 1.25/1.29, B=8
# 1.07/1.04, B=32 1.00/0.96; GRU bf16 3.9-7.4 / 3.1-8.9, fp32 1.7-2.4 / 1.7-4.4.
# (inference, training): the largest batch the cpu layer runs at; None: any batch, 0: never.
CPU_MAX_BATCH = {
    (LSTM, torch.float32): (4, 0), (LSTM, torch.bfloat16): (4, None if _dispatch.cpu_has_amx() else 8),
    (GRU, torch.float32): (None, None), (GRU, torch.bfloat16): (None, None),
    (TANH, torch.float32): (None, None), (TANH, torch.bfloat16): (None, None),
    (RELU, torch.float32): (None, None), (RELU, torch.bfloat16): (None, None),
}
MODE_NAMES = {v: k for k, v in MODES.items()}
# LSTM with proj_size > 0 (fastops/ops/rnn_proj.py), same meaning, against torch.nn.LSTM(proj_size)
# (torch has no oneDNN path for projections: its native per-step kernel runs): T=64, H=256, P=128,
# B = 1..64, medians of 9-11 alternating runs in one process under the bench lock, same machine,
# load 2-3, 2026-11-24. fastops / torch time ratios, fwd / fwd+bwd:
#   fp32  B=1 0.31-0.48/0.25-0.28  B=8 0.54/0.51  B=16 0.68-0.76/0.69  B=32 0.74-0.80/0.80-0.84
#         B=64 0.81-0.83/0.92-0.93
#   bf16  B=1 0.15/0.13-0.14  B=8 0.35/0.31  B=16 0.50/0.49  B=32 0.62-0.79/0.67-0.82  B=64 0.74-0.75/0.82-0.86
#   fp16  B=1 0.32/0.11  B=8 0.21/0.05  B=32 0.25/0.05  -> cpu at every batch, every dtype
CPU_MAX_BATCH_PROJ = {(LSTM, dt): (None, None) for dt in (torch.float32, torch.bfloat16, torch.float16)}


def _limits(proj: bool) -> dict:
    return CPU_MAX_BATCH_PROJ if proj else CPU_MAX_BATCH


def cpu_preferred(mode: int, dtype: torch.dtype, batch: int, training: bool, proj: bool = False) -> bool:
    """True where auto's policy runs the cpu layer (CPU_MAX_BATCH, or CPU_MAX_BATCH_PROJ for an
    LSTM with proj_size > 0)."""
    limit = _limits(proj).get((mode, dtype), (0, 0))[1 if training else 0]
    return limit is None or batch <= limit


def _training(tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def policy_why_torch(x: torch.Tensor, mode: int, backend: str, batch: int = None, training: bool = None,
                     proj: bool = False):
    """The reason auto runs torch instead of `backend` for this mode, dtype, batch and
    inference / training, or None. Like a crossover it is auto's alone: off for a named backend,
    FASTOPS_CROSSOVERS=0 and strict mode."""
    batch = x.shape[1] if batch is None else batch
    training = _training((x,)) if training is None else training
    if backend != "cpu" or _dispatch.get_backend() != "auto" or not _dispatch._crossovers_enabled \
            or _dispatch.strict() or cpu_preferred(mode, x.dtype, batch, training, proj):
        return None
    limit = _limits(proj).get((mode, x.dtype), (0, 0))[1 if training else 0]
    where = "at no batch" if not limit else f"only up to batch {limit}"
    return (f"auto policy per mode, dtype and batch: torch was measured faster than cpu for "
            f"{MODE_NAMES.get(mode, mode)}{' proj_size > 0' if proj else ''} {str(x.dtype).replace('torch.', '')} "
            f"{'training (fwd+bwd)' if training else 'inference (fwd)'} at batch {batch} on this CPU "
            f"(cpu {where}; fastops.ops.rnn.CPU_MAX_BATCH{'_PROJ' if proj else ''})")


_POLICY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the cpu layer's dtypes


def torch_by_policy(module, x, hx) -> bool:
    """Eager fast path of fastops.nn.RNN/LSTM/GRU under plain auto on the CPU: True, with the
    policy's reason recorded for explain(), when CPU_MAX_BATCH leaves the call to torch. Decided
    from mode, dtype, batch and training alone, before any argument handling (which torch's own
    forward repeats), so a call auto hands to torch costs a few microseconds on top of torch."""
    if x.device.type != "cpu" or x.dim() not in (2, 3) or x.dtype not in _POLICY_DTYPES \
            or not _dispatch.plain_auto() or torch.compiler.is_compiling():
        return False
    mode = MODES.get(module.mode)
    if mode is None or not _dispatch.backend_status("cpu")[0]:
        return False
    batch = 1 if x.dim() == 2 else x.shape[0 if module.batch_first else 1]
    hs = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
    # the first layer's tensors, as choose() judges them
    training = _training((x, *hs, module.weight_ih_l0, module.weight_hh_l0, getattr(module, "bias_ih_l0", None),
                          getattr(module, "bias_hh_l0", None)))
    proj = getattr(module, "proj_size", 0) > 0
    why = policy_why_torch(x, mode, "cpu", batch, training, proj)
    if why is None:
        return False
    _dispatch.fallback("rnn_proj_layer" if proj else "rnn_layer", x, why)
    return True



# ---- cuda: the persistent layer forward (csrc/cuda/rnn.cu) -----------------------------------------
# One cooperative launch per layer direction keeps W_hh in shared memory across all T steps
# (fastops._C.rnn_persistent_forward) when the device, batch (B <= 8) and hidden size fit
# (rnn_persistent_plan); else the per-step loop above. explain() says which ran and why. The
# backward's time loop likewise (rnn_persistent_backward; the weight GEMMs stay in torch). Either
# direction reads and writes what the per-step loop does (y, saved, c_all; dgi, dgh).
# FASTOPS_RNN_PERSISTENT=0 (or CUDA_PERSISTENT = False) keeps the per-step loop.
import os as _os  # noqa: E402

CUDA_PERSISTENT = _os.environ.get("FASTOPS_RNN_PERSISTENT", "1") != "0"
_persistent_plans: dict = {}  # (device index, mode, dtype, B, H, backward) -> (reason or None, explain text)


def persistent_plan(x: torch.Tensor, h0: torch.Tensor, lengths, mode: int, backward: bool = False):
    """(None, what runs) when the persistent forward (or backward) kernel takes this layer, else
    (why not, what runs)."""
    why = None
    if not CUDA_PERSISTENT:
        why = "off (fastops.ops.rnn.CUDA_PERSISTENT / FASTOPS_RNN_PERSISTENT=0)"
    elif lengths is not None:
        why = "variable lengths (PackedSequence)"
    elif x.shape[0] == 0:
        why = "no time steps"
    if why is not None:
        return why, f"per-step kernels (persistent kernel: {why})"
    B, H = h0.shape
    key = (h0.device.index, mode, h0.dtype, B, H, backward)
    plan = _persistent_plans.get(key)
    if plan is None:
        reason, blocks, units, smem = _ext.C.rnn_persistent_plan(mode, h0, backward)
        plan = _persistent_plans[key] = (
            (reason, f"per-step kernels (persistent kernel: {reason})") if reason else
            (None, f"persistent kernel: one cooperative launch of {blocks} blocks, each keeping W_hh of {units} "
                   f"hidden units ({GATES[mode]} gates) in {smem} B of shared memory"))
    return plan


def _note_cuda_path(x: torch.Tensor, text: str, op: str = "rnn_layer") -> None:
    """Adds which cuda path ran to the choice explain() shows for `op`."""
    choice = _dispatch.last_choice(op)
    if choice is not None and choice.kernel.backend == "cuda":
        _dispatch.annotate(op, x, text)


def _persistent_backward(x, h0, mode, dy, dh, dc, saved, c_all, c0a, hprev, w_hh, dgi, dgh, lengths, reverse) -> bool:
    """The backward's time loop as one persistent launch (dh, dc, dgi, dgh as the per-step loop
    leaves them); False when it does not apply (the caller runs the per-step loop)."""
    why, text = persistent_plan(x, h0, lengths, mode, backward=True)
    _note_cuda_path(x, text, "rnn_layer_backward")
    if why is not None:
        return False
    _ext.C.rnn_persistent_backward(mode, dy, dh, dc, saved.contiguous(), c_all.contiguous(), _opt(c0a), hprev,
                                   w_hh.contiguous(), dgi, dgh if mode == GRU else None, reverse)
    return True


def _forward_cuda(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse):
    why, text = persistent_plan(x, h0, lengths, mode)
    _note_cuda_path(x, text)
    if why is not None:
        return _loop_forward("cuda", x.contiguous(), h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse)
    T, B, I = x.shape
    H = h0.shape[1]
    lstm = mode == LSTM
    gx = gates_f32(x.reshape(T * B, I), w_ih).reshape(T, B, w_ih.shape[0])
    y, saved, c_all = _ext.C.rnn_persistent_forward(
        mode, gx, _opt(b_ih, torch.float32), _opt(b_hh, torch.float32), h0.contiguous(),
        _opt(c0, torch.float32) if lstm else None, w_hh.contiguous(), reverse)
    last = 0 if reverse else T - 1
    h_n = y[last].clone()
    c_n = c_all[last].to(x.dtype, copy=True) if lstm else x.new_empty(0, H)  # never a view of c_all
    return y, h_n, c_n, saved, c_all


_dispatch.register_op("rnn_layer", FAMILY, {
    "cuda": _forward_cuda, "triton": _forward_loop("triton"), "cpu": _forward_cpu,
    "torch": _forward_loop("torch"),
})
_dispatch.register_op("rnn_layer_backward", FAMILY, {
    "cuda": _backward_loop("cuda"), "triton": _backward_loop("triton"), "cpu": _backward_cpu,
    "torch": _backward_loop("torch"),
})


# ---- checks shared by the op and its fake --------------------------------------------------------

def check_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode) -> None:
    torch._check(mode in GATES, lambda: f"fastops.rnn_layer: mode must be 0..3, got {mode}")
    torch._check(x.dim() == 3, lambda: f"fastops.rnn_layer: x must be [T, B, I], got shape {list(x.shape)}")
    torch._check(h0.dim() == 2 and h0.shape[0] == x.shape[1],
                 lambda: f"fastops.rnn_layer: h0 must be [B={x.shape[1]}, H], got shape {list(h0.shape)}")
    H = h0.shape[1]
    GH = GATES[mode] * H
    for name, t, shape in (("w_ih", w_ih, (GH, x.shape[2])), ("w_hh", w_hh, (GH, H))):
        torch._check(tuple(t.shape) == shape,
                     lambda: f"fastops.rnn_layer: {name} must have shape {list(shape)}, got {list(t.shape)}")
    for name, t in (("b_ih", b_ih), ("b_hh", b_hh)):
        torch._check(t is None or tuple(t.shape) == (GH,),
                     lambda: f"fastops.rnn_layer: {name} must have shape [{GH}], got {list(t.shape)}")
    torch._check((c0 is not None) == (mode == LSTM),
                 lambda: "fastops.rnn_layer: c0 is given exactly for LSTM (mode 2)")
    for name, t in (("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        torch._check_type(t is None or t.dtype == x.dtype,
                          lambda: f"fastops.rnn_layer: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    torch._check(lengths is None or (lengths.dtype == torch.int64 and tuple(lengths.shape) == (x.shape[1],)),
                 lambda: "fastops.rnn_layer: lengths must be int64 [B]")


# ---- custom ops ----------------------------------------------------------------------------------

@torch.library.custom_op("fastops::rnn_layer", mutates_args=())
def rnn_layer_op(x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], w_ih: torch.Tensor,
                 w_hh: torch.Tensor, b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
                 lengths: Optional[torch.Tensor], mode: int, reverse: bool,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode)
    return _dispatch.run_op("rnn_layer", backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse)


@rnn_layer_op.register_fake
def _rnn_layer_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse, backend):
    check_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode)
    T, B, _ = x.shape
    H = h0.shape[1]
    lstm = mode == LSTM
    acc = acc_dtype(x.dtype)
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B if lstm else 0, H),
            x.new_empty(T, B, SAVED[mode], H, dtype=acc), x.new_empty(T if lstm else 0, B, H, dtype=acc))


@torch.library.custom_op("fastops::rnn_layer_backward", mutates_args=())
def rnn_layer_backward_op(dy: Optional[torch.Tensor], dh_n: Optional[torch.Tensor], dc_n: Optional[torch.Tensor],
                          x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], w_ih: torch.Tensor,
                          w_hh: torch.Tensor, b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
                          lengths: Optional[torch.Tensor], y: torch.Tensor, saved: torch.Tensor, c_all: torch.Tensor,
                          mode: int, reverse: bool, backend: str) -> list[torch.Tensor]:
    check_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode)
    grads = _run_backward(backend, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all,
                          mode, reverse)
    return [g.to(x.dtype) for g in grads]


def _run_backward(backend, dy, dh_n, dc_n, x, *rest):
    # select on x (dy may be None): the kernel's callable takes the arguments in the op's order
    choice = _dispatch.select_for_op("rnn_layer_backward", backend, x)
    return choice.kernel.fn(dy, dh_n, dc_n, x, *rest)


@rnn_layer_backward_op.register_fake
def _rnn_layer_backward_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all, mode,
                             reverse, backend):
    check_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode)
    H = h0.shape[1]
    GH = GATES[mode] * H
    return [torch.empty_like(x), torch.empty_like(h0), x.new_empty(h0.shape[0] if mode == LSTM else 0, H),
            torch.empty_like(w_ih), torch.empty_like(w_hh), x.new_empty(GH if b_ih is not None else 0),
            x.new_empty(GH if b_hh is not None else 0)]


def _layer_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.mode, ctx.reverse, ctx.backend = inputs
    y, _, _, saved, c_all = output
    ctx.has_c0, ctx.has_b_ih, ctx.has_b_hh, ctx.has_len = (c0 is not None, b_ih is not None, b_hh is not None,
                                                           lengths is not None)
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all)
    # unused outputs get None, not zeros: saved and c_all never have a gradient, and filling their
    # zeros (10 MB at T=64, B=32, H=256) cost more than a step of the layer
    ctx.set_materialize_grads(False)


def _layer_bwd(ctx, gy, gh_n, gc_n, _gsaved, _gc_all):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all = ctx.saved_tensors
    if not ctx.has_c0:
        c0, gc_n = None, None
    b_ih = b_ih if ctx.has_b_ih else None
    b_hh = b_hh if ctx.has_b_hh else None
    lengths = lengths if ctx.has_len else None
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = rnn_layer_backward_op(
        gy, gh_n, gc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, saved, c_all, ctx.mode, ctx.reverse,
        ctx.backend)
    return (dx, dh0, dc0 if ctx.has_c0 else None, dw_ih, dw_hh, db_ih if ctx.has_b_ih else None,
            db_hh if ctx.has_b_hh else None, None, None, None, None)


rnn_layer_op.register_autograd(_layer_bwd, setup_context=_layer_setup)


# ---- the eager entry point used by fastops.functional and fastops.nn ------------------------------

def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode: int, reverse: bool, backend: str):
    """(y, h_n, c_n) of one layer direction through the custom op (autograd-aware), with
    `backend` already chosen (a name for _dispatch, or "auto" under torch.compile)."""
    y, h_n, c_n, _, _ = rnn_layer_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse, backend)
    return y, h_n, (c_n if mode == LSTM else None)


def choose(x: torch.Tensor, *args):
    """The backend name the custom op should run for x, or None when torch's own should."""
    if torch.compiler.is_compiling():
        return "auto"
    choice = _dispatch.select("rnn_layer", x, *args)
    if choice.kernel.backend == "torch":
        return None
    why = policy_why_torch(x, args[7], choice.kernel.backend, batch=args[0].shape[0],
                           training=_training((x, *args[:6])))
    if why is not None:
        _dispatch.fallback("rnn_layer", x, why)
        return None
    return _dispatch.chosen_name(choice)


def layer_eager(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode: int, reverse: bool, backend: str):
    """layer(), skipping the custom op's bookkeeping when no autograd graph is recorded."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    if needs_grad or backend == "auto":
        return layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse, backend)
    check_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode)
    fn = _dispatch.select_for_op("rnn_layer", backend, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse).kernel.fn
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, mode, reverse)
    y, h_n, c_n, _, _ = _forward_cpu(*args, keep_saved=False) if fn is _forward_cpu else fn(*args)
    return y, h_n, (c_n if mode == LSTM else None)


# ---- cells (torch._VF semantics) ------------------------------------------------------------------

_CELL_VF = {TANH: "rnn_tanh_cell", RELU: "rnn_relu_cell", LSTM: "lstm_cell", GRU: "gru_cell"}


def _check_cell(x, hx, label, w_ih, w_hh, mode) -> None:
    """torch's check_rnn_cell_forward_input / _hidden, with its messages (RuntimeError)."""
    if x.shape[1] != w_ih.shape[1]:
        raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected {w_ih.shape[1]}")
    H = w_hh.shape[1]
    if x.shape[0] != hx.shape[0]:
        raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{label} batch size {hx.shape[0]}")
    if hx.shape[1] != H:
        raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {hx.shape[1]}, expected {H}")
    if w_ih.shape[0] != GATES[mode] * H or w_hh.shape[0] != GATES[mode] * H:
        raise RuntimeError(f"fastops.{_CELL_VF[mode]}: w_ih and w_hh must have {GATES[mode]} * hidden_size = "
                           f"{GATES[mode] * H} rows, got {w_ih.shape[0]} and {w_hh.shape[0]}")
    for name, t in (("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh)):
        if t.dtype != x.dtype:
            raise RuntimeError(f"fastops.{_CELL_VF[mode]}: {name} must have input's dtype {x.dtype}, got {t.dtype}")


def cell(mode: int, input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step of an RNN/LSTM/GRU cell: h' (and c' for LSTM) from input [B, I] or [I]."""
    unbatched = input.dim() == 1
    if input.dim() not in (1, 2):
        raise RuntimeError(f"fastops.{_CELL_VF[mode]}: input must be 1-D or 2-D, got {input.dim()}-D")
    if hx.dim() != input.dim() or (cx is not None and cx.dim() != input.dim()):
        raise RuntimeError(f"fastops.{_CELL_VF[mode]}: hx must have input's {input.dim()} dims, got "
                           f"{hx.dim()}")
    x = input.unsqueeze(0) if unbatched else input
    h = hx.unsqueeze(0) if unbatched else hx
    c = (cx.unsqueeze(0) if unbatched else cx) if cx is not None else None
    _check_cell(x, h, "[0]" if mode == LSTM else "", w_ih, w_hh, mode)
    if c is not None:
        _check_cell(x, c, "[1]", w_ih, w_hh, mode)
    backend = choose(x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, mode, False)
    if backend is None:
        vf = getattr(torch._VF, _CELL_VF[mode])
        if mode == LSTM:
            h_n, c_n = vf(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        else:
            h_n, c_n = vf(x, h, w_ih, w_hh, b_ih, b_hh), None
    else:
        _, h_n, c_n = layer_eager(x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, mode, False, backend)
    if unbatched:
        h_n = h_n.squeeze(0)
        c_n = c_n.squeeze(0) if c_n is not None else None
    return (h_n, c_n) if mode == LSTM else h_n


# ---- stacked layers (num_layers, bidirectional, dropout): torch.nn.* and aten::lstm & co. ----------

def run_stack(x, hx, weights, has_biases: bool, num_layers: int, dropout: float, train: bool,
              bidirectional: bool, mode: int, lengths, backend: str, proj: bool = False):
    """(out [T, B, D*H], h_n [L*D, B, H], c_n or None) of a stacked RNN on the layer op.

    x: [T, B, I] time-major; hx: (h0,) or (h0, c0), each [L*D, B, H]; weights: per (layer,
    direction) in torch's order, (w_ih, w_hh) or (w_ih, w_hh, b_ih, b_hh), as a flat list.
    proj (LSTM proj_size = P > 0, fastops/ops/rnn_proj.py): w_hr [P, H] follows each group, h0,
    h_n are [L*D, B, P] and out [T, B, D*P].
    Dropout between layers is torch's (train only), as torch.nn's layers apply it.
    """
    lstm = mode == LSTM
    D = 2 if bidirectional else 1
    per = (4 if has_biases else 2) + (1 if proj else 0)
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            idx = layer * D + d
            w = weights[idx * per:(idx + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            if proj:
                y, h, c = _proj.layer_eager(layer_input, hx[0][idx], hx[1][idx], w[0], w[1], w[-1], b_ih, b_hh,
                                            lengths, bool(d), backend)
            else:
                y, h, c = layer_eager(layer_input, hx[0][idx], hx[1][idx] if lstm else None, w[0], w[1], b_ih,
                                      b_hh, lengths, mode, bool(d), backend)
            outs.append(y)
            h_n.append(h)
            if lstm:
                c_n.append(c)
        layer_input = outs[0] if D == 1 else torch.cat(outs, 2)
        if dropout and train and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, training=True)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if lstm else None)


# ---- enable(): torch's own RNN ops (torch.nn.LSTM/GRU/RNN and the torch._VF cells) ------------------
# These aten ops are CompositeImplicitAutograd (torch decomposes them above autograd), so the
# overrides sit at that key: the handler runs before autograd and the layer op records its own
# backward. Whatever the handler does not take runs torch's kernel, with the reason in explain().

def _aten_layer(mode: int):
    lstm = mode == LSTM

    def handler(original, input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                batch_first):
        args = (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        hs = tuple(hx) if lstm else (hx,)
        D = 2 if bidirectional else 1
        per = 4 if has_biases else 2
        x = input.transpose(0, 1) if batch_first else input
        why = None
        proj = lstm and len(params) == num_layers * D * (per + 1)  # weight_hr after each group
        if len(params) != num_layers * D * per and not proj:
            why = "unexpected parameter list"
        elif input.dim() != 3 or any(h.dim() != 3 or h.shape[0] != num_layers * D for h in hs) or x.shape[0] == 0:
            why = "input or hidden state of a shape torch's own kernel reports on"
        elif any(t.dtype != input.dtype for t in (*hs, *params)):
            why = "mixed dtypes"
        if why is not None:
            _dispatch.fallback("rnn_layer", input, f"aten::{_ATEN_LAYER[mode]}: {why}")
            return original(*args)
        x = x.contiguous()
        if proj:
            first = (x, hs[0][0], hs[1][0], params[0], params[1], params[per], params[2] if has_biases else None,
                     params[3] if has_biases else None, None)
            backend = _proj.choose(*first)
        else:
            first = (x, hs[0][0], hs[1][0] if lstm else None, params[0], params[1],
                     params[2] if has_biases else None, params[3] if has_biases else None, None, mode, False)
            backend = choose(*first)
        if backend is None:
            return original(*args)
        try:
            if proj:
                _proj.check_proj_layer(*first)
            else:
                check_layer(*first[:8], mode)
        except (RuntimeError, TypeError, ValueError):
            return original(*args)  # torch's kernel raises its own error for a bad call
        out, h_n, c_n = run_stack(x, hs, list(params), has_biases, num_layers, dropout, train, bidirectional, mode,
                                  None, backend, proj)
        if batch_first:
            out = out.transpose(0, 1)
        return (out, h_n, c_n) if lstm else (out, h_n)
    return handler


def _aten_cell(mode: int):
    lstm = mode == LSTM

    def handler(original, input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
        hs = tuple(hx) if lstm else (hx,)
        ok = input.dim() in (1, 2) and all(h.dim() == input.dim() for h in hs)
        if ok:
            x = input if input.dim() == 2 else input.unsqueeze(0)
            h = hs[0] if input.dim() == 2 else hs[0].unsqueeze(0)
            c = (hs[1] if input.dim() == 2 else hs[1].unsqueeze(0)) if lstm else None
            try:
                _check_cell(x, h, "[0]" if lstm else "", w_ih, w_hh, mode)
            except RuntimeError:
                ok = False  # torch's kernel raises its own error
        if not ok or choose(x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, mode, False) is None:
            return original(input, hx, w_ih, w_hh, b_ih, b_hh)
        return cell(mode, input, hs[0], hs[1] if lstm else None, w_ih, w_hh, b_ih, b_hh)
    return handler


_ATEN_LAYER = {LSTM: "lstm", GRU: "gru", TANH: "rnn_tanh", RELU: "rnn_relu"}
for _mode, _name in _ATEN_LAYER.items():
    _dropin.register_override(FAMILY, f"aten::{_name}.input", _aten_layer(_mode), keys=("CompositeImplicitAutograd",))
for _mode, _name in _CELL_VF.items():
    _dropin.register_override(FAMILY, f"aten::{_name}", _aten_cell(_mode), keys=("CompositeImplicitAutograd",))


def _aten_packed(name: str):
    def handler(original, data, batch_sizes, *rest):
        _dispatch.fallback("rnn_layer", data, f"aten::{name}.data (PackedSequence through torch.nn's own "
                                              f"forward; fastops.patch() runs packed input on fastops)")
        return original(data, batch_sizes, *rest)
    return handler


for _name in _ATEN_LAYER.values():
    _dropin.register_override(FAMILY, f"aten::{_name}.data", _aten_packed(_name), keys=("CompositeImplicitAutograd",))


from fastops.ops import rnn_proj as _proj  # noqa: E402  (LSTM proj_size > 0; it imports this module)
