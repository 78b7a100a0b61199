"""RNN family: one LSTM (`rnn`), GRU (`rnn_gru`) or tanh / relu RNN (`rnn_tanh`, `rnn_relu`) layer over a whole sequence, time per sequence.

shape = (T, B, H) with input size I = H. Inputs x [T, B, H], h0 (and c0) [B, H], the four
weights. Providers: torch (torch.nn.LSTM/GRU's kernel, `torch._VF.lstm/gru`: oneDNN / native on
the CPU, cuDNN on the GPU), "torch cell loop" (a Python loop of torch._VF cells, what a
hand-written RNN runs), torch.compile of the layer, and fastops backends (cpu: the whole time
loop in C++). Compute-bound: TFLOP/s from the GEMMs, 2 * T * B * G*H * (I + H) forward, twice
that for backward (input and weight gradients).
The CPU goal (issue 7): faster than torch.nn.LSTM/GRU at T=64, B=32, H=256, fwd and full, and
3x the cell loop. The GEMMs run on fastops::cpu::gemm, whose speed decides most of this.
"""
from __future__ import annotations

import torch

from fastops import _ext
from fastops.bench.harness import Case, Family
from fastops.ops import rnn as R
from fastops.ops import rnn_proj as RP

FLOPS_PER_MODE = {"fwd": 1.0, "bwd": 2.0, "full": 3.0}

SHAPES = ((64, 32, 256), (64, 1, 256), (64, 8, 512), (128, 32, 256), (64, 64, 1024), (512, 32, 256))
QUICK_SHAPES = ((64, 32, 256),)
# the crossover sweep runs over the batch at the goal's T and H: the auto policy is per batch
# (fastops.ops.rnn.CPU_MAX_BATCH), and the sweep shows where fastops[auto] and cpu stand
SWEEP = ((64, 1, 256), (64, 4, 256), (64, 8, 256), (64, 16, 256), (64, 32, 256))
QUICK_SWEEP = ((64, 1, 256), (64, 8, 256), (64, 32, 256))


_ATEN_NAME = {R.LSTM: "lstm", R.GRU: "gru", R.TANH: "rnn_tanh", R.RELU: "rnn_relu"}


def _fns(mode: int):
    lstm = mode == R.LSTM
    vf_layer = getattr(torch._VF, _ATEN_NAME[mode])
    vf_cell = getattr(torch._VF, _ATEN_NAME[mode] + "_cell")

    # inputs: (x, h0, c0, w_ih, w_hh, b_ih, b_hh) for LSTM, (x, h0, w_ih, w_hh, b_ih, b_hh) otherwise
    def split(args):
        return (args[0], args[1], args[2], *args[3:]) if lstm else (args[0], args[1], None, *args[2:])

    def torch_fn(*args):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = split(args)
        hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if lstm else h0.unsqueeze(0)
        return vf_layer(x, hx, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, False)[0]

    def cell_loop(*args):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = split(args)
        h, c, outs = h0, c0, []
        for t in range(x.shape[0]):
            if lstm:
                h, c = vf_cell(x[t], (h, c), w_ih, w_hh, b_ih, b_hh)
            else:
                h = vf_cell(x[t], h, w_ih, w_hh, b_ih, b_hh)
            outs.append(h)
        return torch.stack(outs)

    def fastops_fn(*inputs):
        args = (*split(inputs), None, mode, False)
        backend = R.choose(*args)
        if backend is None:
            return torch_fn(*inputs)
        return R.layer_eager(*args, backend)[0]

    def raw_fn(*inputs):
        """The compiled layer without dispatch or autograd: the C++ time loop on CPU tensors, the
        CUDA path (persistent kernel or per-step kernels) on GPU tensors."""
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = split(inputs)
        if x.is_cuda:
            return R._forward_cuda(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, mode, False)[0]
        return _ext.C.rnn_layer_forward(mode, x, h0, c0, w_ih, w_hh, b_ih.float(), b_hh.float(), None, False)[0]

    return torch_fn, cell_loop, fastops_fn, raw_fn


def _make_case(mode: int):
    G = R.GATES[mode]

    def make_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
        T, B, H = shape
        fwd = 2.0 * T * B * G * H * (H + H)
        g = torch.Generator().manual_seed(0)
        scale = H ** -0.5

        def inputs():
            def rnd(*s, k=1.0):
                return (torch.randn(s, generator=g) * k).to(device=device, dtype=dtype)
            state = (rnd(B, H, k=0.5), rnd(B, H, k=0.5)) if mode == R.LSTM else (rnd(B, H, k=0.5),)
            return (rnd(T, B, H), *state, rnd(G * H, H, k=scale), rnd(G * H, H, k=scale), rnd(G * H, k=0.1),
                    rnd(G * H, k=0.1))
        return Case(op=_ATEN_NAME[mode], shape=tuple(shape), dtype=dtype, inputs=inputs,
                    flops={m: k * fwd for m, k in FLOPS_PER_MODE.items()})
    return make_case


def _family(name: str, mode: int) -> Family:
    torch_fn, cell_loop, fastops_fn, raw_fn = _fns(mode)
    return Family(name=name, kernel_op="rnn_layer", torch_fn=torch_fn, fastops_fn=fastops_fn, raw_fn=raw_fn,
                  make_case=_make_case(mode), shapes=SHAPES, quick_shapes=QUICK_SHAPES, sweep=SWEEP,
                  quick_sweep=QUICK_SWEEP, tiny_shape=(2, 1, 8), variants=(("torch cell loop", cell_loop),),
                  compile=False)  # compiling the time loop takes minutes and times the same kernels


FAMILY = _family("rnn", R.LSTM)
GRU_FAMILY = _family("rnn_gru", R.GRU)
TANH_FAMILY = _family("rnn_tanh", R.TANH)
RELU_FAMILY = _family("rnn_relu", R.RELU)


# ---- LSTM with proj_size > 0 (`rnn_proj`, fastops/ops/rnn_proj.py) ---------------------------------
# shape = (T, B, H) with I = H and P = H // 2; inputs x, h0 [B, P], c0 [B, H], w_ih, w_hh [4H, P],
# w_hr [P, H], biases. torch: torch.nn.LSTM(proj_size=P)'s kernel (`torch._VF.lstm` with weight_hr:
# no oneDNN path on the CPU). No cell-loop variant (torch has no projected cell).
PROJ_SHAPES = ((64, 32, 256), (64, 8, 256), (64, 1, 256))
PROJ_QUICK_SHAPES = ((64, 32, 256),)


def _proj_fns():
    def torch_fn(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh):
        return torch._VF.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)), [w_ih, w_hh, b_ih, b_hh, w_hr], True, 1, 0.0,
                              False, False, False)[0]

    def fastops_fn(*inputs):
        args = (*inputs, None)
        backend = RP.choose(*args)
        if backend is None:
            return torch_fn(*inputs)
        return RP.layer_eager(*args, False, backend)[0]

    def raw_fn(x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh):
        """The C++ time loop on CPU tensors (the per-step loop on GPU tensors), no dispatch or autograd."""
        if x.is_cuda:
            return RP._loop_forward("cuda", x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, None, False)[0]
        return _ext.C.rnn_proj_layer_forward(x, h0, c0, w_ih, w_hh, w_hr, b_ih.float(), b_hh.float(), None, False)[0]
    return torch_fn, fastops_fn, raw_fn


def _make_proj_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
    T, B, H = shape
    P = max(1, H // 2)
    fwd = 2.0 * T * B * (4 * H * (H + P) + P * H)
    g = torch.Generator().manual_seed(0)

    def inputs():
        def rnd(*s, k=1.0):
            return (torch.randn(s, generator=g) * k).to(device=device, dtype=dtype)
        return (rnd(T, B, H), rnd(B, P, k=0.5), rnd(B, H, k=0.5), rnd(4 * H, H, k=H ** -0.5),
                rnd(4 * H, P, k=P ** -0.5), rnd(P, H, k=H ** -0.5), rnd(4 * H, k=0.1), rnd(4 * H, k=0.1))
    return Case(op="lstm_proj", shape=tuple(shape), dtype=dtype, inputs=inputs,
                flops={m: k * fwd for m, k in FLOPS_PER_MODE.items()})


_proj_torch, _proj_fastops, _proj_raw = _proj_fns()
PROJ_FAMILY = Family(name="rnn_proj", kernel_op="rnn_proj_layer", torch_fn=_proj_torch, fastops_fn=_proj_fastops,
                     raw_fn=_proj_raw, make_case=_make_proj_case, shapes=PROJ_SHAPES, quick_shapes=PROJ_QUICK_SHAPES,
                     sweep=QUICK_SWEEP, quick_sweep=QUICK_SWEEP, tiny_shape=(2, 1, 8), compile=False)
