"""Machine facts (what ran the benchmark) and ceilings measured at start (what it can do).

Ceilings: copy bandwidth from dst.copy_(src) on a large tensor, counted as bytes read plus bytes
written (the convention of the GB/s columns), and matmul throughput from a square torch.matmul
(float32 2048^3 on the CPU, float16 4096^3 on a GPU; --quick uses a smaller matmul, and the same
copy probe so that the percent-of-copy-bandwidth columns compare across runs).
"""
from __future__ import annotations

import datetime
import os
import platform

import torch

import fastops
from fastops.bench.harness import dtype_name, time_call

COPY_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}
MATMUL = {"cpu": (2048, torch.float32), "cuda": (4096, torch.float16)}
QUICK_MATMUL = {"cpu": (1024, torch.float32), "cuda": (2048, torch.float16)}
CEILING_REPEAT = 5


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo, else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def facts(device: str) -> dict:
    """Hardware, versions and the time of the run."""
    info = fastops.build_info()
    return {
        "device": device,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": info["torch"],
        "triton": info["triton"],
        "fastops": info["fastops"],
        "cpu_isa": info["cpu_isa"],
        "python": info["python"],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def copy_gbps(device: str, nbytes: int) -> float:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_call(lambda: dst.copy_(src), device, CEILING_REPEAT).ms
    return 2 * nbytes / (ms / 1e3) / 1e9


def matmul_tflops(device: str, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    ms = time_call(lambda: torch.matmul(a, b), device, CEILING_REPEAT).ms
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def ceilings(device: str, quick: bool) -> dict:
    """Measured copy bandwidth (GB/s) and matmul throughput (TFLOP/s), with the probes used."""
    nbytes = COPY_BYTES[device]
    n, dtype = (QUICK_MATMUL if quick else MATMUL)[device]
    return {
        "copy_gbps": copy_gbps(device, nbytes),
        "copy_probe": f"copy_ of {nbytes >> 20} MiB float32 (read + write counted)",
        "matmul_tflops": matmul_tflops(device, n, dtype),
        "matmul_probe": f"{n}^3 {dtype_name(dtype)} torch.matmul",
    }
