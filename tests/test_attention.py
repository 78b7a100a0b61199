"""fastops scaled_dot_product_attention against torch's SDPA (math backend, float64 reference):
cpu and triton backends, dtypes, masks, causal (L != S), scale, GQA, odd head dims and lengths,
non-contiguous and zero-size inputs, forward and backward; the trust edge cases (fully masked
rows, mask gradients, -inf); gradcheck, opcheck, torch.compile, determinism, errors, fallbacks,
MultiheadAttention and enable()."""
import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastops
from fastops import _dispatch
from fastops import functional as F
from fastops.ops import attention as A
from utils import ATOL, DTYPES, make

BACKENDS = ["cpu", "triton"]

# (batch dims, Hq, Hkv, L, S, E, Ev, causal, mask): odd lengths, L != S both ways, 1-long sides,
# head dims not powers of two; mask "bool" (L, S), "bool4" (B, 1, L, S), "add" (Hq, 1, S)
CPU_CASES = [
    ((2,), 4, 4, 67, 67, 64, 64, False, None),
    ((2,), 4, 2, 130, 70, 72, 72, True, None),
    ((2,), 4, 4, 70, 130, 24, 24, True, None),
    ((1,), 2, 1, 65, 129, 64, 40, False, "bool"),
    ((2,), 2, 2, 33, 100, 32, 32, False, "add"),
    ((2,), 3, 3, 17, 9, 16, 16, False, "bool4"),
    ((), 1, 1, 1, 1, 16, 16, False, None),
    ((3,), 2, 2, 1, 37, 24, 24, True, None),
    ((3,), 2, 2, 37, 1, 24, 24, False, None),
    # odd head dims (bfloat16 pairs padded), several query blocks and an odd last key block
    ((1,), 2, 1, 150, 193, 33, 31, False, None),
    ((1,), 2, 2, 300, 257, 33, 31, True, None),
]
TRITON_CASES = [
    ((1,), 2, 1, 19, 23, 24, 24, True, None),
    ((1,), 2, 2, 17, 33, 72, 40, False, "bool"),
    ((2,), 2, 2, 20, 13, 32, 32, False, "add"),
    ((), 1, 1, 1, 1, 16, 16, False, None),
]


def torch_sdpa(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)


def _inputs(case, dtype, seed=0):
    batch, hq, hkv, L, S, E, Ev, causal, mask = case
    lead = (*batch, hq) if batch or hq > 1 else ()
    lead_kv = (*batch, hkv) if batch or hkv > 1 else ()
    q, k, v = (make(shape, dtype, seed=seed + i, scale=1.0) for i, shape in
               enumerate(((*lead, L, E), (*lead_kv, S, E), (*lead_kv, S, Ev))))
    g = torch.Generator().manual_seed(seed + 7)
    m = None
    if mask == "bool":
        m = torch.rand(L, S, generator=g) > 0.3
    elif mask == "bool4":
        m = torch.rand(batch[0], 1, L, S, generator=g) > 0.5
    elif mask == "add":
        m = make((hq, 1, S), dtype, seed=seed + 9, scale=1.0)
    kwargs = dict(attn_mask=m, is_causal=causal, enable_gqa=hq != hkv)
    return [q, k, v], kwargs


def _run(fn, tensors, kwargs, grad_out=None, mask_grad=False):
    """Forward and backward; returns (out, grads of q, k, v[, mask])."""
    ts = [t.detach().clone().requires_grad_() for t in tensors]
    kw = dict(kwargs)
    if mask_grad:
        kw["attn_mask"] = kw["attn_mask"].detach().clone().requires_grad_()
        ts.append(kw["attn_mask"])
    out = fn(*ts[:3], **kw)
    g = grad_out if grad_out is not None else make(out.shape, out.dtype, seed=99, scale=1.0)
    grads = torch.autograd.grad(out, ts, g.to(out.dtype)) if out.numel() else [torch.zeros_like(t) for t in ts]
    return out, grads


def _double(kwargs):
    m = kwargs["attn_mask"]
    return {**kwargs, "attn_mask": m.double() if m is not None and m.is_floating_point() else m}


def _compare(case, dtype, backend):
    tensors, kwargs = _inputs(case, dtype)
    mask_grad = case[-1] == "add"
    with fastops.use_backend(backend):
        out, grads = _run(F.scaled_dot_product_attention, tensors, kwargs, mask_grad=mask_grad)
        assert _dispatch.last_choice("sdpa_forward").backend == backend, fastops.explain()
        assert _dispatch.last_choice("sdpa_backward").backend == backend, fastops.explain()
    g = make(out.shape, dtype, seed=99, scale=1.0)
    ref, ref_grads = _run(torch_sdpa, [t.double() for t in tensors], _double(kwargs), g.double(), mask_grad)
    low, low_grads = _run(torch_sdpa, tensors, kwargs, g, mask_grad)
    S = case[4]
    # fastops' error at most twice torch's own error in the same dtype, plus a dtype atol
    for name, a, r, t in zip(("out", "dq", "dk", "dv", "dmask"), (out, *grads), (ref, *ref_grads),
                             (low, *low_grads)):
        assert a.shape == r.shape and a.dtype == t.dtype, name
        err = (a.double() - r).abs().max().item() if a.numel() else 0.0
        own = (t.double() - r).abs().max().item() if a.numel() else 0.0
        atol = ATOL[dtype] * max(1.0, S / 64) * (1 + r.abs().max().item() if r.numel() else 1)
        assert err <= 2 * own + atol, f"{name}: error {err:.3g} vs torch's {own:.3g} (atol {atol:.3g})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_cpu_matches_torch(case, dtype):
    _compare(case, dtype, "cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_triton_matches_torch(case, dtype):
    _compare(case, dtype, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_non_contiguous(backend):
    """q/k/v as transposed views of (B, L, H, E) (the MultiheadAttention layout), an explicit scale."""
    base = [make((2, 21, 3, 24), torch.float32, seed=i, scale=1.0) for i in range(3)]
    q, k, v = (t.transpose(1, 2) for t in base)
    kwargs = dict(scale=0.37)
    with fastops.use_backend(backend):
        out, grads = _run(F.scaled_dot_product_attention, [q, k, v], kwargs)
    ref, ref_grads = _run(torch_sdpa, [t.double() for t in (q, k, v)], kwargs, make(out.shape, torch.float64,
                                                                                     seed=99, scale=1.0))
    for a, r in zip((out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_size(backend):
    q = torch.randn(0, 2, 5, 16, requires_grad=True)
    k = torch.randn(0, 2, 7, 16, requires_grad=True)
    with fastops.use_backend(backend):
        out = F.scaled_dot_product_attention(q, k, k)
        out.sum().backward()
    assert out.shape == (0, 2, 5, 16) and q.grad.shape == q.shape


# ---- trust item 7: fully masked rows, mask gradients, -inf --------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows(backend):
    q, k, v = (make((1, 2, 9, 16), torch.float32, seed=i, scale=1.0) for i in range(3))
    boolean = torch.rand(9, 9) > 0.4
    boolean[2] = False
    additive = torch.where(boolean, 0.0, float("-inf")).requires_grad_()
    for mask in (boolean, additive):
        with fastops.use_backend(backend):
            out, grads = _run(F.scaled_dot_product_attention, [q, k, v], dict(attn_mask=mask),
                              mask_grad=mask.dtype != torch.bool)
        ref, ref_grads = _run(torch_sdpa, [t.double() for t in (q, k, v)],
                              _double(dict(attn_mask=mask)), make(out.shape, torch.float64, seed=99, scale=1.0),
                              mask_grad=mask.dtype != torch.bool)
        assert (out[:, :, 2] == 0).all()
        for a, r in zip((out, *grads), (ref, *ref_grads)):
            assert torch.isfinite(a).all() or a is grads[-1] and mask.dtype != torch.bool
            torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learnable_bias_gets_gradient(backend):
    """An additive mask that requires grad (a relative-position bias) gets torch's gradient."""
    q, k, v = (make((2, 2, 11, 16), torch.float32, seed=i, scale=1.0) for i in range(3))
    bias = make((2, 11, 11), torch.float32, seed=5, scale=1.0)
    with fastops.use_backend(backend):
        _, grads = _run(F.scaled_dot_product_attention, [q, k, v], dict(attn_mask=bias), mask_grad=True)
    _, ref_grads = _run(torch_sdpa, [t.double() for t in (q, k, v)], dict(attn_mask=bias.double()),
                        make((2, 2, 11, 16), torch.float64, seed=99, scale=1.0), mask_grad=True)
    assert grads[-1].shape == bias.shape
    torch.testing.assert_close(grads[-1].double(), ref_grads[-1], rtol=1e-5, atol=1e-5)


# ---- autograd wiring, opcheck, compile, determinism ---------------------------------------------

def test_gradcheck_float64():
    """float64 runs the torch reference kernel through the same custom ops and autograd."""
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True)
    m = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, m))
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    q = torch.randn(1, 2, 5, 16, requires_grad=True)
    k = torch.randn(1, 1, 7, 16, requires_grad=True)
    v = torch.randn(1, 1, 7, 16, requires_grad=True)
    mask = torch.randn(1, 2, 5, 7, requires_grad=True)
    for args in ((q, k, v, None, True, 0.25, 0.0, 0, backend), (q, k, v, mask, False, 0.25, 0.2, 5, backend)):
        torch.library.opcheck(A.sdpa_forward_op, args)
    out, lse = A.sdpa_forward_op(q, k, v, mask, False, 0.25, 0.2, 5, backend)
    torch.library.opcheck(A.sdpa_backward_op, (torch.randn_like(out), q.detach(), k.detach(), v.detach(),
                                               out.detach(), lse.detach(), mask.detach(), False, 0.25, 0.2, 5,
                                               True, backend))


def test_compile_fullgraph():
    def f(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m).sum()
    q, k, v = (torch.randn(2, 2, 9, 16, requires_grad=True) for _ in range(3))
    m = torch.rand(9, 9) > 0.3
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, m)
    gq = torch.autograd.grad(out, q)[0]
    ref = torch_sdpa(q, k, v, attn_mask=m).sum()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gq, torch.autograd.grad(ref, q)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4], ids=["two-pass", "fused"])  # cpu: fused once N * Hkv >= 2 threads
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend, batch):
    L = 70 if backend == "cpu" else 20
    if backend == "triton" and batch > 1:
        pytest.skip("one path on triton")
    q = torch.randn(batch, 4, L, 16)
    k, v = torch.randn(batch, 2, L, 16), torch.randn(batch, 2, L, 16)
    first = None
    with fastops.use_backend(backend):
        for _ in range(10 if backend == "cpu" else 3):
            _, grads = _run(F.scaled_dot_product_attention, [q, k, v], dict(enable_gqa=True))
            if first is None:
                first = grads
            assert all(torch.equal(a, b) for a, b in zip(grads, first))


# ---- errors and fallbacks ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(key=torch.randn(2, 3, 7, 8)), "head dim"),
    (dict(value=torch.randn(2, 3, 6, 8)), "value's length"),
    (dict(key=torch.randn(2, 2, 7, 16), value=torch.randn(2, 2, 7, 16), enable_gqa=True), "multiple"),
    (dict(attn_mask=torch.ones(5, 6, dtype=torch.bool)), "attn_mask"),
    (dict(attn_mask=torch.ones(5, 7, dtype=torch.float64)), "attn_mask"),
    (dict(attn_mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True), "is_causal"),
    (dict(key=torch.randn(2, 3, 7, 16, dtype=torch.float64)), "dtype"),
])
def test_bad_input_raises_like_torch(kwargs, match):
    args = dict(query=torch.randn(2, 3, 5, 16), key=torch.randn(2, 3, 7, 16), value=torch.randn(2, 3, 7, 16))
    args.update(kwargs)
    with pytest.raises(RuntimeError):
        torch.nn.functional.scaled_dot_product_attention(**args)
    with pytest.raises(RuntimeError, match=match):
        F.scaled_dot_product_attention(**args)


def test_dropout_one_falls_back_visibly():
    q = torch.randn(1, 1, 8, 16)
    F.scaled_dot_product_attention(q, q, q, dropout_p=1.0)
    assert "dropout_p=1.0" in fastops.explain()
    fastops.set_strict(True)
    with pytest.raises(NotImplementedError, match="dropout"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=1.0)


# ---- dropout: counter-based, the same bits on every backend -------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_matches_reference_bits(backend):
    """Same seed -> same mask as the torch reference kernel, forward and backward."""
    tensors, kwargs = _inputs(((1,), 2, 1, 19, 23, 24, 24, True, None), torch.float32)
    kwargs["dropout_p"] = 0.3
    results = []
    for b in (backend, "torch"):
        torch.manual_seed(123)
        with fastops.use_backend(b):
            results.append(_run(F.scaled_dot_product_attention, [t.double() if b == "torch" else t
                                                                 for t in tensors], kwargs))
        assert _dispatch.last_choice("sdpa_backward").backend == b
    (out, grads), (ref, ref_grads) = results
    for a, r in zip((out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_statistics(backend):
    """q = k = 0 gives p_ij = 1/S; v = identity reads every (i, j) factor out: 0 or 1/(S (1-p))."""
    L = S = 64 if backend == "cpu" else 32
    p = 0.3
    q = torch.zeros(1, 1, L, 16)
    v = torch.eye(S).reshape(1, 1, S, S)
    with fastops.use_backend(backend):
        out = F.scaled_dot_product_attention(q, q[:, :, :S], v, dropout_p=p)
        again = F.scaled_dot_product_attention(q, q[:, :, :S], v, dropout_p=p)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / (L * S)) ** 0.5 + 1e-3
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / (S * (1 - p))))
    assert not torch.equal(out, again)  # a fresh seed per call


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_backward_is_the_forwards_derivative(backend):
    """Finite differences of the forward (fixed seed) against the backward, along a random direction."""
    q, k, v = (make((1, 2, 9, 16), torch.float32, seed=i, scale=1.0) for i in range(3))
    g = make((1, 2, 9, 16), torch.float32, seed=5, scale=1.0)
    fwd = lambda q, k, v: A.sdpa_forward_op(q, k, v, None, False, 0.25, 0.4, 77, backend)[0]  # noqa: E731
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    grads = torch.autograd.grad(fwd(qg, kg, vg), (qg, kg, vg), g)
    eps = 1e-2
    for i in range(3):
        d = make(q.shape, torch.float32, seed=10 + i, scale=1.0)
        plus = [t + eps * d if j == i else t for j, t in enumerate((q, k, v))]
        minus = [t - eps * d if j == i else t for j, t in enumerate((q, k, v))]
        numeric = ((fwd(*plus) - fwd(*minus)) * g).sum().item() / (2 * eps)
        analytic = (grads[i] * d).sum().item()
        assert abs(numeric - analytic) <= 1e-2 * (1 + abs(analytic)), (i, numeric, analytic)


# ---- MultiheadAttention and enable() ------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention(batch_first):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(24, 4, batch_first=batch_first, kdim=16, vdim=20)
    mod = fastops.patch(copy.deepcopy(ref))
    assert isinstance(mod, fastops.nn.MultiheadAttention)
    assert mod.state_dict().keys() == ref.state_dict().keys()
    shape = (lambda n: (3, n)) if batch_first else (lambda n: (n, 3))
    q, k, v = torch.randn(*shape(5), 24), torch.randn(*shape(7), 16), torch.randn(*shape(7), 20)
    kpm = torch.rand(3, 7) > 0.7
    kpm[:, 0] = False
    am = torch.rand(5, 7) > 0.8
    with fastops.use_backend("cpu"):
        out = mod(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
        assert _dispatch.last_choice("sdpa_forward").backend == "cpu"
        out.sum().backward()
    expected = ref(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mod.in_proj_bias.grad, ref.in_proj_bias.grad, rtol=1e-4, atol=1e-5)
    mod(q, k, v)  # need_weights=True: torch's forward, said so
    assert "need_weights" in fastops.explain()
    assert type(fastops.unpatch(mod)) is torch.nn.MultiheadAttention


def test_enable_routes_torch_sdpa():
    q, k, v = (torch.randn(2, 3, 33, 24, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    with fastops.enable(include="attention"):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert _dispatch.last_choice("sdpa_forward").backend == "cpu"
        assert _dispatch.last_choice("sdpa_backward").backend == "cpu"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_small_calls_go_to_torch_under_auto():
    """Below the measured crossover `auto` calls torch directly (trust item 5), and says so."""
    _dispatch.set_crossovers_enabled(True)
    q = torch.randn(1, 1, 8, 16)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, q, q), torch_sdpa(q, q, q))
    assert "sdpa_forward: torch" in fastops.explain() and "crossover" in fastops.explain()
