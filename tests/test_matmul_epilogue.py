"""The CPU GEMM's vectorised epilogue (csrc/cpu/vec_math.h) and the fused linear + activation
backward kernel (fastops._C.activation_backward, csrc/cpu/linear_backward.cpp) against torch in
float64: every activation over a wide input range, every output dtype, odd column counts (the
masked tail of a row), alpha/beta/bias forms, determinism across thread counts, bad input."""
import pytest
import torch

from fastops import _ext
from fastops.ops import matmul as mm
from utils import ATOL, DTYPES, RTOL

ACT_CODES = [0, 1, 2, 3, 4]


def _ref_act(z: torch.Tensor, act: int) -> torch.Tensor:
    return mm.activate_torch(z, act)


def _close(got, want, dtype, atol_scale=1.0):
    torch.testing.assert_close(got.double(), want, rtol=RTOL[dtype], atol=ATOL[dtype] * atol_scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACT_CODES)
def test_epilogue_activation_wide_range(dtype, act):
    """act(a @ I + bias) hits every activation at pre-activations from -12 to 12 (the exp and erf
    clamps, the tanh form's saturation) on 16-lane vectors and masked tails (77 columns)."""
    m, n = 45, 77
    z = torch.linspace(-12.0, 12.0, m * n, dtype=torch.float64).reshape(m, n)
    z = z[:, torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    a = z.to(dtype)
    eye = torch.eye(n, dtype=dtype)
    bias = torch.linspace(-1, 1, n, dtype=torch.float64).to(dtype)
    got = _ext.C.gemm(a, eye, bias, act)
    want = _ref_act(a.double() + bias.double(), act)
    _close(got, want, dtype)
    # float32 output of bf16 inputs, no bias: the activation alone at float32 precision
    if dtype == torch.bfloat16:
        got32 = _ext.C.gemm(a, eye, None, act, out_dtype=torch.float32)
        _close(got32, _ref_act(a.double(), act), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", [2, 3, 4])
def test_epilogue_alpha_beta_row_bias(dtype, act):
    """alpha, beta * out and a per-row bias go through the same one-pass epilogue."""
    a = torch.randn(30, 41, generator=torch.Generator().manual_seed(1)).to(dtype)
    b = (torch.randn(41, 35, generator=torch.Generator().manual_seed(2)) / 6).to(dtype)
    out = torch.randn(30, 35, generator=torch.Generator().manual_seed(3)).to(dtype)
    bias = torch.randn(30, generator=torch.Generator().manual_seed(4)).to(dtype)
    want = _ref_act(0.5 * (a.double() @ b.double()) - 0.75 * out.double() + bias.double()[:, None], act)
    _ext.C.gemm_out(a, b, out, bias, act, alpha=0.5, beta=-0.75, bias_per_row=True)
    _close(out, want, dtype, atol_scale=2.0)


def test_epilogue_nan_propagates():
    a = torch.tensor([[float("nan"), 1.0], [2.0, -3.0]])
    for act in ACT_CODES:
        got = _ext.C.gemm(a, torch.eye(2), None, act)
        assert torch.isnan(got[0, 0]) and not torch.isnan(got[1]).any(), (act, got)


def _ref_backward(grad, z, act):
    g, zd = grad.double(), z.double()
    dz = g * mm.activation_grad(zd, act) if act != 0 else g
    return dz


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACT_CODES)
@pytest.mark.parametrize("shape", [(37, 77), (0, 5), (3, 1), (260, 300)])
def test_activation_backward(dtype, act, shape):
    gen = torch.Generator().manual_seed(5)
    z = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    if act == 1:
        z = torch.relu(z)  # relu's backward reads its output y
    grad = torch.randn(shape, generator=gen).to(dtype)
    dz, db = _ext.C.activation_backward(grad, z, act, True)
    want = _ref_backward(grad, z, act)
    assert dz.dtype == dtype and dz.shape == grad.shape and db.shape == (shape[1],)
    _close(dz, want, dtype)
    # the bias grad is the float32 column sum of the rounded dz
    torch.testing.assert_close(db, dz.float().sum(0).to(dtype), rtol=1e-5, atol=1e-5 * max(1, shape[0]) ** 0.5)
    dz2, db2 = _ext.C.activation_backward(grad, z, act, False)
    assert torch.equal(dz2, dz) and db2.numel() == 0


def test_activation_backward_strided_rows():
    """grad / z as column slices of wider rows (row stride > cols)."""
    base = torch.randn(40, 100, dtype=torch.bfloat16)
    zbase = torch.randn(40, 90, dtype=torch.bfloat16)
    grad, z = base[:, 3:53], zbase[:, 10:60]
    dz, db = _ext.C.activation_backward(grad, z, 2, True)
    _close(dz, _ref_backward(grad, z, 2), torch.bfloat16)
    torch.testing.assert_close(db, dz.float().sum(0).bfloat16())


def test_activation_backward_thread_count_does_not_change_bits():
    grad = torch.randn(513, 1000)
    z = torch.randn(513, 1000)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(_ext.C.activation_backward(grad, z, 3, True))
    finally:
        torch.set_num_threads(threads)
    for dz, db in outs[1:]:
        assert torch.equal(dz, outs[0][0]) and torch.equal(db, outs[0][1])


def test_activation_backward_bad_input():
    g = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="activation must be in"):
        _ext.C.activation_backward(g, g, 7, True)
    with pytest.raises(RuntimeError, match="same shape"):
        _ext.C.activation_backward(g, torch.randn(4, 6), 2, True)
    with pytest.raises(TypeError, match="same dtype"):
        _ext.C.activation_backward(g, g.double(), 2, True)
    with pytest.raises(RuntimeError, match="2-D"):
        _ext.C.activation_backward(g[0], g[0], 2, True)
    with pytest.raises(RuntimeError, match="contiguous columns"):
        _ext.C.activation_backward(g.t(), g.t(), 2, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
def test_linear_backward_takes_fused_kernel(dtype, activation, monkeypatch):
    """F.linear's cpu backward runs activation_backward and matches the torch backend's grads."""
    import fastops
    from fastops import functional as F
    calls = []
    real = _ext.C.activation_backward

    def spy(*args):
        calls.append(args[2])
        return real(*args)
    monkeypatch.setattr(_ext.C, "activation_backward", spy, raising=False)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 21, 40, generator=gen).to(dtype)
    w = (torch.randn(50, 40, generator=gen) / 6).to(dtype)
    b = torch.randn(50, generator=gen).to(dtype)
    g = torch.randn(3, 21, 50, generator=gen).to(dtype)
    grads = {}
    for backend in ("cpu", "torch"):
        ts = [t.clone().requires_grad_() for t in (x, w, b)]
        with fastops.use_backend(backend):
            F.linear(*ts, activation=activation).backward(g)
        grads[backend] = [t.grad for t in ts]
    assert calls == [mm.activation_code(activation)]
    for got, want in zip(grads["cpu"], grads["torch"]):
        _close(got, want.double(), dtype, atol_scale=4.0)
