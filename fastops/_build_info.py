"""build_info(): what this installation holds and what of it is usable here."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from fastops import _dispatch, _ext


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _triton_version():
    try:
        import triton  # noqa: PLC0415
        return triton.__version__
    except Exception:
        return None


def _split(csv: str) -> list[str]:
    return [s for s in (csv or "").split(",") if s]


def build_info() -> dict:
    """Versions, CPU ISA paths compiled and in use, CUDA archs compiled, and per backend whether
    it is usable here and, if not, why."""
    from fastops import __version__  # noqa: PLC0415
    meta = _ext.BUILD_META
    backends = {}
    for name in _dispatch.BACKENDS[1:]:
        ok, why = _dispatch.backend_status(name)
        backends[name] = {"available": ok, "reason": why}
    return {
        "fastops": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "extension_loaded": _ext.C is not None,
        "extension_error": _ext.LOAD_ERROR,
        "built_against_torch": meta.get("torch_version"),
        "cpu_isas_compiled": _split(meta.get("cpu_isas_compiled")),
        "cpu_isa": meta.get("cpu_isa"),
        "cpu_amx_bf16": bool(meta.get("cpu_amx_bf16")),
        "cuda_archs": _split(meta.get("cuda_archs")),
        "backends": backends,
    }
