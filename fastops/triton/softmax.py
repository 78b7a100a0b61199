"""Softmax forward and backward as Triton kernels.

Every tensor is contiguous and viewed as ``[outer, dim, inner]``; softmax runs along ``dim``.
Element ``(o, d, i)`` sits at offset ``(o * dim + d) * inner + i``. A *row* is one ``(o, i)``
pair: ``n_rows = outer * inner`` rows of ``dim`` elements each, ``inner`` elements apart.

    forward : y_d  = exp(x_d - m) / s,  m = max_d x_d,  s = sum_d exp(x_d - m)
    backward: dx_d = y_d * (dy_d - sum_k dy_k * y_k)

Numerics mirror ``csrc/include/fastops/math/softmax.h``: all math in float32 whatever the
storage dtype (float32, float16, bfloat16), outputs cast back to the storage dtype. A row of
all -inf gives NaN (as torch), a -inf element next to finite ones gives exactly 0, a NaN
anywhere in a row makes the whole row NaN, a +inf makes the row NaN (as torch).

Two kernel shapes per direction:
  * one-pass: the whole row (or ``ROWS`` short rows) lives in registers; used while
    ``next_power_of_2(dim) <= ONEPASS_MAX_BLOCK``.
  * looped: pass 1 walks the row in ``BLOCK_D`` tiles keeping a per-lane running (max, sum)
    merged with the online-softmax rescale, lanes merged at the end; pass 2 writes outputs.
    Handles rows of any length (2^20 and beyond).
Offsets are 64-bit (program ids are cast to int64 before any multiply).

The file reads top to bottom: configs, autotune + jit kernels, launchers, torch references,
then ``report_specs()`` for ``python -m fastops.report``.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------
# Configs (data only: nothing here queries a device)
# --------------------------------------------------------------------------------------------

# Largest power-of-two row tile kept in registers by the one-pass kernels.
ONEPASS_MAX_BLOCK = 8192
# Short rows are packed ROWS to a program so a program holds at least this many elements.
ONEPASS_MIN_TILE = 1024
# fp32 values per thread a one-pass tile may hold: fewer wastes warps on the reduction,
# more spills registers (checked with `python -m fastops.report`).
ONEPASS_ELEMS_PER_THREAD = (4, 32)

_ONEPASS_WARPS = (2, 4, 8, 16)
# (BLOCK_D, num_warps) of the looped kernels: 8-16 fp32 values per thread per tile.
_LOOPED_TILES = ((1024, 4), (2048, 8), (4096, 16))

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _onepass_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=w, num_stages=1) for w in _ONEPASS_WARPS]


def _looped_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_D": b}, num_warps=w, num_stages=1) for b, w in _LOOPED_TILES]


def _tuned(configs: list[triton.Config]) -> list[triton.Config]:
    # The interpreter runs every program on the CPU: benchmarking configs there is pointless.
    return configs[:1] if _interpreting() else configs


def _onepass_tile_fits(tile: int, num_warps: int) -> bool:
    lo, hi = ONEPASS_ELEMS_PER_THREAD
    per_thread = tile / (32 * num_warps)
    return lo <= per_thread <= hi


def _keep_onepass(configs, named_args, **kwargs):
    """early_config_prune: keep the warp counts suited to the tile ROWS x BLOCK_D."""
    meta = {**named_args, **kwargs}
    tile = meta["ROWS"] * meta["BLOCK_D"]
    kept = [c for c in configs if _onepass_tile_fits(tile, c.num_warps)]
    if kept:
        return kept
    # nothing fits: a tiny tile takes the fewest warps, a huge one the most
    pick = min if tile < 32 * ONEPASS_ELEMS_PER_THREAD[0] * _ONEPASS_WARPS[0] else max
    return [pick(configs, key=lambda c: c.num_warps)]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _row_base(rows, dim, inner, CONTIGUOUS: tl.constexpr):
    """Offset of element (o, 0, i) of the int64 rows r = o * inner + i."""
    if CONTIGUOUS:
        return rows * dim
    else:
        return (rows // inner) * dim * inner + rows % inner


@triton.jit
def _col_offset(cols, inner, CONTIGUOUS: tl.constexpr):
    if CONTIGUOUS:
        return cols
    else:
        return cols.to(tl.int64) * inner


@triton.jit
def _nan_max(a, b):
    """max(a, b) where a NaN operand wins (softmax.h `merge`)."""
    m = tl.where(a > b, a, b)
    m = tl.where(a != a, a, m)
    return tl.where(b != b, b, m)


@triton.jit
def _rescale(old_max, new_max):
    """exp(old_max - new_max); 0 when new_max is -inf (softmax.h `rescale`).

    old_max <= new_max, so a -inf new_max means a -inf old_max: subtracting 0 instead gives
    exp(-inf) = 0 exactly, where exp(-inf - -inf) would be NaN.
    """
    return tl.exp(old_max - tl.where(new_max == float("-inf"), 0.0, new_max))


@triton.jit
def _onepass_tile(n_rows, dim, inner, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """This program's [ROWS, BLOCK_D] tile of whole rows: element offsets, the load mask (columns
    in the row) and the store mask (also rows that exist)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    store_rows = rows < n_rows
    rows = tl.minimum(rows, n_rows - 1)  # padding rows re-read the last row, never stored
    cols = tl.arange(0, BLOCK_D)
    offs = (_row_base(rows, dim, inner, CONTIGUOUS)[:, None]
            + _col_offset(cols, inner, CONTIGUOUS)[None, :])
    mask = (cols < dim)[None, :]
    return offs, mask, store_rows[:, None] & mask


@triton.autotune(configs=_tuned(_onepass_configs()), key=["dim", "inner"],
                 prune_configs_by={"early_config_prune": _keep_onepass})
@triton.jit
def _softmax_fwd_onepass_kernel(x_ptr, y_ptr, n_rows, dim, inner,
                                BLOCK_D: tl.constexpr, ROWS: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """ROWS rows per program, each row whole in registers (dim <= BLOCK_D)."""
    offs, mask, store_mask = _onepass_tile(n_rows, dim, inner, BLOCK_D, ROWS, CONTIGUOUS)
    x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
    # NaN need not win the max: exp(NaN - m) makes the row sum NaN, hence the whole row.
    row_max = tl.max(x, axis=1)
    e = tl.exp(x - row_max[:, None])  # masked lanes: exp(-inf) = 0
    row_sum = tl.sum(e, axis=1)
    y = e / row_sum[:, None]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=store_mask)


@triton.autotune(configs=_tuned(_looped_configs()), key=["dim", "inner"])
@triton.jit
def _softmax_fwd_looped_kernel(x_ptr, y_ptr, dim, inner,
                               BLOCK_D: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """One row per program, any length: online (max, sum) pass, then an output pass."""
    row = tl.program_id(0).to(tl.int64)
    base = _row_base(row, dim, inner, CONTIGUOUS)
    cols = tl.arange(0, BLOCK_D)
    # pass 1: every lane keeps the running max and sum of the elements it has seen
    run_max = tl.full([BLOCK_D], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, dim, BLOCK_D):
        d = start + cols
        x = tl.load(x_ptr + base + _col_offset(d, inner, CONTIGUOUS), mask=d < dim,
                    other=float("-inf")).to(tl.float32)
        new_max = _nan_max(run_max, x)
        run_sum = run_sum * _rescale(run_max, new_max) + _rescale(x, new_max)
        run_max = new_max
    # merge the lanes: a NaN lane carries a NaN sum, so the row sum is NaN too
    row_max = tl.max(run_max, axis=0)
    row_sum = tl.sum(run_sum * _rescale(run_max, row_max), axis=0)
    # pass 2: outputs
    for start in range(0, dim, BLOCK_D):
        d = start + cols
        mask = d < dim
        offs = base + _col_offset(d, inner, CONTIGUOUS)
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        y = tl.exp(x - row_max) / row_sum
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_tuned(_onepass_configs()), key=["dim", "inner"],
                 prune_configs_by={"early_config_prune": _keep_onepass})
@triton.jit
def _softmax_bwd_onepass_kernel(dy_ptr, y_ptr, dx_ptr, n_rows, dim, inner,
                                BLOCK_D: tl.constexpr, ROWS: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """dx = y * (dy - sum(dy * y)), ROWS whole rows per program."""
    offs, mask, store_mask = _onepass_tile(n_rows, dim, inner, BLOCK_D, ROWS, CONTIGUOUS)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=1)
    dx = y * (dy - dot[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=store_mask)


@triton.autotune(configs=_tuned(_looped_configs()), key=["dim", "inner"])
@triton.jit
def _softmax_bwd_looped_kernel(dy_ptr, y_ptr, dx_ptr, dim, inner,
                               BLOCK_D: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """One row per program, any length: a dot pass, then an output pass."""
    row = tl.program_id(0).to(tl.int64)
    base = _row_base(row, dim, inner, CONTIGUOUS)
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, dim, BLOCK_D):
        d = start + cols
        mask = d < dim
        offs = base + _col_offset(d, inner, CONTIGUOUS)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += dy * y
    dot = tl.sum(acc, axis=0)
    for start in range(0, dim, BLOCK_D):
        d = start + cols
        mask = d < dim
        offs = base + _col_offset(d, inner, CONTIGUOUS)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx = y * (dy - dot)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

_PATHS = ("auto", "onepass", "looped")


def _check(name: str, t: torch.Tensor, outer: int, dim: int, inner: int) -> None:
    if t.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"softmax: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"softmax: {name} must be contiguous (got strides {tuple(t.stride())})")
    if min(outer, dim, inner) < 0 or t.numel() != outer * dim * inner:
        raise ValueError(f"softmax: {name} has {t.numel()} elements, expected outer*dim*inner = "
                         f"{outer}*{dim}*{inner}")


@functools.lru_cache(maxsize=None)
def _onepass_block(dim: int) -> tuple[int, int]:
    """(BLOCK_D, ROWS) of the one-pass kernels for rows of `dim` elements."""
    block = triton.next_power_of_2(dim)
    return block, max(1, ONEPASS_MIN_TILE // block)


def _use_onepass(dim: int, path: str) -> bool:
    if path not in _PATHS:
        raise ValueError(f"softmax: path must be one of {_PATHS}, got {path!r}")
    fits = triton.next_power_of_2(dim) <= ONEPASS_MAX_BLOCK
    if path == "onepass" and not fits:
        raise ValueError(f"softmax: path='onepass' holds rows of at most {ONEPASS_MAX_BLOCK} "
                         f"elements, got dim={dim}")
    return fits if path == "auto" else path == "onepass"


def softmax_forward(x: torch.Tensor, outer: int, dim: int, inner: int, *,
                    path: str = "auto") -> torch.Tensor:
    """Softmax of contiguous ``x`` viewed as ``[outer, dim, inner]`` along ``dim``.

    x: float32/float16/bfloat16, contiguous, ``outer * dim * inner`` elements (any shape).
    Returns a new contiguous tensor shaped and typed like ``x``; math in float32.
    ``path`` forces a kernel ("onepass" or "looped"), for tests and benchmarks.
    """
    _check("x", x, outer, dim, inner)
    use_onepass = _use_onepass(dim, path)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return y
    n_rows = outer * inner
    contiguous = inner == 1
    if use_onepass:
        block, rows = _onepass_block(dim)
        grid = (triton.cdiv(n_rows, rows),)
        _softmax_fwd_onepass_kernel[grid](x, y, n_rows, dim, inner,
                                          BLOCK_D=block, ROWS=rows, CONTIGUOUS=contiguous)
    else:
        _softmax_fwd_looped_kernel[(n_rows,)](x, y, dim, inner, CONTIGUOUS=contiguous)
    return y


def softmax_backward(dy: torch.Tensor, y: torch.Tensor, outer: int, dim: int, inner: int, *,
                     path: str = "auto") -> torch.Tensor:
    """Input gradient of softmax along ``dim`` given its output ``y`` and output gradient ``dy``.

    dy, y: same shape and dtype (float32/float16/bfloat16), contiguous, viewed as
    ``[outer, dim, inner]``. Returns ``dx = y * (dy - sum_dim(dy * y))`` like ``y``; math in float32.
    """
    _check("dy", dy, outer, dim, inner)
    _check("y", y, outer, dim, inner)
    if dy.dtype != y.dtype or dy.shape != y.shape or dy.device != y.device:
        raise ValueError(f"softmax_backward: dy and y must match, got dy {dy.dtype} {tuple(dy.shape)} "
                         f"on {dy.device} and y {y.dtype} {tuple(y.shape)} on {y.device}")
    use_onepass = _use_onepass(dim, path)
    dx = torch.empty_like(y, memory_format=torch.contiguous_format)
    if y.numel() == 0:
        return dx
    n_rows = outer * inner
    contiguous = inner == 1
    if use_onepass:
        block, rows = _onepass_block(dim)
        grid = (triton.cdiv(n_rows, rows),)
        _softmax_bwd_onepass_kernel[grid](dy, y, dx, n_rows, dim, inner,
                                          BLOCK_D=block, ROWS=rows, CONTIGUOUS=contiguous)
    else:
        _softmax_bwd_looped_kernel[(n_rows,)](dy, y, dx, dim, inner, CONTIGUOUS=contiguous)
    return dx


# --------------------------------------------------------------------------------------------
# Torch references (what the tests compare against)
# --------------------------------------------------------------------------------------------


def softmax_ref(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(x, dim=dim)


def softmax_backward_ref(dy: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
    return y * (dy - (dy * y).sum(dim=dim, keepdim=True))


# --------------------------------------------------------------------------------------------
# Kernel report (python -m fastops.report): what to compile, without a GPU
# --------------------------------------------------------------------------------------------

_REPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# One-pass tiles worth reporting: short rows packed 4 to a program, and the largest row.
_REPORT_ONEPASS_DIMS = (256, ONEPASS_MAX_BLOCK)


def _signature(ptrs: tuple[str, ...], ints: tuple[str, ...], ty: str) -> dict[str, str]:
    return {**{p: f"*{ty}" for p in ptrs}, **{i: "i32" for i in ints}}


def report_specs() -> list[dict]:
    """Every kernel x config x dtype to compile for the report.

    Specialised as a launch on contiguous rows (inner == 1) with 16-byte aligned pointers and
    ``dim % 16 == 0`` would be ("divisible_by_16"), the common case.
    """
    kernels = (  # name, autotuner, pointer args, int args, one-pass?
        ("softmax_fwd_onepass", _softmax_fwd_onepass_kernel, ("x_ptr", "y_ptr"),
         ("n_rows", "dim", "inner"), True),
        ("softmax_bwd_onepass", _softmax_bwd_onepass_kernel, ("dy_ptr", "y_ptr", "dx_ptr"),
         ("n_rows", "dim", "inner"), True),
        ("softmax_fwd_looped", _softmax_fwd_looped_kernel, ("x_ptr", "y_ptr"), ("dim", "inner"), False),
        ("softmax_bwd_looped", _softmax_bwd_looped_kernel, ("dy_ptr", "y_ptr", "dx_ptr"),
         ("dim", "inner"), False),
    )
    specs = []
    for ty in _REPORT_DTYPES.values():
        for name, autotuner, ptrs, ints, onepass in kernels:
            if onepass:
                cases = []
                for dim in _REPORT_ONEPASS_DIMS:
                    block, rows = _onepass_block(dim)
                    meta = {"BLOCK_D": block, "ROWS": rows}
                    cases += [(meta, c) for c in _keep_onepass(_onepass_configs(), {}, **meta)]
            else:
                cases = [({}, c) for c in _looped_configs()]
            for meta, cfg in cases:
                constexprs = {**meta, **cfg.kwargs, "CONTIGUOUS": True}
                specs.append({
                    "kernel": f"{name}[{ty}]",
                    "fn": autotuner.fn,
                    "signature": _signature(ptrs, ints, ty),
                    "constexprs": constexprs,
                    "config": ",".join(f"{k}={v}" for k, v in constexprs.items() if k != "CONTIGUOUS")
                              + f",warps={cfg.num_warps}",
                    "num_warps": cfg.num_warps,
                    "num_stages": cfg.num_stages,
                    "divisible_by_16": (*ptrs, "dim"),
                })
    return specs
