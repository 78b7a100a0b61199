"""fastops conv2d against torch's conv2d (float64 reference): cpu and triton backends, stride /
padding (incl. "same", "valid") / dilation / groups (incl. depthwise with multiplier) / kernels 1x1,
3x3, 5x5, 7x7 and non-square, odd spatial sizes, batch 1 and > 1 and unbatched, NCHW and
channels_last, every dtype, forward and the three gradients; the fused bias + relu/silu epilogue;
gradcheck (float64 through torch), opcheck, torch.compile, determinism, a long-K bfloat16 case,
errors as torch raises them, nn.Conv2d (padding modes, state_dict), enable() and patch()."""
import pytest
import torch
import torch.nn.functional as TF

import fastops
from fastops import _dispatch
from fastops import functional as F
from fastops.ops import conv as C
from utils import ATOL, DTYPES, RTOL, make

CL = torch.channels_last

# (N or None for unbatched, C, H, W, O, KH, KW, stride, padding, dilation, groups)
CPU_CASES = [
    (2, 4, 9, 7, 6, 3, 3, 1, 1, 1, 1),
    (1, 3, 11, 10, 5, 5, 3, (2, 1), (2, 0), (1, 2), 1),
    (2, 8, 6, 6, 8, 1, 1, 1, 0, 1, 1),           # pointwise: GEMM in place
    (2, 8, 7, 6, 4, 1, 1, 2, 0, 1, 2),           # strided 1x1, groups
    (2, 6, 7, 9, 6, 3, 3, 1, 1, 1, 6),           # depthwise
    (2, 6, 7, 9, 12, 3, 3, 2, 1, 1, 6),          # depthwise, multiplier 2, stride 2
    (1, 4, 9, 9, 8, 7, 7, 1, 3, 1, 2),
    (3, 5, 13, 11, 7, 5, 5, 2, "valid", 1, 1),
    (None, 3, 10, 9, 4, 3, 2, 1, "same", (2, 1), 1),  # unbatched, non-square, asymmetric "same"
    (1, 16, 5, 5, 16, 3, 3, 1, 1, 2, 16),        # dilated depthwise
    (2, 32, 13, 13, 32, 3, 3, 1, 1, 1, 32),      # depthwise: NHWC register blocks of 4 pixels x 32 channels
    (1, 48, 12, 15, 48, 5, 5, 2, 2, 2, 48),      # depthwise blocks with stride and dilation, a 16-channel rest
    (2, 80, 9, 11, 80, 3, 3, 1, 1, 1, 80),       # depthwise 3x3: wgrad blocks of 32 + 32 + 16 channels
    (3, 40, 7, 8, 40, 3, 3, 1, 1, 1, 40),        # depthwise 3x3 wgrad: a 32-channel block, 8 on the generic loop
    (1, 64, 10, 9, 64, 3, 3, 2, 1, 1, 64),       # depthwise 3x3 stride 2: wgrad blocks of strided pixels
    (1, 16, 6, 70, 16, 3, 3, 1, 1, 1, 16),       # depthwise NCHW rows of 64 + 6 pixels (4 and 1 vectors)
    (2, 8, 5, 37, 8, 3, 3, 1, 1, 2, 8),          # depthwise NCHW, dilated: rows of 35 pixels (3 vectors)
    (2, 6, 5, 8, 6, 2, 4, 1, "same", 1, 3),      # even kernel "same"
    (1, 32, 9, 12, 32, 5, 5, 1, 2, 1, 32),       # depthwise 5x5: NHWC row blocks of 8 pixels
    (2, 48, 11, 19, 48, 5, 5, 2, 2, 1, 48),      # depthwise 5x5 stride 2: row blocks and a 16-channel rest
    (1, 32, 8, 10, 32, 7, 7, 1, 3, 1, 32),       # depthwise 7x7 row blocks
    (2, 32, 6, 6, 32, 3, 3, 1, 1, 1, 32),        # depthwise rows of 6 pixels: row blocks of 4
    (1, 32, 7, 13, 32, 3, 3, 1, 0, 1, 32),       # depthwise unpadded: no edge blocks
]
DW_ROWS_CASE = CPU_CASES[-4]  # the depthwise forward's row blocks, 32 + 16 channels
TRITON_CASES = [
    (2, 4, 9, 7, 6, 3, 3, 1, 1, 1, 1),
    (1, 3, 11, 10, 5, 5, 3, (2, 1), (2, 0), (1, 2), 1),
    (None, 6, 7, 5, 12, 3, 3, 2, 1, 1, 6),
    (1, 4, 6, 6, 8, 1, 1, 1, 0, 1, 2),
]


def _inputs(case, dtype, fmt, bias=True, seed=0):
    n, c, h, w, o, kh, kw, stride, padding, dilation, groups = case
    shape = (c, h, w) if n is None else (n, c, h, w)
    x = make(shape, dtype, seed=seed, scale=1.0)
    if fmt == CL and n is not None:
        x = x.contiguous(memory_format=CL)
    wt = make((o, c // groups, kh, kw), dtype, seed=seed + 1, scale=1.0)
    b = make((o,), dtype, seed=seed + 2, scale=1.0) if bias else None
    return x, wt, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _run(fn, x, w, b, kw, grad=None, **extra):
    ts = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    out = fn(*ts[:2], ts[2] if b is not None else None, **kw, **extra)
    g = grad if grad is not None else make(out.shape, out.dtype, seed=99, scale=1.0)
    grads = torch.autograd.grad(out, ts, g.to(out.dtype))
    return out, grads, g


def _check_case(case, dtype, fmt, backend, activation=None, device="cpu", expect=None):
    """`expect`: the backend that must run (default `backend`; "torch" for a documented fallback)."""
    x, w, b, kw = (t.to(device) if isinstance(t, torch.Tensor) else t for t in _inputs(case, dtype, fmt))
    _dispatch.clear_history()
    with fastops.use_backend(backend):
        out, grads, g = _run(F.conv2d, x, w, b, kw, activation=activation)
    assert _dispatch.last_choice("conv2d_forward").backend == (expect or backend)
    if (expect or backend) != "torch":  # a torch forward records no fastops backward
        assert _dispatch.last_choice("conv2d_backward").backend == (expect or backend)
    ref_out, ref_grads, _ = _run(_torch_conv(activation), x.double(), w.double(), b.double(), kw, grad=g.double())
    assert out.dtype == dtype and out.shape == ref_out.shape
    if x.dim() == 4:
        assert out.is_contiguous(memory_format=fmt), "output must keep torch's memory format"
        assert grads[0].is_contiguous(memory_format=fmt)
    k = w.shape[1] * w.shape[2] * w.shape[3]
    pixels = ref_out.numel() // ref_out.shape[-3]
    # fastops' error against float64 at most twice torch's own error in this dtype (plus a floor)
    torch_out, torch_grads, _ = _run(_torch_conv(activation), x, w, b, kw, grad=g)
    for name, a, r, t, red in (("out", out, ref_out, torch_out, k), ("dx", grads[0], ref_grads[0], torch_grads[0], k),
                               ("dw", grads[1], ref_grads[1], torch_grads[1], pixels),
                               ("db", grads[2], ref_grads[2], torch_grads[2], pixels)):
        err = (a.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        floor = ATOL[dtype] * max(1.0, red / 1024) + RTOL[dtype] * r.abs().max().item()
        assert err <= 2 * torch_err + floor, f"{name}: error {err:.3g}, torch's {torch_err:.3g}, floor {floor:.3g}"


def _torch_conv(activation):
    def fn(x, w, b, activation=None, **kw):
        return C.apply_activation(TF.conv2d(x, w, b, **kw), C.ACTIVATIONS[activation])
    return lambda x, w, b, **kw: fn(x, w, b, activation=activation, **kw)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_cpu_matches_torch(case, dtype, fmt):
    _check_case(case, dtype, fmt, "cpu")


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", [CPU_CASES[0], CPU_CASES[2], CPU_CASES[5], DW_ROWS_CASE], ids=str)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_fused_activation(backend, case, fmt, activation):
    _check_case(case, torch.float32, fmt, backend, activation)
    # inference: the kernel's own epilogue (no autograd graph)
    x, w, b, kw = _inputs(case, torch.bfloat16, fmt)
    with fastops.use_backend(backend), torch.no_grad():
        y = F.conv2d(x, w, b, activation=activation, **kw)
    ref = _torch_conv(activation)(x.double(), w.double(), b.double(), **kw)
    torch.testing.assert_close(y.double(), ref, rtol=RTOL[torch.bfloat16] * 2, atol=ATOL[torch.bfloat16] * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_triton_matches_torch(case, dtype):
    _check_case(case, dtype, CL if case[0] == 2 else torch.contiguous_format, "triton")


def test_float16_triton():
    _check_case(TRITON_CASES[0], torch.float16, torch.contiguous_format, "triton")


def test_no_bias_and_partial_grads():
    x, w, _, kw = _inputs(CPU_CASES[0], torch.float32, CL, bias=False)
    xr = x.clone().requires_grad_()
    with fastops.use_backend("cpu"):
        y = F.conv2d(xr, w, None, **kw)  # only the input needs a gradient
        (gx,) = torch.autograd.grad(y.sum(), xr)
    torch.testing.assert_close(gx, torch.autograd.grad(TF.conv2d(xr, w, None, **kw).sum(), xr)[0])


def test_long_k_bfloat16_against_float32():
    """K = 256 * 9 = 2304: float32 accumulation keeps bfloat16 within its rounding of the result."""
    x = make((1, 256, 9, 9), torch.bfloat16, scale=1.0)
    w = make((32, 256, 3, 3), torch.bfloat16, seed=1, scale=0.05)
    with fastops.use_backend("cpu"):
        y = F.conv2d(x, w, padding=1)
    ref = TF.conv2d(x.float(), w.float(), padding=1)
    torch.testing.assert_close(y.float(), ref, rtol=1.6e-2, atol=1.6e-2 * ref.abs().max().item() / 8)


def test_noncontiguous_and_empty():
    x = make((2, 3, 10, 12), torch.float32, scale=1.0)[:, :, ::2, 1:]  # strided view
    w = make((4, 3, 3, 3), torch.float32, seed=1, scale=1.0)
    with fastops.use_backend("cpu"):
        torch.testing.assert_close(F.conv2d(x, w, padding=1), TF.conv2d(x, w, padding=1))
        e = torch.zeros(0, 3, 8, 8, requires_grad=True)
        w.requires_grad_()
        y = F.conv2d(e, w, padding=1)
        assert y.shape == (0, 4, 8, 8)
        (gw,) = torch.autograd.grad(y.sum(), [w])
        assert torch.equal(gw, torch.zeros_like(w))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_no_input_channels_matches_torch(fmt):
    # torch gives C = 0 an output without channels, [N, 0, HO, WO]; fastops leaves it to torch
    x = torch.zeros(2, 0, 6, 5).contiguous(memory_format=fmt)
    w, b = make((4, 0, 3, 3), torch.float32), make((4,), torch.float32, seed=2)
    ref = TF.conv2d(x, w, b, 2, 1)
    xt, wt, bt = (t.clone().requires_grad_() for t in (x, w, b))
    TF.conv2d(xt, wt, bt, 2, 1).sum().backward()
    xf, wf, bf = (t.clone().requires_grad_() for t in (x, w, b))
    with fastops.use_backend("cpu"):
        y = F.conv2d(xf, wf, bf, 2, 1)
        assert "C = 0" in fastops.explain()
        y.sum().backward()
        compiled = torch.compile(lambda a, c, d: F.conv2d(a, c, d, 2, 1), fullgraph=True)(x, w, b)
    assert y.shape == ref.shape == compiled.shape == (2, 0, 3, 3)
    assert xf.grad.shape == xt.grad.shape and wf.grad.shape == wt.grad.shape
    torch.testing.assert_close(bf.grad, bt.grad)


@pytest.mark.parametrize("c", [1, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_results_own_their_memory(c, channels_last):
    # The NCHW <-> NHWC copies of x, dy and dx live in reused workspace blocks (fastops/workspace.h):
    # what a call returns must not be one of them, so a later call leaves it as it was.
    from fastops import _ext
    w = make((3, c, 3, 3), torch.float32, seed=1, scale=1.0)
    outs = []
    for seed in (2, 3):
        x = make((2, c, 7, 6), torch.float32, seed=seed, scale=1.0)
        dy = make((2, 3, 7, 6), torch.float32, seed=seed + 10, scale=1.0)
        y = _ext.C.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1, 0, channels_last)
        dx, dw, db = _ext.C.conv2d_backward(dy, x, w, [1, 1], [1, 1], [1, 1], 1, channels_last, [True, True, True])
        xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = TF.conv2d(xt, wt, padding=1)
        ref.backward(dy)
        outs.append(((y, dx, dw, db), (ref.detach(), xt.grad, wt.grad, dy.sum((0, 2, 3))), (y.clone(), dx.clone())))
    for (got, want, kept) in outs:
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=RTOL[torch.float32], atol=ATOL[torch.float32])
        assert torch.equal(got[0], kept[0]) and torch.equal(got[1], kept[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_depthwise_nchw_kernel(dtype):
    # Small NCHW depthwise planes run channels_last internally (C.DEPTHWISE_NHWC_MAX_PIXELS): the
    # NCHW kernel itself, asked for through the binding's layout flag, on strides, dilation, a
    # multiplier and rows of 1-4 vectors, forward with bias and relu
    from fastops import _ext
    for (n, c, h, w, o, stride, dil) in ((2, 6, 7, 9, 12, 2, 1), (1, 8, 10, 9, 8, 2, 1), (2, 8, 5, 37, 8, 1, 2),
                                         (1, 4, 6, 70, 4, 1, 1), (1, 4, 5, 23, 4, 3, 2)):
        x = make((n, c, h, w), dtype, seed=1, scale=1.0)
        wt = make((o, 1, 3, 3), dtype, seed=2, scale=0.5)
        b = make((o,), dtype, seed=3, scale=0.5)
        y = _ext.C.conv2d_forward(x, wt, b, [stride] * 2, [1, 1], [dil] * 2, c, 1, False)
        ref = torch.relu(TF.conv2d(x.double(), wt.double(), b.double(), stride, 1, dil, c))
        assert y.is_contiguous()
        torch.testing.assert_close(y.double(), ref, rtol=RTOL[dtype], atol=ATOL[dtype] * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_cpu_depthwise_streaming_stores(dtype, activation):
    # A depthwise output of a quarter of the last-level cache or more is written with streaming
    # stores (conv.cpp, dw_stream32): against torch, and each image bitwise as a one-image call
    # (stored normally) gives it
    from fastops import _ext
    c, hw = 64, 64
    image = c * hw * hw * torch.empty((), dtype=dtype).element_size()
    n = _ext.C.build_meta()["cpu_last_level_cache_bytes"] // 4 // image + 2
    x = make((n, c, hw, hw), dtype, seed=1, scale=1.0).contiguous(memory_format=CL)
    w = make((c, 1, 3, 3), dtype, seed=2, scale=0.5)
    b = make((c,), dtype, seed=3, scale=0.5)
    with fastops.use_backend("cpu"):
        y = F.conv2d(x, w, b, padding=1, groups=c, activation=activation)
        ones = [F.conv2d(x[i:i + 1], w, b, padding=1, groups=c, activation=activation) for i in (0, n - 1)]
    ref = TF.conv2d(x.double(), w.double(), b.double(), padding=1, groups=c)
    ref = torch.relu(ref) if activation == "relu" else ref
    torch.testing.assert_close(y.double(), ref, rtol=RTOL[dtype], atol=ATOL[dtype] * 4)
    assert torch.equal(y[:1], ones[0]) and torch.equal(y[n - 1:], ones[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("groups", [1, 48])
def test_cpu_fused_relu_keeps_nan(dtype, groups):
    # relu(NaN) is NaN in torch: the fused epilogues (the depthwise register blocks, their edge
    # pixels and the GEMM path) must not turn a NaN sum into 0
    x = make((2, 48, 9, 13), dtype, seed=1, scale=1.0).contiguous(memory_format=torch.channels_last)
    x[0, 5, 4, 6] = float("nan")   # inside: read by register blocks
    x[1, 40, 2, 0] = float("nan")  # left edge column
    w = make((48, 48 // groups, 3, 3), dtype, seed=2, scale=0.3)
    b = make((48,), dtype, seed=3, scale=0.3)
    with fastops.use_backend("cpu"):
        y = F.conv2d(x, w, b, padding=1, groups=groups, activation="relu")
    ref = torch.relu(TF.conv2d(x.double(), w.double(), b.double(), padding=1, groups=groups))
    assert torch.equal(y.isnan(), ref.isnan()) and ref.isnan().any()
    torch.testing.assert_close(y.double(), ref, rtol=RTOL[dtype], atol=ATOL[dtype] * 4, equal_nan=True)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_deterministic_backward(backend):
    case = (2, 4, 9, 7, 6, 3, 3, 1, 1, 1, 1) if backend == "cpu" else TRITON_CASES[0]
    x, w, b, kw = _inputs(case, torch.bfloat16, CL)
    runs = 10 if backend == "cpu" else 3
    with fastops.use_backend(backend):
        first = _run(F.conv2d, x, w, b, kw)[1]
        for _ in range(runs - 1):
            again = _run(F.conv2d, x, w, b, kw)[1]
            assert all(torch.equal(a, b_) for a, b_ in zip(first, again))


def test_gradcheck_float64_through_torch():
    x, w, b, kw = _inputs(CPU_CASES[1], torch.float64, torch.contiguous_format)
    ts = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda a, c, d: F.conv2d(a, c, d, **kw), ts)
    assert _dispatch.last_choice("conv2d_forward").backend == "torch"


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_opcheck(backend):
    x, w, b, _ = _inputs((1, 4, 6, 5, 4, 3, 3, 1, 1, 1, 2), torch.float32, CL)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [1, 1], [1, 1], [1, 1], 2, 1, backend)
    torch.library.opcheck(C.conv2d_op, args)
    g = make((1, 4, 6, 5), torch.float32, seed=5, scale=1.0)
    torch.library.opcheck(C.conv2d_backward_op, (g, x.detach(), w.detach(), [1, 1], [1, 1], [1, 1], 2,
                                                 [True, True, True], backend))


def test_compile_fullgraph():
    x, w, b, kw = _inputs(CPU_CASES[0], torch.float32, torch.contiguous_format)

    def f(x, w, b):
        return F.conv2d(x, w, b, activation="relu", **kw).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xs = [t.clone().requires_grad_() for t in (x, w, b)]
    with fastops.use_backend("cpu"):
        out = compiled(*xs)
        grads = torch.autograd.grad(out, xs)
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_out = TF.conv2d(*ref, **kw).relu().sum()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-4)
    for a, r in zip(grads, torch.autograd.grad(ref_out, ref)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


BAD = [
    (lambda conv, x: conv(x, torch.randn(4, 3, 3, 3)), "channels"),
    (lambda conv, x: conv(x, torch.randn(3, 2, 3, 3), groups=2), "divisible"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 7, 7)), "Kernel size"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 3, 3), padding=-1), "negative padding"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 3, 3), padding="same", stride=2), "strided"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 3, 3), padding="full"), "padding string"),
    (lambda conv, x: conv(x[0, 0], torch.randn(4, 4, 3, 3)), "3D"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 3, 3), stride=0), "stride"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 3, 3), torch.randn(3)), "bias"),
    (lambda conv, x: conv(x, torch.randn(4, 4, 3, 3), groups=0), "groups"),
]


@pytest.mark.parametrize("bad", BAD, ids=[b[1] for b in BAD])
def test_errors_like_torch(bad):
    fn, words = bad
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(RuntimeError):  # torch's type on the same call...
        fn(TF.conv2d, x)
    with pytest.raises(RuntimeError, match=words):  # ...and fastops names the problem
        fn(F.conv2d, x)


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        F.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3), activation="tanh")
    with pytest.raises(ValueError, match="activation"):
        fastops.nn.Conv2d(4, 4, 3, activation="tanh")


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_nn_conv2d(mode):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=mode)
    mod = fastops.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=mode)
    mod.load_state_dict(ref.state_dict())
    assert set(mod.state_dict()) == set(ref.state_dict())
    x = make((2, 4, 9, 8), torch.float32, scale=1.0)
    with fastops.use_backend("cpu"):
        torch.testing.assert_close(mod(x), ref(x), rtol=1e-5, atol=1e-5)
    fused = fastops.nn.Conv2d(4, 6, 3, padding=1, activation="relu")
    fused.load_state_dict(torch.nn.Conv2d(4, 6, 3, padding=1).state_dict())
    with fastops.use_backend("cpu"):
        assert (fused(x) >= 0).all()


def test_patch_and_enable():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, groups=8, padding=1))
    x = make((2, 3, 12, 12), torch.float32, scale=1.0).requires_grad_()
    ref = model(x)
    ref_grad = torch.autograd.grad(ref.sum(), x)[0]
    fastops.patch(model)
    assert isinstance(model[0], fastops.nn.Conv2d)
    with fastops.use_backend("cpu"):
        out = model(x)
    assert _dispatch.last_choice("conv2d_forward").backend == "cpu"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    fastops.unpatch(model)
    assert type(model[0]) is torch.nn.Conv2d
    _dispatch.clear_history()
    with fastops.enable(include="conv"), fastops.use_backend("cpu"):
        out = model(x)
        grad = torch.autograd.grad(out.sum(), x)[0]
    assert _dispatch.last_choice("conv2d_forward").backend == "cpu"
    assert _dispatch.last_choice("conv2d_backward").backend == "cpu"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_explain_names_fallback_for_float64():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    F.conv2d(x, torch.randn(2, 2, 3, 3, dtype=torch.float64))
    assert "conv2d_forward: torch" in fastops.explain()


def test_auto_policy_on_cpu():
    """With the measured crossovers on, auto keeps the GEMM path and the depthwise kernels on torch
    (slower here, README), except a depthwise forward with relu fused outside autograd; a forced
    backend always runs."""
    _dispatch.set_crossovers_enabled(True)
    x = make((2, 8, 20, 20), torch.float32, scale=1.0)
    F.conv2d(x, make((8, 8, 3, 3), torch.float32, seed=1), padding=1)
    assert _dispatch.last_choice("conv2d_forward").backend == ("cpu" if C.CPU_GEMM_PATH_FASTER else "torch")
    F.conv2d(x, make((8, 1, 3, 3), torch.float32, seed=1), padding=1, groups=8)
    assert _dispatch.last_choice("conv2d_forward").backend == ("cpu" if C.CPU_DEPTHWISE_FASTER else "torch")
    assert "depthwise" in fastops.explain() or C.CPU_DEPTHWISE_FASTER
    # depthwise with relu fused, no graph (measured ahead of torch's conv then relu): fastops
    wd = make((8, 1, 3, 3), torch.float32, seed=1)
    with torch.no_grad():
        y = F.conv2d(x, wd, make((8,), torch.float32, seed=2), padding=1, groups=8, activation="relu")
    assert _dispatch.last_choice("conv2d_forward").backend == "cpu"
    torch.testing.assert_close(y, torch.relu(TF.conv2d(x, wd, make((8,), torch.float32, seed=2), padding=1, groups=8)))
    with fastops.use_backend("cpu"):
        F.conv2d(x, make((8, 8, 3, 3), torch.float32, seed=1), padding=1)
    assert _dispatch.last_choice("conv2d_forward").backend == "cpu"


def test_auto_policy_float16_and_depthwise_backward_on_cpu():
    """auto runs CPU float16 convolutions on fastops (torch's are 4-56x slower without AVX512-FP16,
    README), except the forward on CPUs with AVX512-FP16 (torch's is faster there), and the
    depthwise backward where torch's kernels were measured behind (bfloat16 strided / 5x5, float32
    5x5 / 7x7); a 3x3 stride-1 depthwise backward stays on torch. Gradients against float64."""
    _dispatch.set_crossovers_enabled(True)
    x16 = make((2, 8, 20, 20), torch.float16, scale=1.0).requires_grad_()
    w16 = make((8, 8, 3, 3), torch.float16, seed=1).requires_grad_()
    y16 = F.conv2d(x16, w16, padding=1)
    fp16_forward = "torch" if _dispatch.cpu_has_avx512_fp16() else "cpu"
    assert _dispatch.last_choice("conv2d_forward").backend == fp16_forward
    xr16, wr16 = x16.detach().double().requires_grad_(), w16.detach().double().requires_grad_()
    yr16 = TF.conv2d(xr16, wr16, padding=1)
    torch.testing.assert_close(y16.double(), yr16, rtol=RTOL[torch.float16], atol=ATOL[torch.float16] * 4)
    _dispatch.clear_history()
    y16.backward(torch.ones_like(y16))
    assert _dispatch.last_choice("conv2d_backward").backend == "cpu"  # torch's float16 backward is slow
    yr16.backward(torch.ones_like(yr16))
    torch.testing.assert_close(x16.grad.double(), xr16.grad, rtol=RTOL[torch.float16], atol=ATOL[torch.float16] * 16)
    torch.testing.assert_close(w16.grad.double(), wr16.grad, rtol=RTOL[torch.float16], atol=ATOL[torch.float16] * 64)
    # bfloat16 1x1 NCHW stride 1 from 14x14 pixels, forward and backward, where the CPU has AMX
    amx = _dispatch.cpu_has_amx()
    x1, w1 = make((2, 16, 14, 14), torch.bfloat16, scale=1.0).requires_grad_(), make((8, 16, 1, 1), torch.bfloat16, seed=1)
    w1.requires_grad_()
    _dispatch.clear_history()
    y1 = F.conv2d(x1, w1)
    assert _dispatch.last_choice("conv2d_forward").backend == ("cpu" if amx else "torch")
    y1.backward(torch.ones_like(y1))
    chosen = _dispatch.last_choice("conv2d_backward")
    assert (chosen.backend if chosen is not None else "torch") == ("cpu" if amx else "torch")
    xr1, wr1 = x1.detach().double().requires_grad_(), w1.detach().double().requires_grad_()
    TF.conv2d(xr1, wr1).backward(torch.ones_like(y1).double())
    torch.testing.assert_close(x1.grad.double(), xr1.grad, rtol=RTOL[torch.bfloat16], atol=ATOL[torch.bfloat16] * 4)
    torch.testing.assert_close(w1.grad.double(), wr1.grad, rtol=RTOL[torch.bfloat16], atol=ATOL[torch.bfloat16] * 16)
    for shape, stride in (((2, 16, 13, 13), 1), ((2, 16, 28, 28), 2)):  # too small, strided: torch
        assert not C._cpu_pointwise_nchw_faster(torch.empty(shape, dtype=torch.bfloat16),
                                                torch.empty(8, 16, 1, 1, dtype=torch.bfloat16), 1, (stride, stride))
    # 3x3 stride 1: bfloat16 on fastops from 8x28x28 input pixels where the CPU has AMX; float32 on torch
    amx = _dispatch.cpu_has_amx()
    for dtype, n, hw, want in ((torch.bfloat16, 8, 28, "cpu" if amx else "torch"), (torch.bfloat16, 8, 27, "torch"),
                               (torch.bfloat16, 1, 56, "torch"), (torch.float32, 8, 28, "torch")):
        xb = torch.empty(n, 16, hw, hw, dtype=dtype)
        wb = torch.empty(16, 1, 3, 3, dtype=dtype)
        assert C._cpu_backward_faster(xb, wb, 16, (1, 1)) == (want == "cpu"), (dtype, n, hw)
    for dtype, k, stride, want in ((torch.bfloat16, 3, 2, "cpu"), (torch.bfloat16, 5, 1, "cpu"),
                                   (torch.float32, 5, 1, "cpu"), (torch.float32, 5, 2, "cpu"), (torch.float32, 7, 1, "cpu"),
                                   (torch.float32, 3, 1, "torch"), (torch.float32, 3, 2, "torch"),
                                   (torch.bfloat16, 3, 1, "torch")):
        x = make((2, 32, 20, 20), dtype, scale=1.0).contiguous(memory_format=CL).requires_grad_()
        w = make((32, 1, k, k), dtype, seed=1, scale=0.5).requires_grad_()
        gy_shape = TF.conv2d(x.detach(), w.detach(), padding=k // 2, stride=stride, groups=32).shape
        gy = make(tuple(gy_shape), dtype, seed=2, scale=1.0)
        _dispatch.clear_history()
        F.conv2d(x, w, padding=k // 2, stride=stride, groups=32).backward(gy)
        chosen = _dispatch.last_choice("conv2d_backward")
        assert (chosen.backend if chosen is not None else "torch") == want, (dtype, k, stride)
        xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        TF.conv2d(xr, wr, padding=k // 2, stride=stride, groups=32).backward(gy.double())
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=RTOL[dtype], atol=ATOL[dtype] * 4)
        torch.testing.assert_close(w.grad.double(), wr.grad, rtol=RTOL[dtype], atol=ATOL[dtype] * 4)


@pytest.mark.parametrize("fmt", ["nchw", "nhwc"])
def test_auto_backward_policy_on_cpu(fmt):
    """auto runs the forward of a dense conv on torch, and its NHWC backward from 512 channels on
    <= 8x8 outputs on the cpu kernels (measured ahead there, README); NCHW stays on torch. Both
    entry points: functional (training) and the aten override of enable()."""
    _dispatch.set_crossovers_enabled(True)
    mf = torch.channels_last if fmt == "nhwc" else torch.contiguous_format
    x = make((1, 512, 7, 7), torch.float32, scale=1.0).contiguous(memory_format=mf).requires_grad_()
    w = (make((512, 512, 3, 3), torch.float32, seed=1) * 0.02).contiguous(memory_format=mf).requires_grad_()
    want = "torch" if C.CPU_GEMM_PATH_FASTER or fmt == "nchw" else "cpu"
    y = F.conv2d(x, w, padding=1)
    assert _dispatch.last_choice("conv2d_forward").backend == ("cpu" if C.CPU_GEMM_PATH_FASTER else "torch")
    gy = make(tuple(y.shape), torch.float32, seed=2)
    y.backward(gy)
    ref_x, ref_w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    torch.nn.functional.conv2d(ref_x, ref_w, padding=1).backward(gy.double())
    t_x, t_w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(t_x, t_w, padding=1).backward(gy)

    def check(a, r, t, red):  # error against float64 at most twice torch's float32 error, plus a floor
        err, torch_err = (a.double() - r).abs().max().item(), (t.double() - r).abs().max().item()
        assert err <= 2 * torch_err + ATOL[torch.float32] * max(1.0, red / 1024) + RTOL[torch.float32] * r.abs().max().item()

    if want == "cpu":
        assert _dispatch.last_choice("conv2d_backward").backend == "cpu"
    check(x.grad, ref_x.grad, t_x.grad, 512 * 9)
    check(w.grad, ref_w.grad, t_w.grad, 49)
    _dispatch.clear_history()
    x.grad = w.grad = None
    with fastops.enable():
        torch.nn.functional.conv2d(x, w, padding=1).backward(gy)
    chosen = _dispatch.last_choice("conv2d_backward")
    assert (chosen.backend if chosen is not None else "torch") == want
    check(x.grad, ref_x.grad, t_x.grad, 512 * 9)
    check(w.grad, ref_w.grad, t_w.grad, 49)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(8, 64, 28, 28, 64, 3, 3, 1, 1, 1, 1), (4, 32, 17, 19, 64, 3, 3, 2, 1, 1, 32),
                                  (2, 256, 14, 14, 128, 1, 1, 1, 0, 1, 1)], ids=str)
def test_triton_on_gpu(case, dtype):
    x, w, b, kw = _inputs(case, dtype, CL)
    x, w, b = x.cuda(), w.cuda(), b.cuda()
    with fastops.use_backend("triton"):
        out, grads, g = _run(F.conv2d, x, w, b, kw, activation="relu")
    ref_out, ref_grads, _ = _run(_torch_conv("relu"), x.double(), w.double(), b.double(), kw, grad=g.double())
    torch_out, torch_grads, _ = _run(_torch_conv("relu"), x, w, b, kw, grad=g)
    for a, r, t in zip((out, *grads), (ref_out, *ref_grads), (torch_out, *torch_grads)):
        err, torch_err = (a.double() - r).abs().max().item(), (t.double() - r).abs().max().item()
        assert err <= 2 * torch_err + ATOL[dtype] + RTOL[dtype] * r.abs().max().item()
