"""GPU tests of the CUDA C++ softmax kernels (csrc/cuda/softmax.cu).

`fastops.functional.softmax` runs under `fastops.use_backend("cuda")` and is compared with
`torch.softmax` computed in float64 from the same (already rounded) input, forward and backward.
The shapes reach every kernel path: warp rows (dim <= 1024: 1, 17, 129 columns), block rows
(4097, 2**20 columns), the strided-axis kernel (dim 0 / 1 of a 2-D or 3-D tensor), 128-bit and
scalar access (misaligned storage offsets), masked (-inf) entries and zero-size tensors.
Skipped where no GPU is present.
"""

import pytest
import torch

import fastops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# (rtol, atol) per storage dtype, against the float64 reference.
TOLERANCES = {
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}
DTYPES = list(TOLERANCES)
SHAPES = [(1, 1), (17, 129), (3, 4097), (2, 1 << 20), (5, 7, 3)]
DIMS = [-1, 1, 0]


def _assert_close(actual, expected, dtype, equal_nan=False):
    rtol, atol = TOLERANCES[dtype]
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(
        actual.double(), expected, rtol=rtol, atol=atol, equal_nan=equal_nan
    )


def _fastops_softmax(x, dim):
    with fastops.use_backend("cuda"):
        return fastops.functional.softmax(x, dim)


def _reference(x, dim, grad=None):
    """float64 softmax of x (and the input gradient for `grad`, if given)."""
    x64 = x.detach().double().requires_grad_(grad is not None)
    y64 = torch.softmax(x64, dim)
    if grad is None:
        return y64.detach(), None
    y64.backward(grad.double())
    return y64.detach(), x64.grad


def _check_forward_backward(x, dim, dtype, equal_nan=False):
    grad = torch.randn(x.shape, device=x.device, dtype=torch.float32).to(dtype)
    x = x.detach().requires_grad_(True)
    y = _fastops_softmax(x, dim)
    y.backward(grad)
    y_ref, dx_ref = _reference(x, dim, grad)
    _assert_close(y.detach(), y_ref, dtype, equal_nan)
    _assert_close(x.grad, dx_ref, dtype, equal_nan)


def _randn(shape, dtype, scale=2.0):
    return (torch.randn(shape, device="cuda", dtype=torch.float32) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward(shape, dim, dtype):
    torch.manual_seed(0)
    x = _randn(shape, dtype)
    y = _fastops_softmax(x, dim)
    y_ref, _ = _reference(x, dim)
    _assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward(shape, dim, dtype):
    torch.manual_seed(0)
    _check_forward_backward(_randn(shape, dtype), dim, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("shape", [(17, 129), (3, 4097)], ids=str)
def test_non_contiguous(shape, dim, dtype):
    torch.manual_seed(0)
    x = _randn(shape[::-1], dtype).t()  # transposed view of the requested shape
    assert not x.is_contiguous()
    _check_forward_backward(x, dim, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [1, 3])
@pytest.mark.parametrize("shape", [(17, 129), (33, 64), (3, 4097), (4, 8192)], ids=str)
def test_misaligned_storage(shape, offset, dtype):
    """Contiguous inputs whose data pointer is not 16-byte aligned (scalar and head/tail paths)."""
    torch.manual_seed(0)
    numel = shape[0] * shape[1]
    x = _randn((numel + offset,), dtype)[offset:].view(shape)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    _check_forward_backward(x, -1, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [-1, 0])
@pytest.mark.parametrize("shape", [(17, 129), (3, 4097)], ids=str)
def test_masked_entries(shape, dim, dtype):
    """-inf entries give exact zeros; an all -inf row or column gives NaN, as in torch."""
    torch.manual_seed(0)
    x = _randn(shape, dtype)
    x[:, ::2] = float("-inf")
    x[1, :] = float("-inf")
    _check_forward_backward(x, dim, dtype, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape, dim",
    [((0, 7), -1), ((0, 7), 0), ((3, 0), -1), ((3, 0), 0), ((4, 0, 3), 1), ((4, 0, 3), 0)],
)
def test_zero_size(shape, dim, dtype):
    x = torch.zeros(shape, device="cuda", dtype=dtype, requires_grad=True)
    y = _fastops_softmax(x, dim)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    y.backward(torch.ones_like(y))
    assert x.grad.shape == x.shape and x.grad.dtype == dtype
