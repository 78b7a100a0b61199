"""The CUDA C++ GEMM (csrc/cuda/matmul.cu) through the matmul binding fastops._C.gemm_out
(csrc/bindings/matmul.cpp), which runs fastops::cuda::gemm on CUDA tensors.

GPU tests (marker `cuda`, skipped without a GPU) compare
    c = act(alpha * a @ b + beta * c + bias)
with a float64 reference computed from the same (already rounded) inputs, for float32 (TF32 on and
off), float16 and bfloat16 inputs, float32 or 16-bit C, transposed operands (both tensor-core
layouts per operand), unaligned and fully strided operands (the SIMT fallback), odd sizes including
1, sizes past one 128 x 128 tile, batches (broadcast too), bias per row / column, every activation,
beta != 0, non-contiguous C and zero-size problems. The error must be at most twice torch's own
error in the same dtype and TF32 setting (the FlashAttention rule of DESIGN.md) plus the absolute
tolerance of tests/utils.py for C's dtype.

On the CPU: the host simulation of the kernel's index math (tests/gemm_cuda_layout_sim.cpp).
The binding's errors are tested in tests/test_matmul.py.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastops import _C
from tests.utils import ATOL

ROOT = Path(__file__).resolve().parent.parent
ACTIVATIONS = {  # in the order of their codes (fastops::Activation)
    "none": lambda x: x,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


CODES = {name: i for i, name in enumerate(ACTIVATIONS)}


def gpu(test):
    """Marker `cuda`, skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


# ---------------------------------------------------------------------------------------------
# CPU: index math and errors
# ---------------------------------------------------------------------------------------------


def test_layout_simulation(tmp_path):
    """Every tile config x element size x operand layout: one block simulated lane by lane with
    the kernel's own index functions against a model of ldmatrix / mma from the PTX ISA."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "sim"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests" / "gemm_cuda_layout_sim.cpp"), "-o", str(exe)], check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def _rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).cuda()


def _operand(rows, cols, dtype, seed, layout, batch=None):
    """[batch,] rows x cols in the given memory layout:
    "row" / "col": row- / column-major with the leading dimension padded to a multiple of 8
    elements (16-byte aligned rows: the tensor-core path even for odd sizes);
    "packed": contiguous, unpadded (tensor cores only when the leading dimension is aligned);
    "offset": row-major at an odd storage offset (unaligned: the SIMT path);
    "strided": no unit stride (the SIMT path)."""
    lead = () if batch is None else (batch,)
    pad = lambda x: (x + 7) // 8 * 8
    if layout == "row":
        return _rand(lead + (rows, pad(cols)), dtype, seed)[..., :cols]
    if layout == "col":
        return _rand(lead + (cols, pad(rows)), dtype, seed)[..., :rows].transpose(-1, -2)
    if layout == "packed":
        return _rand(lead + (rows, cols), dtype, seed)
    if layout == "offset":
        return _rand(lead + (rows * cols + 1,), dtype, seed)[..., 1:].reshape(lead + (rows, cols))
    if layout == "strided":
        return _rand(lead + (rows, 2 * cols), dtype, seed)[..., ::2]
    raise ValueError(layout)


def _reference(a, b, c0, bias, alpha, beta, act, per_row):
    out = alpha * torch.matmul(a.double(), b.double())
    if beta != 0:
        out = out + beta * c0.double()
    if bias is not None:
        out = out + (bias.double()[:, None] if per_row else bias.double())
    return ACTIVATIONS[act](out)


def _torch_same_dtype(a, b, c0, bias, alpha, beta, act, per_row, tf32):
    """torch's own answer in the input dtype (its matmul, its TF32 setting), for the error bound."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        mm = torch.matmul(a, b).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    out = alpha * mm
    if beta != 0:
        out = out + beta * c0.float()
    if bias is not None:
        out = out + (bias.float()[:, None] if per_row else bias.float())
    return ACTIVATIONS[act](out).to(c0.dtype)


def _gemm_out(a, b, c, bias=None, alpha=1.0, beta=0.0, act="none", tf32=False, per_row=False):
    """c = act(alpha * a @ b + beta * c + bias) in place, TF32 as torch's setting says."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        _C.gemm_out(a, b, c, bias, CODES[act], alpha, beta, per_row)
        torch.cuda.synchronize()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _check(a, b, c0, bias=None, alpha=1.0, beta=0.0, act="none", tf32=False, per_row=False):
    c = c0.clone()
    _gemm_out(a, b, c, bias, alpha, beta, act, tf32, per_row)
    ref = _reference(a, b, c0, bias, alpha, beta, act, per_row)
    assert c.shape == ref.shape
    theirs = _torch_same_dtype(a, b, c0, bias, alpha, beta, act, per_row, tf32)
    err_ours = (c.double() - ref).abs().max().item() if c.numel() else 0.0
    err_torch = (theirs.double() - ref).abs().max().item() if c.numel() else 0.0
    floor = ATOL[c.dtype] * max(1.0, a.shape[-1] / 1024)
    assert err_ours <= 2 * err_torch + floor, (err_ours, err_torch)


TC_CASES = [  # (dtype, tf32)
    (torch.float16, False), (torch.bfloat16, False), (torch.float32, True), (torch.float32, False),
]
# up to 300 x 260 the 64 x 64 tile runs; 1400 x 1300 gives >= 1 block per SM: the 128 x 128 tile
SHAPES = [(1, 1, 1), (17, 9, 33), (129, 65, 257), (300, 260, 70), (3, 200, 1), (64, 8, 16), (1400, 1300, 40)]


@pytest.mark.parametrize("dtype,tf32", TC_CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layouts", [("row", "row"), ("row", "col"), ("col", "row"), ("col", "col"), ("packed", "packed")])
@gpu
def test_layouts_and_shapes(dtype, tf32, shape, layouts):
    m, n, k = shape
    a = _operand(m, k, dtype, 1, layouts[0])
    b = _operand(k, n, dtype, 2, layouts[1])
    _check(a, b, torch.empty(m, n, dtype=dtype, device="cuda"), tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", TC_CASES)
@pytest.mark.parametrize("layout", ["offset", "strided"])
@pytest.mark.parametrize("which", ["a", "b", "both"])
@gpu
def test_simt_fallback_layouts(dtype, tf32, layout, which):
    a = _operand(37, 45, dtype, 3, layout if which != "b" else "row")
    b = _operand(45, 29, dtype, 4, layout if which != "a" else "col")
    _check(a, b, torch.empty(37, 29, dtype=dtype, device="cuda"), tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", TC_CASES)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("per_row", [False, True])
@gpu
def test_epilogue(dtype, tf32, act, per_row):
    m, n, k = 70, 45, 96
    a, b = _operand(m, k, dtype, 5, "row"), _operand(k, n, dtype, 6, "col")
    c0 = _rand((m, n), dtype, 7)
    bias = _rand((m if per_row else n,), dtype, 8)
    _check(a, b, c0, bias=bias, alpha=0.5, beta=-1.25, act=act, tf32=tf32, per_row=per_row)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@gpu
def test_float32_output(dtype):
    a, b = _operand(33, 40, dtype, 9, "row"), _operand(40, 17, dtype, 10, "row")
    c0 = _rand((33, 17), torch.float32, 11)
    bias = _rand((17,), torch.float32, 12)
    _check(a, b, c0, bias=bias, beta=1.0, act="gelu")


@pytest.mark.parametrize("dtype,tf32", TC_CASES)
@pytest.mark.parametrize("broadcast", [None, "a", "b"])
@gpu
def test_batch(dtype, tf32, broadcast):
    batch, m, n, k = 3, 19, 33, 41
    a = _operand(m, k, dtype, 13, "row", None if broadcast == "a" else batch)
    b = _operand(k, n, dtype, 14, "col", None if broadcast == "b" else batch)
    c0 = _rand((batch, m, n), dtype, 15)
    _check(a, b, c0, beta=0.5, act="relu", tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", TC_CASES)
@gpu
def test_noncontiguous_c(dtype, tf32):
    a, b = _operand(24, 48, dtype, 16, "row"), _operand(48, 40, dtype, 17, "row")
    c0 = _rand((40, 24), dtype, 18).t()  # column-major C
    _check(a, b, c0, beta=2.0, act="silu", tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", TC_CASES)
@pytest.mark.parametrize("shape", [(0, 5, 7), (5, 0, 7), (6, 5, 0)])
@gpu
def test_zero_size(dtype, tf32, shape):
    m, n, k = shape
    a, b = _operand(m, k, dtype, 19, "row"), _operand(k, n, dtype, 20, "row")
    c0 = _rand((m, n), dtype, 21)
    bias = _rand((n,), dtype, 22)
    _check(a, b, c0, bias=bias, beta=0.5, act="gelu_tanh", tf32=tf32)


@gpu
def test_beta_zero_ignores_nan_c():
    a, b = _operand(20, 30, torch.float16, 23, "row"), _operand(30, 10, torch.float16, 24, "row")
    c = torch.full((20, 10), float("nan"), dtype=torch.float16, device="cuda")
    _gemm_out(a, b, c)
    assert torch.isfinite(c).all()

