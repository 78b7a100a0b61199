"""Backend selection: one table of kernels, one selector, the reasons kept for explain().

Every fastops op is a row per backend in `_TABLE[op]`, in the order `auto` tries them. A row
says which devices and dtypes it takes and, through `supports`, which argument combinations;
the selector picks the first row that fits, or torch with the reason why nothing else did.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch")
NEVER = float("inf")  # a crossover: torch is faster at every size measured
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Devices each backend's kernels run on, and the order `auto` tries them in. On a GPU the CUDA
# C++ kernels come first: they are compiled ahead of time, so the first call pays no JIT or
# autotuning; Triton covers what they do not.
BACKEND_DEVICES = {"cuda": ("cuda",), "triton": ("cuda",), "cpu": ("cpu",)}
AUTO_ORDER = ("cuda", "triton", "cpu")

log = logging.getLogger("fastops")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU feature flags Linux lists in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx() -> bool:
    """True where the cpu kernels' bfloat16 GEMMs run on AMX tiles (torch's oneDNN has AMX there
    too, which moves several CPU policies: see fastops.ops.matmul / rnn)."""
    from fastops import _ext
    return bool(_ext.BUILD_META.get("cpu_amx_bf16"))


def cpu_has_avx512_fp16() -> bool:
    """True on CPUs with AVX512-FP16, where torch's (oneDNN's) float16 convolution forward is fast."""
    return "avx512_fp16" in cpu_flags()


@dataclass(frozen=True)
class Kernel:
    """One implementation of one op.

    supports(*args) returns None when this kernel handles the call, else a short reason.
    min_numel: below this many elements `auto` prefers torch (measured crossover, see bench).
    """
    op: str
    family: str
    backend: str
    devices: tuple
    dtypes: tuple
    fn: Callable
    supports: Optional[Callable] = None
    min_numel: dict = None  # "cpu" or "cpu:bfloat16" -> crossover in elements (NEVER: torch always)

    def crossover(self, device: str, dtype: torch.dtype) -> float:
        table = self.min_numel or {}
        return table.get(f"{device}:{_dtype_name(dtype)}", table.get(device, 0))


@dataclass(frozen=True)
class Choice:
    """The kernel picked for a call and why. Choices are built once per (op, setting, device,
    dtype) and reused, so the hot path allocates and formats nothing."""
    kernel: Kernel
    why: str
    by_auto: bool = False  # picked by `auto` (a custom op's backward then stays on it)

    @property
    def backend(self) -> str:
        return self.kernel.backend

    @property
    def reason(self) -> str:
        return self.why


_TABLE: dict[str, list[Kernel]] = {}
_TORCH: dict[str, Kernel] = {}
_TORCH_REQUESTED: dict = {}  # op -> the Choice of an explicit backend "torch"


_FAMILIES: dict[str, list[str]] = {}
_CROSSOVERS: dict[str, dict] = {}  # op -> its crossover table, one dict shared by its kernels


def register_op(op: str, family: str, fns: dict, supports: Optional[dict] = None,
                crossover: Optional[dict] = None, dtypes: tuple = KERNEL_DTYPES) -> None:
    """Adds the kernels of one op: fns maps a backend name to its callable (torch required).

    supports: backend -> predicate returning None or the reason a call is not covered.
    crossover: "cpu"/"cuda", or "cpu:bfloat16" for one dtype -> elements below which `auto`
    prefers torch; NEVER where torch was measured faster at every size.
    """
    supports = supports or {}
    crossover = _CROSSOVERS[op] = dict(crossover or {})
    _FAMILIES.setdefault(family, []).append(op)
    _TORCH[op] = Kernel(op, family, "torch", ("cpu", "cuda", "meta"), (), fns["torch"])
    _TORCH_REQUESTED[op] = Choice(_TORCH[op], "backend 'torch' requested")
    _update_cpu_torch_below(op, crossover)
    _TABLE[op] = [Kernel(op, family, b, BACKEND_DEVICES[b], dtypes, fns[b], supports.get(b), crossover)
                  for b in AUTO_ORDER if b in fns]


def _update_cpu_torch_below(op: str, crossover: Optional[dict]) -> None:
    """The eager fast path's threshold: the smallest CPU crossover of the op (0 when the cpu
    backend is unavailable, so that such calls reach select() and report the real reason)."""
    usable = backend_status("cpu")[0]
    CPU_TORCH_BELOW[op] = min(_cpu_crossovers(crossover).values(), default=0) if usable else 0
    if op in _small_call_paths:
        _push_small_limits(op)


def _cpu_crossovers(table: Optional[dict]) -> dict:
    """The entries of a crossover table for the cpu kernel: "cpu" and "cpu:<dtype>"."""
    return {k: v for k, v in (table or {}).items() if k.split(":")[0] == "cpu"}


def set_crossover(op: str, key: str, elements: float) -> None:
    """Sets the crossover of `op`'s kernels for key "cpu", "cuda" or "cpu:bfloat16" (e.g. from a
    fresh `python -m fastops.bench` run); 0 removes it, NEVER sends every such call to torch."""
    table = _CROSSOVERS.setdefault(op, {})  # shared by the op's kernels
    if elements:
        table[key] = elements
    else:
        table.pop(key, None)
    _update_cpu_torch_below(op, table)
    _plans.clear()


def crossovers(op: str) -> dict:
    return dict(_CROSSOVERS.get(op, {}))


def families() -> dict[str, list[str]]:
    """Op-family name -> the ops in it."""
    return {f: list(o) for f, o in _FAMILIES.items()}


# ---- settings: backend, strict mode ------------------------------------------------------------

def _check_backend(name: str, given: Optional[str] = None) -> str:
    """`name` if it is a backend name, else ValueError naming what was given (`given`: the
    custom-op argument "auto:<name>" that `name` came from)."""
    if name not in BACKENDS:
        hint = " (or auto:<name>)" if given is not None else ""
        raise ValueError(f"fastops: backend must be one of {', '.join(BACKENDS)}{hint}, "
                         f"got {given if given is not None else name!r}")
    return name


_global_backend = _check_backend(os.environ.get("FASTOPS_BACKEND", "auto"))
_scoped_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fastops_backend",
                                                                                default=None)
_strict = os.environ.get("FASTOPS_STRICT", "0") not in ("", "0")
_enable_strict = False  # set while an enable(strict=True) scope is the innermost one


# Eager fast path: op -> elements below which `auto` sends a CPU call straight to torch (the
# cpu kernel's crossover). Read through small_cpu_call(); off unless the settings are plain auto.
CPU_TORCH_BELOW: dict[str, int] = {}
_crossovers_on = True  # fixed below once the settings are read
_log_on = os.environ.get("FASTOPS_LOG", "0") not in ("", "0")
_crossovers_enabled = os.environ.get("FASTOPS_CROSSOVERS", "1") not in ("", "0")


def _update_crossovers_on() -> None:
    global _crossovers_on
    # FASTOPS_LOG=1 turns the fast path off, so every call gets select()'s precise reason logged
    _crossovers_on = _crossovers_enabled and _global_backend == "auto" and not (_strict or _enable_strict) \
        and not _log_on
    _push_small_limits()


# C++ small-call paths (softmax): an op's eager wrapper first offers the call to a compiled
# function that decides from size and dtype alone (torch's kernel below the crossover, fastops'
# cpu kernel in a band measured faster still) and declines (None) otherwise. They are on only
# under plain auto settings with no use_backend() scope open in any thread; Python pushes the
# limits into C++ whenever a setting changes. op -> (set_limits, calls, kernel_upto per dtype).
_small_call_paths: dict[str, tuple[Callable, Callable, dict]] = {}
_SMALL_CALL_DTYPES = ("float32", "float16", "bfloat16")
_scopes_open = 0  # use_backend() scopes open, all threads
_scopes_lock = threading.Lock()


def register_small_call_path(op: str, set_limits: Callable, calls: Callable, kernel_upto: dict) -> None:
    """set_limits(torch_below, kernel_upto): element counts per dtype of _SMALL_CALL_DTYPES (0 = off);
    calls(reset) -> (calls sent to torch, calls run on the cpu kernel) since the last reset."""
    _small_call_paths[op] = (set_limits, calls, dict(kernel_upto))
    _push_small_limits(op)


def set_small_kernel_upto(op: str, dtype: str, elements: int) -> None:
    """Sets the band of op's C++ small-call path that runs fastops' cpu kernel (0: torch's only)."""
    if op in _small_call_paths:  # (none without fastops._C)
        _small_call_paths[op][2][dtype] = int(elements)
        _push_small_limits(op)


def small_kernel_upto(op: str) -> dict:
    return dict(_small_call_paths[op][2]) if op in _small_call_paths else {}


def _as_elements(n: float) -> int:
    return 1 << 62 if n == NEVER else int(n)


def _push_small_limits(op: Optional[str] = None) -> None:
    on = _crossovers_on and _scopes_open == 0
    for name in [op] if op is not None else list(_small_call_paths):
        set_limits, _, upto = _small_call_paths[name]
        table = _CROSSOVERS.get(name, {})
        below = [_as_elements(table.get(f"cpu:{d}", table.get("cpu", 0))) if on else 0 for d in _SMALL_CALL_DTYPES]
        set_limits(below, [upto.get(d, 0) if on else 0 for d in _SMALL_CALL_DTYPES])


def set_crossovers_enabled(on: bool) -> None:
    """Off: `auto` runs a fastops kernel whatever the size (FASTOPS_CROSSOVERS=0 does the same)."""
    global _crossovers_enabled
    _crossovers_enabled = bool(on)
    _update_crossovers_on()


def plain_auto() -> bool:
    """True under plain auto settings in this thread: no named or scoped backend, strict mode,
    FASTOPS_LOG or FASTOPS_CROSSOVERS=0, so crossovers and auto's policies apply."""
    return _crossovers_on and _scoped_backend.get() is None


def small_cpu_call(op: str, x: torch.Tensor) -> bool:
    """True when `auto` would send this call to torch for its size alone: a CPU tensor below the
    cpu kernel's crossover, with plain auto settings. Costs a few attribute reads, so a tiny call
    pays almost nothing on top of torch; it is recorded as such for explain()."""
    if isinstance(x, torch.Tensor) and x.numel() < CPU_TORCH_BELOW.get(op, 0) and not x.is_cuda \
            and plain_auto():
        _small_calls[op] = True
        return True
    return False


_small_calls: dict[str, bool] = {}  # ops that took the fast path since clear_history()


def set_backend(name: str) -> None:
    """Sets the backend for every later call in this process: auto, triton, cuda, cpu or torch."""
    global _global_backend
    _global_backend = _check_backend(name)
    _update_crossovers_on()


def get_backend() -> str:
    scoped = _scoped_backend.get()
    return scoped if scoped is not None else _global_backend


@contextlib.contextmanager
def use_backend(name: str):
    """Uses backend `name` inside the block (this thread or task only)."""
    global _scopes_open
    token = _scoped_backend.set(_check_backend(name))
    with _scopes_lock:
        _scopes_open += 1
        _push_small_limits()
    try:
        yield
    finally:
        _scoped_backend.reset(token)
        with _scopes_lock:
            _scopes_open -= 1
            _push_small_limits()


def set_strict(on: bool) -> None:
    """Strict mode: raise NotImplementedError instead of falling back to torch (FASTOPS_STRICT=1)."""
    global _strict
    _strict = bool(on)
    _update_crossovers_on()


def set_enable_strict(on: bool) -> None:
    global _enable_strict
    _enable_strict = bool(on)
    _update_crossovers_on()


def strict() -> bool:
    return _strict or _enable_strict


_update_crossovers_on()


# ---- availability of whole backends ------------------------------------------------------------

# Read once: TRITON_INTERPRET must be set before triton is imported anyway.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def backend_status(name: str) -> tuple[bool, str]:
    """(usable here, why not). Decided once per process; nothing is probed at import."""
    from fastops import _ext
    if name == "torch":
        return True, ""
    if name == "cpu":
        return (True, "") if _ext.C is not None else (False, _ext.LOAD_ERROR)
    if name == "cuda":
        if _ext.C is None:
            return False, _ext.LOAD_ERROR
        if not _ext.BUILD_META.get("with_cuda"):
            return False, "fastops._C was built without CUDA kernels (no nvcc or a CPU-only torch at build time)"
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible to torch"
        return True, ""
    if name == "triton":
        try:
            import triton  # noqa: F401, PLC0415
        except Exception as e:
            return False, f"triton cannot be imported ({type(e).__name__}: {e})"
        if torch.cuda.is_available() or INTERPRET:
            return True, ""
        return False, "no CUDA device is visible to torch (set TRITON_INTERPRET=1 to run Triton on CPU tensors)"
    raise ValueError(f"fastops: backend must be one of {', '.join(BACKENDS[1:])}, got {name!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def static_why_not(kernel: Kernel, device: str, dtype: torch.dtype) -> Optional[str]:
    """None when `kernel` can run on this device and dtype, else the constraint that rules it out."""
    ok, why = backend_status(kernel.backend)
    if not ok:
        return why
    devices = ("cpu",) if kernel.backend == "triton" and INTERPRET else kernel.devices
    if device not in devices:
        return f"runs on {'/'.join(devices)} tensors, got {device}"
    if dtype not in kernel.dtypes:
        return f"takes {', '.join(map(_dtype_name, kernel.dtypes))}, got {_dtype_name(dtype)}"
    return None


# ---- the selector ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """What select() does for one (op, setting, device, dtype): the kernels left after the static
    checks, in order, each with its prepared choices, and the reasons the others were dropped."""
    candidates: tuple  # of (kernel, picked Choice, below-crossover Choice or None, crossover)
    dropped: tuple     # of "backend: reason"


_plans: dict[tuple, _Plan] = {}
_last: dict[str, tuple] = {}  # op -> (Choice, (dtype, shape, device)) of the latest call
_logged: set = set()
_log_lock = threading.Lock()
if _log_on and not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[fastops] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)


def _plan(op: str, want: str, device: str, dtype: torch.dtype) -> _Plan:
    # "auto:<name>": auto already chose <name> for this call (the forward of a custom op passes
    # it on to its backward); run <name> and say it was auto's choice.
    by_auto = want.startswith("auto:")
    name = want[5:] if by_auto else want
    _check_backend(name, want)
    auto_why = f"auto: first usable of {', '.join(AUTO_ORDER)}"
    candidates, dropped = [], []
    for k in _TABLE.get(op, ()):
        if name != "auto" and k.backend != name:
            continue
        if want == "auto" and k.backend == "triton" and INTERPRET:
            continue  # the interpreter is for tests: it runs only when asked for by name
        why = static_why_not(k, device, dtype)
        if why is not None:
            dropped.append(f"{k.backend}: {why}")
            continue
        n = k.crossover(device, dtype) if want == "auto" else 0
        if n == NEVER:
            why = f"torch was measured faster than {k.backend} at every size for {_dtype_name(dtype)} on {device}"
        else:
            why = f"below the {k.backend} crossover of {n} elements, where torch is faster"
        below = Choice(_TORCH[op], why) if n else None
        picked = auto_why if want == "auto" or by_auto else f"backend {want!r} requested"
        candidates.append((k, Choice(k, picked, want == "auto" or by_auto), below, n))
    if not candidates and not dropped:
        dropped.append(f"no {want} kernel for {op}")
    return _Plan(tuple(candidates), tuple(dropped))


def _record(op: str, choice: Choice, x: torch.Tensor) -> Choice:
    _last[op] = (choice, (x.dtype, x.shape, x.device.type))
    if _log_on:
        key = (op, choice.kernel.backend, choice.why)
        with _log_lock:
            if key not in _logged:
                _logged.add(key)
                log.info("%s -> %s: %s (first seen on %s)", op, choice.kernel.backend, choice.why,
                         _describe(x))
    return choice


def _describe_meta(dtype: torch.dtype, shape, device: str) -> str:
    return f"{_dtype_name(dtype)}{list(shape)} on {device}"


def _describe(x: torch.Tensor) -> str:
    return _describe_meta(x.dtype, x.shape, x.device.type)


def select(op: str, x: torch.Tensor, *args, backend: Optional[str] = None) -> Choice:
    """The kernel that runs `op` on (x, *args) under the current settings, and why.

    backend: a name from BACKENDS, or "auto:<name>" for a choice auto made already; None reads
    set_backend/use_backend/FASTOPS_BACKEND.
    Raises NotImplementedError in strict mode when no fastops kernel covers the call.
    """
    want = backend or get_backend()
    if want == "torch":
        return _record(op, _TORCH_REQUESTED[op], x)
    device = x.device.type
    key = (op, want, device, x.dtype)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = _plan(op, want, device, x.dtype)
    dynamic = []
    for k, picked, below, crossover in plan.candidates:
        if k.supports is not None:
            why = k.supports(x, *args)
            if why is not None:
                dynamic.append(f"{k.backend}: {why}")
                continue
        if below is not None and _crossovers_enabled and not strict() and x.numel() < crossover:
            return _record(op, below, x)
        return _record(op, picked, x)
    return fallback(op, x, "; ".join(plan.dropped + tuple(dynamic)))


def select_for_op(op: str, backend: str, x: torch.Tensor, *args) -> Choice:
    """select() for a custom op's `backend` argument: "auto" selects now; a backend name or
    "auto:<name>" (a choice auto made already, see chosen_name) is passed on."""
    return select(op, x, *args, backend=None if backend == "auto" else backend)


def run_op(op: str, backend: str, x: torch.Tensor, *args):
    """Runs the kernel select_for_op picks on (x, *args) and returns its result."""
    return select_for_op(op, backend, x, *args).kernel.fn(x, *args)


def chosen_name(choice: Choice) -> str:
    """The backend argument that makes a custom op run `choice` again: "auto:<name>" when auto
    picked it (so explain() still says so), else the name that was asked for."""
    return f"auto:{choice.kernel.backend}" if choice.by_auto else choice.kernel.backend


def annotate(op: str, x: torch.Tensor, text: str) -> None:
    """Appends `text` (e.g. which path inside the kernel ran) to the last choice explain() shows for
    `op`, once."""
    choice = last_choice(op)
    if choice is not None and text not in choice.why:
        _record(op, dataclasses.replace(choice, why=f"{choice.why}; {text}"), x)


def fallback(op: str, x: torch.Tensor, why: str) -> Choice:
    """Records that `op` runs on torch because of `why` (a constraint of the call itself);
    raises NotImplementedError instead in strict mode."""
    if strict():
        raise NotImplementedError(f"fastops strict mode: no fastops kernel runs {op} on {_describe(x)} "
                                  f"({why}); call without strict to fall back to torch")
    return _record(op, Choice(_TORCH[op], f"fallback to torch ({why})"), x)


def explain() -> str:
    """Which implementation ran last for each op, on what, and why. Empty until an op has run."""
    lines = []
    for op, (c, meta) in sorted(_last.items()):
        lines.append(f"{op}: {c.kernel.backend} for {_describe_meta(*meta)} - {c.why}")
    for op in sorted(_small_calls):
        lines.append(f"{op}: torch for CPU calls below the cpu crossover of "
                     f"{CPU_TORCH_BELOW[op]} elements (eager fast path: size alone decided; "
                     f"FASTOPS_LOG=1 gives each call's full reason)")
    for op, (_, calls, upto) in sorted(_small_call_paths.items()):
        to_torch, to_kernel = calls(False)
        if to_torch:
            lines.append(f"{op}: torch for {to_torch} CPU calls below the cpu crossover "
                         f"{_describe_crossover(op)} (C++ small-call path: size and dtype alone decided; "
                         f"FASTOPS_LOG=1 gives each call's full reason)")
        if to_kernel:
            band = ", ".join(f"{d} up to {n}" for d, n in upto.items() if n)
            lines.append(f"{op}: cpu for {to_kernel} small CPU calls (C++ small-call path: contiguous "
                         f"last-dim input, no graph to record, measured faster than torch for {band} elements)")
    return "\n".join(lines)


def _describe_crossover(op: str) -> str:
    table = _cpu_crossovers(_CROSSOVERS.get(op))
    return "(" + ", ".join(f"{k}: {'never' if v == NEVER else int(v)}" for k, v in sorted(table.items())) + ")"


def last_choice(op: str) -> Optional[Choice]:
    entry = _last.get(op)
    return entry[0] if entry else None


def clear_history() -> None:
    _last.clear()
    _small_calls.clear()
    for _, calls, _ in _small_call_paths.values():
        calls(True)


def kernels(op: str) -> list[Kernel]:
    """The non-torch kernels of `op`, in auto's order."""
    return list(_TABLE.get(op, ()))


def ops() -> list[str]:
    return sorted(_TORCH)
