"""Timing and the three measurements of an op family: a row per case x provider x mode, the
crossover of every fastops backend against torch, and the dispatch overhead per call.

One clock for everything: `elapsed_s` times n back-to-back calls with CUDA events on a GPU and
time.perf_counter on the CPU. A sample is n calls, with n doubled during warm-up until a sample
lasts at least MIN_SAMPLE_S; a measurement is the median, p20 and p80 of `repeat` samples (ms per
call). No cache flush between calls: inputs stay warm in cache, as in a model's steady state.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from fastops import _dispatch
from fastops.bench import providers as P

MIN_SAMPLE_S = 1e-3
WARMUP_CALLS = 3  # calls allowed to compile (a forward graph, a lazily compiled backward) before timing
MODES = ("fwd", "bwd", "full")


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Case:
    """One input configuration of an op: the inputs it runs on and the work each mode does."""
    op: str
    shape: tuple
    dtype: torch.dtype
    inputs: Callable[[], tuple]            # fresh input tensors
    bytes: dict = field(default_factory=dict)  # mode -> bytes moved (memory-bound ops: GB/s)
    flops: dict = field(default_factory=dict)  # mode -> floating-point operations (TFLOP/s)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Family:
    """What the benchmark needs to know of one op family (see fastops/bench/softmax.py)."""
    name: str
    kernel_op: str                      # dispatch op: its backends are compared, its crossover measured
    torch_fn: Callable                  # torch's eager function
    fastops_fn: Callable                # fastops.functional's, dispatching as the backend scope says
    raw_fn: Callable                    # the compiled kernel called directly, no dispatch
    make_case: Callable[[tuple, torch.dtype, str], Case]  # (shape, dtype, device) -> Case
    shapes: tuple                       # the table's shapes
    quick_shapes: tuple
    sweep: tuple                        # crossover sweep, small to large
    quick_sweep: tuple
    tiny_shape: tuple = (1, 8)          # dispatch overhead
    modes: tuple = MODES
    variants: tuple = ()                # extra torch implementations, (name, fn) pairs, timed as providers
    compile: bool = True                # time torch.compile of torch_fn (off where compiling is the cost)


@dataclass(frozen=True)
class Stats:
    ms: float
    p20: float
    p80: float


# ---- the clock ---------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def elapsed_s(call: Callable, n: int, device: str) -> float:
    """Seconds taken by n back-to-back calls: CUDA events on a GPU, perf_counter on the CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - t0


@contextlib.contextmanager
def counting_compiles():
    """Counts the torch.compile compilations started while active (dynamo frames, recompiles and
    lazily compiled backward graphs), as a one-element list."""
    count = [0]
    def on_start(_args):
        count[0] += 1
    handler = torch._dynamo.callback_handler  # torch._dynamo.reset() clears it: register per use
    handler.register_start_callback(on_start)
    try:
        yield count
    finally:
        handler.remove_start_callback(on_start)


def warm_up(call: Callable, device: str) -> None:
    """Calls until a call compiles nothing, so no compile (nor a mode's recompile) is timed; a call
    still compiling after WARMUP_CALLS calls recompiles every time and is an error, not a time."""
    for _ in range(WARMUP_CALLS):
        with counting_compiles() as compiles:
            call()
            sync(device)
        if not compiles[0]:
            return
    raise RuntimeError(f"still compiling after {WARMUP_CALLS} calls (recompiles on every call)")


def calls_per_sample(call: Callable, device: str, min_s: float = MIN_SAMPLE_S) -> int:
    """Warms up (compiles, autotunes, allocates) and returns the number of calls that makes one
    sample last at least min_s: doubled until the fastest of three trials does, so one slow trial
    (a page fault, a descheduled thread) does not end the search early."""
    warm_up(call, device)
    n = 1
    while min(elapsed_s(call, n, device) for _ in range(3)) < min_s and n < 1 << 20:
        n *= 2
    return n


def time_call(call: Callable, device: str, repeat: int) -> Stats:
    """Median, p20 and p80 in ms per call over `repeat` samples, after warm-up; an error if
    anything compiled while the samples were taken."""
    n = calls_per_sample(call, device)
    with counting_compiles() as compiles:
        samples = torch.tensor([elapsed_s(call, n, device) / n * 1e3 for _ in range(max(repeat, 1))],
                               dtype=torch.float64)
    if compiles[0]:
        raise RuntimeError(f"{compiles[0]} compile(s) while timing (recompiles on every call)")
    p20, p50, p80 = samples.quantile(torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)).tolist()
    return Stats(p50, p20, p80)


def peak_mem_bytes(call: Callable, device: str) -> Optional[int]:
    """Extra memory one call allocates at its peak (CUDA caching allocator); None on the CPU,
    where torch keeps no such counter."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ---- progress ----------------------------------------------------------------------------------

class Progress:
    """tqdm when installed, else a one-line counter on stderr; silent when stderr is no terminal."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.on = sys.stderr.isatty()
        try:
            from tqdm import tqdm  # noqa: PLC0415
            self.bar = tqdm(total=total, disable=not self.on, leave=False, file=sys.stderr)
        except ImportError:
            self.bar = None

    def step(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(label, refresh=False)
            self.bar.update()
        elif self.on:
            sys.stderr.write(f"\r\033[K[{self.done}/{self.total}] {label}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.on:
            sys.stderr.write("\r\033[K")


# ---- measurements ------------------------------------------------------------------------------

def _error(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _fallback_note(provider: P.Provider, op: str) -> Optional[str]:
    """Set when a forced fastops backend fell back to torch, so its time is torch's."""
    choice = _dispatch.last_choice(op)
    if provider.backend in (None, "auto") or choice is None or choice.kernel.backend == provider.backend:
        return None
    return f"{provider.name} fell back to torch: {choice.reason}"


def measure(provider: P.Provider, fn: Callable, case: Case, inputs: tuple, mode: str, device: str,
            repeat: int, op: str) -> dict:
    """One row: `mode` of fn on inputs under the provider's backend, or the error it raised."""
    row = {"op": case.op, "shape": list(case.shape), "dtype": dtype_name(case.dtype),
           "mode": mode, "provider": provider.name, "ms": None, "ms_p20": None, "ms_p80": None,
           "gbps": None, "tflops": None, "speedup_vs_torch": None, "pct_of_copy_bandwidth": None,
           "peak_mem_bytes": None, "error": None}
    _dispatch.clear_history()
    try:
        with provider.scope():
            call = P.make_call(fn, inputs, mode)
            stats = time_call(call, device, repeat)
            row["peak_mem_bytes"] = peak_mem_bytes(call, device)
    except Exception as e:  # a compile failure, an unsupported case: reported in the row
        row["error"] = _error(e)
        return row
    s = stats.ms / 1e3
    row.update(ms=stats.ms, ms_p20=stats.p20, ms_p80=stats.p80, error=_fallback_note(provider, op),
               gbps=case.bytes[mode] / s / 1e9 if mode in case.bytes else None,
               tflops=case.flops[mode] / s / 1e12 if mode in case.flops else None)
    return row


def run_family(family: Family, device: str, dtypes: list, shapes: tuple, repeat: int,
               progress: Progress) -> list[dict]:
    """Rows for every shape x dtype x provider x mode of the family."""
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            case = family.make_case(shape, dtype, device)
            inputs = case.inputs()
            for provider in P.providers(device, family.kernel_op, family.variants, family.compile):
                try:
                    fn = provider.make(family)
                except Exception as e:
                    fn = P.raiser(e)
                for mode in family.modes:
                    progress.step(f"{case.op} {list(shape)} {dtype_name(dtype)} {mode} {provider.name}")
                    rows.append(measure(provider, fn, case, inputs, mode, device, repeat, family.kernel_op))
    return rows


def add_ratios(rows: list[dict], copy_gbps: Optional[float]) -> None:
    """Fills speedup_vs_torch (torch eager ms / ms of the row) and pct_of_copy_bandwidth."""
    key = lambda r: (r["op"], tuple(r["shape"]), r["dtype"], r["mode"])  # noqa: E731
    torch_ms = {key(r): r["ms"] for r in rows if r["provider"] == "torch"}
    for r in rows:
        if r["ms"] and torch_ms.get(key(r)):
            r["speedup_vs_torch"] = torch_ms[key(r)] / r["ms"]
        if r["gbps"] is not None and copy_gbps:
            r["pct_of_copy_bandwidth"] = 100.0 * r["gbps"] / copy_gbps


def crossover_numel(points: list[tuple[int, float, float]]) -> Optional[int]:
    """Smallest numel from which the backend is at least as fast as torch at every larger size
    measured; points are (numel, torch_ms, backend_ms). 0: fastops is never slower; None: torch
    is faster at the largest size."""
    points = sorted(points)
    start = len(points)
    while start > 0 and points[start - 1][2] <= points[start - 1][1]:
        start -= 1
    if start == len(points):
        return None
    return 0 if start == 0 else points[start][0]


def measure_crossovers(family: Family, device: str, dtypes: list, shapes: tuple, repeat: int,
                       progress: Progress) -> dict:
    """Per fastops backend: the forward crossover against torch eager, per dtype and overall (the
    largest over dtypes; None when torch wins at the top of the sweep for any dtype); and the
    speedup of fastops[auto] over torch at every shape of the sweep."""
    backends = P.fastops_backends(device, family.kernel_op)
    out = {b: {"elements": None, "per_dtype": {}, "points": []} for b in backends}
    auto_points = []  # fastops[auto] against torch at every sweep shape (trust goal: >= 0.95x)
    for dtype in dtypes:
        points = {b: [] for b in backends}
        for shape in shapes:
            case = family.make_case(shape, dtype, device)
            inputs = case.inputs()
            progress.step(f"crossover {case.op} {list(shape)} {dtype_name(dtype)}")
            t = time_call(P.make_call(family.torch_fn, inputs, "fwd"), device, repeat).ms
            auto_ms = time_call(P.make_call(family.fastops_fn, inputs, "fwd"), device, repeat).ms
            auto_points.append({"shape": list(shape), "dtype": dtype_name(dtype), "numel": case.numel,
                                "torch_ms": t, "auto_ms": auto_ms, "ratio": t / auto_ms})
            for b in backends:
                with P.use(b):
                    ms = time_call(P.make_call(family.fastops_fn, inputs, "fwd"), device, repeat).ms
                points[b].append((case.numel, t, ms))
                out[b]["points"].append({"shape": list(shape), "dtype": dtype_name(dtype),
                                         "numel": case.numel, "torch_ms": t, "backend_ms": ms})
        for b in backends:
            out[b]["per_dtype"][dtype_name(dtype)] = crossover_numel(points[b])
    for b, entry in out.items():
        values = list(entry["per_dtype"].values())
        entry["elements"] = None if None in values or not values else max(values)
    return {f"{family.kernel_op}[{b}]": entry for b, entry in out.items()}, auto_points


def measure_overhead(family: Family, device: str, repeat: int) -> dict:
    """Microseconds per call on a tiny tensor: the raw kernel, torch, fastops.functional with the
    device's compiled backend forced and under auto; and the two fastops calls over the raw one.

    The four calls are sampled round-robin (one sample of each per round, OVERHEAD_ROUNDS rounds at
    least), and an overhead is the median over rounds of (fastops - raw) within a round, so load
    that comes and goes hits both sides of each difference instead of making it negative."""
    native = P.native_backend(device)
    usable, why = _dispatch.backend_status(native)
    if not usable:
        raise RuntimeError(f"backend {native} is not usable here: {why}")
    case = family.make_case(family.tiny_shape, torch.float32, device)
    inputs = case.inputs()
    specs = {"raw kernel": (family.raw_fn, None), "torch": (family.torch_fn, None),
             f"fastops[{native}]": (family.fastops_fn, native), "fastops[auto]": (family.fastops_fn, "auto")}
    calls, sizes = {}, {}
    for name, (fn, backend) in specs.items():
        calls[name] = P.make_call(fn, inputs, "fwd")
        with P.use(backend):
            sizes[name] = calls_per_sample(calls[name], device)
    samples = {name: [] for name in calls}
    for _ in range(max(repeat, OVERHEAD_ROUNDS)):
        for name, call in calls.items():
            with P.use(specs[name][1]):
                samples[name].append(elapsed_s(call, sizes[name], device) / sizes[name] * 1e6)
    per_call = {name: _median(v) for name, v in samples.items()}
    raw = samples["raw kernel"]
    over = {n: _median([a - b for a, b in zip(samples[n], raw)]) for n in (f"fastops[{native}]", "fastops[auto]")}
    return {"shape": list(family.tiny_shape), "dtype": "float32", "per_call_us": per_call, "over_raw_us": over}


OVERHEAD_ROUNDS = 15


def _median(values: list) -> float:
    return float(torch.tensor(values, dtype=torch.float64).median())
