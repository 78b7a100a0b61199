"""Shared test helpers: float64 references and per-dtype tolerances (DESIGN.md, Testing)."""
import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# relative tolerance per dtype, absolute ~1e-4 x reduction length scaled by dtype
RTOL = {torch.float32: 1.3e-6, torch.float16: 1e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def assert_close(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, reduction: int = 1):
    """actual (any dtype) against a float64 reference, with the tolerance of `dtype`.

    The absolute term grows with the reduction length (rounding in a sum of n terms)."""
    assert actual.shape == reference.shape, f"shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    atol = ATOL[dtype] * max(1.0, reduction / 1024)
    torch.testing.assert_close(actual.double(), reference.double(), rtol=RTOL[dtype], atol=atol,
                               equal_nan=True)


def make(shape, dtype, seed=0, scale=4.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def assert_backward_deterministic(module, x: torch.Tensor, grad: torch.Tensor, runs: int) -> None:
    """`runs` backward passes of module(x)[0] with `grad` give bitwise the same gradients (input and
    every parameter): a fixed reduction order, no atomics."""
    first = None
    for _ in range(runs):
        module.zero_grad()
        xi = x.clone().requires_grad_()
        out, _ = module(xi)
        out.backward(grad)
        grads = [xi.grad] + [p.grad.clone() for p in module.parameters()]
        if first is None:
            first = grads
        else:
            assert all(torch.equal(a, b) for a, b in zip(first, grads))


def assert_outputs_and_grads_close(outs, outs_ref, inputs, inputs_ref, module, module_ref, dtype: torch.dtype,
                                   out_reduction: int, grad_reduction: int) -> None:
    """After backward on both sides: every output, every input's gradient and every parameter's
    gradient of `module` against `module_ref` (same parameter names)."""
    for o, r in zip(outs, outs_ref):
        assert o.shape == r.shape and o.dtype == dtype
        assert_close(o, r, dtype, reduction=out_reduction)
    for m, r in zip(inputs, inputs_ref):
        assert_close(m.grad, r.grad, dtype, reduction=grad_reduction)
    params_ref = dict(module_ref.named_parameters())
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert_close(p.grad, params_ref[name].grad, dtype, reduction=grad_reduction)
