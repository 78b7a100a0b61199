"""Kernel report: registers, spills, shared memory, occupancy and tensor-core use, without a GPU.

    python -m fastops.report [--json] [--arch sm_80,sm_90a]

Every Triton kernel config listed by ``report_specs()`` of a ``fastops.triton.<family>`` module
is compiled ahead of time for each architecture (``triton.compile`` needs no driver), its cubin is
written to a temporary file and read with the CUDA binary tools that ship in the triton wheel
(``triton/backends/nvidia/bin``): ``cuobjdump --dump-resource-usage`` for registers, LOCAL (spill)
bytes and SHARED bytes, ``cuobjdump --dump-sass`` for tensor-core instructions (HMMA, HGMMA, ...),
``cuobjdump --dump-elf`` for launch bounds. The CUDA kernels of the compiled extension
``fastops._C`` (if built, with device code) are read the same way, per architecture.

Occupancy is the fraction of an SM's warp slots a kernel can fill, from its registers per thread,
shared memory per block and threads per block (``num_warps * 32`` for Triton; for CUDA kernels
only when ``__launch_bounds__``/``reqntid`` fix it, otherwise None; their dynamic shared memory,
chosen at launch, is not counted). ``shared_bytes`` is the kernel's own use (static + Triton's
dynamic), without the 1 KiB per block the CUDA runtime reserves; occupancy counts that 1 KiB.

Exits non-zero when a kernel fails to compile or cannot be read. Imports only the standard
library, triton and ``fastops.triton.*`` (never ``fastops._C``: the extension is read as a file).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.machinery
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import triton

FAMILIES = ("softmax", "adam", "attention", "conv", "rnn", "matmul")
DEFAULT_ARCHS = ("sm_80", "sm_90a")

# SASS opcodes that run on tensor cores: mma.sync (HMMA/IMMA/DMMA/BMMA), Hopper wgmma
# (HGMMA/IGMMA/QGMMA/BGMMA), Blackwell tcgen05 (UTC*MMA).
_TENSOR_CORE_OPCODE = re.compile(r"\b(?:[HIDB]MMA|[HIQB]GMMA|UTC\w*MMA)\b")


@dataclasses.dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits used by the occupancy estimate."""

    smem_per_sm: int                 # bytes of shared memory an SM can hand to blocks
    reserved_smem_in_cubin: bool     # cuobjdump's SHARED already includes the reserved 1 KiB
    regs_per_sm: int = 64 * 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    reg_alloc_unit: int = 256        # registers are allocated per warp in units of 256
    reserved_smem_per_block: int = 1024

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // 32


# Keyed by compute capability (sm_90 and sm_90a share limits).
ARCH_LIMITS = {
    80: ArchLimits(smem_per_sm=164 * 1024, reserved_smem_in_cubin=False),
    90: ArchLimits(smem_per_sm=228 * 1024, reserved_smem_in_cubin=True),
}


def capability(arch: str) -> int:
    """'sm_90a' -> 90."""
    m = re.fullmatch(r"sm_(\d+)[a-z]?", arch)
    if not m:
        raise ValueError(f"arch must look like sm_80 or sm_90a, got {arch!r}")
    return int(m.group(1))


# --------------------------------------------------------------------------------------------
# CUDA binary tools
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tool(name: str) -> str:
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.is_file():
        return str(bundled)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in {bundled.parent} nor on PATH")
    return found


def _cuobjdump(path: str, *flags: str) -> str:
    proc = subprocess.run([_tool("cuobjdump"), *flags, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        if "does not contain device code" in proc.stderr + proc.stdout:
            return ""
        raise RuntimeError(f"cuobjdump {' '.join(flags)} {path} failed: {proc.stderr.strip()}")
    return proc.stdout


def read_resource_usage(path: str) -> list[dict]:
    """Per function of a cubin or fatbin: arch (None in a bare cubin), registers, spills
    (LOCAL bytes per thread), stack, shared (static bytes, as cuobjdump prints them)."""
    out, arch, name = [], None, None
    for line in _cuobjdump(path, "--dump-resource-usage").splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):\s*$", line):
            name = m.group(1)
        elif name is not None and "REG:" in line:
            fields = {k: int(v) for k, v in re.findall(r"([A-Z]+):(\d+)", line)}
            out.append({"arch": arch, "function": name, "registers": fields["REG"],
                        "spills": fields["LOCAL"], "stack": fields["STACK"],
                        "shared": fields["SHARED"]})
            name = None
    return out


def uses_tensor_cores(path: str) -> dict[tuple[str, str], bool]:
    """{(arch, function): whether its SASS holds a tensor-core instruction}."""
    found: dict[tuple[str, str], bool] = {}
    arch = key = None
    for line in _cuobjdump(path, "--dump-sass").splitlines():
        if m := re.match(r"\s*code for (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            key = (arch, m.group(1))
            found[key] = False
        elif key is not None and not found[key] and _TENSOR_CORE_OPCODE.search(line):
            found[key] = True
    return found


def read_block_sizes(path: str) -> dict[tuple[Optional[str], str], int]:
    """{(arch, function): threads per block} for kernels with reqntid / __launch_bounds__."""
    sizes: dict[tuple[Optional[str], str], int] = {}
    arch = name = attr = None
    for line in _cuobjdump(path, "--dump-elf").splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\.nv\.info\.(\S+)\s*$", line):
            name = m.group(1)
        elif m := re.match(r"\s*Attribute:\s*(EIATTR_\w+)", line):
            attr = m.group(1)
        elif name and attr in ("EIATTR_REQNTID", "EIATTR_MAX_THREADS") and "Value:" in line:
            dims = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", line)]
            # an exact reqntid beats the max_threads upper bound
            if attr == "EIATTR_REQNTID" or (arch, name) not in sizes:
                sizes[(arch, name)] = math.prod(dims)
            attr = None
    return sizes


def demangle(names: Iterable[str]) -> dict[str, str]:
    names = list(names)
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    proc = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    plain = proc.stdout.splitlines()
    return dict(zip(names, plain)) if len(plain) == len(names) else {n: n for n in names}


# --------------------------------------------------------------------------------------------
# Occupancy
# --------------------------------------------------------------------------------------------


def occupancy(arch: str, registers: int, shared_bytes: int,
              threads_per_block: Optional[int]) -> Optional[float]:
    """Resident warps / max warps per SM, or None when the block size is unknown."""
    if not threads_per_block:
        return None
    lim = ARCH_LIMITS[capability(arch)]
    warps = math.ceil(threads_per_block / 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / lim.reg_alloc_unit) * lim.reg_alloc_unit
    blocks = min(
        lim.max_blocks_per_sm,
        lim.max_warps_per_sm // warps,
        (lim.regs_per_sm // regs_per_warp) // warps,
        lim.smem_per_sm // (shared_bytes + lim.reserved_smem_per_block),
    )
    return round(blocks * warps / lim.max_warps_per_sm, 4)


def _own_shared(arch: str, cubin_shared: int) -> int:
    """Static shared bytes of the kernel itself (cuobjdump adds the reserved 1 KiB on sm_90+)."""
    lim = ARCH_LIMITS[capability(arch)]
    return max(0, cubin_shared - lim.reserved_smem_per_block) if lim.reserved_smem_in_cubin else cubin_shared


def _row(kernel, source, arch, config, usage, dynamic_shared, threads, tensor_cores) -> dict:
    shared = _own_shared(arch, usage["shared"]) + dynamic_shared
    return {"kernel": kernel, "source": source, "arch": arch, "config": config,
            "registers": usage["registers"], "spills": usage["spills"], "stack_bytes": usage["stack"],
            "shared_bytes": shared, "occupancy": occupancy(arch, usage["registers"], shared, threads),
            "tensor_cores": tensor_cores}


def _error_row(kernel, source, arch, config, error) -> dict:
    return {"kernel": kernel, "source": source, "arch": arch, "config": config, "registers": None,
            "spills": None, "stack_bytes": None, "shared_bytes": None, "occupancy": None, "tensor_cores": None,
            "error": error}


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


def triton_specs(families: Iterable[str] = FAMILIES) -> list[dict]:
    """report_specs() of every fastops.triton.<family> module that has one."""
    specs = []
    for family in families:
        module = importlib.import_module(f"fastops.triton.{family}")
        if hasattr(module, "report_specs"):
            specs += module.report_specs()
    return specs


def compile_triton_spec(spec: dict, arch: str):
    """triton.compile of one spec for `arch`, ahead of time (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec["fn"]
    signature = {**spec["signature"], **{name: "constexpr" for name in spec["constexprs"]}}
    aligned = spec.get("divisible_by_16", ())
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs=spec["constexprs"], attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability(arch), 32),
                          options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})


def triton_rows(archs: Iterable[str], specs: list[dict], workdir: Path) -> list[dict]:
    rows = []
    for i, spec in enumerate(specs):
        for arch in archs:
            try:
                compiled = compile_triton_spec(spec, arch)
                cubin = workdir / f"{i}_{arch}.cubin"
                cubin.write_bytes(compiled.asm["cubin"])
                (usage,) = read_resource_usage(str(cubin))
                tensor_cores = any(uses_tensor_cores(str(cubin)).values())
            except Exception as exc:  # reported as a failed row, exit status 1
                rows.append(_error_row(spec["kernel"], "triton", arch, spec["config"],
                                       f"{type(exc).__name__}: {exc}"))
                continue
            rows.append(_row(spec["kernel"], "triton", arch, spec["config"], usage,
                             compiled.metadata.shared, spec["num_warps"] * 32, tensor_cores))
    return rows


# --------------------------------------------------------------------------------------------
# CUDA kernels of fastops._C
# --------------------------------------------------------------------------------------------


def extension_path() -> Optional[Path]:
    """The built fastops._C next to this file, found without importing it."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_C{suffix}"
        if candidate.is_file():
            return candidate
    return None


def cuda_rows(archs: Iterable[str], path: Optional[Path]) -> list[dict]:
    if path is None:
        return []
    wanted = {capability(a) for a in archs}
    usages = [u for u in read_resource_usage(str(path))
              if u["arch"] and capability(u["arch"]) in wanted]
    tensor_cores = uses_tensor_cores(str(path))
    blocks = read_block_sizes(str(path))
    names = demangle({u["function"] for u in usages})
    rows = []
    for u in usages:
        key = (u["arch"], u["function"])
        threads = blocks.get(key)
        rows.append(_row(names[u["function"]], "cuda", u["arch"],
                         f"block={threads}" if threads else "", u, 0, threads,
                         tensor_cores.get(key, False)))
    return sorted(rows, key=lambda r: (r["kernel"], r["arch"]))


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def collect_rows(archs: Iterable[str] = DEFAULT_ARCHS, families: Iterable[str] = FAMILIES,
                 kernels: Optional[str] = None, include_cuda: bool = True) -> list[dict]:
    """One row per (kernel, config, arch): the Triton specs of `families` whose kernel name
    matches the regex `kernels` (all if None), then the CUDA kernels of fastops._C."""
    archs, families = list(archs), list(families)
    for arch in archs:
        if capability(arch) not in ARCH_LIMITS:
            raise ValueError(f"no limits for {arch}; known: sm_{', sm_'.join(map(str, ARCH_LIMITS))}")
    if triton.knobs.runtime.interpret:
        rows = _triton_rows_in_clean_process(archs, families, kernels)
    else:
        specs = [s for s in triton_specs(families) if kernels is None or re.search(kernels, s["kernel"])]
        with tempfile.TemporaryDirectory(prefix="fastops-report-") as tmp:
            rows = triton_rows(archs, specs, Path(tmp))
    if include_cuda:
        rows += cuda_rows(archs, extension_path())
    return rows


def _triton_rows_in_clean_process(archs: list[str], families: list[str],
                                  kernels: Optional[str]) -> list[dict]:
    """collect_rows' Triton part in a child process without TRITON_INTERPRET.

    Under the interpreter every @triton.jit function, triton.language's own (tl.max, tl.sum)
    included, is an interpreter function that triton.compile cannot lower: this happens when
    the report runs inside a test session that also runs interpreter tests.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    code = ("import json, sys; from fastops.report import collect_rows; "
            "archs, families, kernels, out = json.loads(sys.argv[1]); "
            "open(out, 'w').write(json.dumps(collect_rows(archs, families, kernels, include_cuda=False)))")
    with tempfile.TemporaryDirectory(prefix="fastops-report-") as tmp:
        out = Path(tmp) / "rows.json"
        proc = subprocess.run([sys.executable, "-c", code, json.dumps([archs, families, kernels, str(out)])],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"kernel report child process failed:\n{proc.stderr.strip()}")
        return json.loads(out.read_text())


_COLUMNS = (("kernel", "kernel"), ("source", "src"), ("arch", "arch"), ("config", "config"),
            ("registers", "regs"), ("spills", "spill B"), ("stack_bytes", "stack B"), ("shared_bytes", "smem B"),
            ("occupancy", "occup."), ("tensor_cores", "TC"))


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "occupancy":
        return f"{value:.0%}"
    if key == "tensor_cores":
        return "yes" if value else "no"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_table(rows: list[dict]) -> str:
    cells = [[_cell(k, r.get(k)) for k, _ in _COLUMNS] for r in rows]
    headers = [h for _, h in _COLUMNS]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastops.report", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--arch", default=",".join(DEFAULT_ARCHS),
                        help="comma-separated architectures (default: %(default)s)")
    parser.add_argument("--kernels", metavar="REGEX", default=None,
                        help="only the Triton kernels whose name matches REGEX")
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    try:
        rows = collect_rows(archs, kernels=args.kernels)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
        if extension_path() is None:
            print("(fastops._C not built: no CUDA kernels listed)", file=sys.stderr)
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"FAILED {r['kernel']} {r['config']} {r['arch']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
