"""Custom ops (fastops::*), one module per op family; importing registers them."""
from fastops.ops import softmax  # noqa: F401
from fastops.ops import adam  # noqa: F401
from fastops.ops import attention  # noqa: F401
from fastops.ops import conv  # noqa: F401
from fastops.ops import rnn  # noqa: F401
from fastops.ops import matmul  # noqa: F401
