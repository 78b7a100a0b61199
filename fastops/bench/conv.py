"""Conv families: conv2d on ResNet-50 layer shapes (`conv`), depthwise 3x3 (`conv_depthwise`) and
conv + bias + relu, fused in fastops' epilogue against torch's two ops (`conv_bias_relu`).

shape = (N, C, H, W, O, K, stride, groups, layout): a KxK conv with padding K // 2, layout "nchw" or
"nhwc" (channels_last input and weight). Compute-bound: TFLOP/s from 2 N O HO WO (C / groups) K K
for the forward, twice that for the backward (dgrad + wgrad). The harness passes tensors only, so
stride, padding and groups travel as a small int64 tensor `geo` = [stride, padding, groups].
"""
from __future__ import annotations

import torch

import fastops
from fastops import _ext
from fastops.bench.harness import Case, Family

FLOPS_PER_MODE = {"fwd": 1.0, "bwd": 2.0, "full": 3.0}

# ResNet-50 (224x224) layers at batch 8: the 3x3 convs of the four stages, a strided 3x3 and the 1x1s.
SHAPES = (
    (8, 64, 56, 56, 64, 3, 1, 1, "nchw"), (8, 64, 56, 56, 64, 3, 1, 1, "nhwc"),
    (8, 128, 28, 28, 128, 3, 1, 1, "nchw"), (8, 256, 14, 14, 256, 3, 1, 1, "nchw"),
    (8, 256, 14, 14, 256, 3, 1, 1, "nhwc"), (8, 512, 7, 7, 512, 3, 1, 1, "nchw"),
    (8, 128, 56, 56, 128, 3, 2, 1, "nchw"),
    (8, 64, 56, 56, 256, 1, 1, 1, "nchw"), (8, 1024, 14, 14, 256, 1, 1, 1, "nhwc"),
)
QUICK_SHAPES = ((8, 64, 56, 56, 64, 3, 1, 1, "nchw"), (8, 256, 14, 14, 256, 3, 1, 1, "nhwc"),
                (8, 1024, 14, 14, 256, 1, 1, 1, "nchw"))
SWEEP = tuple((1, c, s, s, c, 3, 1, 1, "nchw") for c, s in ((4, 8), (8, 8), (16, 16), (32, 16), (64, 28)))
DW_SHAPES = ((8, 128, 56, 56, 128, 3, 1, 128, "nhwc"), (8, 128, 56, 56, 128, 3, 1, 128, "nchw"),
             (8, 512, 14, 14, 512, 3, 1, 512, "nhwc"), (8, 256, 28, 28, 256, 3, 2, 256, "nhwc"))
DW_SWEEP = tuple((1, c, s, s, c, 3, 1, c, "nhwc") for c, s in ((8, 8), (16, 16), (32, 28), (64, 56)))


def _geo(geo):
    stride, padding, groups = geo.tolist()
    return stride, padding, groups


def torch_conv(x, w, b, geo):
    stride, padding, groups = _geo(geo)
    return torch.nn.functional.conv2d(x, w, b, stride, padding, 1, groups)


def fastops_conv(x, w, b, geo):
    stride, padding, groups = _geo(geo)
    return fastops.functional.conv2d(x, w, b, stride, padding, 1, groups)


def raw_conv(x, w, b, geo):
    """The compiled cpu kernel without dispatch or autograd."""
    stride, padding, groups = _geo(geo)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return _ext.C.conv2d_forward(x, w, b, [stride] * 2, [padding] * 2, [1, 1], groups, 0, cl)


def torch_conv_relu(x, w, b, geo):
    stride, padding, groups = _geo(geo)
    return torch.relu(torch.nn.functional.conv2d(x, w, b, stride, padding, 1, groups))


def fastops_conv_relu(x, w, b, geo):
    stride, padding, groups = _geo(geo)
    return fastops.functional.conv2d(x, w, b, stride, padding, 1, groups, activation="relu")


def raw_conv_relu(x, w, b, geo):
    stride, padding, groups = _geo(geo)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return _ext.C.conv2d_forward(x, w, b, [stride] * 2, [padding] * 2, [1, 1], groups, 1, cl)


def make_case(shape: tuple, dtype: torch.dtype, device: str) -> Case:
    N, C, H, W, O, K, stride, groups, layout = shape
    pad = K // 2
    HO, WO = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    fwd = 2.0 * N * O * HO * WO * (C // groups) * K * K
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(0)

    def inputs():
        x = torch.randn((N, C, H, W), generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
        w = (torch.randn((O, C // groups, K, K), generator=g) * (C // groups * K * K) ** -0.5).to(
            device=device, dtype=dtype).contiguous(memory_format=fmt)
        b = torch.randn((O,), generator=g).to(device=device, dtype=dtype)
        return x, w, b, torch.tensor([stride, pad, groups])
    # the row's shape is x's (so numel and the crossovers count input elements); the rest names the op
    op = f"conv2d[{O}x{K}x{K},s{stride}" + (f",g{groups}" if groups > 1 else "") + f",{layout}]"
    return Case(op=op, shape=(N, C, H, W), dtype=dtype, inputs=inputs,
                flops={m: k * fwd for m, k in FLOPS_PER_MODE.items()})


FAMILY = Family(name="conv", kernel_op="conv2d_forward", torch_fn=torch_conv, fastops_fn=fastops_conv,
                raw_fn=raw_conv, make_case=make_case, shapes=SHAPES, quick_shapes=QUICK_SHAPES, sweep=SWEEP,
                quick_sweep=SWEEP[:3], tiny_shape=(1, 2, 4, 4, 2, 3, 1, 1, "nchw"))
DEPTHWISE_FAMILY = Family(name="conv_depthwise", kernel_op="conv2d_forward", torch_fn=torch_conv,
                          fastops_fn=fastops_conv, raw_fn=raw_conv, make_case=make_case, shapes=DW_SHAPES,
                          quick_shapes=DW_SHAPES[:1], sweep=DW_SWEEP, quick_sweep=DW_SWEEP[:2],
                          tiny_shape=(1, 2, 4, 4, 2, 3, 1, 2, "nhwc"))
FUSED_FAMILY = Family(name="conv_bias_relu", kernel_op="conv2d_forward", torch_fn=torch_conv_relu,
                      fastops_fn=fastops_conv_relu, raw_fn=raw_conv_relu, make_case=make_case,
                      shapes=SHAPES[:2] + DW_SHAPES[:1], quick_shapes=QUICK_SHAPES[:1] + DW_SHAPES[:1],
                      sweep=SWEEP[:3], quick_sweep=SWEEP[:2], tiny_shape=(1, 2, 4, 4, 2, 3, 1, 1, "nchw"),
                      modes=("fwd",))
