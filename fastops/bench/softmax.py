"""Softmax family: softmax(x, dim=-1) on [rows, length] inputs.

Bytes moved per element (memory-bound, read and write once each): forward reads x and writes y
(2), backward reads grad and y and writes grad_x (3), full does both (5).
"""
from __future__ import annotations

import torch

import fastops
from fastops import _ext
from fastops.bench.harness import Case, Family

BYTES_PER_ELEMENT = {"fwd": 2, "bwd": 3, "full": 5}


def torch_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1)


def fastops_softmax(x: torch.Tensor) -> torch.Tensor:
    return fastops.functional.softmax(x, -1)


def raw_softmax(x: torch.Tensor) -> torch.Tensor:
    """The compiled kernel without fastops' dispatch (x contiguous, last dim)."""
    return _ext.C.softmax_forward(x, x.dim() - 1)


def make_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
    """softmax over the last dim of a standard-normal x of `shape`."""
    numel_bytes = torch.Size(shape).numel() * dtype.itemsize
    return Case(op="softmax", shape=tuple(shape), dtype=dtype,
                inputs=lambda: (torch.randn(shape, dtype=dtype, device=device),),
                bytes={m: k * numel_bytes for m, k in BYTES_PER_ELEMENT.items()})


FAMILY = Family(
    name="softmax",
    kernel_op="softmax_forward",
    torch_fn=torch_softmax,
    fastops_fn=fastops_softmax,
    raw_fn=raw_softmax,
    make_case=make_case,
    # single rows (latency-bound), a batch of rows, LLM vocabulary rows, attention-score sized
    shapes=((1, 64), (1, 4096), (64, 1024), (256, 4096), (8, 32768), (4096, 4096)),
    quick_shapes=((1, 64), (256, 4096)),  # torch.compile costs seconds per shape
    sweep=((1, 64), (1, 256), (1, 1024), (1, 4096), (4, 4096), (16, 4096), (64, 4096),
           (256, 4096), (1024, 4096)),
    quick_sweep=((1, 64), (1, 256), (1, 1024), (1, 4096), (4, 4096), (16, 4096), (64, 4096),
                 (256, 4096)),
)
