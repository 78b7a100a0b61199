"""Adam family: one optimizer step over a list of parameters, shape = (tensors, elements each).

Providers: torch.optim.Adam as constructed by default (the for-loop path on the CPU:
foreach=False), its foreach and fused=True variants, and fastops.optim.Adam under each fastops
backend. Every provider owns its optimizer, built once per case on the case's parameters (their
grads set once), so a timed call is exactly one `step()`.

Bytes per parameter per step: p read and written, g read, exp_avg and exp_avg_sq read and written
in float32: 2 * p + g + 16, i.e. 28 for float32 params, 22 for 16-bit params with float32 states
(the byte count is the same for every provider; torch keeps 16-bit states for 16-bit params and
so moves fewer bytes than counted).
"""
from __future__ import annotations

import torch

from fastops import _ext
from fastops.bench.harness import Case, Family
from fastops.optim import Adam as FastAdam


class Params:
    """The parameters of one case with their grads, and an optimizer per provider, made lazily."""

    def __init__(self, tensors: int, numel: int, dtype: torch.dtype, device: str):
        g = torch.Generator().manual_seed(0)
        self.params = []
        for _ in range(tensors):
            p = torch.randn(numel, generator=g).to(device=device, dtype=dtype).requires_grad_()
            p.grad = torch.randn(numel, generator=g).to(device=device, dtype=dtype) * 1e-3
            self.params.append(p)
        self.optimizers = {}
        self.raw = None

    def step(self, name: str, make) -> None:
        opt = self.optimizers.get(name)
        if opt is None:
            opt = self.optimizers[name] = make(self.params)
        opt.step()


def _lr_tiny(ps):
    return dict(lr=1e-6)  # keeps the parameters where they are over thousands of timed steps


def torch_adam(state: Params) -> None:
    """torch.optim.Adam(params) as users write it: the default (for-loop on the CPU)."""
    state.step("torch", lambda ps: torch.optim.Adam(ps, **_lr_tiny(ps)))


def torch_adam_foreach(state: Params) -> None:
    state.step("torch-foreach", lambda ps: torch.optim.Adam(ps, foreach=True, **_lr_tiny(ps)))


def torch_adam_fused(state: Params) -> None:
    state.step("torch-fused", lambda ps: torch.optim.Adam(ps, fused=True, **_lr_tiny(ps)))


def fastops_adam(state: Params) -> None:
    """fastops.optim.Adam; the backend scope of the provider decides the kernel."""
    state.step("fastops", lambda ps: FastAdam(ps, **_lr_tiny(ps)))


def raw_adam(state: Params) -> None:
    """The compiled kernel on ready-made lists, no optimizer and no dispatch."""
    if state.raw is None:
        ps = [p.detach() for p in state.params]
        zeros = [torch.zeros_like(p, dtype=torch.float32) for p in ps]
        state.raw = (ps, [p.grad for p in state.params], zeros, [z.clone() for z in zeros], [], [],
                     [torch.ones((), device=p.device) for p in ps])
    _ext.C.adam_step(*state.raw, 1e-6, 0.9, 0.999, 0.0, 1e-8, False, False, False)


def bytes_per_param(dtype: torch.dtype) -> int:
    return 2 * dtype.itemsize + dtype.itemsize + 16


def make_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
    """shape = (tensors, elements per tensor)."""
    tensors, numel = shape
    return Case(op="adam_step", shape=tuple(shape), dtype=dtype,
                inputs=lambda: (Params(tensors, numel, dtype, device),),
                bytes={"fwd": tensors * numel * bytes_per_param(dtype)})


FAMILY = Family(
    name="adam",
    kernel_op="adam_step",
    torch_fn=torch_adam,
    fastops_fn=fastops_adam,
    raw_fn=raw_adam,
    make_case=make_case,
    # 10 small tensors (issue 10 item 5: a tiny step), a mid-size model, 8M and 16M params
    shapes=((10, 64), (16, 65536), (8, 1 << 20), (16, 1 << 20)),
    quick_shapes=((10, 64), (8, 1 << 20)),
    sweep=((10, 64), (10, 1024), (10, 16384), (8, 131072), (8, 1 << 20)),
    quick_sweep=((10, 64), (10, 4096), (8, 131072)),
    tiny_shape=(10, 64),
    modes=("fwd",),
    variants=(("torch-foreach", torch_adam_foreach), ("torch-fused", torch_adam_fused)),
    compile=False,
)
