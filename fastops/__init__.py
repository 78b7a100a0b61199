"""fastops: hand-written Triton, CUDA C++ and CPU kernels for PyTorch, as drop-in custom ops.

    import fastops
    y = fastops.functional.softmax(x, dim=-1)      # explicit use
    with fastops.enable():                         # torch's own ops routed to fastops
        loss = model(x).sum()
    fastops.patch(model)                           # torch.nn modules swapped in place
    print(fastops.explain())                       # which kernel ran, and why

Backends: auto (default), triton, cuda, cpu, torch; see set_backend / use_backend /
FASTOPS_BACKEND, and build_info() for what is usable here.
"""
__version__ = "0.1.0"

from fastops import _ext  # noqa: F401  (loads _C, or warns why not)
from fastops import ops  # noqa: F401  (registers the custom ops and kernels)
from fastops import functional, nn, optim
from fastops._build_info import build_info
from fastops._dispatch import (BACKENDS, clear_history, explain, get_backend, set_backend, set_strict,
                               use_backend)
from fastops._dropin import disable, enable, patch, unpatch

__all__ = [
    "BACKENDS", "build_info", "clear_history", "disable", "enable", "explain", "functional", "get_backend", "nn",
    "optim", "patch", "set_backend", "set_strict", "unpatch", "use_backend",
]
