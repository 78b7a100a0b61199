"""2-D convolution as custom ops: fastops::conv2d and fastops::conv2d_backward, with their kernels.

    conv2d(x [N, C, H, W], weight [O, C / groups, KH, KW], bias [O] or None, stride, padding,
           dilation, groups, activation, backend) -> y [N, O, HO, WO] = act(conv(x, weight) + bias)
    conv2d_backward(grad [N, O, HO, WO], x, weight, stride, padding, dilation, groups, output_mask,
                    backend) -> (grad_x, grad_weight, grad_bias); an output left out of
                    output_mask comes back as an empty tensor

stride/padding/dilation are pairs (symmetric padding; "same" with an odd total is padded on the
host first, as torch does). activation: 0 none, 1 relu, 4 silu (the codes of fastops::Activation).
y is channels_last when x or weight is, else contiguous, as torch's CPU and CUDA convolutions give;
the gradients come back in the formats of x and weight. float32/float16/bfloat16 storage, float32
accumulation; float64 runs on torch. The backward of an activated conv multiplies grad by act'
first (relu from the saved output, silu from a recomputed pre-activation). `backend` is a name
from fastops.BACKENDS (or "auto:<name>"), as in fastops/ops/softmax.py.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastops import _dispatch, _dropin, _ext

FAMILY = "conv"
_NAME = "fastops.conv2d"
ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "silu": 4}


# ---- argument checks and normalisation (torch's semantics and error messages) -------------------

def _fail(msg: str):
    raise RuntimeError(f"{_NAME}: {msg}")


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (1, 2) and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (value[0], value[-1])
    _fail(f"expected {name} to be a single integer value or a list of 2 values to match the "
          f"convolution dimensions, but got {name}={value!r}")


def activation_code(activation) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{_NAME}: activation must be None, 'relu' or 'silu', got {activation!r}")
    return ACTIVATIONS[activation]


def out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


class Args:
    """A checked call: x4 [N, C, H, W] (padded on the right/bottom for an odd 'same'), symmetric
    integer pairs, and whether the input was unbatched."""

    def __init__(self, x4, unbatched, stride, padding, dilation, groups, act):
        self.x4, self.unbatched = x4, unbatched
        self.stride, self.padding, self.dilation, self.groups, self.act = stride, padding, dilation, groups, act


def check(x, weight, bias, stride, padding, dilation, groups, activation) -> Args:
    """Raises what torch's conv2d raises (RuntimeError), naming the argument; returns the call's Args."""
    for name, t in (("input", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_NAME}: {name} must be a Tensor, got {type(t).__name__}")
    if x.dim() not in (3, 4):
        _fail(f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(x.shape)}")
    if weight.dim() != 4:
        _fail(f"weight must be 4-D [out_channels, in_channels / groups, kH, kW], got shape {list(weight.shape)}")
    if x.dtype != weight.dtype or x.device != weight.device:
        _fail(f"input and weight must have the same dtype and device, got {x.dtype} on {x.device} and "
              f"{weight.dtype} on {weight.device}")
    if not x.is_floating_point():
        _fail(f"input must be a floating-point tensor, got {x.dtype}")
    act = activation_code(activation)
    unbatched = x.dim() == 3
    x4 = x.unsqueeze(0) if unbatched else x
    if not isinstance(groups, int) or groups <= 0:
        _fail(f"non-positive groups is not supported (groups={groups!r})")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) <= 0:
        _fail(f"non-positive stride is not supported (stride={list(stride)})")
    if min(dilation) <= 0:
        _fail(f"dilation should be greater than zero, but got {list(dilation)}")
    O, Cg, KH, KW = weight.shape
    if O % groups != 0:
        _fail(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, but got "
              f"weight of size {list(weight.shape)} instead")
    if Cg * groups != x4.shape[1]:
        _fail(f"Given groups={groups}, weight of size {list(weight.shape)}, expected input{list(x4.shape)} to "
              f"have {Cg * groups} channels, but got {x4.shape[1]} channels instead")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{_NAME}: bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.dim() != 1 or bias.shape[0] != O:
            _fail(f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with {O} "
                  f"elements, but got bias of size {list(bias.shape)} instead")
        if bias.dtype != x.dtype or bias.device != x.device:
            _fail(f"bias must have input's dtype {x.dtype} and device {x.device}, got {bias.dtype} on {bias.device}")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if max(stride) != 1:
                _fail("padding='same' is not supported for strided convolutions")
            totals = (dilation[0] * (KH - 1), dilation[1] * (KW - 1))
            padding = (totals[0] // 2, totals[1] // 2)
            extra = (totals[0] % 2, totals[1] % 2)
            if any(extra):  # torch pads the odd one on the right/bottom
                x4 = torch.nn.functional.pad(x4, (0, extra[1], 0, extra[0]))
        else:
            _fail(f"Invalid padding string: {padding!r} (expected 'same', 'valid' or integers)")
    else:
        padding = _pair(padding, "padding")
        if min(padding) < 0:
            _fail(f"negative padding is not supported (padding={list(padding)})")
    padded = (x4.shape[2] + 2 * padding[0], x4.shape[3] + 2 * padding[1])
    if padded[0] < dilation[0] * (KH - 1) + 1 or padded[1] < dilation[1] * (KW - 1) + 1:
        _fail(f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
              f"({dilation[0] * (KH - 1) + 1} x {dilation[1] * (KW - 1) + 1}). Kernel size can't be greater "
              f"than actual input size")
    return Args(x4, unbatched, stride, padding, dilation, groups, act)


def output_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """channels_last when x or weight is (as torch's convolutions), else contiguous."""
    if x.dim() == 4 and (_is_cl(x) or _is_cl(weight)):
        return torch.channels_last
    return torch.contiguous_format


def _is_cl(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.shape[1] > 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()


def _empty():
    return torch.empty(0)


# ---- kernels -----------------------------------------------------------------------------------
# Each forward takes (x, weight, bias, stride, padding, dilation, groups, act) and returns y in
# output_format(x, weight); each backward takes (grad, x, weight, stride, padding, dilation, groups,
# mask) and returns (dx or None, dw or None, db or None) in the formats of x and weight.

def _forward_c(x, weight, bias, stride, padding, dilation, groups, act):
    fmt = output_format(x, weight)
    y = _ext.C.conv2d_forward(x, weight, bias, list(stride), list(padding), list(dilation), groups, act,
                              fmt == torch.channels_last or _nhwc_faster(x, weight, groups))
    return y.contiguous(memory_format=fmt)


# Planes (H W) up to which an NCHW depthwise forward runs channels_last internally on the CPU: one
# process, min of 30 calls, 3x3 batch 8 (2026-11-24 16:30 UTC): 512@14 float32 0.78 -> 0.50 ms,
# bfloat16 0.89 -> 0.38 ms; at 256@28 float32 the layout change loses (0.82 -> 2.02 ms).
DEPTHWISE_NHWC_MAX_PIXELS = 256


def _nhwc_faster(x, weight, groups) -> bool:
    """Dense convolutions with a spatial kernel run channels_last internally on the CPU: the NHWC
    panel copies whole channel runs and its blocks span images, and converting x and y costs a
    small fraction of the GEMM (measured in `python -m fastops.bench --ops conv`). Depthwise ones
    too on small planes, where the NCHW kernel's work per plane outweighs the layout change."""
    if _is_depthwise(x, weight, groups):
        return x.shape[2] * x.shape[3] <= DEPTHWISE_NHWC_MAX_PIXELS
    return weight.shape[2] * weight.shape[3] > 1


def _backward_c(grad, x, weight, stride, padding, dilation, groups, mask):
    cl = output_format(x, weight) == torch.channels_last or _nhwc_faster(x, weight, groups)
    dx, dw, db = _ext.C.conv2d_backward(grad, x, weight, list(stride), list(padding), list(dilation), groups, cl,
                                        list(mask))
    return _formats(x, weight, dx, dw, db)


def _formats(x, weight, dx, dw, db):
    if dx is not None:
        dx = dx.contiguous(memory_format=torch.channels_last if _is_cl(x) else torch.contiguous_format)
    if dw is not None:
        dw = dw.contiguous(memory_format=torch.channels_last if _is_cl(weight) else torch.contiguous_format)
    return dx, dw, db


def _forward_triton(x, weight, bias, stride, padding, dilation, groups, act):
    from fastops.triton import conv as tk
    return tk.conv2d_forward(x, weight, bias, stride, padding, dilation, groups, act, output_format(x, weight))


def _backward_triton(grad, x, weight, stride, padding, dilation, groups, mask):
    from fastops.triton import conv as tk
    dx, dw, db = tk.conv2d_backward(grad, x, weight, stride, padding, dilation, groups, mask)
    return _formats(x, weight, dx, dw, db)


def apply_activation(y: torch.Tensor, act: int) -> torch.Tensor:
    if act == 1:
        return torch.relu(y)
    if act == 4:
        return torch.nn.functional.silu(y)
    return y


def forward_ref(x, weight, bias, stride, padding, dilation, groups, act):
    """The torch kernel: torch's conv2d, then the activation."""
    y = torch.ops.aten.convolution(x, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0],
                                   groups)
    return apply_activation(y, act)


def backward_ref(grad, x, weight, stride, padding, dilation, groups, mask):
    dx, dw, db = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]], list(stride),
                                                     list(padding), list(dilation), False, [0, 0], groups,
                                                     list(mask))
    return dx, dw, db


# torch gives a convolution without input channels an output without channels, [N, 0, HO, WO]
# (not [N, O, HO, WO] filled with the bias): such calls go to torch, which defines that shape.
_NO_INPUT_CHANNELS = "no input channels (C = 0): torch's output is [N, 0, HO, WO], left to torch"


def _supports(x, weight, bias, stride, padding, dilation, groups, act):
    if x.dim() != 4:
        return f"input must be 4-D here, got {x.dim()}-D"
    if act not in (0, 1, 4):
        return f"activation code {act}"
    if x.shape[1] == 0:
        return _NO_INPUT_CHANNELS
    return None


def _supports_backward(grad, x, weight, stride, padding, dilation, groups, mask):
    if x.dim() != 4:
        return f"input must be 4-D here, got {x.dim()}-D"
    return _NO_INPUT_CHANNELS if x.shape[1] == 0 else None


# What the CUDA C++ kernels (csrc/cuda/conv.cu) cover, mirroring conv2d_cuda_unsupported in
# csrc/include/fastops/conv.h (the binding raises the same reasons): depthwise convolutions in every
# dtype; otherwise float16/bfloat16 implicit GEMM on tensor cores (mma.sync, sm_80+) whose 16-byte
# loads run along the channels, so C / groups (and O / groups for the backward) must be multiples of
# 8. The rest goes to Triton (auto tries cuda, then triton), e.g. float32 and a 3-channel stem.
def cuda_unsupported(x: torch.Tensor, weight: torch.Tensor, groups: int, backward: bool) -> Optional[str]:
    c, o = x.shape[1], weight.shape[0]
    if groups > 1 and groups == c and o % c == 0:
        return None
    if x.dtype == torch.float32:
        return "float32: the CUDA implicit-GEMM kernels run float16/bfloat16 on tensor cores (Triton covers float32)"
    if (c // groups) % 8 != 0:
        return "C / groups must be a multiple of 8 for the CUDA implicit-GEMM kernels"
    if backward and (o // groups) % 8 != 0:
        return "O / groups must be a multiple of 8 for the CUDA implicit-GEMM backward"
    return None


def _supports_cuda(x, weight, bias, stride, padding, dilation, groups, act):
    return _supports(x, weight, bias, stride, padding, dilation, groups, act) or \
        cuda_unsupported(x, weight, groups, backward=False)


def _supports_cuda_backward(grad, x, weight, stride, padding, dilation, groups, mask):
    return _supports_backward(grad, x, weight, stride, padding, dilation, groups, mask) or \
        cuda_unsupported(x, weight, groups, backward=True)


def auto_prefers_torch(x: torch.Tensor, weight: torch.Tensor, groups: int,
                       backward_stride: Optional[tuple] = None, fused_relu_inference: bool = False,
                       forward_stride: Optional[tuple] = None) -> Optional[str]:
    """Why `auto` sends a CPU call to torch whatever its size, or None. backward_stride: the
    stride of a backward call (conv2d_backward), None for a forward; forward_stride: a forward's
    stride where the caller knows it (None: not known, no stride-1 rule applies). fused_relu_inference: a forward
    with relu fused and no autograd graph, which runs on fastops when depthwise (README, 2026-11-24
    15:30 UTC: 0.99-1.29x torch's conv then relu, 3x3 batch 8 NHWC, in one process, medians).

    Measured (README, 2026-11-24 08:40-09:00, 2-core Zen 4, load 0.4-1, medians of 7 interleaved
    runs, ResNet-50 3x3 layers at batch 8): the implicit-GEMM forward reaches 0.88-0.98x oneDNN in
    NHWC and 0.75-0.94x in NCHW, fused bias+relu 0.83-1.00x of torch's conv then relu; the backward
    (dgrad + wgrad + dbias) 0.90-0.98x at 256 channels and ahead from 512 channels per group on
    7x7 outputs in NHWC (CPU_BACKWARD_FASTER_FROM): 1.04-1.23x at 512, 1.28-1.53x at 1024.
    Depthwise (2026-11-24 20:30-21:20 UTC, 3x3 batch 8 NHWC, in one process with the allocator's
    pages kept, after the row blocks): the forward is 0.62-1.12x torch in float32 and 0.71-0.97x in
    bfloat16, forward+backward through autograd 0.63-1.10x; the fused bias+relu is ahead (README),
    and so is the backward where torch's own kernels are slow (_cpu_depthwise_backward_faster);
    the rest stays on torch (CPU_DEPTHWISE_FASTER). float16 runs on fastops (below). Drop the rest
    once `python -m fastops.bench --ops conv` shows the GEMM path ahead on a shape class.
    """
    if _dispatch.get_backend() != "auto" or x.is_cuda or not _dispatch._crossovers_enabled:
        return None
    if x.dtype == torch.float16:
        # torch's float16 CPU convolutions take a slow generic path without AVX512-FP16 (no oneDNN
        # float16): measured 2026-11-24 21:20 UTC on the Zen 4, batch 8, through the bindings, torch /
        # fastops: depthwise forward 41-56x, depthwise backward 10-26x, dense 3x3 64@28 forward 3.6x
        # (NHWC) / 16x (NCHW), its backward 6-16x. With AVX512-FP16 (the AMX Xeon, 2026-11-25 00:50
        # UTC, batch 8, through autograd) torch's forward is the faster one (dense 3x3 64@28 0.65-0.67x,
        # depthwise 128@56 0.17x) and its backward still slow (fwd+bwd 6-75x).
        if backward_stride is None and _dispatch.cpu_has_avx512_fp16():
            return "torch's float16 forward runs on AVX512-FP16 (oneDNN) on this CPU and was measured faster"
        return None
    depthwise = _is_depthwise(x, weight, groups)
    if (depthwise and (CPU_DEPTHWISE_FASTER or fused_relu_inference)) or (not depthwise and CPU_GEMM_PATH_FASTER):
        return None
    if backward_stride is None and forward_stride is not None and _cpu_pointwise_nchw_faster(x, weight, groups,
                                                                                             forward_stride):
        return None
    if backward_stride is not None and _cpu_backward_faster(x, weight, groups, backward_stride):
        return None
    if depthwise:
        return ("the cpu depthwise kernels were measured slower than torch (oneDNN) here, except the backward "
                "of bfloat16 strided or 5x5 / 7x7 and float32 5x5 / 7x7 convolutions")
    return ("the cpu implicit-GEMM path was measured slower than torch (oneDNN) here; the NHWC backward of "
            ">= 512-channel layers on <= 8x8 outputs only")


# The NHWC backward (stride 1: dgrad as a flipped-weight forward, wgrad over column ranges per thread)
# is ahead of oneDNN from this many input and output channels per group, at most 64 output pixels
# per image (ResNet-50's last stage; 512@14 measured at parity, 0.94-1.00x, so it stays on torch).
CPU_BACKWARD_FASTER_FROM = 512
CPU_BACKWARD_FASTER_MAX_PIXELS = 64
# Input pixels (N H W) from which a bfloat16 depthwise 3x3 stride-1 backward runs on fastops on CPUs
# with AMX (_cpu_depthwise_backward_faster): 8x28x28.
DW_BF16_BACKWARD_MIN_PIXELS = 8 * 28 * 28


def _is_depthwise(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    return groups > 1 and groups == x.shape[1] and weight.shape[0] % groups == 0


def _cpu_depthwise_backward_faster(x: torch.Tensor, weight: torch.Tensor, stride) -> bool:
    """Depthwise backward calls where torch's CPU kernels were measured behind fastops' (README,
    2026-11-24 21:20 UTC, batch 8 NHWC, dgrad + wgrad + dbias through the bindings, min of 15 rounds):
    bfloat16 with stride 2 (9-33x: torch leaves oneDNN there) or 5x5 / 7x7 kernels (1.4-4.2x); on the
    AMX Xeon (2026-11-25 00:15 UTC, fwd+bwd through autograd, batch 8) 7x at 96@112 stride 2, 11x at
    144@56 5x5. float32 5x5 (since its wgrad has register blocks): 2.15-2.5x at 144@56, 240@28,
    672@14, 1.77x at 480@14 stride 2 (on the Zen 4, before those blocks: 2.2-2.4x at stride 1); float32
    7x7 2.1-2.9x at 144@56, 96@56, 192@28, 384@14 (0.55x before its blocks). The 3x3 stride-1
    backward is behind through autograd in float32 (0.63-0.82x on the Xeon, 0.69-1.10x on the Zen 4),
    other float32 strided 0.92-0.98x: those stay on torch. bfloat16 3x3 stride 1 on the AMX Xeon
    (2026-11-25 00:45 UTC, fwd+bwd through autograd, medians of 9): 1.14-1.28x from 8x32@112 to
    8x256@28, 0.79-0.97x on fewer than DW_BF16_BACKWARD_MIN_PIXELS input pixels (8x512@14, 8x1024@7,
    batch 1); on the Zen 4 0.9-1.5x either way, so there it stays on torch.
    Since the wgrad runs in pixel chunks (2026-11-25 03:40 UTC) the backward op alone (dx, dw, db)
    is 1.06-2.45x torch's in float32 and 1.15-2.8x in bfloat16 from 14x14 input pixels, and 3.4-7.2x
    for float32 5x5 / 7x7, but through autograd (04:00 UTC, fwd+bwd, batch 8, two runs) auto with
    the 3x3 backward on fastops measured float32 0.65-0.92x and bfloat16 1.18-1.59x from 8x28x28
    pixels, 0.72-0.97x below: the custom op's autograd path costs more than the kernels save on
    the smaller layers. So the rule above stands."""
    k = (weight.shape[2], weight.shape[3])
    if x.dtype == torch.bfloat16:
        if tuple(stride) != (1, 1) or k in ((5, 5), (7, 7)):
            return True
        return _dispatch.cpu_has_amx() and x.shape[0] * x.shape[2] * x.shape[3] >= DW_BF16_BACKWARD_MIN_PIXELS
    return x.dtype == torch.float32 and k in ((5, 5), (7, 7))


def _cpu_pointwise_nchw_faster(x: torch.Tensor, weight: torch.Tensor, groups: int, stride) -> bool:
    """bfloat16 1x1 stride-1 NCHW convolutions on CPUs with AMX, where torch's (oneDNN's) path is slow
    and fastops' is a plain GEMM per image on AMX tiles. AMX Xeon, 2026-11-25 00:50 UTC, batch 8,
    ResNet-50 1x1 layers, medians of 7 in one process, torch / fastops fwd, fwd+bwd: 64->256@56 6.26,
    3.07; 256->64@56 2.28, 3.27; 512->128@28 2.24, 2.16; 1024->256@14 1.69, 1.44; 2048->512@7 1.38,
    0.79. From POINTWISE_MIN_PIXELS per image (a forward on fastops is followed by its backward on
    fastops, and at 7x7 that backward loses). NHWC stays on torch (0.58-0.89x forward, 0.40-0.68x
    fwd+bwd)."""
    return (x.dtype == torch.bfloat16 and groups == 1 and weight.shape[2] == 1 and weight.shape[3] == 1
            and tuple(stride) == (1, 1) and output_format(x, weight) == torch.contiguous_format
            and x.shape[2] * x.shape[3] >= POINTWISE_MIN_PIXELS and _dispatch.cpu_has_amx())


POINTWISE_MIN_PIXELS = 14 * 14


def _cpu_backward_faster(x: torch.Tensor, weight: torch.Tensor, groups: int, stride) -> bool:
    if x.dtype == torch.float16:  # torch's float16 backward is slow on every CPU measured (auto_prefers_torch)
        return True
    if _cpu_pointwise_nchw_faster(x, weight, groups, stride):
        return True
    if _is_depthwise(x, weight, groups):
        return weight.shape[0] == x.shape[1] and _cpu_depthwise_backward_faster(x, weight, stride)
    return (_is_cl(x) and tuple(stride) == (1, 1) and weight.shape[2] * weight.shape[3] > 1
            and x.shape[1] // groups >= CPU_BACKWARD_FASTER_FROM
            and weight.shape[0] // groups >= CPU_BACKWARD_FASTER_FROM
            and x.shape[2] * x.shape[3] <= CPU_BACKWARD_FASTER_MAX_PIXELS)


CPU_GEMM_PATH_FASTER = False
CPU_DEPTHWISE_FASTER = False

# Input elements (N C H W) below which `auto` calls torch on the CPU. `python -m fastops.bench --ops
# conv_depthwise,conv_bias_relu --quick` on the loaded dev machine (README): at 32 elements torch
# took 13 us a call against 20-35 us for fastops (Python dispatch), while the sweeps had fastops
# ahead from 256 elements up; 4096 sits between, pending a run on a quiet machine.
CROSSOVER = {"cpu": 4096}

# cuda and cpu are the same bindings: on CUDA tensors they run csrc/cuda/conv.cu (always NHWC).
_dispatch.register_op("conv2d_forward", FAMILY, {
    "cuda": _forward_c, "triton": _forward_triton, "cpu": _forward_c, "torch": forward_ref,
}, supports={"cuda": _supports_cuda, "triton": _supports, "cpu": _supports}, crossover=CROSSOVER)
_dispatch.register_op("conv2d_backward", FAMILY, {
    "cuda": _backward_c, "triton": _backward_triton, "cpu": _backward_c, "torch": backward_ref,
}, supports={"cuda": _supports_cuda_backward, "triton": _supports_backward, "cpu": _supports_backward},
    crossover=CROSSOVER)


# ---- custom ops --------------------------------------------------------------------------------

def _check_op_args(x, weight, bias, stride, padding, dilation, groups):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: f"{_NAME}: x and weight must be 4-D")
    torch._check(len(stride) == 2 and len(padding) == 2 and len(dilation) == 2,
                 lambda: f"{_NAME}: stride, padding and dilation must be pairs")
    torch._check(groups > 0 and weight.shape[0] % groups == 0 and weight.shape[1] * groups == x.shape[1],
                 lambda: f"{_NAME}: weight {list(weight.shape)} does not match input channels {x.shape[1]} "
                         f"with groups={groups}")
    torch._check(bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0]),
                 lambda: f"{_NAME}: bias must be [{weight.shape[0]}]")


def _out_shape(x, weight, stride, padding, dilation):
    ho = out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    torch._check(ho > 0 and wo > 0, lambda: f"{_NAME}: kernel larger than the padded input")
    return (x.shape[0], weight.shape[0] if x.shape[1] != 0 else 0, ho, wo)  # torch: C = 0 gives 0 channels


@torch.library.custom_op("fastops::conv2d", mutates_args=())
def conv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
              padding: list[int], dilation: list[int], groups: int, activation: int, backend: str) -> torch.Tensor:
    _check_op_args(x, weight, bias, stride, padding, dilation, groups)
    return _dispatch.run_op("conv2d_forward", backend, x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups,
               activation)


@conv2d_op.register_fake
def _conv2d_fake(x, weight, bias, stride, padding, dilation, groups, activation, backend):
    _check_op_args(x, weight, bias, stride, padding, dilation, groups)
    shape = _out_shape(x, weight, stride, padding, dilation)
    return x.new_empty(shape).contiguous(memory_format=output_format(x, weight))


@torch.library.custom_op("fastops::conv2d_backward", mutates_args=())
def conv2d_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                       padding: list[int], dilation: list[int], groups: int, output_mask: list[bool],
                       backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_op_args(x, weight, None, stride, padding, dilation, groups)
    torch._check(tuple(grad.shape) == _out_shape(x, weight, stride, padding, dilation),
                 lambda: f"{_NAME}: grad_output must have the output's shape")
    dx, dw, db = _dispatch.run_op("conv2d_backward", backend, grad, x, weight, tuple(stride), tuple(padding), tuple(dilation),
                     groups, tuple(output_mask))
    return tuple(t if keep else x.new_empty(0) for t, keep in zip((dx, dw, db), output_mask))


@conv2d_backward_op.register_fake
def _conv2d_backward_fake(grad, x, weight, stride, padding, dilation, groups, output_mask, backend):
    _check_op_args(x, weight, None, stride, padding, dilation, groups)
    dx = torch.empty_like(x, memory_format=torch.channels_last if _is_cl(x) else torch.contiguous_format)
    dw = torch.empty_like(weight, memory_format=torch.channels_last if _is_cl(weight) else torch.contiguous_format)
    outs = (dx, dw, x.new_empty(weight.shape[0]))
    return tuple(t if keep else x.new_empty(0) for t, keep in zip(outs, output_mask))


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, ctx.act, ctx.backend = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias if ctx.act == 4 else None, output if ctx.act == 1 else None)


def _conv2d_bwd(ctx, grad):
    x, weight, bias, y = ctx.saved_tensors
    if ctx.act == 1:
        grad = grad * (y > 0).to(grad.dtype)
    elif ctx.act == 4:  # silu'(z) from the recomputed pre-activation z
        z = conv2d_op(x, weight, bias, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, 0, ctx.backend)
        s = torch.sigmoid(z.float())
        grad = (grad.float() * s * (1.0 + z.float() * (1.0 - s))).to(grad.dtype)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    backend = ctx.backend
    if backend == "auto:torch" and auto_prefers_torch(x, weight, ctx.groups, backward_stride=ctx.stride) is None:
        backend = "auto"  # auto ran the forward on torch; the backward has its own policy
    dx, dw, db = conv2d_backward_op(grad, x, weight, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, mask,
                                    backend)
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None,
            None, None, None, None, None, None)


conv2d_op.register_autograd(_conv2d_bwd, setup_context=_conv2d_setup)


# ---- the functional entry point (fastops.functional.conv2d) --------------------------------------

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    if activation is None and _dispatch.small_cpu_call("conv2d_forward", x):  # below the crossover
        return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    a = check(x, weight, bias, stride, padding, dilation, groups, activation)
    args = (a.x4, weight, bias, a.stride, a.padding, a.dilation, a.groups)
    if torch.compiler.is_compiling():
        y = conv2d_op(*args, a.act, "auto")
    else:
        needs_graph = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias))
        why = auto_prefers_torch(a.x4, weight, a.groups, fused_relu_inference=a.act == 1 and not needs_graph,
                                 forward_stride=a.stride)
        choice = _dispatch.fallback("conv2d_forward", a.x4, why) if why else \
            _dispatch.select("conv2d_forward", *args, a.act)
        if choice.kernel.backend == "torch" and needs_graph and a.act != 4 and \
                _cpu_backward_faster(a.x4, weight, a.groups, a.stride):
            y = conv2d_op(*args, a.act, "auto:torch")  # torch forward; _conv2d_bwd decides the backward
        elif choice.kernel.backend == "torch" and a.act == 0:  # torch's own entry, the caller's arguments
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
        elif choice.kernel.backend == "torch":
            y = forward_ref(*args, a.act)
        elif not needs_graph:
            y = choice.kernel.fn(*args, a.act)
        elif a.act == 4:  # training through silu: the op without it, torch's silu (and its backward) after
            y = torch.nn.functional.silu(conv2d_op(*args, 0, _dispatch.chosen_name(choice)))
        else:
            y = conv2d_op(*args, a.act, _dispatch.chosen_name(choice))
    return y.squeeze(0) if a.unbatched else y


# ---- aten overrides for fastops.enable() --------------------------------------------------------

def _aten_convolution(original, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed or x.dim() != 4 or len(stride) != 2:
        _dispatch.fallback("conv2d_forward", x, "transposed or non-2-D convolution")
        return original(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    args = (x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, 0)
    why = auto_prefers_torch(x, weight, groups, forward_stride=tuple(stride))
    choice = _dispatch.fallback("conv2d_forward", x, why) if why else _dispatch.select("conv2d_forward", *args)
    if choice.kernel.backend == "torch":
        return original(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    return choice.kernel.fn(*args)


def _aten_convolution_backward(original, grad, x, weight, bias_sizes, stride, padding, dilation, transposed,
                               output_padding, groups, output_mask):
    def torch_backward():
        return original(grad, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                        groups, output_mask)

    if transposed or x.dim() != 4 or len(stride) != 2:
        _dispatch.fallback("conv2d_backward", grad, "transposed or non-2-D convolution")
        return torch_backward()
    args = (grad, x, weight, tuple(stride), tuple(padding), tuple(dilation), groups, tuple(output_mask))
    why = auto_prefers_torch(x, weight, groups, backward_stride=tuple(stride))
    choice = _dispatch.fallback("conv2d_backward", grad, why) if why else _dispatch.select("conv2d_backward", *args)
    if choice.kernel.backend == "torch":
        return torch_backward()
    return choice.kernel.fn(*args)


_dropin.register_override(FAMILY, "aten::convolution", _aten_convolution, composite=True)
_dropin.register_override(FAMILY, "aten::convolution_backward", _aten_convolution_backward, composite=True)
