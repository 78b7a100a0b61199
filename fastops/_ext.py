"""Loads the compiled extension fastops._C, or says why it could not.

Importing fastops never fails because of _C: when the binary is missing, was built against
another torch, or cannot load, fastops warns once (a UserWarning naming the cause and the
fix), marks the cpu and cuda backends unavailable and keeps working through triton and torch.
"""
from __future__ import annotations

import warnings

import torch

REBUILD_HINT = ("rebuild it against the installed torch: "
                "`pip install --no-build-isolation --no-deps --force-reinstall .` in the fastops "
                "source tree (or `python setup.py build_ext --inplace` for a development checkout)")


def _load():
    try:
        from fastops import _C as module  # noqa: PLC0415
    except Exception as e:  # ImportError, OSError (undefined symbol), anything a loader raises
        return None, {}, f"fastops._C could not be loaded ({type(e).__name__}: {e})"
    meta = dict(module.build_meta())
    if meta.get("torch_version") != torch.__version__:
        return None, meta, (f"fastops._C was built against torch {meta.get('torch_version')} "
                            f"but torch {torch.__version__} is installed")
    return module, meta, None


C, BUILD_META, LOAD_ERROR = _load()
if LOAD_ERROR is not None:
    warnings.warn(f"{LOAD_ERROR}; the cpu and cuda backends are off and fastops falls back to "
                  f"triton or torch. To fix it, {REBUILD_HINT}.", UserWarning, stacklevel=2)
