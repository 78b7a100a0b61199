"""2-D convolution forward, dgrad and wgrad as implicit-GEMM Triton kernels.

Layout as fastops/ops/conv.py: x [N, C, H, W], weight [O, C / G, KH, KW], y [N, O, HO, WO], each
addressed through its four strides, so NCHW and channels_last (and any dense or strided view) are
read in place and outputs are written in the memory format the caller allocated. Per group g:

    forward: y[m, o]   = act(sum_k x_col[m, k] w[o, k] + bias[o])   M = N HO WO, K = (kh, kw, ci)
    dgrad  : dx[m, ci] = sum_k dy_col[m, k] w[o, ci, kh, kw]        M = N H W,   K = (kh, kw, o)
             where dy_col gathers dy[n, o, (ih + pad - kh dil) / stride, ...] when that divides
    wgrad  : dw[o, k]  = sum_p dy[p, o] x_col[p, k]                 reduction over p = N HO WO;
             the programs of the first column block also sum dy over p (the bias gradient)

The im2col index math runs in the loaders with every bound spelled out as a mask (no im2col
buffer). Every output element is written by one program that reduces in a fixed order: no
atomics, deterministic. Dots accumulate in float32; on a GPU fp16/bf16 operands go to tl.dot as
stored (tensor cores; wgmma on sm_90a per the kernel report) and float32 uses TF32 only when
torch.backends.cudnn.allow_tf32 allows it; under the interpreter operands are upcast to float32
(its bf16 dot multiplies raw bits, DESIGN.md). Offsets are int64 (program ids cast first).

Reads top to bottom: configs, kernels, launchers, report_specs() for python -m fastops.report.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------
# Configs (data only)
# --------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried on a GPU; 64/128-row tiles with 4 or 8
# warps map to wgmma on sm_90a for fp16/bf16 (checked by the kernel report).
# 128x128 tiles were dropped: the gather loaders' pointers and masks leave them ~900 B of stack per
# thread on sm_90a (the report's stack column); these stay at or under 80 B with no spills.
_TILES = ((128, 64, 32, 8, 2), (64, 128, 32, 8, 2), (64, 64, 32, 4, 3), (64, 32, 32, 4, 2))
_INTERPRET_TILE = (16, 16, 16, 4, 1)  # the interpreter runs one program at a time: one small config
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list[triton.Config]:
    tiles = (_INTERPRET_TILE,) if _interpreting() else _TILES
    return [triton.Config({"BLOCK_M": t[0], "BLOCK_N": t[1], "BLOCK_K": t[2]}, num_warps=t[3], num_stages=t[4])
            for t in tiles]


def _keep(configs, named_args, **kwargs):
    """Drops tiles larger than the problem (as the Triton tutorial's keep())."""
    m, n = named_args.get("M", 1 << 30), named_args.get("NCOLS", 1 << 30)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(m))
            and c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(n))]
    return kept or configs[-1:]


_KEY = ["M", "NCOLS", "K", "C", "KH", "KW"]

# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


@triton.jit
def _operand(x, UPCAST: tl.constexpr):
    """x as a tl.dot operand: the storage dtype on a GPU, float32 under the interpreter."""
    if UPCAST:
        return x.to(tl.float32)
    return x


@triton.jit
def _act(x, ACT: tl.constexpr):
    """relu (1) / silu (4) epilogue in float32; the codes of fastops::Activation.
    TODO(matmul family): switch to fastops.triton.activation.activate once it is merged."""
    if ACT == 1:
        return tl.where(x > 0.0, x, 0.0)
    elif ACT == 4:
        return x / (1.0 + tl.exp(-x))
    else:
        return x


@triton.jit
def _tile(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(group, row offsets, column offsets) of this program, int64 (program ids cast first)."""
    g = tl.program_id(2).to(tl.int64)
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return g, offs_m, offs_n


@triton.jit
def _pixel(offs, HEIGHT, WIDTH):
    """(image, row, column) of flat pixel indices over [N, HEIGHT, WIDTH]."""
    q = offs % (HEIGHT * WIDTH)
    return offs // (HEIGHT * WIDTH), q // WIDTH, q % WIDTH


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                     M, NCOLS, K, C, H, W, HO, WO, KH, KW, CG,
                     sxn, sxc, sxh, sxw, swo, swc, swh, sww, syn, syc, syh, syw,
                     stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                     HAS_BIAS: tl.constexpr, ACT: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # NCOLS = output channels per group (Og), K = KH KW Cg
    g, offs_m, offs_n = _tile(BLOCK_M, BLOCK_N)
    n, oh, ow = _pixel(offs_m, HO, WO)
    row_ok = offs_m < M
    col_ok = offs_n < NCOLS
    o = g * NCOLS + offs_n
    # address = row part (pixel) + column part (tap, channel): 1-D int64 pieces, one 2-D add;
    # spatial coordinates stay int32 (bounded by H, W) for the 2-D bound masks
    ih0 = (oh * stride_h - pad_h).to(tl.int32)
    iw0 = (ow * stride_w - pad_w).to(tl.int32)
    x_row = n * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
    w_col = w_ptr + o * swo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        ci = offs_k % CG
        t = offs_k // CG
        dh = (t // KW) * dil_h
        dw = (t % KW) * dil_w
        k_ok = offs_k < K
        ih = ih0[:, None] + dh[None, :]
        iw = iw0[:, None] + dw[None, :]
        a_ok = row_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_col = (g * CG + ci).to(tl.int64) * sxc + dh.to(tl.int64) * sxh + dw.to(tl.int64) * sxw
        a = tl.load(x_ptr + x_row[:, None] + x_col[None, :], mask=a_ok, other=0.0)
        w_row = ci.to(tl.int64) * swc + (t // KW).to(tl.int64) * swh + (t % KW).to(tl.int64) * sww
        b = tl.load(w_col[None, :] + w_row[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(_operand(a, UPCAST), _operand(b, UPCAST), input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = _act(acc, ACT)
    y = y_ptr + n[:, None] * syn + o[None, :] * syc + oh[:, None] * syh + ow[:, None] * syw
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _conv_dgrad_kernel(dy_ptr, w_ptr, dx_ptr,
                       M, NCOLS, K, C, H, W, HO, WO, KH, KW, OG,
                       sdn, sdc, sdh, sdw, swo, swc, swh, sww, sxn, sxc, sxh, sxw,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       UPCAST: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # M = N H W input pixels, NCOLS = input channels per group (Cg), K = KH KW Og
    g, offs_m, offs_n = _tile(BLOCK_M, BLOCK_N)
    n, ih, iw = _pixel(offs_m, H, W)
    row_ok = offs_m < M
    col_ok = offs_n < NCOLS
    ci = g * NCOLS + offs_n
    th0 = (ih + pad_h).to(tl.int32)
    tw0 = (iw + pad_w).to(tl.int32)
    dy_row = n * sdn
    w_col = w_ptr + offs_n * swc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        o = g * OG + offs_k % OG
        t = offs_k // OG
        kw = t % KW
        kh = t // KW
        k_ok = offs_k < K
        th = th0[:, None] - (kh * dil_h)[None, :]
        tw = tw0[:, None] - (kw * dil_w)[None, :]
        th_c = tl.maximum(th, 0)
        tw_c = tl.maximum(tw, 0)
        oh = th_c // stride_h
        ow = tw_c // stride_w
        a_ok = row_ok[:, None] & k_ok[None, :] & (th >= 0) & (tw >= 0) & (th_c % stride_h == 0) \
            & (tw_c % stride_w == 0) & (oh < HO) & (ow < WO)
        a = tl.load(dy_ptr + dy_row[:, None] + (o.to(tl.int64) * sdc)[None, :] + oh.to(tl.int64) * sdh
                    + ow.to(tl.int64) * sdw, mask=a_ok, other=0.0)
        w_row = o.to(tl.int64) * swo + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
        b = tl.load(w_col[None, :] + w_row[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(_operand(a, UPCAST), _operand(b, UPCAST), input_precision=PREC)
    dx = dx_ptr + n[:, None] * sxn + ci[None, :] * sxc + ih[:, None] * sxh + iw[:, None] * sxw
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _conv_wgrad_kernel(dy_ptr, x_ptr, dw_ptr, db_ptr,
                       M, NCOLS, K, C, H, W, HO, WO, KH, KW, CG,
                       sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, swo, swc, swh, sww,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       BIAS_GRAD: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # M = output channels per group (Og), NCOLS = KH KW Cg, K = N HO WO (the reduction)
    g, offs_m, offs_n = _tile(BLOCK_M, BLOCK_N)
    row_ok = offs_m < M
    col_ok = offs_n < NCOLS
    o = g * M + offs_m
    ci = offs_n % CG
    t = offs_n // CG
    kw = t % KW
    kh = t // KW
    dh = (kh * dil_h).to(tl.int32)
    dw = (kw * dil_w).to(tl.int32)
    x_col = (g * CG + ci).to(tl.int64) * sxc + dh.to(tl.int64) * sxh + dw.to(tl.int64) * sxw
    dy_rows = dy_ptr + o * sdc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bacc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for p0 in range(0, K, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)
        p_ok = offs_p < K
        n, oh, ow = _pixel(offs_p, HO, WO)
        a = tl.load(dy_rows[:, None] + (n * sdn + oh * sdh + ow * sdw)[None, :],
                    mask=row_ok[:, None] & p_ok[None, :], other=0.0)
        ih0 = (oh * stride_h - pad_h).to(tl.int32)
        iw0 = (ow * stride_w - pad_w).to(tl.int32)
        ih = ih0[:, None] + dh[None, :]
        iw = iw0[:, None] + dw[None, :]
        b_ok = p_ok[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_row = n * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
        b = tl.load(x_ptr + x_row[:, None] + x_col[None, :], mask=b_ok, other=0.0)
        acc += tl.dot(_operand(a, UPCAST), _operand(b, UPCAST), input_precision=PREC)
        if BIAS_GRAD:
            bacc += tl.sum(a.to(tl.float32), axis=1)
    dw = dw_ptr + o[:, None] * swo + ci[None, :] * swc + kh[None, :] * swh + kw[None, :] * sww
    tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    if BIAS_GRAD:
        tl.store(db_ptr + o, bacc.to(db_ptr.dtype.element_ty), mask=row_ok & (tl.program_id(1) == 0))


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

def _f32_precision() -> str:
    """float32 dots follow torch's convolution setting: tf32 only where cudnn.allow_tf32 allows it."""
    return "tf32" if torch.backends.cudnn.allow_tf32 and not _interpreting() else "ieee"


def _check(x, weight):
    for name, t in (("input", x), ("weight", weight)):
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"fastops.conv2d (triton): {name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"fastops.conv2d (triton): {name} must be 4-D, got shape {tuple(t.shape)}")


def _geometry(stride, padding, dilation):
    return (*stride, *padding, *dilation)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups: int, act: int,
                   memory_format=torch.contiguous_format):
    """act(conv2d(x, weight) + bias) [N, O, HO, WO] of x's dtype, allocated in `memory_format`."""
    _check(x, weight)
    N, C, H, W = x.shape
    O, CG, KH, KW = weight.shape
    HO = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    WO = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    y = torch.empty((N, O, HO, WO), dtype=x.dtype, device=x.device).contiguous(memory_format=memory_format)
    if y.numel() == 0:
        return y
    M, OG = N * HO * WO, O // groups
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(OG, meta["BLOCK_N"]), groups)  # noqa: E731
    _conv_fwd_kernel[grid](x, weight, bias if bias is not None else y, y, M, OG, KH * KW * CG, C, H, W, HO, WO,
                           KH, KW, CG, *x.stride(), *weight.stride(), *y.stride(),
                           *_geometry(stride, padding, dilation), HAS_BIAS=bias is not None, ACT=act,
                           UPCAST=_interpreting(), PREC=_f32_precision())
    return y


def conv2d_backward(grad, x, weight, stride, padding, dilation, groups: int, mask):
    """(dx, dw, db) of conv2d_forward (without activation); None where mask says so. dx in x's
    strides' format (channels_last or contiguous), dw contiguous, db [O]."""
    _check(x, weight)
    N, C, H, W = x.shape
    O, CG, KH, KW = weight.shape
    HO, WO = grad.shape[2], grad.shape[3]
    OG = O // groups
    geometry = _geometry(stride, padding, dilation)
    common = dict(UPCAST=_interpreting(), PREC=_f32_precision())
    dx = dw = db = None
    empty = grad.numel() == 0
    if mask[0]:
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        dx = torch.empty_like(x, memory_format=fmt)
        if empty:
            dx.zero_()
        elif dx.numel():
            M = N * H * W
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(CG, meta["BLOCK_N"]), groups)  # noqa
            _conv_dgrad_kernel[grid](grad, weight, dx, M, CG, KH * KW * OG, C, H, W, HO, WO, KH, KW, OG,
                                     *grad.stride(), *weight.stride(), *dx.stride(), *geometry, **common)
    if mask[1] or mask[2]:
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        db = torch.empty(O, dtype=x.dtype, device=x.device)
        if empty:
            dw.zero_()
            db.zero_()
        else:
            NC = KH * KW * CG
            grid = lambda meta: (triton.cdiv(OG, meta["BLOCK_M"]), triton.cdiv(NC, meta["BLOCK_N"]), groups)  # noqa
            _conv_wgrad_kernel[grid](grad, x, dw, db, OG, NC, N * HO * WO, C, H, W, HO, WO, KH, KW, CG,
                                     *grad.stride(), *x.stride(), *dw.stride(), *geometry,
                                     BIAS_GRAD=bool(mask[2]), **common)
        dw = dw if mask[1] else None
        db = db if mask[2] else None
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# Kernel report (python -m fastops.report)
# --------------------------------------------------------------------------------------------

_REPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_SHAPE_INTS = ("M", "NCOLS", "K", "C", "H", "W", "HO", "WO", "KH", "KW", "CG", "OG",
               "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w")


@functools.lru_cache(maxsize=None)
def _report_kernels():
    """(name, autotuner, pointer args, extra constexprs)."""
    return (
        ("conv_fwd", _conv_fwd_kernel, ("x_ptr", "w_ptr", "b_ptr", "y_ptr"), {"HAS_BIAS": True, "ACT": 1}),
        ("conv_dgrad", _conv_dgrad_kernel, ("dy_ptr", "w_ptr", "dx_ptr"), {}),
        ("conv_wgrad", _conv_wgrad_kernel, ("dy_ptr", "x_ptr", "dw_ptr", "db_ptr"), {"BIAS_GRAD": True}),
    )


def report_specs() -> list[dict]:
    """Every kernel x GPU tile x dtype to compile for the report (3x3 NHWC-agnostic strided loads)."""
    specs = []
    for ty in _REPORT_DTYPES.values():
        for name, autotuner, ptrs, extra in _report_kernels():
            fn = autotuner.fn
            signature = {}
            for arg in fn.arg_names:
                if arg in ptrs:
                    signature[arg] = f"*{ty}"
                elif arg in _SHAPE_INTS:
                    signature[arg] = "i32"
                elif arg.startswith("s") and len(arg) == 3:
                    signature[arg] = "i64"
            for bm, bn, bk, warps, stages in _TILES:
                constexprs = {"UPCAST": False, "PREC": "ieee" if ty == "fp32" else "tf32", **extra,
                              "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
                specs.append({
                    "kernel": f"{name}[{ty}]",
                    "fn": fn,
                    "signature": signature,
                    "constexprs": constexprs,
                    "config": f"BLOCK_M={bm},BLOCK_N={bn},BLOCK_K={bk},warps={warps},stages={stages}",
                    "num_warps": warps,
                    "num_stages": stages,
                    "divisible_by_16": tuple(ptrs),
                })
    return specs
