"""fastops.nn.Conv2d: torch.nn.Conv2d on fastops.functional.conv2d, with an optional fused activation."""
from typing import Optional

import torch

from fastops import _dropin
from fastops import functional as F
from fastops.ops.conv import FAMILY, activation_code


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d (same constructor, attributes and state_dict keys) on fastops kernels.

    activation: None, "relu" or "silu", applied in the kernel's epilogue after the bias.
    padding_mode "zeros" pads inside the kernel; "reflect", "replicate" and "circular" pad the
    input first with torch.nn.functional.pad, as torch does.
    A torch.nn.Conv2d swapped in by fastops.patch() has no `activation` attribute: it runs none.
    """

    def __init__(self, *args, activation: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        activation_code(activation)  # ValueError on an unknown name, before any call
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        activation = getattr(self, "activation", None)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return F.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                        activation=activation)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        activation = getattr(self, "activation", None)
        return s + (f", activation={activation!r}" if activation is not None else "")


_dropin.register_module(FAMILY, torch.nn.Conv2d, Conv2d)
