"""GPU tests of fastops matmul / linear on CUDA tensors: every GPU backend usable in this build
(`cuda` once csrc/cuda/matmul.cu is in the table, `triton` always) against torch.

Each backend's result is held to twice torch's own error against a float64 reference computed
from the same (already rounded) inputs, forward and backward, with odd shapes, transposed views,
batch broadcasting, fused epilogues, a long K in fp16/bf16 and TF32 following torch's flag.
Skipped where no GPU is present.
"""
import pytest
import torch

import fastops
from fastops import _dispatch
from fastops import functional as F
from fastops.ops import matmul as mm

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [((1, 1), (1, 1)), ((17, 33), (33, 29)), ((129, 257), (257, 65)), ((1024, 1024), (1024, 1024)),
          ((3, 1, 65, 33), (4, 33, 17)), ((2, 130, 70), (70, 50))]


def _gpu_backends():
    return [k.backend for k in _dispatch.kernels("matmul") if "cuda" in k.devices
            and _dispatch.backend_status(k.backend)[0]]


def _make(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device="cuda", dtype=dtype)


def _check_within_twice_torch(out, ref64, torch_out):
    ours = (out.double() - ref64).abs().max().item()
    theirs = (torch_out.double() - ref64).abs().max().item()
    assert ours <= 2 * theirs + 1e-5, (ours, theirs)


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("backend", _gpu_backends() if torch.cuda.is_available() else [])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_matmul_vs_torch(backend, dtype, shapes):
    a = _make(shapes[0], dtype, 1).requires_grad_()
    b = _make(shapes[1], dtype, 2).requires_grad_()
    with fastops.use_backend(backend):
        c = F.matmul(a, b)
        assert _dispatch.last_choice("matmul").kernel.backend == backend
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ref = a64 @ b64
    _check_within_twice_torch(c, ref, a.detach() @ b.detach())
    g = torch.randn_like(c)
    c.backward(g)
    ref.backward(g.double())
    at, bt = a.detach().requires_grad_(), b.detach().requires_grad_()
    (at @ bt).backward(g)
    _check_within_twice_torch(a.grad, a64.grad, at.grad)
    _check_within_twice_torch(b.grad, b64.grad, bt.grad)


@pytest.mark.parametrize("backend", _gpu_backends() if torch.cuda.is_available() else [])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"])
def test_linear_fused_vs_torch(backend, dtype, activation):
    x = _make((3, 77, 96), dtype, 1)
    w = _make((130, 96), dtype, 2)
    bias = _make((130,), dtype, 3)
    with fastops.use_backend(backend), torch.no_grad():
        y = F.linear(x, w.t().contiguous().t(), bias, activation)  # transposed-storage weight
    code = mm.activation_code(activation)
    ref = mm.activate_torch(torch.nn.functional.linear(x.double(), w.double(), bias.double()), code)
    torch_y = mm.activate_torch(torch.nn.functional.linear(x, w, bias), code)
    _check_within_twice_torch(y, ref, torch_y)


@pytest.mark.parametrize("backend", _gpu_backends() if torch.cuda.is_available() else [])
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_long_k_float32_accumulator(backend, dtype):
    a = (torch.rand(64, 65536, device="cuda") + 0.5).to(dtype)
    b = ((torch.rand(65536, 64, device="cuda") + 0.5) / 16).to(dtype)  # sums ~4096: no fp16 overflow
    with fastops.use_backend(backend):
        c = F.matmul(a, b)
    ref = a.double() @ b.double()
    rtol = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    torch.testing.assert_close(c.double(), ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("backend", _gpu_backends() if torch.cuda.is_available() else [])
def test_deterministic_backward(backend):
    x = _make((257, 129), torch.float16, 1)
    w = _make((65, 129), torch.float16, 2)
    g = _make((257, 65), torch.float16, 3)
    grads = []
    with fastops.use_backend(backend):
        for _ in range(10):
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
            F.linear(xs, ws, None, "silu").backward(g)
            grads.append((xs.grad, ws.grad))
    for gx, gw in grads[1:]:
        assert torch.equal(gx, grads[0][0]) and torch.equal(gw, grads[0][1])


def test_triton_persistent_matches_tiled():
    from fastops.triton import matmul as tk
    a = _make((3, 300, 200), torch.bfloat16, 1)
    b = _make((200, 170), torch.bfloat16, 2)
    bias = _make((170,), torch.bfloat16, 3)
    assert torch.equal(tk.gemm(a, b, bias, "gelu"), tk.gemm(a, b, bias, "gelu", persistent=True))


def test_tf32_follows_torch_flag():
    from fastops.triton import matmul as tk
    a = _make((256, 1024), torch.float32, 1)
    b = _make((1024, 256), torch.float32, 2)
    ref = a.double() @ b.double()
    strict_err = (tk.gemm(a, b).double() - ref).abs().max().item()
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32_err = (tk.gemm(a, b).double() - ref).abs().max().item()
    assert strict_err < 1e-3 < tf32_err


@pytest.mark.cuda
def test_triton_tma_matches_tiled_on_sm90():
    from fastops.triton import matmul as tk
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA descriptors need sm_90+")
    a = torch.randn(300, 264, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(136, 264, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(136, device="cuda", dtype=torch.bfloat16)
    got = tk.gemm(a, w.t(), bias, "gelu")  # the default on sm_90+: the TMA kernel
    want = tk.gemm(a, w.t(), bias, "gelu", tma=False)
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)
