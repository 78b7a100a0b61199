import torch

from fastops import _dropin
from fastops import functional as F
from fastops.ops.matmul import FAMILY, activation_code


class Linear(torch.nn.Linear):
    """torch.nn.Linear on fastops.functional.linear, with an optional fused activation.

    Same constructor, parameters and state_dict keys as torch.nn.Linear, plus `activation`
    (None, "relu", "gelu", "gelu_tanh", "silu") applied in the GEMM's epilogue. A torch.nn.Linear
    swapped in by fastops.patch() has no activation.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 activation=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        activation_code(activation)
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias, getattr(self, "activation", None))

    def extra_repr(self) -> str:
        act = getattr(self, "activation", None)
        return super().extra_repr() + (f", activation={act!r}" if act is not None else "")


_dropin.register_module(FAMILY, torch.nn.Linear, Linear)
