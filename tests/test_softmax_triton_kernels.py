"""Triton softmax kernels called directly through their launchers, against float64 torch.

Runs on CPU tensors under the Triton interpreter: TRITON_INTERPRET=1 is set below, before triton
is first imported (it must be set before any module defining @triton.jit kernels is imported;
if fastops.triton.softmax was already imported without it, the kernels run on CUDA tensors when
a GPU is present and this module is skipped otherwise).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fastops.triton import softmax as sm  # noqa: E402

if isinstance(sm._softmax_fwd_onepass_kernel.fn, InterpretedFunction):
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("fastops.triton.softmax was imported without TRITON_INTERPRET=1 and there is no GPU",
                allow_module_level=True)

TOL = {  # (rtol, atol) against a float64 reference
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}
DTYPES = list(TOL)

# (shape, dim, path): every kernel and mask path, odd sizes; dim=70000 forces the looped kernel
# with a partial last tile, "looped" on short rows runs one or a few tiles.
CASES = [
    ((1, 1), 1, "onepass"),
    ((1, 1), 1, "looped"),
    ((17, 129), 1, "onepass"),      # 4 rows per program, last program padded
    ((17, 129), 1, "looped"),
    ((3, 4097), 1, "onepass"),      # BLOCK_D 8192, the largest one-pass tile
    ((3, 4097), 1, "looped"),
    ((2, 70000), 1, "auto"),        # looped
    ((5, 7, 3), 1, "onepass"),      # inner = 3: strided rows
    ((5, 7, 3), 1, "looped"),
]


def _view(shape, dim):
    """(outer, dim, inner) of a contiguous tensor of `shape` reduced along `dim`."""
    dim = dim % len(shape)
    outer = 1
    for s in shape[:dim]:
        outer *= s
    inner = 1
    for s in shape[dim + 1:]:
        inner *= s
    return outer, shape[dim], inner


def _close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    assert actual.dtype == dtype and actual.shape == expected.shape and actual.is_contiguous()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, equal_nan=True)


def _case_id(case):
    shape, dim, path = case
    return f"{'x'.join(map(str, shape))}-d{dim}-{path}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward(case, dtype):
    shape, dim, path = case
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    y = sm.softmax_forward(x.to(DEVICE), *_view(shape, dim), path=path).cpu()
    _close(y, sm.softmax_ref(x.double(), dim), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward(case, dtype):
    shape, dim, path = case
    gen = torch.Generator().manual_seed(1)
    y = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), dim).to(dtype)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    dx = sm.softmax_backward(dy.to(DEVICE), y.to(DEVICE), *_view(shape, dim), path=path).cpu()
    _close(dx, sm.softmax_backward_ref(dy.double(), y.double(), dim), dtype)


def test_backward_ref_matches_autograd():
    x = torch.randn(3, 11, 2, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(x, 1)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(sm.softmax_backward_ref(dy, y.detach(), 1), dx)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN rows, as meant
@pytest.mark.parametrize("path", ["onepass", "looped"])
@pytest.mark.parametrize("shape,dim", [((6, 2000), 1), ((3, 1500, 2), 1)], ids=["rows", "strided"])
def test_forward_special_values(shape, dim, path):
    """-inf elements give exactly 0, an all -inf row gives NaN, NaN and +inf poison their row:
    as torch. 2000 elements make two looped tiles, so the online rescale meets -inf and NaN."""
    inf, nan = float("inf"), float("nan")
    x = torch.randn(shape, dtype=torch.float64).movedim(dim, -1)  # view: [..., row]
    x[0] = -inf                      # all -inf
    x[1, ..., 5] = -inf              # -inf in the first tile
    x[1, ..., 1700 % x.shape[-1]] = -inf
    x[-1, ..., :-1] = -inf           # a single finite element: exactly 1
    if x.shape[0] > 3:
        x[2, 10] = nan
        x[3, 1400] = inf
        x[4, 1200:] = -inf           # second tile all -inf
    x = x.movedim(-1, dim).float().contiguous()
    y = sm.softmax_forward(x.to(DEVICE), *_view(shape, dim), path=path).cpu()
    expected = torch.softmax(x.double(), dim)
    _close(y, expected, torch.float32)
    assert (y[x == -inf] == 0).logical_or(y[x == -inf].isnan()).all()
    assert torch.equal(y.isnan(), expected.isnan())


@pytest.mark.parametrize("shape,dim", [((0, 5), 1), ((3, 0), 1), ((2, 0, 4), 1), ((4, 3, 0), 1)])
def test_zero_size(shape, dim):
    x = torch.empty(shape, device=DEVICE)
    y = sm.softmax_forward(x, *_view(shape, dim))
    dx = sm.softmax_backward(x, x, *_view(shape, dim))
    assert y.shape == dx.shape == x.shape and y.dtype == dx.dtype == x.dtype


def test_bad_inputs():
    x = torch.randn(4, 6, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous"):
        sm.softmax_forward(x.t(), 1, 4, 6)
    with pytest.raises(TypeError, match="float32"):
        sm.softmax_forward(x.double(), 4, 6, 1)
    with pytest.raises(ValueError, match="outer\\*dim\\*inner"):
        sm.softmax_forward(x, 4, 5, 1)
    with pytest.raises(ValueError, match="onepass"):
        sm.softmax_forward(torch.randn(1, 9000, device=DEVICE), 1, 9000, 1, path="onepass")
    with pytest.raises(ValueError, match="dy and y"):
        sm.softmax_backward(x, x.half(), 4, 6, 1)
