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
