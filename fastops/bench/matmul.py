"""Matmul family: matmul(a [M, K], b [K, N]) and linear + activation (fused epilogue).

shape = (M, N, K). Compute-bound: TFLOP/s from 2 M N K for the forward, twice that for the
backward (dA = dC B^T and dB = A^T dC), three times for full. Two families: `matmul` (square
256..2048 and LLM-shaped M x N x K with N, K in {1024, 4096, 11008}, plus decode-sized small M)
and `linear_gelu` (fastops' fused linear(x, w, b, "gelu") against torch's linear then gelu).
"""
from __future__ import annotations

import torch

import fastops
from fastops import _ext
from fastops.bench.harness import Case, Family

FLOPS_PER_MODE = {"fwd": 1.0, "bwd": 2.0, "full": 3.0}

SQUARE = tuple((n, n, n) for n in (256, 512, 1024, 2048))
LLM = ((4096, 1024, 4096), (4096, 4096, 1024), (4096, 11008, 1024), (4096, 1024, 11008))
SMALL = ((1, 4096, 4096), (16, 4096, 4096), (64, 1024, 1024))
SWEEP = ((8, 64, 64), (16, 128, 128), (32, 256, 256), (64, 256, 256), (128, 512, 512), (256, 512, 512),
         (512, 1024, 1024))


def _make_case(op: str, linear: bool):
    def make_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
        M, N, K = shape
        g = torch.Generator().manual_seed(0)

        def inputs():
            x = torch.randn(M, K, generator=g).to(device=device, dtype=dtype)
            if linear:
                w = (torch.randn(N, K, generator=g) / K ** 0.5).to(device=device, dtype=dtype)
                return x, w, torch.randn(N, generator=g).to(device=device, dtype=dtype)
            return x, torch.randn(K, N, generator=g).to(device=device, dtype=dtype)
        fwd = 2.0 * M * N * K
        return Case(op=op, shape=tuple(shape), dtype=dtype, inputs=inputs,
                    flops={m: k * fwd for m, k in FLOPS_PER_MODE.items()})
    return make_case


def torch_matmul(a, b):
    return torch.matmul(a, b)


def fastops_matmul(a, b):
    return fastops.functional.matmul(a, b)


def raw_matmul(a, b):
    """The compiled kernel without fastops' dispatch or autograd."""
    return _ext.C.gemm(a, b)


def torch_linear_gelu(x, w, b):
    return torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))


def fastops_linear_gelu(x, w, b):
    return fastops.functional.linear(x, w, b, activation="gelu")


def raw_linear_gelu(x, w, b):
    return _ext.C.gemm(x, w.t(), b, 2)


FAMILY = Family(name="matmul", kernel_op="matmul", torch_fn=torch_matmul, fastops_fn=fastops_matmul,
                raw_fn=raw_matmul, make_case=_make_case("matmul", False), shapes=SQUARE + LLM + SMALL,
                quick_shapes=((256, 256, 256), (1024, 1024, 1024), (1, 4096, 4096)),
                sweep=SWEEP, quick_sweep=SWEEP[:4], tiny_shape=(1, 8, 8))
LINEAR_FAMILY = Family(name="linear_gelu", kernel_op="linear", torch_fn=torch_linear_gelu,
                       fastops_fn=fastops_linear_gelu, raw_fn=raw_linear_gelu,
                       make_case=_make_case("linear_gelu", True),
                       shapes=((1, 4096, 4096), (64, 1024, 1024), (512, 4096, 1024), (1024, 1024, 1024),
                               (2048, 4096, 1024)),
                       quick_shapes=((1, 4096, 4096), (1024, 1024, 1024)),
                       sweep=SWEEP, quick_sweep=SWEEP[:4], tiny_shape=(1, 8, 8))
