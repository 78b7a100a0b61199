"""GEMM with a fused bias + activation epilogue as Triton kernels (tiled and persistent).

    c[b] = act(a[b] @ b[b] + bias)      a [B, M, K], b [B, K, N] (any strides, batch stride 0 for
                                        a broadcast operand), bias [N] or none, c [B, M, N]

Both kernels share `_tile`: a BLOCK_M x BLOCK_N output tile accumulated in float32 over K in
BLOCK_K steps (`tl.dot`, tensor cores on a GPU), then bias, activation (fastops/triton/activation.py,
the formulas of csrc/include/fastops/math/activation.h) and the cast to c's dtype.
  - `_gemm_kernel`: one program per tile, grid (tiles, B); programs are numbered in groups of
    GROUP_M tile rows (swizzled order) so neighbours share A rows and B columns in L2.
  - `_gemm_persistent_kernel`: as many programs as SMs, each walking tiles t, t + SMs, ... in the
    same grouped order across the whole batch (no tail wave of short-lived programs).
Float32 inputs use TF32 only when torch.backends.cuda.matmul.allow_tf32 is set (as torch);
float16/bfloat16 go to tl.dot as they are (wgmma on sm_90a for the 128-row tiles, mma on sm_80).
Under TRITON_INTERPRET=1 operands are upcast to float32 first (the interpreter's bf16 dot
multiplies raw bits, DESIGN.md). Offsets are 64-bit. Each output element is one program's
sum in a fixed K order: results are deterministic.

Reads top to bottom: configs, kernels, launcher, torch reference, report_specs().
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from fastops.triton.activation import activate, activate_ref, code

# --------------------------------------------------------------------------------------------
# Configs (data only)
# --------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). The 128-row tiles with 4/8 warps
# and 3-4 stages lower to wgmma on sm_90a for fp16/bf16 (checked by python -m fastops.report).
_TILES_LOWP = (
    (128, 256, 64, 8, 8, 3),
    (128, 128, 64, 8, 4, 4),
    (128, 128, 64, 8, 8, 3),
    (128, 64, 64, 8, 4, 4),
    (64, 128, 64, 8, 4, 4),
    (64, 64, 64, 8, 4, 3),
)
_TILES_FP32 = (
    (128, 128, 32, 8, 8, 3),
    (128, 64, 32, 8, 4, 4),
    (64, 128, 32, 8, 4, 4),
    (64, 64, 32, 8, 4, 3),
)
# The TMA kernel: the low-precision tiles whose accumulator and epilogue fit in registers there
# (128x256 with 8 warps and 128x128 with 4 warps need stack on sm_90a: see python -m fastops.report).
_TILES_TMA_LOWP = tuple(t for t in _TILES_LOWP if t not in ((128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4)))
_INTERPRET_TILE = (16, 16, 16, 2, 4, 1)  # the interpreter runs one program at a time
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KEY = ["M", "N", "K", "HAS_BIAS", "ACT", "PREC", "OFF64"]
_MAX_BLOCK = 256  # largest BLOCK_M/N/K of any config: in-tile offsets stay 32-bit below 2^31 / this


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs(tiles) -> list[triton.Config]:
    tiles = (_INTERPRET_TILE,) if _interpreting() else tiles
    return [triton.Config({"BLOCK_M": t[0], "BLOCK_N": t[1], "BLOCK_K": t[2], "GROUP_M": t[3]},
                          num_warps=t[4], num_stages=t[5]) for t in tiles]


def _keep(configs, named_args, **kwargs):
    """Drops tiles much larger than the problem (the Triton tutorial's keep())."""
    M, N = named_args.get("M", 1 << 30), named_args.get("N", 1 << 30)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(M))
            and c.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(N))]
    return kept or configs[-1:]


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    if _interpreting() or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _tile_coords(t, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of tile number t in grouped order: GROUP_M tile rows walked column by column."""
    per_group = GROUP_M * num_n
    group = t // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (t % per_group) % size_m
    pid_n = (t % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def _round_to_bf16(x):
    """x rounded to the nearest-even bfloat16 value, still as float32. The interpreter's
    float32 -> bfloat16 cast truncates (a GPU's rounds to nearest even): rounding first makes the
    cast exact there. Finite values only (the interpreter's tests)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _epilogue(acc, bias_ptr, col0, cols, out_ty: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
              UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc + bias[col0 : col0 + cols] (float32), then the activation; under the interpreter a
    bfloat16 result is rounded to nearest even first (see _round_to_bf16)."""
    if HAS_BIAS:
        rn = tl.arange(0, BLOCK_N)
        bias = tl.load(bias_ptr + col0 + rn, mask=rn < cols, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    acc = activate(acc, ACT)
    if UPCAST and out_ty == tl.bfloat16:
        acc = _round_to_bf16(acc)
    return acc


@triton.jit
def _tile(a_ptr, b_ptr, c_ptr, bias_ptr, batch, pid_m, pid_n, M, N, K,
          sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
          HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
          OFF64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of c[batch]: float32 sum over K, then bias, activation, store.

    The tile's corner is a 64-bit scalar offset; offsets inside the tile are 32-bit (fewer
    registers than 64-bit pointer blocks) unless OFF64 (a stride times a block passes 2^31)."""
    row0 = pid_m.to(tl.int64) * BLOCK_M
    col0 = pid_n.to(tl.int64) * BLOCK_N
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    if OFF64:
        rm = rm.to(tl.int64)
        rn = rn.to(tl.int64)
        rk = rk.to(tl.int64)
    a_base = a_ptr + batch.to(tl.int64) * sab + row0 * sam
    b_base = b_ptr + batch.to(tl.int64) * sbb + col0 * sbn
    a_off = rm[:, None] * sam + rk[None, :] * sak
    b_off = rk[:, None] * sbk + rn[None, :] * sbn
    a_step = tl.full((), BLOCK_K, tl.int64) * sak
    b_step = tl.full((), BLOCK_K, tl.int64) * sbk
    rows = tl.minimum(M - row0, BLOCK_M).to(tl.int32)
    cols = tl.minimum(N - col0, BLOCK_N).to(tl.int32)
    mask_m = rm[:, None] < rows
    mask_n = rn[None, :] < cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_base + a_off, mask=mask_m & (rk[None, :] < k_left), other=0.0)
        b = tl.load(b_base + b_off, mask=(rk[:, None] < k_left) & mask_n, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        a_base += a_step
        b_base += b_step
    acc = _epilogue(acc, bias_ptr, col0, cols, c_ptr.dtype.element_ty, HAS_BIAS, ACT, UPCAST, BLOCK_N)
    c_base = c_ptr + batch.to(tl.int64) * scb + row0 * scm + col0 * scn
    tl.store(c_base + rm[:, None] * scm + rn[None, :] * scn, acc.to(c_ptr.dtype.element_ty),
             mask=mask_m & mask_n)


_ARGS = ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "M", "N", "K",
         "sab", "sam", "sak", "sbb", "sbk", "sbn", "scb", "scm", "scn")


def _gemm_kernel_src(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                     sab, sam, sak, sbb, sbk, sbn, scb, scm, scn,
                     HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                     OFF64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_m, num_n, GROUP_M)
    _tile(a_ptr, b_ptr, c_ptr, bias_ptr, tl.program_id(1), pid_m, pid_n, M, N, K,
          sab, sam, sak, sbb, sbk, sbn, scb, scm, scn, HAS_BIAS, ACT, PREC, UPCAST, OFF64,
          BLOCK_M, BLOCK_N, BLOCK_K)


def _gemm_persistent_kernel_src(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                                sab, sam, sak, sbb, sbk, sbn, scb, scm, scn, BATCH, NUM_PROGRAMS,
                                HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
                                UPCAST: tl.constexpr, OFF64: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_batch = num_m * num_n
    for t in range(tl.program_id(0), per_batch * BATCH, NUM_PROGRAMS):
        batch = t // per_batch
        pid_m, pid_n = _tile_coords(t % per_batch, num_m, num_n, GROUP_M)
        _tile(a_ptr, b_ptr, c_ptr, bias_ptr, batch, pid_m, pid_n, M, N, K,
              sab, sam, sak, sbb, sbk, sbn, scb, scm, scn, HAS_BIAS, ACT, PREC, UPCAST, OFF64,
              BLOCK_M, BLOCK_N, BLOCK_K)


def _gemm_tma_kernel_src(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, sam, sbx, scm, NUM_PROGRAMS,
                         HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                         B_NK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Persistent 2-D GEMM whose operands and result move by TMA (tensor descriptors built on the
    device; sm_90+). a [M, K] and c [M, N] row-major; b is [K, N] row-major, or with B_NK the
    [N, K] row-major weight of linear read as its transpose. Row strides are multiples of 16
    bytes. Loads past the edges read 0 (so the last K block needs no mask) and stores clip."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[sam, 1], block_shape=[BLOCK_M, BLOCK_K])
    if B_NK:
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[sbx, 1], block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[K, N], strides=[sbx, 1], block_shape=[BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[scm, 1], block_shape=[BLOCK_M, BLOCK_N])
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for t in range(tl.program_id(0), num_m * num_n, NUM_PROGRAMS):
        pid_m, pid_n = _tile_coords(t, num_m, num_n, GROUP_M)
        row0 = pid_m * BLOCK_M
        col0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([row0, k0 * BLOCK_K])
            if B_NK:
                b = b_desc.load([col0, k0 * BLOCK_K]).T
            else:
                b = b_desc.load([k0 * BLOCK_K, col0])
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PREC)
        acc = _epilogue(acc, bias_ptr, col0, N - col0, c_ptr.dtype.element_ty, HAS_BIAS, ACT, UPCAST, BLOCK_N)
        c_desc.store([row0, col0], acc.to(c_ptr.dtype.element_ty))


_gemm_kernel = triton.jit(_gemm_kernel_src)
_gemm_persistent_kernel = triton.jit(_gemm_persistent_kernel_src)
_gemm_tma_kernel = triton.jit(_gemm_tma_kernel_src)


def _autotuned(kernel, tiles, key=_KEY):
    return triton.autotune(configs=_configs(tiles), key=key, prune_configs_by={"early_config_prune": _keep})(kernel)


# One autotuner per (kernel, dtype class): the config lists differ for float32 and fp16/bf16.
_TUNED = {
    (False, False): _autotuned(_gemm_kernel, _TILES_LOWP),
    (False, True): _autotuned(_gemm_kernel, _TILES_FP32),
    (True, False): _autotuned(_gemm_persistent_kernel, _TILES_LOWP),
    (True, True): _autotuned(_gemm_persistent_kernel, _TILES_FP32),
}
_TMA_KEY = ["M", "N", "K", "HAS_BIAS", "ACT", "PREC", "B_NK"]
_TUNED_TMA = {False: _autotuned(_gemm_tma_kernel, _TILES_TMA_LOWP, _TMA_KEY),
              True: _autotuned(_gemm_tma_kernel, _TILES_FP32, _TMA_KEY)}


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------

def _f32_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _strides3(t: torch.Tensor):
    """(batch, row, col) element strides of a 2-D or 3-D operand; batch 0 when broadcast."""
    if t.dim() == 2:
        return 0, t.stride(0), t.stride(1)
    return (t.stride(0) if t.shape[0] > 1 else 0), t.stride(1), t.stride(2)


def _tma_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[int, bool] | None:
    """(b's row stride, b given as [N, K]) when 2-D a [M, K], b [K, N] and c [M, N] suit TMA
    descriptors: unit inner strides (b either way round), row strides and bases 16-byte aligned."""
    if a.dim() != 2 or b.dim() != 2:
        return None
    item = a.element_size()
    aligned = lambda stride: stride * item % 16 == 0  # noqa: E731
    if a.stride(1) != 1 or not aligned(a.stride(0)) or not aligned(b.shape[1]) \
            or a.data_ptr() % 16 or b.data_ptr() % 16:
        return None
    if b.stride(1) == 1 and aligned(b.stride(0)):
        return b.stride(0), False
    if b.stride(0) == 1 and aligned(b.stride(1)):
        return b.stride(1), True
    return None


def _use_tma(a: torch.Tensor, b: torch.Tensor, tma: bool | None) -> tuple[int, bool] | None:
    """The TMA layout when the TMA kernel runs: always where asked (tma=True) and the layout fits,
    by default on sm_90+ GPUs (descriptors need Hopper's TMA unit)."""
    if tma is False:
        return None
    if tma is None and not (a.is_cuda and not _interpreting() and torch.cuda.get_device_capability(a.device)[0] >= 9):
        return None
    return _tma_layout(a, b)


def _launch_with_scratch(device: torch.device, launch) -> None:
    """Runs launch() with a Triton allocator for the device-side descriptors' scratch memory
    (torch memory on `device`), unless the caller already set one."""
    from triton.runtime import _allocation
    var = getattr(_allocation, "_allocator", None)
    if var is None or not isinstance(var.get(), _allocation.NullAllocator):
        launch()
        return
    token = var.set(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device))
    try:
        launch()
    finally:
        var.reset(token)


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, activation=None,
         persistent: bool = False, tma: bool | None = None) -> torch.Tensor:
    """act(a @ b + bias): a [B?, M, K], b [B?, K, N] (2-D or 3-D, batch equal or 1, any strides),
    bias [N] of a's dtype or None; returns a new contiguous c [B?, M, N] of a's dtype (3-D when
    either operand is). float32 accumulation. 2-D operands whose layout suits TMA run the TMA
    kernel on sm_90+ GPUs (tma=None), or wherever tma=True (the interpreter's tests); tma=False
    never does."""
    if a.dtype not in _SUPPORTED_DTYPES or b.dtype != a.dtype:
        raise TypeError(f"fastops.triton.gemm: a and b must share one of float32/float16/bfloat16, "
                        f"got {a.dtype} and {b.dtype}")
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"fastops.triton.gemm: a and b shapes cannot be multiplied "
                           f"({list(a.shape)} and {list(b.shape)})")
    act = code(activation)
    ba = a.shape[0] if a.dim() == 3 else 1
    bb = b.shape[0] if b.dim() == 3 else 1
    B = max(ba, bb)
    M, K = a.shape[-2], a.shape[-1]
    N = b.shape[-1]
    shape = (B, M, N) if (a.dim() == 3 or b.dim() == 3) else (M, N)
    c = torch.empty(shape, dtype=a.dtype, device=a.device)
    if c.numel() == 0:
        return c
    if K == 0:
        c.zero_()
        if bias is not None:
            c += bias.to(c.dtype)
        return activate_ref(c, activation)
    c3 = c if c.dim() == 3 else c.unsqueeze(0)
    has_bias = bias is not None
    bias_arg = bias.contiguous() if has_bias else c
    strides = (*_strides3(a), *_strides3(b), *_strides3(c3))
    off64 = max(abs(s) for s in strides) * _MAX_BLOCK >= 2 ** 31
    common = dict(HAS_BIAS=has_bias, ACT=act, PREC=_f32_precision(a.dtype), UPCAST=_interpreting(), OFF64=off64)
    args = (a, b, c3, bias_arg, M, N, K, *strides)
    fp32 = a.dtype == torch.float32
    tma_layout = _use_tma(a, b, tma)
    if tma_layout is not None:
        sbx, b_nk = tma_layout
        programs = _num_sms(a.device.index or 0) if a.is_cuda else _num_sms(0)
        kernel = _TUNED_TMA[fp32]
        _launch_with_scratch(a.device, lambda: kernel[(programs,)](
            a, b, c, bias_arg, M, N, K, a.stride(0), sbx, c.stride(0), programs, B_NK=b_nk,
            **{k: v for k, v in common.items() if k != "OFF64"}))
    elif persistent:
        programs = _num_sms(a.device.index or 0) if a.is_cuda else _num_sms(0)
        kernel = _TUNED[(True, fp32)]
        kernel[(programs,)](*args, B, programs, **common)
    else:
        kernel = _TUNED[(False, fp32)]
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), B)  # noqa: E731
        kernel[grid](*args, **common)
    return c


def gemm_ref(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, activation=None) -> torch.Tensor:
    """torch reference of gemm()."""
    c = torch.matmul(a, b)
    if bias is not None:
        c = c + bias
    return activate_ref(c, activation)


# --------------------------------------------------------------------------------------------
# Kernel report (python -m fastops.report)
# --------------------------------------------------------------------------------------------

_REPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def report_specs() -> list[dict]:
    """Every kernel x GPU tile x dtype to compile for the report: bias + gelu epilogue, row-major
    operands (unit column strides, as the common contiguous case is specialised)."""
    specs = []
    kernels = (("gemm", _gemm_kernel, ()), ("gemm_persistent", _gemm_persistent_kernel, ("BATCH", "NUM_PROGRAMS")))
    for torch_dtype, ty in _REPORT_DTYPES.items():
        tiles = _TILES_FP32 if torch_dtype == torch.float32 else _TILES_LOWP
        for name, fn, extra_ints in kernels:
            signature = {}
            for arg in fn.arg_names:
                if arg.endswith("_ptr"):
                    signature[arg] = f"*{ty}"
                elif arg in ("M", "N", "K", *extra_ints):
                    signature[arg] = "i32"
                elif arg in ("sak", "sbn", "scn"):
                    continue  # == 1: specialised away (constexpr below)
                elif arg in _ARGS:
                    signature[arg] = "i32"  # strides below 2^31 (OFF64=False, the common case)
            for bm, bn, bk, group, warps, stages in tiles:
                constexprs = {"sak": 1, "sbn": 1, "scn": 1, "HAS_BIAS": True, "ACT": code("gelu"),
                              "PREC": "tf32" if ty == "fp32" else "ieee", "UPCAST": False, "OFF64": False,
                              "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}
                specs.append({
                    "kernel": f"{name}[{ty}]",
                    "fn": fn,
                    "signature": signature,
                    "constexprs": constexprs,
                    "config": f"BLOCK_M={bm},BLOCK_N={bn},BLOCK_K={bk},warps={warps},stages={stages}",
                    "num_warps": warps,
                    "num_stages": stages,
                    "divisible_by_16": ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "K", "N", "sam", "sbk", "scm"),
                })
    for torch_dtype, ty in _REPORT_DTYPES.items():  # the TMA kernel: linear's layout (b as [N, K])
        tiles = _TILES_FP32 if torch_dtype == torch.float32 else _TILES_TMA_LOWP
        signature = {arg: (f"*{ty}" if arg.endswith("_ptr") else "i32") for arg in _gemm_tma_kernel.arg_names
                     if arg in (*_ARGS, "sbx", "NUM_PROGRAMS")}
        for bm, bn, bk, group, warps, stages in tiles:
            constexprs = {"HAS_BIAS": True, "ACT": code("gelu"), "PREC": "tf32" if ty == "fp32" else "ieee",
                          "UPCAST": False, "B_NK": True, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                          "GROUP_M": group}
            specs.append({
                "kernel": f"gemm_tma[{ty}]",
                "fn": _gemm_tma_kernel,
                "signature": signature,
                "constexprs": constexprs,
                "config": f"BLOCK_M={bm},BLOCK_N={bn},BLOCK_K={bk},warps={warps},stages={stages}",
                "num_warps": warps,
                "num_stages": stages,
                "divisible_by_16": ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "K", "N", "sam", "sbx", "scm"),
            })
    return specs
