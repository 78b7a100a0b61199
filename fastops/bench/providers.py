"""Providers, the implementations a benchmark compares on the same inputs, and the three modes.

    torch            the family's eager torch function
    torch.compile    the same function through torch.compile (one compile per case, outside timing)
    fastops[<b>]     fastops.functional with backend b forced, for every backend usable on the device
    fastops[auto]    fastops.functional under auto, so the crossover choice shows
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import fastops
from fastops import _dispatch


def use(backend: Optional[str]):
    """fastops.use_backend(backend) for a forced backend. Nothing for "auto", which runs under the
    process-wide default (the CLI sets it to auto) exactly as a user's call does, eager fast paths
    for small inputs included (a use_backend scope turns those off), nor for a non-fastops one."""
    return fastops.use_backend(backend) if backend not in (None, "auto") else contextlib.nullcontext()


@dataclass(frozen=True)
class Provider:
    name: str
    make: Callable          # family -> the function to time; called once per case
    backend: Optional[str] = None  # fastops backend forced while it runs

    def scope(self):
        return use(self.backend)


def torch_fn(family):
    return family.torch_fn


def compiled_fn(family):
    """A fresh torch.compile of the torch function: dynamo's caches are reset so every case
    compiles once for its own shape, never hitting the recompile limit."""
    torch._dynamo.reset()
    return torch.compile(family.torch_fn, dynamic=False)


def fastops_fn(family):
    return family.fastops_fn


def raiser(error: Exception) -> Callable:
    """A function that raises `error`: a provider whose setup failed reports it in every row."""
    def fn(*args):
        raise error
    return fn


def native_backend(device: str) -> str:
    """The backend of fastops' compiled kernels for a device type."""
    return {"cpu": "cpu", "cuda": "cuda"}[device]


def fastops_backends(device: str, op: str) -> list[str]:
    """Backends with a kernel for `op` that runs on `device` and is usable in this process."""
    return [k.backend for k in _dispatch.kernels(op)
            if device in k.devices and _dispatch.backend_status(k.backend)[0]]


def providers(device: str, op: str, variants: tuple = (), compile: bool = True) -> list[Provider]:
    """torch, its variants (name, fn), torch.compile (unless compile=False), every fastops backend."""
    return ([Provider("torch", torch_fn)]
            + [Provider(name, (lambda fn: lambda family: fn)(fn)) for name, fn in variants]
            + ([Provider("torch.compile", compiled_fn)] if compile else [])
            + [Provider(f"fastops[{b}]", fastops_fn, b) for b in fastops_backends(device, op)]
            + [Provider("fastops[auto]", fastops_fn, "auto")])


def make_call(fn: Callable, inputs: tuple, mode: str) -> Callable[[], object]:
    """A no-argument call running one mode of fn(*inputs):

    fwd   fn(*inputs), inputs not requiring grad
    bwd   autograd.grad of an output computed once here, with retain_graph=True
    full  fn(*inputs) then autograd.grad of its output
    The gradient is the same random tensor in every call; float inputs require grad.
    """
    if mode == "fwd":
        return functools.partial(fn, *inputs)
    xs = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    wrt = [t for t in xs if t.requires_grad]
    y = fn(*xs)
    g = torch.randn_like(y)
    if mode == "bwd":
        return lambda: torch.autograd.grad(y, wrt, g, retain_graph=True)
    if mode == "full":
        return lambda: torch.autograd.grad(fn(*xs), wrt, g)
    raise ValueError(f"mode must be fwd, bwd or full, got {mode!r}")
