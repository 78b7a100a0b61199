"""Attention family: scaled_dot_product_attention(q, k, v) on q/k/v [B, H, L, E] (L = S).

shape = (B, H, L, S, E). Compute-bound: TFLOP/s from 4 * B * H * L * S * E for the forward (the two
GEMMs), 2.5 times that for the backward (five GEMMs), halved when causal. Two families: `attention`
(no mask) and `attention_causal` (is_causal=True).
"""
from __future__ import annotations

import math

import torch

import fastops
from fastops import _ext
from fastops.bench.harness import Case, Family

FLOPS_PER_MODE = {"fwd": 1.0, "bwd": 2.5, "full": 3.5}

SHAPES = ((1, 1, 64, 64, 64), (4, 8, 512, 512, 64), (4, 8, 1024, 1024, 64), (4, 8, 2048, 2048, 64))
QUICK_SHAPES = ((1, 1, 64, 64, 64), (4, 8, 512, 512, 64))
SWEEP = ((1, 1, 16, 16, 64), (1, 1, 64, 64, 64), (1, 4, 128, 128, 64), (1, 8, 256, 256, 64),
         (4, 8, 512, 512, 64))


def _fns(causal: bool):
    def torch_fn(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fastops_fn(q, k, v):
        return fastops.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def raw_fn(q, k, v):
        """The compiled cpu kernel without dispatch or autograd."""
        return _ext.C.attention_forward(q, k, v, None, causal, 1.0 / math.sqrt(q.shape[-1]), 0.0, 0)[0]

    return torch_fn, fastops_fn, raw_fn


def _make_case(causal: bool):
    def make_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
        B, H, L, S, E = shape
        fwd = 4.0 * B * H * L * S * E / (2 if causal else 1)
        g = torch.Generator().manual_seed(0)

        def inputs():
            return tuple(torch.randn(shp, generator=g).to(device=device, dtype=dtype)
                         for shp in ((B, H, L, E), (B, H, S, E), (B, H, S, E)))
        return Case(op="sdpa_causal" if causal else "sdpa", shape=tuple(shape), dtype=dtype, inputs=inputs,
                    flops={m: k * fwd for m, k in FLOPS_PER_MODE.items()})
    return make_case


def _family(name: str, causal: bool) -> Family:
    torch_fn, fastops_fn, raw_fn = _fns(causal)
    return Family(name=name, kernel_op="sdpa_forward", torch_fn=torch_fn, fastops_fn=fastops_fn, raw_fn=raw_fn,
                  make_case=_make_case(causal), shapes=SHAPES, quick_shapes=QUICK_SHAPES, sweep=SWEEP,
                  quick_sweep=SWEEP[:3], tiny_shape=(1, 1, 8, 8, 16))


FAMILY = _family("attention", causal=False)
CAUSAL_FAMILY = _family("attention_causal", causal=True)
