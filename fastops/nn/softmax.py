import torch

from fastops import _dropin
from fastops import functional as F
from fastops.ops.softmax import FAMILY


class Softmax(torch.nn.Softmax):
    """torch.nn.Softmax on fastops.functional.softmax."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dim = self.dim
        if dim is None:  # torch's legacy implicit-dim rule, with its deprecation warning
            dim = torch.nn.functional._get_softmax_dim("softmax", input.dim(), stacklevel=5)
        return F.softmax(input, dim)


_dropin.register_module(FAMILY, torch.nn.Softmax, Softmax)
