"""The CUDA C++ conv2d kernels (csrc/cuda/conv.cu): implicit GEMM on mma.sync (float16 / bfloat16)
and the depthwise kernels (every dtype).

On the CPU (always run): the host simulation of the implicit GEMM's index math
(tests/conv_cuda_problem_sim.cpp runs csrc/cuda/conv/problem.h, the functions the kernel's loaders
call) against torch's float64 convolution for the three passes, including the 16-byte-chunk
assumptions of the loader; and the coverage rule that `fastops.explain()` reports.

On a GPU (marker `cuda`, skipped without one): `fastops.functional.conv2d` under
`fastops.use_backend("cuda")` against torch in float64 on the same rounded inputs, forward and the
three gradients, fastops' error at most twice torch's own error in the same dtype (plus the dtype
floor), for the grid of issue 6 (stride, padding incl. "same"/"valid", dilation, groups incl.
depthwise with a multiplier, kernels 1x1 / 3x3 / 5x5 / 7x7 / non-square, odd sizes, batch 1 and > 1,
unbatched, NCHW and channels_last), the fused bias + relu / silu epilogue, the documented fallbacks,
determinism of the backward, misaligned and non-contiguous inputs, zero-size inputs, opcheck and
torch.compile.
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF

import fastops
from fastops import _dispatch
from fastops import functional as F
from fastops.ops import conv as C
from test_conv import CL, _check_case, _inputs, _run
from utils import make

ROOT = Path(__file__).resolve().parent.parent
gpu = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _gpu(fn):
    for mark in gpu:
        fn = mark(fn)
    return fn


# ---------------------------------------------------------------------------------------------
# CPU: the index math of the implicit GEMM, simulated on the host
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    lib = tmp_path_factory.mktemp("conv_sim") / "sim.so"
    subprocess.run([cxx, "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{ROOT / 'csrc' / 'include'}",
                    f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "conv_cuda_problem_sim.cpp"), "-o", str(lib)],
                   check=True)
    return ctypes.CDLL(str(lib))


def _simulate(lib, shape, pass_, a, b, numel, check):
    a, b = a.contiguous().double(), b.contiguous().double()
    out = torch.full((numel,), float("nan"), dtype=torch.float64)
    ptr = lambda t: ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_double))  # noqa: E731
    rc = lib.conv_problem_sim((ctypes.c_int64 * 16)(*shape), pass_, ptr(a), ptr(b), ptr(out), int(check))
    return rc, out


# (N, C, H, W, O, KH, KW, stride, padding, dilation, groups): C / groups and O / groups multiples
# of 8 (what the kernels take), then one that is not (index math only, no chunk check).
SIM_CASES = [
    (2, 16, 7, 9, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 16, 9, 8, 32, 3, 5, (2, 1), (0, 2), (1, 2), 2),
    (2, 8, 6, 7, 16, 1, 1, (2, 2), (0, 0), (1, 1), 1),
    (1, 32, 5, 5, 32, 7, 7, (1, 1), (3, 3), (1, 1), 4),
    (1, 8, 4, 3, 8, 2, 2, (3, 2), (1, 0), (2, 1), 1),
    (1, 3, 7, 9, 5, 3, 3, (2, 2), (1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("case", SIM_CASES, ids=str)
def test_problem_simulation(sim, case):
    n, c, h, w, o, kh, kw, st, pad, dil, g = case
    x = make((n, c, h, w), torch.float64, seed=1, scale=1.0)
    wt = make((o, c // g, kh, kw), torch.float64, seed=2, scale=1.0)
    y = TF.conv2d(x, wt, None, st, pad, dil, g)
    dy = make(tuple(y.shape), torch.float64, seed=3, scale=1.0)
    dx, dw, _ = torch.ops.aten.convolution_backward(dy, x, wt, None, list(st), list(pad), list(dil), False, [0, 0],
                                                    g, [True, True, False])
    ho, wo = y.shape[2:]
    shape = [n, c, h, w, o, kh, kw, ho, wo, st[0], st[1], pad[0], pad[1], dil[0], dil[1], g]
    check = (c // g) % 8 == 0 and (o // g) % 8 == 0
    xn, dyn, wk = x.permute(0, 2, 3, 1), dy.permute(0, 2, 3, 1), wt.permute(0, 2, 3, 1).reshape(o, -1)
    rc, got = _simulate(sim, shape, 0, xn, wk, y.numel(), check)
    assert rc == 0, f"forward: a 16-byte chunk of operand {'AB'[rc - 1]} is neither whole nor zero"
    torch.testing.assert_close(got.view(n, ho, wo, o).permute(0, 3, 1, 2), y)
    rc, got = _simulate(sim, shape, 1, dyn, wk, x.numel(), check)
    assert rc == 0, f"dgrad: a 16-byte chunk of operand {'AB'[rc - 1]} is neither whole nor zero"
    torch.testing.assert_close(got.view(n, h, w, c).permute(0, 3, 1, 2), dx)
    rc, got = _simulate(sim, shape, 2, dyn, xn, wt.numel(), check)
    assert rc == 0, f"wgrad: a 16-byte chunk of operand {'AB'[rc - 1]} is neither whole nor zero"
    torch.testing.assert_close(got.view(o, kh, kw, c // g).permute(0, 3, 1, 2), dw)


def test_coverage_rule():
    """The reasons of fastops/ops/conv.py (mirrors conv2d_cuda_unsupported in fastops/conv.h)."""
    x16, x32 = torch.empty(1, 16, 4, 4, dtype=torch.float16), torch.empty(1, 16, 4, 4)
    w = lambda o, cg: torch.empty(o, cg, 3, 3, dtype=torch.float16)  # noqa: E731
    assert C.cuda_unsupported(x16, w(16, 16), 1, backward=True) is None
    assert C.cuda_unsupported(x32, w(32, 1), 16, backward=True) is None          # depthwise, float32
    assert "float32" in C.cuda_unsupported(x32, w(16, 16), 1, backward=False)
    assert "C / groups" in C.cuda_unsupported(x16, w(16, 4), 4, backward=False)  # Cg = 4
    assert C.cuda_unsupported(x16, w(12, 16), 1, backward=False) is None         # forward: any O
    assert "O / groups" in C.cuda_unsupported(x16, w(12, 16), 1, backward=True)


def test_kernel_report_rows():
    """The built extension's conv kernels, read without a GPU (python -m fastops.report): every one
    compiled for sm_80 and sm_90a, no spills, the implicit GEMM on tensor cores."""
    from fastops import _C, report
    path = report.extension_path()
    if path is None or not _C.build_meta()["with_cuda"]:
        pytest.skip("fastops._C was built without CUDA kernels")
    rows = [r for r in report.cuda_rows(["sm_80", "sm_90a"], path) if "conv_impl::" in r["kernel"]]
    if not rows:
        pytest.skip("this fastops._C predates the CUDA conv kernels")
    for arch in ("sm_80", "sm_90a"):
        names = {r["kernel"].split("(")[0] for r in rows if r["arch"] == arch}
        for kernel in ("conv_mma_kernel", "dw_forward", "dw_dgrad", "channel_reduce"):
            assert any(kernel in n for n in names), (arch, kernel)
    for r in rows:
        assert r["spills"] == 0, r
        assert r["tensor_cores"] == ("conv_mma_kernel" in r["kernel"]), r


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------

# (N or None for unbatched, C, H, W, O, KH, KW, stride, padding, dilation, groups)
CUDA_CASES = [
    (2, 16, 9, 7, 16, 3, 3, 1, 1, 1, 1),
    (1, 16, 11, 10, 24, 5, 3, (2, 1), (2, 0), (1, 2), 1),
    (2, 32, 6, 6, 16, 1, 1, 1, 0, 1, 1),            # pointwise
    (2, 32, 7, 6, 16, 1, 1, 2, 0, 1, 2),            # strided 1x1, groups
    (2, 8, 7, 9, 8, 3, 3, 1, 1, 1, 8),              # depthwise
    (2, 6, 7, 9, 12, 3, 3, 2, 1, 1, 6),             # depthwise, multiplier 2, stride 2
    (1, 16, 9, 9, 16, 7, 7, 1, 3, 1, 2),
    (3, 8, 13, 11, 8, 5, 5, 2, "valid", 1, 1),
    (None, 8, 10, 9, 8, 3, 2, 1, "same", (2, 1), 1),  # unbatched, non-square, asymmetric "same"
    (1, 16, 5, 5, 16, 3, 3, 1, 1, 2, 16),           # dilated depthwise
    (2, 64, 33, 31, 136, 3, 3, 1, 1, 1, 1),         # several 128 x 128 tiles, partial ones
    (4, 128, 14, 14, 128, 3, 3, 2, 1, 1, 1),
    (1, 3, 11, 10, 16, 3, 3, 2, 1, 1, 1),           # 3-channel stem: not covered (fallback)
    (1, 16, 6, 6, 12, 3, 3, 1, 1, 1, 1),            # O = 12: forward yes, backward falls back
]


def _expect(case, dtype):
    n, c, h, w, o, kh, kw, stride, padding, dilation, groups = case
    x = torch.empty(1, c, 1, 1, dtype=dtype)
    wt = torch.empty(o, c // groups, kh, kw, dtype=dtype)
    return "cuda" if C.cuda_unsupported(x, wt, groups, backward=True) is None else None


@_gpu
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
def test_cuda_matches_torch(case, dtype, fmt):
    if _expect(case, dtype) == "cuda":
        _check_case(case, dtype, fmt, "cuda", device="cuda")
    else:  # a documented fallback: explain() names the reason, the answer is still right
        x, w, b, kw = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs(case, dtype, fmt))
        with fastops.use_backend("cuda"):
            _run(F.conv2d, x, w, b, kw)
        assert "CUDA" in fastops.explain() or "float32" in fastops.explain()
        with fastops.use_backend("auto"):
            _run(F.conv2d, x, w, b, kw)
        assert _dispatch.last_choice("conv2d_forward").backend in ("cuda", "triton")


@_gpu
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("case", [CUDA_CASES[0], CUDA_CASES[2], CUDA_CASES[5], CUDA_CASES[10]], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_fused_activation(case, dtype, activation):
    _check_case(case, dtype, CL, "cuda", activation=activation, device="cuda")


@_gpu
@pytest.mark.parametrize("case", [CUDA_CASES[0], CUDA_CASES[5]], ids=str)
def test_cuda_deterministic_backward(case):
    x, w, b, kw = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs(case, torch.bfloat16, CL))
    with fastops.use_backend("cuda"):
        first = _run(F.conv2d, x, w, b, kw)[1]
        for _ in range(4):
            again = _run(F.conv2d, x, w, b, kw)[1]
            assert all(torch.equal(a, b_) for a, b_ in zip(first, again))


@_gpu
def test_cuda_misaligned_noncontiguous_and_empty():
    base = make((2 * 16 * 9 * 7 + 1,), torch.float16, scale=1.0, device="cuda")
    x = base[1:].view(2, 9, 7, 16).permute(0, 3, 1, 2)              # channels_last, not 16-byte aligned
    xt = make((2, 16, 7, 9), torch.float16, scale=1.0, device="cuda").transpose(2, 3)  # non-contiguous
    w = make((16, 16, 3, 3), torch.float16, seed=1, scale=1.0, device="cuda")
    for inp in (x, xt):
        with fastops.use_backend("cuda"):
            out, grads, g = _run(F.conv2d, inp, w, None, dict(padding=1))
        assert _dispatch.last_choice("conv2d_forward").backend == "cuda"
        ref, ref_grads, _ = _run(lambda a, c, d, **k: TF.conv2d(a, c, d, **k), inp.double(), w.double(), None,
                                 dict(padding=1), grad=g.double())
        torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=2e-2)
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a.double(), r, rtol=1e-2, atol=5e-2)
    empty = torch.empty(0, 16, 9, 7, dtype=torch.float16, device="cuda")
    with fastops.use_backend("cuda"):
        out, grads, _ = _run(F.conv2d, empty, w, make((16,), torch.float16, device="cuda"), dict(padding=1))
    assert out.shape == (0, 16, 9, 7) and grads[1].abs().sum() == 0 and grads[2].abs().sum() == 0


@_gpu
def test_cuda_opcheck_and_compile():
    x, w, b, _ = (t.cuda() if isinstance(t, torch.Tensor) else t
                  for t in _inputs((1, 16, 6, 5, 16, 3, 3, 1, 1, 1, 2), torch.float16, CL))
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [1, 1], [1, 1], [1, 1], 2, 1, "cuda")
    torch.library.opcheck(C.conv2d_op, args)
    g = make((1, 16, 6, 5), torch.float16, seed=5, scale=1.0, device="cuda")
    torch.library.opcheck(C.conv2d_backward_op, (g, x.detach(), w.detach(), [1, 1], [1, 1], [1, 1], 2,
                                                 [True, True, True], "cuda"))

    def f(x, w, b):
        return F.conv2d(x, w, b, padding=1, groups=2, activation="relu").float().sum()

    compiled = torch.compile(f, fullgraph=True)
    xs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    with fastops.use_backend("cuda"):
        out = compiled(*xs)
        grads = torch.autograd.grad(out, xs)
    ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref_out = TF.conv2d(*ref, padding=1, groups=2).relu().float().sum()
    torch.testing.assert_close(out, ref_out, rtol=1e-2, atol=1e-1)
    for a, r in zip(grads, torch.autograd.grad(ref_out, ref)):
        torch.testing.assert_close(a, r, rtol=1e-2, atol=1e-1)
