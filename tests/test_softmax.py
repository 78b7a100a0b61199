"""fastops softmax against torch: every backend runnable here, dtypes, dims, odd/zero sizes,
non-contiguous views, forward and backward, opcheck, gradcheck, compile, enable/patch, errors."""
import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch

import fastops
from fastops import _dispatch
from fastops import functional as F
from utils import DTYPES, assert_close, make

BACKENDS = ["cpu", "triton"]

# (shape, dim): 0-d, length-1 rows, odd sizes, strided (inner > 1) axes, zero-size
CASES = [
    ((), 0), ((1,), 0), ((3, 1), 1), ((17, 129), 1), ((17, 129), 0), ((3, 4097), -1),
    ((5, 7, 3), 1), ((2, 3, 5, 4), 2), ((4, 0), 1), ((0, 4), 1), ((2, 0, 3), 1),
]


def _backend_ran(op: str) -> str:
    return _dispatch.last_choice(op).kernel.backend


def _check(x, dim, dtype, backend, grad_seed=1):
    """Forward and backward of fastops softmax on x against torch in float64."""
    xf = x.detach().clone().requires_grad_()
    xr = x.detach().double().requires_grad_()
    with fastops.use_backend(backend):
        y = F.softmax(xf, dim)
        assert _backend_ran("softmax_forward") == backend, fastops.explain()
        g = make(y.shape, dtype, seed=grad_seed, scale=1.0)
        y.backward(g)
        assert _backend_ran("softmax_backward") == backend, fastops.explain()
    ref = torch.softmax(xr, dim)
    ref.backward(g.double())
    n = x.shape[dim] if x.dim() else 1
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref, dtype, reduction=n)
    assert_close(xf.grad, xr.grad, dtype, reduction=n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", CASES, ids=str)
def test_matches_torch(backend, dtype, shape, dim):
    _check(make(shape, dtype), dim, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous(backend, dtype):
    base = make((129, 34), dtype)
    _check(base.t(), 1, dtype, backend)           # transposed view
    _check(base[:, ::2], 0, dtype, backend)       # strided slice
    _check(base.t()[3:9], 0, dtype, backend)      # offset + transposed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_long_rows_cpu(dtype):
    _check(make((2, 1 << 20), dtype, scale=8.0), 1, dtype, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_long_row_triton(dtype):
    """A row longer than the one-pass limit takes the looped (online) Triton path."""
    _check(make((1, 70001), dtype), 1, dtype, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinities_and_nan(backend):
    x = torch.tensor([[0.0, -float("inf"), 1.0, 2.0],
                      [-float("inf")] * 4,
                      [1.0, float("nan"), 0.0, 0.0],
                      [float("inf"), 0.0, 1.0, 1.0]])
    with fastops.use_backend(backend):
        y = F.softmax(x, 1)
    torch.testing.assert_close(y, torch.softmax(x, 1), equal_nan=True)
    assert y[0, 1] == 0.0  # exp(-inf) is exactly zero


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_reduction_accumulates_in_float32(backend):
    """65,536 bf16 terms: a bf16 accumulator would lose the sum (trust issue, item 9)."""
    x = make((2, 65536), torch.bfloat16, scale=0.1)
    with fastops.use_backend(backend):
        y = F.softmax(x, 1)
    ref = torch.softmax(x.float(), 1)
    torch.testing.assert_close(y.float(), ref, rtol=1.6e-2, atol=1e-7)
    torch.testing.assert_close(y.float().sum(1), torch.ones(2), rtol=0, atol=2e-2)


@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
def test_opcheck(backend):
    x = make((5, 33), torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastops.softmax.default, (x, 1, backend))
    y = torch.softmax(x.detach(), 1).requires_grad_()
    g = make((5, 33), torch.float32, seed=2).requires_grad_()
    torch.library.opcheck(torch.ops.fastops.softmax_backward.default, (g, y, 1, backend))


def test_gradcheck_float64():
    """float64 runs on torch inside the op; this checks the op's autograd formulas, incl. double backward."""
    x = make((4, 7), torch.float64, scale=1.0).requires_grad_()
    for dim in (0, 1):
        fn = lambda t: torch.ops.fastops.softmax(t, dim, "auto")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph(compiler):
    def f(t):
        return F.softmax(t * 2.0, -1).sum(0)

    x = make((6, 40), torch.float32)
    xc = x.clone().requires_grad_()
    xe = x.clone().requires_grad_()
    out = torch.compile(f, fullgraph=True, backend=compiler)(xc)
    assert _backend_ran("softmax_forward") == "cpu"
    ref = f(xe)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_enable_routes_torch_ops_and_disable_restores():
    x = make((8, 31), torch.float32).requires_grad_()
    ref = torch.softmax(x, 1)
    with fastops.enable() as scope:
        assert "softmax" in scope.families
        for call in (lambda: torch.softmax(x, 1), lambda: torch.nn.functional.softmax(x, dim=1),
                     lambda: x.softmax(1), lambda: torch.nn.Softmax(dim=1)(x)):
            _dispatch.clear_history()
            y = call()
            assert _backend_ran("softmax_forward") == "cpu", fastops.explain()
            torch.testing.assert_close(y, ref)
            y.backward(torch.ones_like(y))
            assert _backend_ran("softmax_backward") == "cpu"
            assert "auto: first usable" in fastops.explain(), fastops.explain()
    _dispatch.clear_history()
    torch.softmax(x, 1)
    assert _dispatch.last_choice("softmax_forward") is None  # torch's own kernel again


def test_enable_without_with_and_nesting():
    x = make((4, 9), torch.float32)
    fastops.enable()
    with fastops.enable(exclude="softmax"):
        _dispatch.clear_history()
        torch.softmax(x, 1)
        assert _dispatch.last_choice("softmax_forward") is None
    _dispatch.clear_history()
    torch.softmax(x, 1)
    assert _backend_ran("softmax_forward") == "cpu"  # the outer scope is back
    fastops.disable()
    _dispatch.clear_history()
    torch.softmax(x, 1)
    assert _dispatch.last_choice("softmax_forward") is None


def test_enable_falls_back_for_float64_and_strict_raises():
    x = make((4, 9), torch.float64)
    with fastops.enable():
        torch.testing.assert_close(torch.softmax(x, 1), torch.softmax(x.clone(), 1))
        assert _backend_ran("softmax_forward") == "torch"
        assert "float64" in _dispatch.last_choice("softmax_forward").reason
    with fastops.enable(strict=True):
        with pytest.raises(NotImplementedError, match="float64"):
            torch.softmax(x, 1)
    fastops.set_strict(True)
    with pytest.raises(NotImplementedError, match="softmax_forward"):
        F.softmax(x, 1)


@pytest.mark.parametrize("bad", [["nope"], "nope", ["softmax", "matmulx"]])
def test_unknown_family_names(bad):
    with pytest.raises(ValueError, match="valid names are .*softmax"):
        fastops.enable(include=bad)
    with pytest.raises(ValueError, match="valid names"):
        fastops.patch(torch.nn.Softmax(1), exclude=bad)


def test_patch_and_unpatch_keep_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Softmax(dim=1))
    x = torch.randn(3, 6)
    ref = model(x)
    keys = list(model.state_dict())
    fastops.patch(model)
    assert type(model[1]) is fastops.nn.Softmax and isinstance(model[1], torch.nn.Softmax)
    _dispatch.clear_history()
    torch.testing.assert_close(model(x), ref)
    assert _backend_ran("softmax_forward") == "cpu"
    assert list(model.state_dict()) == keys
    clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    torch.testing.assert_close(clone(x), ref)
    fastops.unpatch(model)
    assert type(model[1]) is torch.nn.Softmax
    _dispatch.clear_history()
    model(x)
    assert _dispatch.last_choice("softmax_forward") is None


def test_patch_rejects_non_modules():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        fastops.patch("model")


def test_bad_input():
    x = make((3, 4), torch.float32)
    with pytest.raises(IndexError, match="dim"):
        F.softmax(x, 2)
    with pytest.raises(NotImplementedError, match="x must be a floating-point"):
        F.softmax(torch.arange(4), 0)
    with pytest.raises(TypeError, match="x must be a Tensor"):
        F.softmax([1.0, 2.0], 0)
    y = torch.softmax(x, 1)
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.fastops.softmax_backward(torch.empty(3, 4, device="meta"), y, 1, "cpu")
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.fastops.softmax_backward(y.double(), y, 1, "cpu")
    with pytest.raises(RuntimeError, match="shape"):
        torch.ops.fastops.softmax_backward(y[:, :2], y, 1, "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastops.set_backend("gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        torch.ops.fastops.softmax(x, 1, "gpu")


def test_dtype_argument_casts_first():
    x = make((3, 10), torch.float16)
    y = F.softmax(x, 1, dtype=torch.float32)
    assert y.dtype == torch.float32
    assert_close(y, torch.softmax(x.double(), 1), torch.float32)


def test_fallback_logged_once_per_reason():
    code = ("import torch, fastops; x = torch.randn(3, 4, dtype=torch.float64)\n"
            "for _ in range(3): fastops.functional.softmax(x, 1)\n")
    env = dict(os.environ, FASTOPS_LOG="1")
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stderr
    lines = [line for line in err.splitlines() if "softmax_forward -> torch" in line]
    assert len(lines) == 1 and "float64" in lines[0], err
