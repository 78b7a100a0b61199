"""GPU tests of the CUDA C++ flash-attention kernels (csrc/cuda/attention.cu).

`fastops.functional.scaled_dot_product_attention` under `fastops.use_backend("cuda")` against
torch's SDPA (math backend) in float64 on the same rounded inputs, forward and backward, with
fastops' error at most twice torch's own error in the same dtype (plus a dtype atol). The cases
reach every kernel path: head-dim buckets 64 / 128 / 256 (E = 16, 40, 64, 72, 128, 160, 256, Ev != E),
odd lengths (1, 17, 129, 257: partial query and key blocks), causal with L < S and L > S,
bool and additive masks (broadcast through strides, additive mask gradient), scale, GQA / MQA,
non-contiguous views, the element-load path (misaligned storage, head dims not a multiple of 8),
zero-size inputs, dropout (the counter-based bits of the torch reference), determinism, and the
documented fallbacks (float32 and head dims > 256 -> Triton under auto, torch under "cuda").
Skipped where no GPU is present.
"""
import pytest
import torch

import fastops
from fastops import _dispatch
from fastops import functional as F
from fastops.ops import attention as A
from test_attention import _double, _inputs, _run, torch_sdpa
from utils import ATOL, make

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = (torch.float16, torch.bfloat16)
DEV = "cuda"

# (batch dims, Hq, Hkv, L, S, E, Ev, causal, mask), as in test_attention.py
CASES = [
    ((2,), 4, 4, 129, 129, 64, 64, False, None),
    ((2,), 4, 2, 130, 70, 72, 72, True, None),       # GQA, causal L > S, bucket 128
    ((2,), 4, 4, 70, 257, 40, 40, True, None),       # causal L < S
    ((1,), 2, 1, 65, 129, 64, 48, False, "bool"),    # Ev != E, MQA
    ((2,), 2, 2, 33, 100, 32, 32, False, "add"),     # additive mask with gradient
    ((2,), 3, 3, 17, 9, 16, 16, False, "bool4"),
    ((), 1, 1, 1, 1, 16, 16, False, None),
    ((3,), 2, 2, 1, 37, 128, 128, True, None),
    ((3,), 2, 2, 37, 1, 24, 24, False, None),
    ((1,), 8, 1, 257, 300, 128, 128, True, None),
    ((1,), 2, 2, 50, 61, 20, 20, False, "add"),      # E % 8 != 0: element loads
    ((1,), 2, 2, 67, 45, 160, 160, False, None),     # bucket 256
    ((2,), 2, 1, 33, 90, 256, 256, True, None),
    ((1,), 2, 2, 19, 23, 256, 200, False, "bool"),
    ((1,), 2, 2, 40, 33, 200, 256, False, "add"),
]


def _to(tensors, kwargs):
    m = kwargs["attn_mask"]
    return [t.to(DEV) for t in tensors], {**kwargs, "attn_mask": m.to(DEV) if m is not None else None}


def _check(a, r, t, name, dtype, S):
    assert a.shape == r.shape and a.dtype == t.dtype, name
    if not a.numel():
        return
    err = (a.double() - r).abs().max().item()
    own = (t.double() - r).abs().max().item()
    atol = ATOL[dtype] * max(1.0, S / 64) * (1 + r.abs().max().item())
    assert err <= 2 * own + atol, f"{name}: error {err:.3g} vs torch's {own:.3g} (atol {atol:.3g})"


def _compare(case, dtype, backward=True):
    tensors, kwargs = _to(*_inputs(case, dtype))
    mask_grad = backward and case[-1] == "add"
    S = case[4]
    g = make((*tensors[0].shape[:-1], tensors[2].shape[-1]), dtype, seed=99, scale=1.0, device=DEV)
    with fastops.use_backend("cuda"):
        if backward:
            out, grads = _run(F.scaled_dot_product_attention, tensors, kwargs, g, mask_grad=mask_grad)
            assert _dispatch.last_choice("sdpa_backward").backend == "cuda", fastops.explain()
        else:
            with torch.no_grad():
                out, grads = F.scaled_dot_product_attention(*tensors, **kwargs), ()
        assert _dispatch.last_choice("sdpa_forward").backend == "cuda", fastops.explain()
    if backward:
        ref, ref_grads = _run(torch_sdpa, [t.double() for t in tensors], _double(kwargs), g.double(), mask_grad)
        low, low_grads = _run(torch_sdpa, tensors, kwargs, g, mask_grad)
    else:
        ref, ref_grads = torch_sdpa(*[t.double() for t in tensors], **_double(kwargs)), ()
        low, low_grads = torch_sdpa(*tensors, **kwargs), ()
    for name, a, r, t in zip(("out", "dq", "dk", "dv", "dmask"), (out, *grads), (ref, *ref_grads),
                             (low, *low_grads)):
        _check(a, r, t, name, dtype, S)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_matches_torch(case, dtype):
    _compare(case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[-4:], ids=str)
def test_cuda_forward_only(case, dtype):
    """Forward under no_grad (the path that skips the autograd graph)."""
    _compare(case, dtype, backward=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale_non_contiguous_and_misaligned(dtype):
    """Transposed (B, L, H, E) views with an explicit scale (cp.async path: row strides are
    multiples of 8), then views at an odd storage offset (element-load path)."""
    base = [make((2, 75, 3, 64), dtype, seed=i, scale=1.0, device=DEV) for i in range(3)]
    views = [t.transpose(1, 2) for t in base]
    flat = [make((2 * 3 * 75 * 64 + 1,), dtype, seed=10 + i, scale=1.0, device=DEV) for i in range(3)]
    odd = [f[1:].view(2, 3, 75, 64) for f in flat]
    for q, k, v in (views, odd):
        kwargs = dict(scale=0.37, is_causal=True)
        g = make(q.shape, dtype, seed=5, scale=1.0, device=DEV)
        with fastops.use_backend("cuda"):
            out, grads = _run(F.scaled_dot_product_attention, [q, k, v], kwargs, g)
            assert _dispatch.last_choice("sdpa_backward").backend == "cuda", fastops.explain()
        ref, ref_grads = _run(torch_sdpa, [t.double() for t in (q, k, v)], kwargs, g.double())
        low, low_grads = _run(torch_sdpa, [q, k, v], kwargs, g)
        for name, a, r, t in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), (low, *low_grads)):
            _check(a, r, t, name, dtype, 75)


@pytest.mark.parametrize("shape", [(0, 2, 5, 64), (2, 2, 0, 64)])
def test_zero_size(shape):
    q = torch.zeros(shape, dtype=torch.float16, device=DEV, requires_grad=True)
    k = torch.randn(2, 2, 7, 64, dtype=torch.float16, device=DEV)[: shape[0]].requires_grad_()
    with fastops.use_backend("cuda"):
        out = F.scaled_dot_product_attention(q, k, k)
        out.sum().backward()
    assert out.shape == shape and q.grad.shape == shape
    assert k.grad is not None and not k.grad.abs().sum().item()


def test_fully_masked_rows_give_zeros():
    q, k, v = (make((1, 2, 20, 64), torch.float16, seed=i, scale=1.0, device=DEV).requires_grad_() for i in range(3))
    mask = torch.ones(20, 20, dtype=torch.bool, device=DEV)
    mask[3] = False
    with fastops.use_backend("cuda"):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
    assert not out[:, :, 3].abs().sum().item() and not q.grad[:, :, 3].abs().sum().item()
    assert torch.isfinite(out).all() and torch.isfinite(k.grad).all()


def test_dropout_matches_reference_bits():
    """Same seed -> the same kept elements as the torch reference kernel, forward and backward."""
    q, k, v = (make((2, 3, 70, 64), torch.float16, seed=i, scale=1.0, device=DEV) for i in range(3))
    g = make((2, 3, 70, 64), torch.float16, seed=4, scale=1.0, device=DEV)
    args = (None, True, 0.125, 0.3, 1234567)
    out, lse = A.sdpa_forward_op(q, k, v, *args, "cuda")
    ref, ref_lse = A.forward_ref(q.double(), k.double(), v.double(), *args)
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-4, atol=1e-4)
    grads = A.sdpa_backward_op(g, q, k, v, out, lse, None, True, 0.125, 0.3, 1234567, False, "cuda")[:3]
    ref_grads = A.backward_ref(g.double(), q.double(), k.double(), v.double(), ref, ref_lse, None, True, 0.125,
                               0.3, 1234567, False)[:3]
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), r, rtol=1e-2, atol=1e-2)


def test_dropout_statistics():
    L = S = 128
    p = 0.3
    q = torch.zeros(1, 1, L, 64, dtype=torch.float16, device=DEV)
    v = torch.eye(S, dtype=torch.float16, device=DEV).reshape(1, 1, S, S)[..., :64].contiguous()
    with fastops.use_backend("cuda"):
        out = F.scaled_dot_product_attention(q, q, v, dropout_p=p)
    kept = out != 0
    dropped = 1 - kept.double().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / (L * 64)) ** 0.5 + 1e-3
    # P is rounded to float16 for the tensor-core P V product and out again: two roundings
    torch.testing.assert_close(out[kept].float(), torch.full_like(out[kept].float(), 1 / (S * (1 - p))),
                               rtol=2e-3, atol=0)


def test_backward_is_deterministic():
    q, k, v = (make((2, 4, 300, 64), torch.bfloat16, seed=i, scale=1.0, device=DEV) for i in range(3))
    g = make((2, 4, 300, 64), torch.bfloat16, seed=3, scale=1.0, device=DEV)
    out, lse = A.sdpa_forward_op(q, k[:, :2], v[:, :2], None, False, 0.125, 0.0, 0, "cuda")
    first = A.sdpa_backward_op(g, q, k[:, :2], v[:, :2], out, lse, None, False, 0.125, 0.0, 0, False, "cuda")
    again = A.sdpa_backward_op(g, q, k[:, :2], v[:, :2], out, lse, None, False, 0.125, 0.0, 0, False, "cuda")
    for a, b in zip(first[:3], again[:3]):
        assert torch.equal(a, b)


def test_opcheck():
    q, k, v = (make((1, 2, 17, 64), torch.float16, seed=i, scale=1.0, device=DEV) for i in range(3))
    torch.library.opcheck(A.sdpa_forward_op, (q, k, v, None, True, 0.125, 0.0, 0, "cuda"))


def test_compile_fullgraph():
    q, k, v = (make((1, 2, 33, 64), torch.float16, seed=i, scale=1.0, device=DEV) for i in range(3))
    fn = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), fullgraph=True)
    with fastops.use_backend("cuda"):
        out = fn(q, k, v)
    torch.testing.assert_close(out, torch_sdpa(q, k, v, is_causal=True), rtol=2e-3, atol=2e-3)


def test_fallbacks_are_explained():
    q = make((1, 2, 17, 64), torch.float32, seed=0, scale=1.0, device=DEV)
    F.scaled_dot_product_attention(q, q, q)
    assert _dispatch.last_choice("sdpa_forward").backend == "triton"
    with fastops.use_backend("cuda"):
        A.sdpa_forward_op(q, q, q, None, False, 0.125, 0.0, 0, "cuda")
    assert _dispatch.last_choice("sdpa_forward").backend == "torch" and "float32" in fastops.explain()
    big = make((1, 2, 17, 264), torch.float16, seed=0, scale=1.0, device=DEV)
    F.scaled_dot_product_attention(big, big, big)
    assert _dispatch.last_choice("sdpa_forward").backend == "triton", fastops.explain()
    with fastops.use_backend("cuda"):
        F.scaled_dot_product_attention(big, big, big)
    assert _dispatch.last_choice("sdpa_forward").backend == "torch" and "264 > 256" in fastops.explain()
