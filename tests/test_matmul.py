"""fastops matmul / linear against torch: cpu and triton (interpreter) backends, dtypes, odd and
zero sizes, transposed and strided views, batch broadcasting, 1-D operands, fused epilogues,
forward and backward, a long-K accumulator check, determinism, opcheck, gradcheck, compile,
enable/patch, nn.Linear, errors."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastops
from fastops import _dispatch, _ext
from fastops import functional as F
from fastops.ops import matmul as mm
from utils import DTYPES, assert_close, make

BACKENDS = ["cpu", "triton"]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]

# (a shape, b shape): odd sizes around the CPU register tile (14 x 32) and the interpreter tile
# (16), k == 0, zero-size outputs, batch broadcasting, vectors
CASES = [
    ((1, 1), (1, 1)), ((1, 7), (7, 1)), ((17, 33), (33, 29)), ((31, 65), (65, 47)),
    ((5, 0), (0, 3)), ((0, 5), (5, 3)), ((3, 5), (5, 0)),
    ((2, 3, 9, 7), (7, 4)), ((3, 1, 5, 7), (4, 7, 6)), ((5, 7), (2, 7, 3)), ((2, 5, 7), (2, 7, 3)),
    ((7,), (7,)), ((7,), (7, 4)), ((3, 5, 7), (7,)), ((7,), (2, 7, 3)),
]
TRITON_CASES = [((17, 33), (33, 29)), ((5, 0), (0, 3)), ((3, 1, 5, 7), (4, 7, 6)), ((7,), (7, 4))]


def _ran(op: str) -> str:
    return _dispatch.last_choice(op).kernel.backend


def _within_twice_torch(got, theirs, want):
    """fastops' error against the float64 reference is at most twice torch's in the same dtype."""
    assert got.shape == want.shape and got.dtype == theirs.dtype
    if got.numel():
        ours_err = (got.double() - want).abs().max().item()
        torch_err = (theirs.double() - want).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-6, (ours_err, torch_err)


def _errors_vs_torch(out, a, b, ref, dtype):
    """(fastops error, torch's own error in this dtype) against the float64 reference."""
    torch_out = torch.matmul(a.detach(), b.detach())
    return (out.double() - ref).abs().max().item(), (torch_out.double() - ref).abs().max().item()


def _check_matmul(a, b, dtype, backend):
    af = a.detach().clone().requires_grad_()
    bf = b.detach().clone().requires_grad_()
    ar = a.detach().double().requires_grad_()
    br = b.detach().double().requires_grad_()
    with fastops.use_backend(backend):
        c = F.matmul(af, bf)
        assert _ran("matmul") == backend, fastops.explain()
        g = make(c.shape, dtype, seed=3, scale=1.0)
        c.backward(g)
    ref = torch.matmul(ar, br)
    ref.backward(g.double())
    k = a.shape[-1]
    assert c.dtype == dtype and c.shape == ref.shape
    assert_close(c, ref, dtype, reduction=max(k, 1))
    if c.numel():
        ours, theirs = _errors_vs_torch(c, a, b, ref, dtype)
        assert ours <= 2 * theirs + 1e-6, (ours, theirs)
    # gradients: within twice torch's own error in this dtype (both round the GEMM outputs, and
    # the sums over broadcast batch dims, to the dtype), and close to float64 for float32
    at, bt = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    torch.matmul(at, bt).backward(g)
    for got, theirs, want in ((af.grad, at.grad, ar.grad), (bf.grad, bt.grad, br.grad)):
        _within_twice_torch(got, theirs, want)
        if dtype == torch.float32:
            assert_close(got, want, dtype, reduction=max(c.numel(), 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", CASES, ids=str)
def test_matmul_cpu(dtype, shapes):
    _check_matmul(make(shapes[0], dtype, seed=1, scale=1.0), make(shapes[1], dtype, seed=2, scale=1.0), dtype, "cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", TRITON_CASES, ids=str)
def test_matmul_triton(dtype, shapes):
    _check_matmul(make(shapes[0], dtype, seed=1, scale=1.0), make(shapes[1], dtype, seed=2, scale=1.0), dtype,
                  "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_views(backend, dtype):
    a = make((40, 23), dtype, seed=1, scale=1.0)
    b = make((37, 23), dtype, seed=2, scale=1.0)
    _check_matmul(a[::2], b.t(), dtype, backend)           # row-strided a, transposed b (no copy)
    _check_matmul(a.t()[:, 1:19], a[1:19, :5], dtype, backend)  # transposed a
    # a column-major a over several panels and k blocks (the CPU packs it 32 k steps at a time), odd k
    c = make((75, 200), dtype, seed=3, scale=1.0)
    _check_matmul(c.t(), make((75, 9), dtype, seed=4, scale=1.0), dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_tiles_cpu(dtype):
    """Several CPU units and panels per dim, plus every edge remainder (rows 1..13 of the tile)."""
    for m in (131, 200):
        a = make((m, 300), dtype, seed=m, scale=300 ** -0.5)  # outputs ~1
        b = make((300, 97), dtype, seed=m + 1, scale=1.0)
        _check_matmul(a, b, dtype, "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(backend, dtype, activation, bias):
    x = make((2, 9, 19), dtype, seed=1, scale=1.0)
    w = make((13, 19), dtype, seed=2, scale=0.5)
    bvec = make((13,), dtype, seed=3, scale=1.0) if bias else None
    xs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, bvec)]
    xr = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, bvec)]
    with fastops.use_backend(backend):
        y = F.linear(*xs, activation=activation)
        assert _ran("linear") == backend, fastops.explain()
        g = make(y.shape, dtype, seed=4, scale=1.0)
        y.backward(g)
        with torch.no_grad():  # inference: the activation is fused into the GEMM epilogue
            y_fused = F.linear(x, w, bvec, activation=activation)
    code = mm.activation_code(activation)
    ref = mm.activate_torch(torch.nn.functional.linear(*xr), code)
    ref.backward(g.double())
    xt = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, bvec)]
    torch_y = mm.activate_torch(torch.nn.functional.linear(*xt), code)
    torch_y.backward(g)
    assert y.dtype == dtype and y.shape == ref.shape
    assert_close(y, ref, dtype, reduction=19)
    assert_close(y_fused, ref, dtype, reduction=19)
    _within_twice_torch(y, torch_y, ref)
    for got, theirs, want in zip(xs, xt, xr):
        if got is not None:
            _within_twice_torch(got.grad, theirs.grad, want.grad)
            if dtype == torch.float32:
                assert_close(got.grad, want.grad, dtype, reduction=64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_long_k_accumulates_in_float32(backend, dtype):
    """K = 65536 of positive products: a float16/bfloat16 accumulator would stall far from the sum."""
    k = 65536
    a = (torch.rand(3, k, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype)
    b = ((torch.rand(k, 2, generator=torch.Generator().manual_seed(1)) + 0.5) / 16).to(dtype)  # sums ~4096
    with fastops.use_backend(backend):
        c = F.matmul(a, b)
    ref = a.double() @ b.double()
    # the only rounding left is the final cast to dtype (plus float32 sum error ~ k * 2^-24)
    torch.testing.assert_close(c.double(), ref, rtol=2 ** -7 if dtype == torch.bfloat16 else 2 ** -10, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_deterministic(backend):
    x = make((33, 40), torch.float32, seed=1, scale=1.0)
    w = make((24, 40), torch.float32, seed=2, scale=1.0)
    b = make((24,), torch.float32, seed=3, scale=1.0)
    g = make((33, 24), torch.float32, seed=4, scale=1.0)
    grads = []
    with fastops.use_backend(backend):
        for _ in range(10):
            ts = [t.clone().requires_grad_() for t in (x, w, b)]
            F.linear(*ts, activation="gelu").backward(g)
            grads.append([t.grad for t in ts])
    for run in grads[1:]:
        for got, first in zip(run, grads[0]):
            assert torch.equal(got, first)


def test_cpu_thread_count_does_not_change_bits():
    a = make((300, 257), torch.float32, seed=1, scale=1.0)
    b = make((257, 301), torch.float32, seed=2, scale=1.0)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(_ext.C.gemm(a, b))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_tile_height_does_not_change_bits(dtype):
    """15-30 rows run as register tiles of 8-11 rows (two or three even tiles, not 14 + a sliver:
    tile_rows in gemm.cpp), 56 rows as tiles of 14: every row is the same sum either way."""
    a = make((56, 300), dtype, seed=1, scale=1.0)
    b = make((300, 70), dtype, seed=2, scale=1.0)
    full = _ext.C.gemm(a, b)
    for m in (15, 16, 17, 29, 30):
        assert torch.equal(_ext.C.gemm(a[:m], b), full[:m]), m


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_isa_paths(isa):
    """The AVX2 and SSE micro-kernels (picked once per process, so in a child process)."""
    code = (
        "import torch, fastops\n"
        "from fastops import _ext\n"
        "assert _ext.C.build_meta()['cpu_isa'] == %r\n"
        "for dt in (torch.float32, torch.bfloat16, torch.float16):\n"
        "    a = torch.randn(37, 45).to(dt); b = torch.randn(45, 19).to(dt); bias = torch.randn(19).to(dt)\n"
        "    c = _ext.C.gemm(a, b.t().contiguous().t(), bias, 4)\n"
        "    ref = torch.nn.functional.silu(a.double() @ b.double() + bias.double())\n"
        "    err = (c.double() - ref).abs().max().item()\n"
        "    assert err < (1e-4 if dt == torch.float32 else 0.1), (dt, err)\n" % isa)
    env = dict(os.environ, FASTOPS_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


_BF16_PATHS_RUN = """
import torch
from fastops import _ext
assert _ext.C.build_meta()['cpu_amx_bf16'] == {amx}
g = torch.Generator().manual_seed(0)
def rnd(*s):
    return torch.randn(*s, generator=g).bfloat16()
# (m, k, n): one 16-row tile, 17 rows (two), odd k, k past one AMX step with a rest, k = 1, and
# k in blocks of 128 pairs with a partial last block (k = 801), on 16 and 32-row tiles; more A and
# column panels than one unit holds (8 x 8), each with a partial last panel
for m, k, n in ((16, 64, 32), (17, 33, 45), (70, 300, 70), (5, 1, 3), (40, 97, 33), (64, 801, 64), (16, 1000, 40),
                (300, 801, 290)):
    a, b, bias = rnd(m, k), rnd(k, n), rnd(n)
    for aa, bb in ((a, b), (a.t().contiguous().t(), b.t().contiguous().t())):  # row- and column-major
        for act in (0, 1):
            c = _ext.C.gemm(aa, bb, bias, act)
            ref = a.double() @ b.double() + bias.double()
            ref = ref.relu() if act else ref
            err = ((c.double() - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-2, (m, k, n, act, err)
    ref = a.double() @ b.double()
    for out in (torch.full((n, m), float("nan")).t(), torch.full((m, n), float("nan"))):
        _ext.C.gemm_out(a, b, out)  # float32 C, column- and row-major (full tiles go straight to C)
        assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5, (m, k, n)
    # batched, B shared (stride 0)
    a3 = rnd(3, m, k)
    c3 = _ext.C.gemm(a3, b.expand(3, k, n))
    assert torch.allclose(c3.double(), a3.double() @ b.double(), rtol=2e-2, atol=2e-2 * k ** 0.5)
# a prepacked B (the convolution's weights): 10 column panels (two units, the last partial),
# k = 576 in blocks, bias and relu; NHWC and NCHW outputs
x, w, bias = rnd(2, 64, 9, 7), rnd(300, 64, 3, 3), rnd(300)
ref = torch.nn.functional.conv2d(x.double(), w.double(), bias.double(), 1, 1).relu()
for cl in (False, True):
    xx = x.contiguous(memory_format=torch.channels_last) if cl else x
    y = _ext.C.conv2d_forward(xx, w, bias, [1, 1], [1, 1], [1, 1], 1, 1, cl)
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-2, (cl, err)
"""


@pytest.mark.skipif(not (_ext.C.build_meta()["cpu_amx_bf16"] if _ext.C is not None else False),
                    reason="this CPU (or Linux) does not give AMX-BF16 tiles")
@pytest.mark.parametrize("isa", ["amx", "avx512"])
def test_bfloat16_gemm_amx_and_avx512_paths(isa):
    """bfloat16 GEMMs on the AMX tiles (the default where the CPU has them) and on the AVX512-BF16
    kernel (FASTOPS_CPU_ISA=avx512), each in a fresh process: every shape edge of the tiles (16 /
    17 rows, odd k, k padded to whole tiles), both layouts of A and B, epilogue, strided C."""
    env = dict(os.environ, FASTOPS_CPU_ISA=isa)
    code = _BF16_PATHS_RUN.replace("{amx}", str(isa == "amx"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_gemm_out_beta_alpha_strided(out_dtype):
    """The binding's in-place form: out = act(alpha a b + beta out + bias) into a strided view."""
    a = make((9, 11), torch.bfloat16, seed=1, scale=1.0)
    b = make((11, 7), torch.bfloat16, seed=2, scale=1.0)
    base = make((7, 9), out_dtype, seed=3, scale=1.0)
    out = base.t()  # column-major output
    bias = make((9,), out_dtype, seed=4, scale=1.0)
    ref = 0.5 * (a.double() @ b.double()) + 2.0 * out.double() + bias.double()[:, None]
    _ext.C.gemm_out(a, b, out, bias, 1, alpha=0.5, beta=2.0, bias_per_row=True)
    assert_close(out, torch.relu(ref), out_dtype, reduction=11)
    # beta == 0 never reads C: NaN there must not leak
    out2 = torch.full((9, 7), float("nan"), dtype=out_dtype)
    _ext.C.gemm_out(a, b, out2)
    assert_close(out2, a.double() @ b.double(), out_dtype, reduction=11)


def test_opcheck():
    a = make((5, 7), torch.float32, seed=1)
    b = make((2, 7, 3), torch.float32, seed=2)
    x = make((2, 4, 7), torch.float32, seed=3)
    w = make((6, 7), torch.float32, seed=4)
    bias = make((6,), torch.float32, seed=5)
    for backend in BACKENDS:
        torch.library.opcheck(mm.matmul_op, (a, b, backend))
        torch.library.opcheck(mm.linear_op, (x, w, bias, 2, True, backend))
        torch.library.opcheck(mm.linear_op, (x, w, None, 1, False, backend))


def test_gradcheck_float64():
    """The autograd formulas in float64 (through the torch kernel: no float64 kernel path)."""
    a = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: mm.matmul_op(a, b, "torch"), (a, b))
    b3 = torch.randn(1, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: mm.matmul_op(a, b, "torch"), (a, b3))
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    for act in range(5):
        torch.autograd.gradcheck(lambda x, w, b: mm.linear_op(x, w, b, act, True, "torch")[0], (a, w, bias))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compile_fullgraph(backend):
    x = make((6, 7), torch.float32, seed=1, scale=1.0).requires_grad_()
    w = make((5, 7), torch.float32, seed=2, scale=1.0).requires_grad_()
    b = make((7, 3), torch.float32, seed=3, scale=1.0)

    def f(x, w, b):
        return (F.matmul(F.linear(x, w, None, "silu"), b[:5])).sum()

    with fastops.use_backend(backend):
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        out = compiled(x, w, b)
        out.backward()
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = (torch.nn.functional.silu(xr @ wr.t()) @ b[:5].double()).sum()
    ref.backward()
    assert_close(out, ref, torch.float32, reduction=64)
    assert_close(x.grad, xr.grad, torch.float32, reduction=64)
    assert_close(w.grad, wr.grad, torch.float32, reduction=64)


def test_errors():
    a = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        F.matmul(a, torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="same dtype"):
        F.matmul(a, torch.randn(3, 5, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="at least 1D"):
        F.matmul(torch.tensor(1.0), torch.randn(3))
    with pytest.raises(RuntimeError, match="in_features"):
        F.linear(a, torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="bias must have shape"):
        F.linear(a, torch.randn(4, 3), torch.randn(5))
    with pytest.raises(RuntimeError, match="same dtype"):
        F.linear(a, torch.randn(4, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="activation must be one of"):
        F.linear(a, torch.randn(4, 3), activation="tanh")
    with pytest.raises(TypeError, match="must be a Tensor"):
        F.matmul(a, [1.0])
    # the binding itself (direct calls from Python)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        _ext.C.gemm(a, torch.randn(4, 5))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        _ext.C.gemm(a.double(), torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="activation must be in"):
        _ext.C.gemm(a, torch.randn(3, 5), None, 9)
    with pytest.raises(RuntimeError, match="out must have shape"):
        _ext.C.gemm_out(a, torch.randn(3, 5), torch.empty(2, 4))


def test_float64_falls_back_to_torch():
    a = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(4, 2, dtype=torch.float64)
    with fastops.use_backend("cpu"):
        c = F.matmul(a, b)
    assert torch.allclose(c, a @ b)
    assert "fallback to torch" in fastops.explain()


def test_enable_routes_aten_ops():
    a = make((9, 20), torch.float32, seed=1, scale=1.0)
    w = make((7, 20), torch.float32, seed=2, scale=1.0)
    bias = make((7,), torch.float32, seed=3, scale=1.0)
    lin = torch.nn.Linear(20, 7)
    with fastops.enable(include="matmul"):
        _dispatch.clear_history()
        c = torch.mm(a, w.t())
        assert _ran("matmul") == "cpu", fastops.explain()
        y = torch.nn.functional.linear(a, w, bias)
        assert _ran("linear") == "cpu", fastops.explain()
        z = torch.bmm(a[None], w.t()[None])
        out = lin(a)
    assert_close(c, a.double() @ w.double().t(), torch.float32, reduction=20)
    assert_close(y, a.double() @ w.double().t() + bias.double(), torch.float32, reduction=20)
    assert_close(z[0], a.double() @ w.double().t(), torch.float32, reduction=20)
    assert_close(out, torch.nn.functional.linear(a.double(), lin.weight.double(), lin.bias.double()),
                 torch.float32, reduction=20)


def test_nn_linear_and_patch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(5, 12)
    ref = model(x)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    fastops.patch(model)
    assert isinstance(model[0], fastops.nn.Linear)
    _dispatch.clear_history()
    out = model(x)
    assert _ran("linear") == "cpu", fastops.explain()
    assert_close(out, ref.double(), torch.float32, reduction=16)
    assert model.state_dict().keys() == sd.keys()
    fastops.unpatch(model)
    assert type(model[0]) is torch.nn.Linear

    fused = fastops.nn.Linear(12, 16, activation="gelu")
    fused.load_state_dict(torch.nn.Linear(12, 16).state_dict())
    y = fused(x)
    assert_close(y, torch.nn.functional.gelu(torch.nn.functional.linear(
        x.double(), fused.weight.double(), fused.bias.double())), torch.float32, reduction=16)
    assert "activation='gelu'" in repr(fused)
    with pytest.raises(ValueError):
        fastops.nn.Linear(2, 3, activation="elu")


def test_auto_sends_tiny_calls_to_torch():
    _dispatch.set_crossovers_enabled(True)
    x = torch.randn(1, 64)
    w = torch.randn(64, 64)
    F.linear(x, w)
    assert "linear: torch" in fastops.explain()


def test_triton_large_strides_use_64bit_offsets():
    """A row stride of 2^23 elements: stride x block passes 2^31, so the kernel's in-tile offsets
    switch to 64 bits (OFF64)."""
    big = torch.zeros(3, 1 << 23, dtype=torch.float16)
    big[:, :9] = make((3, 9), torch.float16, seed=1, scale=1.0)
    a = big[:, :9]
    b = make((9, 5), torch.float16, seed=2, scale=1.0)
    with fastops.use_backend("triton"):
        c = F.matmul(a, b)
    assert_close(c, a.double() @ b.double(), torch.float16, reduction=9)


# ---- the Triton TMA kernel (sm_90+ on a GPU; here under the interpreter) --------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mnk", [(37, 48, 40), (1, 16, 8), (33, 8, 24)], ids=str)
def test_triton_tma_kernel(dtype, mnk):
    """Descriptor loads and stores: odd M, K tails read as zeros, N tails clipped; b either way round."""
    from fastops.triton import matmul as tk
    m, n, k = mnk
    a = make((m, k), dtype, seed=1, scale=1.0)
    w = make((n, k), dtype, seed=2, scale=1.0)
    bias = make((n,), dtype, seed=3, scale=1.0)
    for b in (w.t(), w.t().contiguous()):  # linear's weight as [N, K], and a row-major [K, N]
        assert tk._tma_layout(a, b) is not None
        for act in (None, "gelu"):
            got = tk.gemm(a, b, bias, act, tma=True)
            want = tk.gemm_ref(a.double(), b.double(), bias.double(), act)
            assert got.dtype == dtype and got.shape == (m, n)
            assert_close(got, want, dtype, reduction=k)


def test_triton_tma_layout_rules():
    from fastops.triton import matmul as tk
    a, b = torch.randn(4, 8), torch.randn(8, 12)
    assert tk._tma_layout(a, b) == (12, False)
    assert tk._tma_layout(a, torch.randn(12, 8).t()) == (8, True)
    assert tk._tma_layout(a, torch.randn(8, 7)) is None          # c's rows of 28 bytes
    assert tk._tma_layout(torch.randn(4, 7)[:, :6], torch.randn(6, 12)) is None  # a's rows of 28 bytes
    assert tk._tma_layout(a[:, ::2], b[::2]) is None            # a's inner stride 2
    assert tk._tma_layout(a.unsqueeze(0), b) is None            # batched: the other kernels
    assert tk._use_tma(a, b, None) is None                      # not on a CPU tensor unless asked


def test_triton_tma_kernel_lowers_to_tma_and_wgmma_on_sm90a():
    """The compiled sm_90a kernel moves tiles with TMA (UTMALDG/UTMASTG) and multiplies with wgmma
    (compiled in a child process: under TRITON_INTERPRET=1 kernels cannot be compiled)."""
    code = textwrap.dedent("""
        import sys, tempfile
        from fastops import report
        from fastops.triton import matmul as tk
        spec = next(s for s in tk.report_specs() if s["kernel"] == "gemm_tma[bf16]")
        cubin = tempfile.mktemp(suffix=".cubin")
        open(cubin, "wb").write(report.compile_triton_spec(spec, "sm_90a").asm["cubin"])
        sass = report._cuobjdump(cubin, "--dump-sass")
        print(*(op in sass for op in ("UTMALDG", "UTMASTG", "HGMMA")))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True"], proc.stdout
