"""fastops RNN cells and layers against torch: cells vs torch._VF cells, modules vs torch.nn modules
with a copied state_dict (outputs, final states, every gradient) over the constructor options,
PackedSequence, fp32/fp16/bf16, batch 1, sequence length 1, cpu and triton backends; opcheck,
gradcheck (float64 through the torch backend), compile of a cell loop, determinism, errors,
fallbacks and patch()."""
import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastops
from fastops import _dispatch
from fastops import functional as F
from fastops.ops import rnn as R
from utils import DTYPES, assert_backward_deterministic, assert_close, assert_outputs_and_grads_close, make

BACKENDS = ["cpu", "triton"]
CELLS = {  # name -> (fastops functional, torch._VF cell, gates, has c)
    "tanh": (F.rnn_tanh_cell, torch._VF.rnn_tanh_cell, 1, False),
    "relu": (F.rnn_relu_cell, torch._VF.rnn_relu_cell, 1, False),
    "lstm": (F.lstm_cell, torch._VF.lstm_cell, 4, True),
    "gru": (F.gru_cell, torch._VF.gru_cell, 3, False),
}


def _ran(op="rnn_layer") -> str:
    return _dispatch.last_choice(op).kernel.backend


def _leaves(tensors, dtype):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


def _cell_args(kind, B, I, H, dtype, bias=True, seed=0, unbatched=False):
    G, has_c = CELLS[kind][2], CELLS[kind][3]
    bshape = () if unbatched else (B,)
    x = make((*bshape, I), dtype, seed=seed, scale=1.0)
    h = make((*bshape, H), dtype, seed=seed + 1, scale=0.5)
    c = make((*bshape, H), dtype, seed=seed + 2, scale=0.5) if has_c else None
    w_ih = make((G * H, I), dtype, seed=seed + 3, scale=0.4)
    w_hh = make((G * H, H), dtype, seed=seed + 4, scale=0.4)
    b_ih = make((G * H,), dtype, seed=seed + 5, scale=0.3) if bias else None
    b_hh = make((G * H,), dtype, seed=seed + 6, scale=0.3) if bias else None
    return x, h, c, w_ih, w_hh, b_ih, b_hh


def _call_cell(fn, kind, x, h, c, w_ih, w_hh, b_ih, b_hh):
    if CELLS[kind][3]:
        return fn(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    return (fn(x, h, w_ih, w_hh, b_ih, b_hh),)


def _check_cell(kind, dtype, backend, B=3, I=5, H=7, bias=True, unbatched=False):
    fast_fn, vf, _, _ = CELLS[kind]
    args = _cell_args(kind, B, I, H, dtype, bias, unbatched=unbatched)
    mine = _leaves(args, dtype)
    ref = _leaves(args, torch.float64)
    with fastops.use_backend(backend):
        out = _call_cell(fast_fn, kind, *mine)
        assert _ran() == backend, fastops.explain()
        grads = [make(o.shape, dtype, seed=10 + i, scale=1.0) for i, o in enumerate(out)]
        torch.autograd.backward(out, grads)
        assert _ran("rnn_layer_backward") == backend, fastops.explain()
    if unbatched:  # torch._VF cells take 2-D input only: the reference runs on a batch of one
        out_ref = [o.squeeze(0) for o in _call_cell(vf, kind, *[None if t is None else t.unsqueeze(0) if t.dim() == 1
                                                                 and i < 3 else t for i, t in enumerate(ref)])]
    else:
        out_ref = _call_cell(vf, kind, *ref)
    torch.autograd.backward(out_ref, [g.double() for g in grads])
    for o, r in zip(out, out_ref):
        assert o.dtype == dtype
        assert_close(o, r, dtype, reduction=I + H)
    for name, m, r in zip(("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"), mine, ref):
        if m is not None:
            assert m.grad is not None, name
            assert_close(m.grad, r.grad, dtype, reduction=B * max(I, H) * 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_matches_vf(kind, dtype, backend):
    _check_cell(kind, dtype, backend)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_variants(kind):
    """batch 1, unbatched 1-D input, no bias, a hidden size above one unit block (64)."""
    _check_cell(kind, torch.float32, "cpu", B=1)
    _check_cell(kind, torch.float32, "cpu", unbatched=True)
    _check_cell(kind, torch.float32, "cpu", bias=False)
    _check_cell(kind, torch.float32, "cpu", B=2, I=33, H=131)
    _check_cell(kind, torch.float32, "triton", B=1, unbatched=True, bias=False)


# ---- modules vs torch.nn -------------------------------------------------------------------------

def _pair(cls_name, dtype, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls_name)(**kw).to(torch.float64)
    mine = getattr(fastops.nn, cls_name)(**kw).to(dtype)
    mine.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    return mine, ref


def _check_module(cls_name, dtype, backend, T=4, B=3, I=5, H=6, x_shape=None, with_h0=True, **kw):
    mine, ref = _pair(cls_name, dtype, input_size=I, hidden_size=H, **kw)
    mine.eval(), ref.eval()
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    lstm = cls_name == "LSTM"
    if x_shape is None:
        x_shape = (B, T, I) if kw.get("batch_first") else (T, B, I)
    batched = len(x_shape) == 3
    x = make(x_shape, dtype, seed=1, scale=1.0)
    hshape = (L * D, B, H) if batched else (L * D, H)
    hx = None
    if with_h0:
        hx = [make(hshape, dtype, seed=2, scale=0.5)] + ([make(hshape, dtype, seed=3, scale=0.5)] if lstm else [])
    xm, xr = _leaves([x], dtype)[0], _leaves([x], torch.float64)[0]
    hm = _leaves(hx, dtype) if hx else None
    hr = _leaves(hx, torch.float64) if hx else None
    with fastops.use_backend(backend):
        out, hid = mine(xm, (tuple(hm) if lstm else hm[0]) if hm else None)
        assert _ran() == backend, fastops.explain()
        outs = [out] + (list(hid) if lstm else [hid])
        grads = [make(o.shape, dtype, seed=20 + i, scale=1.0) for i, o in enumerate(outs)]
        torch.autograd.backward(outs, grads)
    out_r, hid_r = ref(xr, (tuple(hr) if lstm else hr[0]) if hr else None)
    outs_r = [out_r] + (list(hid_r) if lstm else [hid_r])
    torch.autograd.backward(outs_r, [g.double() for g in grads])
    red = T * B * max(I, H) * 4
    assert_outputs_and_grads_close(outs, outs_r, [xm, *(hm or [])], [xr, *(hr or [])], mine, ref, dtype,
                                   max(I, H) * 4 * L, red)


MODULE_CASES = [
    ("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {"num_layers": 2, "batch_first": True}),
    ("RNN", {"bias": False, "bidirectional": True}), ("LSTM", {"bias": False, "batch_first": True}),
    ("GRU", {"num_layers": 2, "dropout": 0.5}),  # eval: dropout off
]


@pytest.mark.parametrize("cls_name,kw", MODULE_CASES, ids=str)
def test_module_matches_torch(cls_name, kw):
    _check_module(cls_name, torch.float32, "cpu", **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_module_dtypes(cls_name, dtype):
    _check_module(cls_name, dtype, "cpu", num_layers=2, bidirectional=True)


@pytest.mark.parametrize("cls_name,kw", [("LSTM", {"bidirectional": True}), ("GRU", {}),
                                         ("RNN", {"nonlinearity": "relu"})], ids=str)
def test_module_triton(cls_name, kw):
    _check_module(cls_name, torch.float32, "triton", T=3, B=2, **kw)
    _check_module(cls_name, torch.bfloat16, "triton", T=2, B=2, **kw)


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_module_shapes(cls_name):
    """batch 1, sequence length 1, unbatched (T, I) input, no h0."""
    _check_module(cls_name, torch.float32, "cpu", B=1)
    _check_module(cls_name, torch.float32, "cpu", T=1)
    _check_module(cls_name, torch.float32, "cpu", x_shape=(4, 5), num_layers=2)
    _check_module(cls_name, torch.float32, "cpu", with_h0=False, bidirectional=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_packed_sequence(cls_name, backend):
    I, H, lengths = 4, 5, [3, 5, 1, 4]
    mine, ref = _pair(cls_name, torch.float32, input_size=I, hidden_size=H, bidirectional=True, num_layers=2)
    x = make((5, 4, I), torch.float32, seed=1, scale=1.0)
    lstm = cls_name == "LSTM"
    h = [make((4, 4, H), torch.float32, seed=s, scale=0.5) for s in ((2, 3) if lstm else (2,))]
    xm, xr = _leaves([x], torch.float32)[0], _leaves([x], torch.float64)[0]
    hm, hr = _leaves(h, torch.float32), _leaves(h, torch.float64)
    pm = pack_padded_sequence(xm, lengths, enforce_sorted=False)
    pr = pack_padded_sequence(xr, lengths, enforce_sorted=False)
    with fastops.use_backend(backend):
        out, hid = mine(pm, tuple(hm) if lstm else hm[0])
        assert _ran() == backend, fastops.explain()
        outs = [out.data] + (list(hid) if lstm else [hid])
        grads = [make(o.shape, torch.float32, seed=9 + i, scale=1.0) for i, o in enumerate(outs)]
        torch.autograd.backward(outs, grads)
    out_r, hid_r = ref(pr, tuple(hr) if lstm else hr[0])
    outs_r = [out_r.data] + (list(hid_r) if lstm else [hid_r])
    torch.autograd.backward(outs_r, [g.double() for g in grads])
    assert torch.equal(out.batch_sizes, out_r.batch_sizes)
    assert torch.equal(out.sorted_indices, out_r.sorted_indices)
    assert_outputs_and_grads_close(outs, outs_r, [xm, *hm], [xr, *hr], mine, ref, torch.float32, 64, 256)


def test_dropout_between_layers_trains():
    """Training mode with dropout: the torch RNG stream differs from torch's, so compare dropout=0 on
    one seed and check that dropout > 0 changes the output while p = 0 does not."""
    mine, _ = _pair("LSTM", torch.float32, input_size=4, hidden_size=5, num_layers=2, dropout=0.5)
    x = make((3, 2, 4), torch.float32, seed=1, scale=1.0)
    mine.train()
    a, _ = mine(x)
    mine.eval()
    b, _ = mine(x)
    assert _ran() == "cpu"
    assert not torch.equal(a, b)


# ---- ops: opcheck, gradcheck, compile, determinism --------------------------------------------

def _layer_args(mode, T=3, B=2, I=4, H=5, dtype=torch.float32, lengths=None, bias=True):
    G = R.GATES[mode]
    x = make((T, B, I), dtype, seed=1, scale=1.0)
    h0 = make((B, H), dtype, seed=2, scale=0.5)
    c0 = make((B, H), dtype, seed=3, scale=0.5) if mode == R.LSTM else None
    w = [make(s, dtype, seed=4 + i, scale=0.4) for i, s in enumerate(((G * H, I), (G * H, H)))]
    b = [make((G * H,), dtype, seed=7 + i, scale=0.3) if bias else None for i in range(2)]
    return [x, h0, c0, *w, *b, lengths]


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
@pytest.mark.parametrize("mode", [R.TANH, R.LSTM, R.GRU])
def test_opcheck(mode, backend):
    args = [None if a is None else (a.requires_grad_() if a.is_floating_point() else a)
            for a in _layer_args(mode, lengths=torch.tensor([3, 2]))]
    torch.library.opcheck(R.rnn_layer_op, (*args, mode, True, backend))


@pytest.mark.parametrize("mode", [R.TANH, R.RELU, R.LSTM, R.GRU])
def test_gradcheck_float64(mode):
    args = [None if a is None else (a.requires_grad_() if a.is_floating_point() else a)
            for a in _layer_args(mode, dtype=torch.float64, lengths=torch.tensor([3, 1]))]

    def f(*a):
        y, h, c, _, _ = R.rnn_layer_op(*a, mode, False, "torch")
        return (y, h) if c.numel() == 0 else (y, h, c)
    assert torch.autograd.gradcheck(f, args)


def test_torch_backend_matches_cpu_with_lengths():
    """The cpu C++ loop and the torch-reference loop agree, masks and reverse included."""
    for mode in (R.TANH, R.RELU, R.LSTM, R.GRU):
        args = _layer_args(mode, T=5, B=3, lengths=torch.tensor([5, 2, 3]))
        a = R.rnn_layer_op(*args, mode, True, "cpu")
        b = R.rnn_layer_op(*args, mode, True, "torch")
        for x, y in zip(a[:3], b[:3]):
            assert_close(x, y.double(), torch.float32, reduction=32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", [R.TANH, R.RELU, R.LSTM, R.GRU])
def test_cpu_inference_forward_keeps_nothing_and_matches_training(mode, dtype):
    """keep_saved=False (the no-grad path) writes no saved / c_all and gives bitwise the training
    forward's y, h_n, c_n: lengths, reverse, and a shape that runs two threads with a tail of units."""
    for shape, lengths in (((5, 3, 4, 5), torch.tensor([5, 2, 3])), ((4, 4, 24, 96), None)):
        T, B, I, H = shape
        args = _layer_args(mode, T=T, B=B, I=I, H=H, dtype=dtype, lengths=lengths)
        for reverse in (False, True):
            full = R._forward_cpu(*args, mode, reverse)
            inf = R._forward_cpu(*args, mode, reverse, keep_saved=False)
            assert inf[3].shape[0] == 0 and inf[4].shape[0] == 0
            assert full[3].shape[0] == T
            for a, b in zip(full[:3], inf[:3]):
                assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_cpu_batch_rows_split_across_threads(cls_name, dtype):
    """A batch of >= 28 rows (two register tiles) runs each thread's rows through every step on its
    own, forward and backward; against torch, and y, h_n and dx bitwise those of each half of the
    batch run alone (a half splits the hidden units across threads instead)."""
    _check_module(cls_name, dtype, "cpu", T=4, B=30, I=8, H=72)
    T, B, I, H = 3, 30, 8, 72
    mine, _ = _pair(cls_name, dtype, input_size=I, hidden_size=H)
    x = make((T, B, I), dtype, seed=1, scale=1.0)
    g = make((T, B, H), dtype, seed=2, scale=1.0)

    def run(rows):
        xr = x[:, rows].clone().requires_grad_()
        with fastops.use_backend("cpu"):
            y, hid = mine(xr)
            (dx,) = torch.autograd.grad(y, [xr], g[:, rows])
        return y.detach(), (hid[0] if cls_name == "LSTM" else hid).detach(), dx

    whole, top, bottom = run(slice(0, B)), run(slice(0, 15)), run(slice(15, B))
    for w, a, b in zip(whole, top, bottom):
        assert torch.equal(w, torch.cat([a, b], dim=1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_no_grad_and_h_n_only_losses(dtype):
    """The no-grad forward (nothing saved) and a loss on h_n / c_n alone (y's gradient is None, not
    zeros) against torch, at a size where the LSTM step runs full 16-lane vectors on two threads."""
    mine, ref = _pair("LSTM", dtype, input_size=24, hidden_size=96)
    x = make((4, 4, 24), dtype, seed=1, scale=1.0)
    with fastops.use_backend("cpu"):
        with torch.no_grad():
            out, (h, c) = mine(x)
        assert _ran() == "cpu", fastops.explain()
        out_r, (h_r, c_r) = ref(x.double())
        for a, b in ((out, out_r), (h, h_r), (c, c_r)):
            assert_close(a, b, dtype, reduction=96 * 4)
        xm, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        _, (h, c) = mine(xm)
        (h.float().sum() + 2 * c.float().sum()).backward()
    _, (h_r, c_r) = ref(xr)
    (h_r.sum() + 2 * c_r.sum()).backward()
    assert_close(xm.grad, xr.grad, dtype, reduction=4 * 4 * 96 * 4)
    pr = dict(ref.named_parameters())
    for name, p in mine.named_parameters():
        assert_close(p.grad, pr[name].grad, dtype, reduction=4 * 4 * 96 * 4)


def test_compile_cell_loop():
    w_ih, w_hh = make((20, 3), torch.float32, seed=1, scale=0.4), make((20, 5), torch.float32, seed=2, scale=0.4)

    def loop(x, h, c):
        for t in range(x.shape[0]):
            h, c = F.lstm_cell(x[t], (h, c), w_ih, w_hh)
        return h, c
    x, h, c = make((4, 2, 3), torch.float32, seed=3), make((2, 5), torch.float32, seed=4), make((2, 5), torch.float32, seed=5)
    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, h, c), loop(x, h, c)):
        torch.testing.assert_close(got, want)


def test_backward_deterministic():
    mine, _ = _pair("LSTM", torch.float32, input_size=16, hidden_size=32, num_layers=2, bidirectional=True)
    x = make((6, 4, 16), torch.float32, seed=1, scale=1.0)
    g = make((6, 4, 64), torch.float32, seed=2, scale=1.0)
    assert_backward_deterministic(mine, x, g, runs=10)


# ---- errors, fallbacks, patch -----------------------------------------------------------------

def test_errors_as_torch():
    m = fastops.nn.LSTM(4, 5)
    t = torch.nn.LSTM(4, 5)
    for bad_x, bad_h in ((torch.randn(3, 2, 6), None), (torch.randn(3, 2, 4), (torch.randn(1, 3, 5),) * 2),
                         (torch.randn(3, 2, 4), (torch.randn(1, 2, 7),) * 2)):
        with pytest.raises(RuntimeError) as want:
            t(bad_x, bad_h)
        with pytest.raises(RuntimeError) as got:
            m(bad_x, bad_h)
        assert str(got.value) == str(want.value)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        m(torch.randn(0, 2, 4))
    with pytest.raises(ValueError, match="proj_size"):
        fastops.nn.LSTM(4, 5, proj_size=5)
    with pytest.raises(ValueError, match="2D or 3D"):
        fastops.nn.GRU(4, 5)(torch.randn(2, 2, 2, 4))
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 6 expected 4"):
        F.gru_cell(torch.randn(2, 6), torch.randn(2, 5), torch.randn(15, 4), torch.randn(15, 5))
    with pytest.raises(RuntimeError, match="hidden\\[1\\] has inconsistent hidden_size"):
        F.lstm_cell(torch.randn(2, 4), (torch.randn(2, 5), torch.randn(2, 6)), torch.randn(20, 4), torch.randn(20, 5))
    with pytest.raises(RuntimeError, match="Input batch size 2 doesn't match hidden batch size 3"):
        F.rnn_tanh_cell(torch.randn(2, 4), torch.randn(3, 5), torch.randn(5, 4), torch.randn(5, 5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_batch(backend):
    mine, ref = _pair("GRU", torch.float32, input_size=4, hidden_size=5, bidirectional=True)
    x = torch.randn(3, 0, 4, requires_grad=True)
    with fastops.use_backend(backend):
        out, h = mine(x)
        assert _ran() == backend
        (out.sum() + h.sum()).backward()
    out_r, h_r = ref(x.detach().double())
    assert out.shape == out_r.shape and h.shape == h_r.shape and x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in mine.parameters())


def test_proj_size_runs_the_projected_layer():
    """LSTM proj_size > 0 runs fastops::rnn_proj_layer (tests/test_rnn_proj.py covers it)."""
    mine, ref = _pair("LSTM", torch.float32, input_size=4, hidden_size=6, proj_size=3)
    x = make((3, 2, 4), torch.float32, seed=1)
    out, (h, c) = mine(x)
    out_r, (h_r, c_r) = ref(x.double())
    assert_close(out, out_r, torch.float32, reduction=64)
    assert _ran("rnn_proj_layer") == "cpu", fastops.explain()


def test_float64_runs_torch():
    mine, ref = _pair("GRU", torch.float64, input_size=4, hidden_size=5)
    x = make((3, 2, 4), torch.float64, seed=1)
    torch.testing.assert_close(mine(x)[0], ref(x)[0])
    assert _ran() == "torch" and "float64" in fastops.explain()


def test_patch_swaps_and_restores():
    model = torch.nn.Sequential(torch.nn.LSTM(4, 5))
    cell = torch.nn.GRUCell(4, 5)
    x = make((3, 2, 4), torch.float32, seed=1)
    want = model(x)[0]
    fastops.patch(model)
    fastops.patch(cell)
    assert type(model[0]) is fastops.nn.LSTM and type(cell) is fastops.nn.GRUCell
    got = model(x)[0]
    assert _ran() == "cpu"
    assert_close(got, want.double(), torch.float32, reduction=32)
    fastops.unpatch(model)
    assert type(model[0]) is torch.nn.LSTM
    assert set(model.state_dict()) == set(torch.nn.Sequential(torch.nn.LSTM(4, 5)).state_dict())


@pytest.mark.parametrize("mode", [R.TANH, R.RELU, R.LSTM, R.GRU])
def test_step_bindings_in_the_gpu_loop(mode):
    """The Python loop of the cuda backend, run on CPU tensors: fastops._C.rnn_step_forward/backward
    then dispatch to the CPU step kernels, so the loop and the bindings are checked here."""
    args = _layer_args(mode, T=4, B=3, I=6, H=70)
    fwd_cpu = R._forward_cpu(*args, mode, True)
    fwd_loop = R._loop_forward("cuda", *args, mode, True)
    for a, b in zip(fwd_cpu, fwd_loop):
        assert_close(a, b.double(), torch.float32, reduction=128)
    dy = make(fwd_cpu[0].shape, torch.float32, seed=11, scale=1.0)
    dh = make(fwd_cpu[1].shape, torch.float32, seed=12, scale=1.0)
    dc = make(fwd_cpu[1].shape, torch.float32, seed=13, scale=1.0) if mode == R.LSTM else None
    y, _, _, saved, c_all = fwd_cpu
    g_cpu = R._backward_cpu(dy, dh, dc, *args, y, saved, c_all, mode, True)
    g_loop = R._loop_backward("cuda", dy, dh, dc, *args, y, saved, c_all, mode, True)
    for a, b in zip(g_cpu, g_loop):
        # two float32 implementations summing in different orders (C++ layer GEMMs vs per-step torch
        # GEMMs): the rounding follows the largest magnitude in the tensor (relu gradients reach ~150
        # here), so the absolute term is ~8 ulp of that, not of each element
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a.double(), b.double(), rtol=1.3e-6, atol=1e-6 * scale, equal_nan=True)


def test_compile_module_fullgraph():
    """Dynamo refuses torch.nn RNN modules unless allow_rnn is set (torch's rule, by class); with it,
    a fastops GRU compiles into one graph of fastops ops and matches eager, gradients included."""
    mine, _ = _pair("GRU", torch.float32, input_size=4, hidden_size=5, num_layers=2, bidirectional=True)
    x = make((3, 2, 4), torch.float32, seed=1)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch._dynamo.config.patch(allow_rnn=True):
        out_c, h_c = torch.compile(mine, fullgraph=True, backend="aot_eager")(xc)
    out_e, h_e = mine(xe)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(h_c, h_e)
    out_c.sum().backward()
    out_e.sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_non_contiguous(backend):
    """Strided input and hidden views, a transposed-back weight: same result as contiguous copies."""
    x = make((3, 10), torch.float32, seed=1)[:, ::2]
    h = make((5, 3), torch.float32, seed=2, scale=0.5).t()
    c = make((3, 5), torch.float32, seed=3, scale=0.5)
    w_ih = make((5, 20), torch.float32, seed=4, scale=0.4).t()
    w_hh = make((20, 5), torch.float32, seed=5, scale=0.4)
    assert not (x.is_contiguous() or h.is_contiguous() or w_ih.is_contiguous())
    with fastops.use_backend(backend):
        got = F.lstm_cell(x, (h, c), w_ih, w_hh)
    want = torch._VF.lstm_cell(x.double(), (h.double(), c.double()), w_ih.double(), w_hh.double())
    for g, w in zip(got, want):
        assert_close(g, w, torch.float32, reduction=64)


# ---- enable(): torch's own RNN ops routed to fastops ----------------------------------------------

ENABLE_MODULES = [("LSTM", {}), ("LSTM", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
                  ("GRU", {"bias": False}), ("GRU", {"num_layers": 2}), ("RNN", {"nonlinearity": "relu"}),
                  ("RNN", {"bidirectional": True})]


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("cls_name,kw", ENABLE_MODULES, ids=str)
def test_enable_runs_torch_nn_layers_on_fastops(cls_name, kw):
    """torch.nn.LSTM/GRU/RNN (plain torch modules) under enable(): aten::lstm & co. run the fastops
    layer op (forward and backward), giving torch's outputs, final states and every gradient."""
    torch.manual_seed(0)
    mine = getattr(torch.nn, cls_name)(4, 6, **kw)
    ref = copy.deepcopy(mine).double()
    shape = (2, 5, 4) if kw.get("batch_first") else (5, 2, 4)
    x = make(shape, torch.float32, seed=1, scale=1.0).requires_grad_()
    xr = x.detach().double().requires_grad_()
    _dispatch.clear_history()
    with fastops.use_backend("cpu"), fastops.enable(include="rnn"):
        out, hid = mine(x)
        assert type(mine) is getattr(torch.nn, cls_name)
        assert _ran() == "cpu" and "rnn_layer: cpu" in fastops.explain()
        hs = hid if isinstance(hid, tuple) else (hid,)
        (out.sum() + sum(h.sum() * (i + 2) for i, h in enumerate(hs))).backward()
        assert _ran("rnn_layer_backward") == "cpu"
    out_r, hid_r = ref(xr)
    hs_r = hid_r if isinstance(hid_r, tuple) else (hid_r,)
    (out_r.sum() + sum(h.sum() * (i + 2) for i, h in enumerate(hs_r))).backward()
    assert_close(out, out_r, torch.float32, reduction=64)
    for h, h_r in zip(hs, hs_r):
        assert_close(h, h_r, torch.float32, reduction=64)
    for g, g_r in zip(_grads(mine, x), _grads(ref, xr)):
        assert_close(g, g_r, torch.float32, reduction=256)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(CELLS))
def test_enable_runs_vf_cells_on_fastops(kind, dtype):
    """torch._VF cells (what torch.nn.*Cell call) under enable() run the fastops cell, with grads."""
    vf = CELLS[kind][1]
    args = _cell_args(kind, 3, 5, 7, dtype)
    mine = _leaves(args, dtype)
    ref = _leaves(args, torch.float64)
    _dispatch.clear_history()
    with fastops.use_backend("cpu"), fastops.enable(include="rnn"):
        out = _call_cell(vf, kind, *mine)
        assert _ran() == "cpu"
        sum((o.float() * (i + 1)).sum() for i, o in enumerate(out)).backward()
    out_r = _call_cell(vf, kind, *ref)
    sum((o * (i + 1)).sum() for i, o in enumerate(out_r)).backward()
    for o, o_r in zip(out, out_r):
        assert_close(o, o_r, dtype, reduction=16)
    for a, a_r in zip(mine, ref):
        if a is not None:
            assert_close(a.grad, a_r.grad, dtype, reduction=64)


def test_enable_module_cells_unbatched_and_fallbacks():
    """torch.nn.LSTMCell unbatched goes through the override; outside enable() and for float64 or a
    PackedSequence torch's kernel runs, with the reason in explain()."""
    cell = torch.nn.LSTMCell(4, 5)
    x = make((4,), torch.float32, seed=1, scale=1.0)
    want = cell(x)
    _dispatch.clear_history()
    with fastops.use_backend("cpu"), fastops.enable(include="rnn"):
        got = cell(x)
        assert _ran() == "cpu"
        lstm = torch.nn.LSTM(4, 5).double()
        lstm(make((3, 2, 4), torch.float64, seed=2))
        assert _ran() == "torch" and "float64" in fastops.explain()
        packed = pack_padded_sequence(make((3, 2, 4), torch.float32, seed=3), [3, 2])
        torch.nn.GRU(4, 5)(packed)
        assert "PackedSequence" in fastops.explain()
    for g, w in zip(got, want):
        assert_close(g, w.double(), torch.float32, reduction=16)
    _dispatch.clear_history()
    cell(x)
    assert _dispatch.last_choice("rnn_layer") is None  # no override outside enable()


def test_enable_follows_the_auto_policy():
    """Under auto, enable() runs fastops exactly where the policy (mode, dtype, batch, inference or
    training) says the cpu kernel is faster, and says why torch ran elsewhere."""
    _dispatch.set_crossovers_enabled(True)  # the policy is auto's, like a crossover
    for mode, cls, kw in ((R.LSTM, torch.nn.LSTM, {}), (R.GRU, torch.nn.GRU, {}),
                          (R.TANH, torch.nn.RNN, {}), (R.RELU, torch.nn.RNN, {"nonlinearity": "relu"})):
        m = cls(8, 16, **kw)
        for B in (1, 3, 40):
            x = make((4, B, 8), torch.float32, seed=1)
            for training in (False, True):
                _dispatch.clear_history()
                with fastops.enable(include="rnn"), torch.set_grad_enabled(training):
                    m(x)
                want = "cpu" if R.cpu_preferred(mode, torch.float32, B, training) else "torch"
                assert _ran() == want, (B, training, fastops.explain())
                if want == "torch":
                    why = fastops.explain()
                    assert "auto policy per mode, dtype and batch" in why and f"at batch {B}" in why
                    assert ("training" if training else "inference") in why


def test_modules_follow_the_auto_policy_through_the_eager_fast_path():
    """fastops.nn modules under plain auto: where the policy leaves the call to torch it goes
    straight to torch's forward (same outputs, the reason in explain()), elsewhere the cpu layer."""
    _dispatch.set_crossovers_enabled(True)
    for mode, cls in ((R.LSTM, fastops.nn.LSTM), (R.TANH, fastops.nn.RNN)):
        m = cls(8, 16, batch_first=True)
        ref = getattr(torch.nn, cls.__name__)(8, 16, batch_first=True)
        ref.load_state_dict(m.state_dict())
        for B in (1, 3, 40):
            x = make((B, 4, 8), torch.float32, seed=B)
            for training in (False, True):
                _dispatch.clear_history()
                with torch.set_grad_enabled(training):
                    out, _ = m(x)
                    want_out, _ = ref(x)
                want = "cpu" if R.cpu_preferred(mode, torch.float32, B, training) else "torch"
                assert _ran() == want, (mode, B, training, fastops.explain())
                assert_close(out, want_out, torch.float32, reduction=16)
                if want == "torch":
                    assert f"at batch {B}" in fastops.explain()
    # only the biases train: still training, as the full path judges it (bf16 LSTM B=8: cpu)
    m = fastops.nn.LSTM(8, 16).to(torch.bfloat16)
    m.weight_ih_l0.requires_grad_(False)
    m.weight_hh_l0.requires_grad_(False)
    assert R.cpu_preferred(R.LSTM, torch.bfloat16, 8, True) and not R.cpu_preferred(R.LSTM, torch.bfloat16, 8, False)
    _dispatch.clear_history()
    m(make((4, 8, 8), torch.bfloat16, seed=7))
    assert _ran() == "cpu", fastops.explain()


def test_auto_policy_is_batch_aware():
    """The policy depends on the batch and on whether a backward follows (bf16 LSTM: the cpu layer
    wins its fwd+bwd at small batch only without AMX, at every batch with it, and its forward alone
    at small batch only)."""
    amx = _dispatch.cpu_has_amx()
    assert R.cpu_preferred(R.LSTM, torch.bfloat16, 32, True) == amx
    assert R.cpu_preferred(R.LSTM, torch.bfloat16, 1, True) and R.cpu_preferred(R.LSTM, torch.bfloat16, 1, False)
    assert R.cpu_preferred(R.LSTM, torch.bfloat16, 8, True) != R.cpu_preferred(R.LSTM, torch.bfloat16, 8, False)
    assert R.cpu_preferred(R.LSTM, torch.float32, 1, False) != R.cpu_preferred(R.LSTM, torch.float32, 32, False)
    assert R.cpu_preferred(R.GRU, torch.float32, 32, False) and R.cpu_preferred(R.TANH, torch.float32, 32, False)
    assert not R.cpu_preferred(R.LSTM, torch.float16, 1, True)  # not measured: torch


def test_mm_out_dtype_probe():
    """The probe behind gates_f32's CUDA fast path answers without raising: False for CPU tensors
    (aten::mm.dtype has no CPU kernel in this torch), whatever it says, the same answer again (cached)."""
    for dtype in (torch.bfloat16, torch.float16):
        got = R.mm_out_dtype_supported("cpu", dtype)
        assert isinstance(got, bool) and got == R.mm_out_dtype_supported("cpu", dtype)
        try:
            torch.mm(torch.ones(1, 1, dtype=dtype), torch.ones(1, 1, dtype=dtype), out_dtype=torch.float32)
            runs = True
        except (NotImplementedError, RuntimeError, TypeError):
            runs = False
        assert got == runs


def test_gate_products_on_cpu_are_float32_upcasts():
    """gates_f32 off the GPU: the float32 product of the upcast operands, for every dtype."""
    for dtype in DTYPES:
        a, w = make((7, 13), dtype, seed=1), make((9, 13), dtype, seed=2)
        got = R.gates_f32(a, w)
        assert got.dtype == torch.float32
        assert torch.equal(got, a.float() @ w.float().t())
