"""fastops.nn.LSTM(proj_size=P > 0) (the projected layer op, fastops/ops/rnn_proj.py) against
torch.nn.LSTM with a copied state_dict: outputs, h_n, c_n and every gradient (weight_hr included)
over num_layers, bidirectional, batch_first, bias, h0/c0 given or not, PackedSequence,
fp32/fp16/bf16, T=1, B=1, unbatched, zero batch; cpu and triton backends; opcheck, gradcheck
(float64 through the torch backend: the cpu kernels take fp32/fp16/bf16), the C++ loop against the
torch-reference loop, determinism, errors as torch's, explain(), enable(), patch() and compile."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastops
from fastops import _dispatch
from fastops.ops import rnn as R
from fastops.ops import rnn_proj as RP
from utils import DTYPES, assert_backward_deterministic, assert_close, assert_outputs_and_grads_close, make

OP = "rnn_proj_layer"


def _ran(op=OP) -> str:
    return _dispatch.last_choice(op).kernel.backend


def _leaves(tensors, dtype):
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


def _pair(dtype, **kw):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(**kw).to(torch.float64)
    mine = fastops.nn.LSTM(**kw).to(dtype)
    mine.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    return mine, ref


def _check(dtype=torch.float32, backend="cpu", T=4, B=3, I=5, H=5, P=3, with_h0=True, unbatched=False, **kw):
    mine, ref = _pair(dtype, input_size=I, hidden_size=H, proj_size=P, **kw)
    mine.eval(), ref.eval()
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    if unbatched:
        x_shape, hb = (T, I), ()
    else:
        x_shape, hb = ((B, T, I) if kw.get("batch_first") else (T, B, I)), (B,)
    x = make(x_shape, dtype, seed=1, scale=1.0)
    hx = [make((L * D, *hb, P), dtype, seed=2, scale=0.5), make((L * D, *hb, H), dtype, seed=3, scale=0.5)]
    xm, xr = _leaves([x], dtype)[0], _leaves([x], torch.float64)[0]
    hm, hr = (_leaves(hx, dtype), _leaves(hx, torch.float64)) if with_h0 else (None, None)
    with fastops.use_backend(backend):
        out, (h, c) = mine(xm, tuple(hm) if hm else None)
        assert _ran() == backend, fastops.explain()
        outs = [out, h, c]
        grads = [make(o.shape, dtype, seed=20 + i, scale=1.0) for i, o in enumerate(outs)]
        torch.autograd.backward(outs, grads)
        if B:
            assert _ran("rnn_proj_layer_backward") == backend, fastops.explain()
    out_r, (h_r, c_r) = ref(xr, tuple(hr) if hr else None)
    outs_r = [out_r, h_r, c_r]
    torch.autograd.backward(outs_r, [g.double() for g in grads])
    assert out.shape[-1] == D * P and h.shape[-1] == P and c.shape[-1] == H
    red = T * max(B, 1) * max(I, H) * 4
    assert any(name.startswith("weight_hr_l") for name, _ in mine.named_parameters())
    assert_outputs_and_grads_close(outs, outs_r, [xm, *(hm or [])], [xr, *(hr or [])], mine, ref, dtype,
                                   max(I, H) * 4 * L, red)


# (hidden, proj) as the task asks: P = 1, P = 3 with H = 5, P = 8 with H = 16
SIZES = [(5, 1), (5, 3), (16, 8)]
OPTIONS = [{}, {"num_layers": 2}, {"bidirectional": True}, {"batch_first": True}, {"bias": False},
           {"num_layers": 2, "bidirectional": True, "batch_first": True}]


@pytest.mark.parametrize("kw", OPTIONS, ids=str)
@pytest.mark.parametrize("H,P", SIZES)
def test_module_matches_torch(H, P, kw):
    _check(H=H, P=P, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H,P", SIZES)
def test_module_dtypes(H, P, dtype):
    _check(dtype, H=H, P=P, num_layers=2, bidirectional=True)


def test_module_shapes():
    """T = 1, B = 1, unbatched (T, I) input, no h0 (zeros of the right sizes), hidden sizes across
    several GEMM panels and unit blocks."""
    _check(T=1)
    _check(B=1, num_layers=2)
    _check(unbatched=True, num_layers=2, bidirectional=True)
    _check(with_h0=False, bidirectional=True)
    _check(with_h0=False, unbatched=True)
    _check(T=3, B=5, I=33, H=131, P=67)


def test_module_triton():
    """The Python per-step loop with the Triton step kernels (interpreter) and the projection as a
    torch matmul per step."""
    _check(backend="triton", T=3, B=2, bidirectional=True)
    _check(torch.bfloat16, backend="triton", T=2, B=2)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_packed_sequence(backend):
    I, H, P, lengths = 4, 5, 3, [3, 5, 1, 4]
    mine, ref = _pair(torch.float32, input_size=I, hidden_size=H, proj_size=P, bidirectional=True, num_layers=2)
    x = make((5, 4, I), torch.float32, seed=1, scale=1.0)
    h = [make((4, 4, P), torch.float32, seed=2, scale=0.5), make((4, 4, H), torch.float32, seed=3, scale=0.5)]
    xm, xr = _leaves([x], torch.float32)[0], _leaves([x], torch.float64)[0]
    hm, hr = _leaves(h, torch.float32), _leaves(h, torch.float64)
    pm = pack_padded_sequence(xm, lengths, enforce_sorted=False)
    pr = pack_padded_sequence(xr, lengths, enforce_sorted=False)
    with fastops.use_backend(backend):
        out, hid = mine(pm, tuple(hm))
        assert _ran() == backend, fastops.explain()
        outs = [out.data, *hid]
        grads = [make(o.shape, torch.float32, seed=9 + i, scale=1.0) for i, o in enumerate(outs)]
        torch.autograd.backward(outs, grads)
    out_r, hid_r = ref(pr, tuple(hr))
    outs_r = [out_r.data, *hid_r]
    torch.autograd.backward(outs_r, [g.double() for g in grads])
    assert torch.equal(out.batch_sizes, out_r.batch_sizes)
    assert_outputs_and_grads_close(outs, outs_r, [xm, *hm], [xr, *hr], mine, ref, torch.float32, 64, 256)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_zero_batch(backend):
    mine, ref = _pair(torch.float32, input_size=4, hidden_size=5, proj_size=2, bidirectional=True)
    x = torch.randn(3, 0, 4, requires_grad=True)
    with fastops.use_backend(backend):
        out, (h, c) = mine(x)
        assert _ran() == backend
        (out.sum() + h.sum() + c.sum()).backward()
    out_r, (h_r, c_r) = ref(x.detach().double())
    assert out.shape == out_r.shape and h.shape == h_r.shape and c.shape == c_r.shape
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in mine.parameters())


def test_dropout_between_layers():
    """Training with dropout between layers (torch's dropout on the projected outputs): eval (no
    dropout) matches torch, train differs from eval and still runs the cpu layer with gradients."""
    mine, ref = _pair(torch.float32, input_size=4, hidden_size=6, proj_size=2, num_layers=2, dropout=0.5)
    x = make((3, 2, 4), torch.float32, seed=1, scale=1.0)
    with fastops.use_backend("cpu"):
        mine.eval()
        b, _ = mine(x)
        assert_close(b, ref.eval()(x.double())[0], torch.float32, reduction=64)
        mine.train()
        xi = x.clone().requires_grad_()
        a, _ = mine(xi)
        assert _ran() == "cpu"
        a.sum().backward()
    assert not torch.equal(a, b) and xi.grad is not None and mine.weight_hr_l1.grad is not None


# ---- the op: opcheck, gradcheck, C++ loop vs torch loop, determinism ------------------------------

def _op_args(T=3, B=2, I=4, H=5, P=3, dtype=torch.float32, lengths=None, bias=True):
    x = make((T, B, I), dtype, seed=1, scale=1.0)
    h0 = make((B, P), dtype, seed=2, scale=0.5)
    c0 = make((B, H), dtype, seed=3, scale=0.5)
    # weights as torch initialises them (~ fan_in^-1/2, at most 0.4): larger ones make the recurrence
    # chaotic, where any two summation orders drift apart
    w = [make(s, dtype, seed=4 + i, scale=min(0.4, s[1] ** -0.5))
         for i, s in enumerate(((4 * H, I), (4 * H, P), (P, H)))]
    b = [make((4 * H,), dtype, seed=7 + i, scale=0.3) if bias else None for i in range(2)]
    return [x, h0, c0, *w, *b, lengths]


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_opcheck(backend):
    args = [None if a is None else (a.requires_grad_() if a.is_floating_point() else a)
            for a in _op_args(lengths=torch.tensor([3, 2]))]
    torch.library.opcheck(RP.rnn_proj_layer_op, (*args, True, backend))


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(reverse):
    """float64 runs the torch-reference loop (the cpu kernels take fp32/fp16/bf16 only)."""
    args = [None if a is None else (a.requires_grad_() if a.is_floating_point() else a)
            for a in _op_args(dtype=torch.float64, lengths=torch.tensor([3, 1]))]

    def f(*a):
        y, h, c, _, _, _ = RP.rnn_proj_layer_op(*a, reverse, "torch")
        return y, h, c
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_matches_torch_loop(dtype):
    """The C++ loop and the torch-reference loop (the same math, float32 GEMMs in torch): forward
    and backward, with lengths (an inactive first and last step), both directions, no bias, and a
    size spanning several panels."""
    tol = {torch.float32: 1.3e-6, torch.float16: 1e-3, torch.bfloat16: 1.6e-2}[dtype]
    for kw in ({"lengths": torch.tensor([5, 2, 3])}, {"bias": False}, {"T": 3, "B": 4, "I": 7, "H": 70, "P": 33},
               # enough work a step for the two-thread team: thread-owned units and columns
               {"T": 4, "B": 6, "I": 40, "H": 140, "P": 70, "lengths": torch.tensor([4, 1, 0, 3, 4, 2])},
               # two threads, one column of r: one thread owns no columns
               {"T": 3, "B": 64, "I": 8, "H": 600, "P": 1}):
        T, B = kw.get("T", 5), kw.get("B", 3)
        args = _op_args(dtype=dtype, **{"T": T, "B": B, **kw})
        for reverse in (False, True):
            a = RP._forward_cpu(*args, reverse)
            b = RP._loop_forward("torch", *args, reverse)
            for name, u, v in zip(("y", "h_n", "c_n", "saved", "c_all", "h_full"), a, b):
                scale = max(1.0, v.abs().max().item()) if v.numel() else 1.0
                torch.testing.assert_close(u.double(), v.double(), rtol=tol, atol=tol * 8 * scale,
                                           msg=lambda m: f"{name} {kw} reverse={reverse}: {m}")
            y, h_n, c_n = a[:3]
            g = [make(t.shape, dtype, seed=30 + i, scale=1.0) for i, t in enumerate((y, h_n, c_n))]
            ga = RP._backward_cpu(*g, *args, *a[0:1], *a[3:], reverse)
            gb = RP._loop_backward("torch", *g, *args, *b[0:1], *b[3:], reverse)
            for name, u, v in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "dw_hr", "db_ih", "db_hh"), ga, gb):
                scale = max(1.0, v.abs().max().item()) if v.numel() else 1.0
                torch.testing.assert_close(u.double(), v.double(), rtol=tol, atol=tol * 16 * scale,
                                           msg=lambda m: f"{name} {kw} reverse={reverse}: {m}")


@pytest.mark.parametrize("lengths", [None, torch.tensor([3, 1, 2])], ids=["full", "lengths"])
def test_cuda_loop_on_cpu_tensors(lengths):
    """The cuda backend's Python loop run on CPU tensors: fastops._C.rnn_step_forward/backward then
    dispatch to the CPU step kernels, so the loop (projection per step) and the bindings are checked
    here against the C++ layer."""
    args = _op_args(T=4, B=3, I=6, H=40, P=9, lengths=lengths)
    for reverse in (False, True):
        a = RP._forward_cpu(*args, reverse)
        b = RP._loop_forward("cuda", *args, reverse)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1.3e-6, atol=1e-6)
        g = [make(t.shape, torch.float32, seed=40 + i, scale=1.0) for i, t in enumerate(a[:3])]
        ga = RP._backward_cpu(*g, *args, a[0], *a[3:], reverse)
        gb = RP._loop_backward("cuda", *g, *args, b[0], *b[3:], reverse)
        for u, v in zip(ga, gb):
            scale = max(1.0, v.abs().max().item())
            torch.testing.assert_close(u, v, rtol=1.3e-6, atol=2e-6 * scale)


def test_backward_deterministic():
    mine, _ = _pair(torch.float32, input_size=16, hidden_size=40, proj_size=24, num_layers=2, bidirectional=True)
    x = make((6, 4, 16), torch.float32, seed=1, scale=1.0)
    g = make((6, 4, 48), torch.float32, seed=2, scale=1.0)
    with fastops.use_backend("cpu"):
        assert_backward_deterministic(mine, x, g, runs=6)


# ---- errors, explain, enable, patch, compile --------------------------------------------------------

def test_errors_as_torch():
    with pytest.raises(ValueError, match="proj_size") as want:
        torch.nn.LSTM(4, 5, proj_size=5)
    with pytest.raises(ValueError, match="proj_size") as got:
        fastops.nn.LSTM(4, 5, proj_size=5)
    assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="proj_size"):
        fastops.nn.LSTM(4, 5, proj_size=7)
    m, t = fastops.nn.LSTM(4, 5, proj_size=3, num_layers=2), torch.nn.LSTM(4, 5, proj_size=3, num_layers=2)
    m.load_state_dict(t.state_dict())
    x = torch.randn(3, 2, 4)
    for hx in ((torch.randn(2, 2, 5), torch.randn(2, 2, 5)),  # h0 [.., B, H] instead of [.., B, P]
               (torch.randn(2, 2, 3), torch.randn(2, 2, 3)),  # c0 [.., B, P] instead of [.., B, H]
               (torch.randn(1, 2, 3), torch.randn(1, 2, 5))):  # one layer's states for two layers
        with pytest.raises(RuntimeError) as want:
            t(x, hx)
        with fastops.use_backend("cpu"), pytest.raises(RuntimeError) as got:
            m(x, hx)
        assert str(got.value) == str(want.value)
        assert "hidden" in str(got.value)
    # the op itself names the argument, the expected and the given shape
    args = _op_args()
    args[1] = make((2, 5), torch.float32)
    with pytest.raises(RuntimeError, match=r"h0 must have shape \[2, 3\], got \[2, 5\]"):
        RP.rnn_proj_layer_op(*args, False, "cpu")
    args = _op_args()
    args[5] = make((5, 5), torch.float32)
    with pytest.raises(RuntimeError, match=r"w_hr must be \[P, H\] with 0 < P < H, got shape \[5, 5\]"):
        RP.rnn_proj_layer_op(*args, False, "cpu")
    args = _op_args()
    args[5] = args[5].half()
    with pytest.raises(TypeError, match="w_hr must have x's dtype"):
        RP.rnn_proj_layer_op(*args, False, "cpu")


def test_explain_and_auto_policy():
    mine, ref = _pair(torch.float32, input_size=4, hidden_size=6, proj_size=3)
    x = make((3, 2, 4), torch.float32, seed=1)
    with fastops.use_backend("cpu"):
        out, _ = mine(x)
    assert "rnn_proj_layer: cpu" in fastops.explain()
    assert_close(out, ref(x.double())[0], torch.float32, reduction=64)
    # auto follows CPU_MAX_BATCH_PROJ, with the reason when it hands the call to torch
    _dispatch.set_crossovers_enabled(True)  # the policy is auto's, like a crossover
    saved = dict(R.CPU_MAX_BATCH_PROJ)
    try:
        R.CPU_MAX_BATCH_PROJ[(R.LSTM, torch.float32)] = (0, 0)
        out_t, _ = mine(x)
        assert _ran() == "torch" and "CPU_MAX_BATCH_PROJ" in fastops.explain()
        R.CPU_MAX_BATCH_PROJ[(R.LSTM, torch.float32)] = (None, None)
        out_c, _ = mine(x)
        assert _ran() == "cpu"
        torch.testing.assert_close(out_c, out_t, rtol=1e-5, atol=1e-6)
    finally:
        R.CPU_MAX_BATCH_PROJ.clear()
        R.CPU_MAX_BATCH_PROJ.update(saved)


def test_enable_runs_torch_nn_lstm_proj_on_fastops():
    torch.manual_seed(0)
    model = torch.nn.LSTM(4, 6, proj_size=2, num_layers=2, bidirectional=True, batch_first=True)
    x = make((3, 5, 4), torch.float32, seed=1, scale=1.0)

    def run():
        model.zero_grad()
        xi = x.clone().requires_grad_()
        out, (h, c) = model(xi)
        (out.sum() + h.sum() + c.sum()).backward()
        return [out, h, c, xi.grad] + [p.grad.clone() for p in model.parameters()]
    want = run()
    _dispatch.clear_history()
    with fastops.enable(), fastops.use_backend("cpu"):
        got = run()
        assert _ran() == "cpu", fastops.explain()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_patch_swaps_and_keeps_state_dict():
    model = torch.nn.Sequential(torch.nn.LSTM(4, 6, proj_size=3))
    x = make((3, 2, 4), torch.float32, seed=1, scale=1.0)
    want = model(x)[0]
    keys = set(model.state_dict())
    fastops.patch(model)
    assert type(model[0]) is fastops.nn.LSTM and set(model.state_dict()) == keys
    with fastops.use_backend("cpu"):
        got = model(x)[0]
    assert _ran() == "cpu"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    fastops.unpatch(model)


def test_compile_module_fullgraph():
    mine, _ = _pair(torch.float32, input_size=4, hidden_size=5, proj_size=2, num_layers=2, bidirectional=True)
    x = make((3, 2, 4), torch.float32, seed=1)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    with fastops.use_backend("cpu"):
        with torch._dynamo.config.patch(allow_rnn=True):
            out_c, (h_c, c_c) = torch.compile(mine, fullgraph=True, backend="aot_eager")(xc)
        out_e, (h_e, c_e) = mine(xe)
        for a, b in ((out_c, out_e), (h_c, h_e), (c_c, c_e)):
            torch.testing.assert_close(a, b)
        (out_c.sum() + h_c.sum()).backward()
        (out_e.sum() + h_e.sum()).backward()
    torch.testing.assert_close(xc.grad, xe.grad)
