"""`python -m fastops.info`: versions, CPU path, CUDA archs, GPU, and op x backend availability.

Modelled on `python -m xformers.info`: one screen that says what works here and, where
something does not, why.
"""
from __future__ import annotations

import torch

import fastops
from fastops import _dispatch


def _gpu() -> str:
    if not torch.cuda.is_available():
        return "none visible to torch"
    return ", ".join(f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                     for i in range(torch.cuda.device_count()))


def availability() -> list[tuple[str, str, str]]:
    """(op, backend, "available" or the reason it is not) for every op and backend."""
    rows = []
    for op in _dispatch.ops():
        for k in _dispatch.kernels(op):
            ok, why = _dispatch.backend_status(k.backend)
            rows.append((op, k.backend, "available" if ok else f"unavailable: {why}"))
        rows.append((op, "torch", "available (reference and fallback)"))
    return rows


def render() -> str:
    info = fastops.build_info()
    lines = [
        f"fastops {info['fastops']}",
        f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}), triton {info['triton'] or 'not installed'}, "
        f"python {info['python']}",
        f"extension fastops._C: {'loaded' if info['extension_loaded'] else 'NOT loaded: ' + str(info['extension_error'])}",
        f"  built against torch {info['built_against_torch'] or '-'}",
        f"  CPU ISA paths compiled: {', '.join(info['cpu_isas_compiled']) or '-'}; in use: {info['cpu_isa'] or '-'}"
        f"{' + AMX (bfloat16 GEMMs)' if info['cpu_amx_bf16'] else ''}",
        f"  CUDA archs compiled: {', '.join(info['cuda_archs']) or 'none'}",
        f"GPU: {_gpu()}",
        f"backend setting: {_dispatch.get_backend()}  strict: {_dispatch.strict()}",
        "",
    ]
    rows = availability()
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines.append(f"{'op':<{w0}}  {'backend':<{w1}}  status")
    lines += [f"{op:<{w0}}  {b:<{w1}}  {status}" for op, b, status in rows]
    return "\n".join(lines)


def main() -> None:
    print(render())


if __name__ == "__main__":
    main()
