"""The CUDA persistent RNN layer kernels (csrc/cuda/rnn.cu, one cooperative launch per layer
direction with W_hh in shared memory, forward and backward through time): against the per-step
cuda path and torch.nn.LSTM/GRU/RNN (float64) on the same inputs, every mode and dtype, B = 1,
odd H, T = 1, both directions, outputs and gradients; which path ran and why in explain(). The GPU tests are marked cuda
(skipped without a GPU); the plan's reasons that need no GPU run everywhere."""
import pytest
import torch

import fastops
from fastops import _dispatch, _ext
from fastops.ops import rnn as R
from utils import DTYPES, assert_close

MODES = {"lstm": R.LSTM, "gru": R.GRU, "tanh": R.TANH, "relu": R.RELU}
CASES = [(1, 1, 7, 33), (5, 3, 4, 129), (6, 8, 5, 64)]  # T, B, I, H


def _rand(*shape, dtype=torch.float32, scale=1.0, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)


def _inputs(mode, T, B, I, H, dtype, device="cuda"):
    G = R.GATES[mode]
    r = lambda *s, scale, seed: _rand(*s, dtype=dtype, scale=scale, seed=seed, device=device)  # noqa: E731
    return [r(T, B, I, scale=1.0, seed=1), r(B, H, scale=0.5, seed=2),
            r(B, H, scale=0.5, seed=3) if mode == R.LSTM else None,
            r(G * H, I, scale=0.3, seed=4), r(G * H, H, scale=0.3, seed=5),
            r(G * H, scale=0.2, seed=6), r(G * H, scale=0.2, seed=7)]


def _run_cuda(args, mode, reverse, persistent, monkeypatch):
    """(y, h_n[, c_n]), the raw op outputs (saved, c_all), input gradients, explain text."""
    monkeypatch.setattr(R, "CUDA_PERSISTENT", persistent)
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    y, h_n, c_n, saved, c_all = R.rnn_layer_op(*leaves, None, mode, reverse, "cuda")
    why = _dispatch.last_choice("rnn_layer").why
    assert _dispatch.last_choice("rnn_layer").kernel.backend == "cuda"
    outs = [y, h_n] + ([c_n] if mode == R.LSTM else [])
    torch.autograd.backward(outs, [_rand(*o.shape, dtype=o.dtype, seed=20 + i) for i, o in enumerate(outs)])
    assert _dispatch.last_choice("rnn_layer_backward").kernel.backend == "cuda"
    why = (why, _dispatch.last_choice("rnn_layer_backward").why)
    return outs, (saved, c_all), [None if a is None else a.grad for a in leaves], why


def _run_torch(args, mode, reverse):
    """The same layer on torch.nn (float64; reverse = the forward layer on the flipped sequence)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = [None if a is None else a.detach().double().requires_grad_() for a in args]
    I, H = x.shape[2], h0.shape[1]
    if mode == R.LSTM:
        m = torch.nn.LSTM(I, H)
    elif mode == R.GRU:
        m = torch.nn.GRU(I, H)
    else:
        m = torch.nn.RNN(I, H, nonlinearity="relu" if mode == R.RELU else "tanh")
    m = m.to(x.device, torch.float64)
    with torch.no_grad():
        for name, t in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(m, name).copy_(t)
    xin = x.flip(0) if reverse else x
    y, hid = m(xin, (h0[None], c0[None]) if mode == R.LSTM else h0[None])
    y = y.flip(0) if reverse else y
    outs = [y, hid[0][0], hid[1][0]] if mode == R.LSTM else [y, hid[0]]
    dtype = args[0].dtype
    torch.autograd.backward(outs, [_rand(*o.shape, dtype=dtype, seed=20 + i).double() for i, o in enumerate(outs)])
    grads = [x.grad, h0.grad, None if c0 is None else c0.grad]
    pgrads = {n: p.grad for n, p in m.named_parameters()}
    grads += [pgrads["weight_ih_l0"], pgrads["weight_hh_l0"], pgrads["bias_ih_l0"], pgrads["bias_hh_l0"]]
    return outs, grads


@pytest.mark.cuda
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,B,I,H", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(MODES))
def test_persistent_vs_per_step_vs_torch(kind, dtype, T, B, I, H, reverse, monkeypatch):
    mode = MODES[kind]
    args = _inputs(mode, T, B, I, H, dtype)
    outs_p, raw_p, grads_p, why_p = _run_cuda(args, mode, reverse, True, monkeypatch)
    for why in why_p:  # forward and backward
        assert "persistent kernel: one cooperative launch" in why, why
    assert "persistent kernel" in fastops.explain()
    outs_s, raw_s, grads_s, why_s = _run_cuda(args, mode, reverse, False, monkeypatch)
    for why in why_s:
        assert "per-step kernels (persistent kernel: off" in why, why
    outs_r, grads_r = _run_torch(args, mode, reverse)
    for p, s, r in zip(outs_p, outs_s, outs_r):
        assert p.dtype == dtype and p.shape == r.shape
        assert_close(p, r, dtype, reduction=4 * (I + H))
        assert_close(p, s.double(), dtype, reduction=4 * (I + H))
    for p, s in zip(raw_p, raw_s):  # what backward reads: gate activations, cell states
        assert p.dtype == torch.float32
        assert_close(p, s.double(), dtype, reduction=4 * (I + H))
    red = 4 * T * B * max(I, H)
    for p, s, r in zip(grads_p, grads_s, grads_r):
        if r is not None:
            assert_close(p, r, dtype, reduction=red)
            assert_close(p, s.double(), dtype, reduction=red)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", list(MODES))
def test_persistent_modules_batch_first(kind, monkeypatch):
    """fastops.nn modules (stacked, bidirectional, batch_first: a non-contiguous time-major view)
    on the persistent path against torch.nn, outputs and gradients."""
    monkeypatch.setattr(R, "CUDA_PERSISTENT", True)
    cls = {"lstm": "LSTM", "gru": "GRU"}.get(kind, "RNN")
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, **({"nonlinearity": kind} if cls == "RNN" else {}))
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(9, 17, **kw).cuda().double()
    mine = getattr(fastops.nn, cls)(9, 17, **kw).cuda()
    mine.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = _rand(2, 11, 9, seed=1).requires_grad_()
    xr = x.detach().double().requires_grad_()
    with fastops.use_backend("cuda"):
        out, _ = mine(x)
    assert "persistent kernel: one cooperative launch" in _dispatch.last_choice("rnn_layer").why
    out_r, _ = ref(xr)
    assert_close(out, out_r, torch.float32, reduction=256)
    g = _rand(*out.shape, seed=2)
    out.backward(g)
    out_r.backward(g.double())
    assert_close(x.grad, xr.grad, torch.float32, reduction=4 * 11 * 2 * 34)


@pytest.mark.cuda
def test_persistent_falls_back_with_reason(monkeypatch):
    monkeypatch.setattr(R, "CUDA_PERSISTENT", True)
    B = 9  # one row over the persistent kernel's limit
    args = _inputs(R.GRU, 3, B, 4, 16, torch.float32)
    outs, _, _, whys = _run_cuda(args, R.GRU, False, True, monkeypatch)
    for why in whys:
        assert "per-step kernels (persistent kernel: batch 9 outside 1..8)" in why, why
    outs_r, _ = _run_torch(args, R.GRU, False)
    assert_close(outs[0], outs_r[0], torch.float32, reduction=64)
    empty = _inputs(R.GRU, 3, 0, 4, 16, torch.float32)  # zero rows: the per-step path, empty outputs
    outs, _, _, whys = _run_cuda(empty, R.GRU, False, True, monkeypatch)
    assert "batch 0 outside 1..8" in whys[0] and outs[0].shape == (3, 0, 16)
    with pytest.raises(RuntimeError, match="batch 9 outside"):
        _ext.C.rnn_persistent_forward(R.GRU, torch.zeros(3, B, 48, device="cuda"), None, None, args[1], None,
                                      args[4], False)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_persistent_opcheck_compile_deterministic(kind, monkeypatch):
    monkeypatch.setattr(R, "CUDA_PERSISTENT", True)
    mode = MODES[kind]
    args = _inputs(mode, 4, 2, 5, 16, torch.float32)
    torch.library.opcheck(R.rnn_layer_op, (*args, None, mode, False, "cuda"))
    eager = R.rnn_layer_op(*args, None, mode, False, "cuda")
    assert "persistent kernel: one cooperative launch" in _dispatch.last_choice("rnn_layer").why
    again = R.rnn_layer_op(*args, None, mode, False, "cuda")
    for a, b in zip(eager, again):
        assert torch.equal(a, b)  # no atomics: bitwise the same run to run
    y, h_n, c_n, saved, c_all = eager
    bwd = [R.rnn_layer_backward_op(torch.ones_like(y), torch.ones_like(h_n), c_n if mode == R.LSTM else None,
                                   *args, None, y, saved, c_all, mode, False, "cuda") for _ in range(2)]
    assert "persistent kernel: one cooperative launch" in _dispatch.last_choice("rnn_layer_backward").why
    for a, b in zip(*bwd):
        assert torch.equal(a, b)
    f = torch.compile(lambda *a: R.rnn_layer_op(*a, None, mode, False, "auto")[0], fullgraph=True)
    with fastops.use_backend("cuda"):
        y = f(*args)
    assert "persistent kernel: one cooperative launch" in _dispatch.last_choice("rnn_layer").why
    assert torch.equal(y, eager[0])


@pytest.mark.cuda
def test_persistent_plan_too_large():
    """A W_hh slice beyond the device's shared memory is refused with the sizes in the reason."""
    h0 = torch.zeros(8, 65536, device="cuda")
    for backward in (False, True):
        reason, blocks, _, _ = _ext.C.rnn_persistent_plan(R.LSTM, h0, backward)
        assert "shared memory" in reason and blocks == 0, reason


# ---- no GPU needed ------------------------------------------------------------------------------

def test_plan_reasons_without_gpu(monkeypatch):
    x, h0 = torch.zeros(3, 2, 4), torch.zeros(2, 5)
    monkeypatch.setattr(R, "CUDA_PERSISTENT", True)
    assert R.persistent_plan(x, h0, torch.tensor([3, 1]), R.LSTM)[0] == "variable lengths (PackedSequence)"
    assert R.persistent_plan(x[:0], h0, None, R.LSTM)[0] == "no time steps"
    monkeypatch.setattr(R, "CUDA_PERSISTENT", False)
    why, text = R.persistent_plan(x, h0, None, R.LSTM)
    assert why.startswith("off") and text.startswith("per-step kernels (persistent kernel: off")


def test_binding_on_cpu_tensors():
    reason, blocks, units, smem = _ext.C.rnn_persistent_plan(R.LSTM, torch.zeros(2, 5))
    assert "not a cuda device" in reason and (blocks, units, smem) == (0, 0, 0)
    with pytest.raises(RuntimeError, match="runs on cuda tensors"):
        _ext.C.rnn_persistent_forward(R.TANH, torch.zeros(3, 2, 5), None, None, torch.zeros(2, 5), None,
                                      torch.zeros(5, 5), False)
    with pytest.raises(RuntimeError, match="gx must have shape"):
        _ext.C.rnn_persistent_forward(R.TANH, torch.zeros(3, 2, 4), None, None, torch.zeros(2, 5), None,
                                      torch.zeros(5, 5), False)
    with pytest.raises(RuntimeError, match="runs on cuda tensors"):
        _ext.C.rnn_persistent_backward(R.TANH, None, torch.zeros(2, 5), None, torch.zeros(3, 2, 1, 5),
                                       torch.zeros(0, 2, 5), None, torch.zeros(3, 2, 5), torch.zeros(5, 5),
                                       torch.zeros(3, 2, 5), None, False)
    with pytest.raises(RuntimeError, match="a GRU layer needs dgh"):
        _ext.C.rnn_persistent_backward(R.GRU, None, torch.zeros(2, 5), None, torch.zeros(3, 2, 4, 5),
                                       torch.zeros(0, 2, 5), None, torch.zeros(3, 2, 5), torch.zeros(15, 5),
                                       torch.zeros(3, 2, 15), None, False)
    with pytest.raises(TypeError, match="dtype must be float32, float16 or bfloat16"):
        _ext.C.rnn_persistent_plan(R.TANH, torch.zeros(2, 5, dtype=torch.float64))
