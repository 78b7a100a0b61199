"""Test setup: Triton runs on CPU tensors through its interpreter (there is no GPU in CI).

TRITON_INTERPRET must be set before triton is imported anywhere, hence here, at collection.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _fresh_fastops_state():
    """Every test starts with backend auto, no enable() scope and no strict mode, and with the
    measured crossovers off, so that `auto` runs the fastops kernel whatever the size of a test
    tensor (tests of the crossovers turn them on)."""
    import fastops
    from fastops import _dispatch
    _dispatch.set_crossovers_enabled(False)
    yield
    _dispatch.set_crossovers_enabled(True)
    fastops.disable()
    fastops.set_backend("auto")
    fastops.set_strict(False)
    _dispatch.clear_history()
