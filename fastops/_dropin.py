"""Drop-in entry points: enable()/disable() override torch's own aten kernels, patch()/unpatch()
swap torch.nn modules for their fastops subclasses.

Each op family registers what it covers here: the aten ops it can serve (with a handler that
gets torch's original kernel to fall back on) and the torch.nn classes it has twins for.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from fastops import _dispatch

DISPATCH_KEYS = ("CPU", "CUDA")


@dataclass(frozen=True)
class Override:
    """handler(original, *args): `original(*args)` runs torch's own kernel for that call."""
    family: str
    aten: str
    handler: Callable
    composite: bool = False  # the op has only a composite kernel (aten::convolution, aten::sdpa)
    keys: tuple = DISPATCH_KEYS


_OVERRIDES: list[Override] = []
_MODULES: dict[str, dict[type, type]] = {}  # family -> {torch class: fastops class}


def register_override(family: str, aten: str, handler: Callable, composite: bool = False,
                      keys: tuple = DISPATCH_KEYS) -> None:
    """composite: torch's kernel of `aten` is a composite one (no per-device kernel); the
    override is then registered for each of `keys` and falls back to that kernel. keys: the
    dispatch keys to override; "AutogradCPU"/"AutogradCUDA" put the handler above autograd
    (for a CompositeImplicitAutograd op whose handler runs autograd-aware fastops code), and so
    does the alias key "CompositeImplicitAutograd" itself (one registration for every device)."""
    taken = next((ov.family for ov in _OVERRIDES if ov.aten == aten), None)
    if taken is not None:
        raise RuntimeError(f"fastops: {aten} is already overridden by the {taken!r} family")
    _OVERRIDES.append(Override(family, aten, handler, composite, tuple(keys)))


def register_module(family: str, torch_cls: type, fastops_cls: type) -> None:
    _MODULES.setdefault(family, {})[torch_cls] = fastops_cls


def _valid_families() -> list[str]:
    return sorted(set(_dispatch.families()) | set(_MODULES))


def resolve_families(include: Optional[Iterable[str]], exclude: Optional[Iterable[str]],
                     what: str) -> frozenset:
    """The families named by include (default: all) minus exclude; ValueError on unknown names."""
    valid = _valid_families()
    chosen = set(valid if include is None else _names(include, what, "include"))
    if exclude is not None:
        chosen -= set(_names(exclude, what, "exclude"))
    for name in chosen | set(_names(exclude or [], what, "exclude")):
        if name not in valid:
            raise ValueError(f"fastops.{what}: unknown op family {name!r}; valid names are "
                             f"{', '.join(valid)}")
    return frozenset(chosen)


def _names(value, what: str, arg: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise ValueError(f"fastops.{what}: {arg} must be a family name or a list of them, "
                         f"got {type(value).__name__}") from None


# ---- enable / disable ---------------------------------------------------------------------------

def _boxed_original(aten: str, key: str, composite: bool = False) -> Optional[Callable]:
    """torch's own kernel of `aten` for dispatch key `key`, or None where torch has none (a
    CPU-only op has no CUDA kernel: there is nothing to override there). composite: an op whose
    only kernel is CompositeExplicitAutograd; that kernel is the original for every key."""
    if key == "CompositeImplicitAutograd":  # an alias key: its kernel is the one AutogradCPU computes
        if not torch._C._dispatch_has_kernel_for_dispatch_key(aten, key):
            return None
        kernel = torch.library.get_kernel(aten, "AutogradCPU")
        keyset = torch._C.DispatchKeySet("AutogradCPU")
        return lambda *args, **kwargs: kernel.call_boxed(keyset, *args, **kwargs)
    # get_kernel(aten, key) resolves to the composite kernel when no per-device one is registered
    if not composite and not torch._C._dispatch_has_kernel_for_dispatch_key(aten, key):
        return None
    kernel = torch.library.get_kernel(aten, key)
    keyset = torch._C.DispatchKeySet(key)
    return lambda *args, **kwargs: kernel.call_boxed(keyset, *args, **kwargs)


class _State:
    """The stack of active enable() scopes; the innermost one decides what is overridden."""

    def __init__(self):
        self.lock = threading.RLock()
        self.stack: list[Enabled] = []
        self.libraries: dict[str, torch.library.Library] = {}  # family -> its registered overrides

    def apply(self) -> None:
        """Registers a family's overrides when the first scope naming it opens and removes all of
        them when the last scope closes; in between each override asks the innermost scope
        whether its family is on. Only the union of the families named since the stack was last
        empty costs a Python hop, and scopes opening and closing (in any thread) never remove a
        kernel while a scope is active, so no call can be in flight in a kernel being removed."""
        _dispatch.set_enable_strict(bool(self.stack) and self.stack[-1].strict)
        if not self.stack:
            for library in self.libraries.values():
                library._destroy()
            self.libraries.clear()
            return
        for family in sorted(set().union(*(scope.families for scope in self.stack)) - set(self.libraries)):
            library = torch.library.Library("aten", "IMPL")
            for ov in _OVERRIDES:
                if ov.family != family:
                    continue
                for key in ov.keys:
                    original = _boxed_original(ov.aten, key, ov.composite)
                    if original is not None:
                        library.impl(ov.aten.split("::")[1], _bind(ov, original), key)
            self.libraries[family] = library

    def family_on(self, family: str) -> bool:
        stack = self.stack
        try:
            return family in stack[-1].families
        except IndexError:  # the last scope closed while this call was on its way
            return False


_inside = threading.local()  # the aten ops whose fastops handler is running in this thread


def _bind(ov: Override, original):
    def run(*args, **kwargs):  # kwargs: keyword-only aten args
        active = getattr(_inside, "ops", None)
        if active is None:
            active = _inside.ops = set()
        # a handler that falls back through torch's public API re-enters its own aten op: torch's
        # kernel serves that inner call
        if ov.aten in active or not _state.family_on(ov.family):
            return original(*args, **kwargs)
        active.add(ov.aten)
        try:
            return ov.handler(original, *args, **kwargs)
        finally:
            active.discard(ov.aten)
    return run


_state = _State()


class Enabled:
    """Returned by enable(): active until disable() or the end of its `with` block."""

    def __init__(self, families: frozenset, strict: bool):
        self.families = families
        self.strict = strict

    def __enter__(self) -> "Enabled":
        return self

    def __exit__(self, *exc) -> None:
        with _state.lock:
            if self in _state.stack:
                _state.stack.remove(self)
                _state.apply()

    def __repr__(self) -> str:
        return f"fastops.Enabled(families={sorted(self.families)}, strict={self.strict})"


def enable(include=None, exclude=None, strict: bool = False, *, ops=None) -> Enabled:
    """Routes torch's own ops (torch.softmax, F.softmax, ... and their backward) to fastops.

    include/exclude: op-family names (default: every family); `ops` is an alias of include.
    strict: raise NotImplementedError naming the constraint where no fastops kernel covers a
    call, instead of falling back to torch (FASTOPS_STRICT=1 does the same everywhere).
    Use as `with fastops.enable(): ...` or call and later fastops.disable(). Nested scopes:
    the innermost decides; leaving it restores the outer one.
    """
    if ops is not None and include is not None:
        raise ValueError("fastops.enable: pass include or its alias ops, not both")
    handle = Enabled(resolve_families(include if ops is None else ops, exclude, "enable"), bool(strict))
    with _state.lock:
        _state.stack.append(handle)
        _state.apply()
    return handle


def disable() -> None:
    """Ends every enable() scope and restores torch's own kernels."""
    with _state.lock:
        _state.stack.clear()
        _state.apply()


def enabled_families() -> frozenset:
    with _state.lock:
        return _state.stack[-1].families if _state.stack else frozenset()


# ---- patch / unpatch ----------------------------------------------------------------------------

def patch(model: torch.nn.Module, include=None, exclude=None, *, ops=None) -> torch.nn.Module:
    """Swaps supported torch.nn modules inside `model` (and model itself) for their fastops twins.

    The swap changes only the class (each fastops module subclasses its torch one), so
    parameters, buffers, hooks and state_dict keys stay as they are. Returns `model`.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"fastops.patch: model must be a torch.nn.Module, got {type(model).__name__}")
    if ops is not None and include is not None:
        raise ValueError("fastops.patch: pass include or its alias ops, not both")
    families = resolve_families(include if ops is None else ops, exclude, "patch")
    swap = {t: f for fam in families for t, f in _MODULES.get(fam, {}).items()}
    for module in model.modules():
        target = swap.get(type(module))
        if target is not None:
            module.__class__ = target
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Reverses patch(): every fastops module in `model` becomes its torch.nn class again."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"fastops.unpatch: model must be a torch.nn.Module, got {type(model).__name__}")
    back = {f: t for table in _MODULES.values() for t, f in table.items()}
    for module in model.modules():
        target = back.get(type(module))
        if target is not None:
            module.__class__ = target
    return model
