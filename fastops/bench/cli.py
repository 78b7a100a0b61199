"""python -m fastops.bench: every fastops backend against torch eager and torch.compile.

    python -m fastops.bench [--ops softmax] [--device cpu|cuda] [--dtype float32,bfloat16]
                            [--quick] [--repeat N] [--json out.json] [--plot out.png]

Prints the machine and its measured ceilings, a table (ms, GB/s or TFLOP/s, speedup over torch
eager, percent of the copy bandwidth), the dispatch overhead per call and, per fastops backend,
the forward crossover below which torch is faster (the numbers for the op's CROSSOVER table).
A family is one module of fastops/bench defining FAMILY, registered in FAMILIES.

--json writes {"machine", "ceilings", "settings", "dispatch_overhead_us", "crossovers", "auto_vs_torch", "rows"};
a row is one (op, shape, dtype, mode, provider) with ms (median), ms_p20, ms_p80, gbps, tflops
(None for memory-bound ops), speedup_vs_torch (torch eager ms / ms), pct_of_copy_bandwidth,
peak_mem_bytes (CUDA: the peak allocated during one call over what was allocated before it;
None on the CPU, where torch keeps no allocation counter) and error (None, the exception a
provider raised, or the note that a forced backend fell back to torch).
"""
from __future__ import annotations

import argparse
import importlib.util
from typing import Callable

import torch

import fastops
from fastops.bench import adam, attention, conv, harness, machine, matmul, output, providers, rnn, softmax

FAMILIES = {f.name: f for f in (softmax.FAMILY, adam.FAMILY, attention.FAMILY, attention.CAUSAL_FAMILY,
                                 matmul.FAMILY, matmul.LINEAR_FAMILY,
                                 conv.FAMILY, conv.DEPTHWISE_FAMILY, conv.FUSED_FAMILY,
                                 rnn.FAMILY, rnn.GRU_FAMILY, rnn.TANH_FAMILY, rnn.RELU_FAMILY,
                                 rnn.PROJ_FAMILY)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_DTYPES = {"cuda": "float32,float16,bfloat16", "cpu": "float32,bfloat16"}
REPEAT, QUICK_REPEAT = 25, 5


def comma_list(valid) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list of names from `valid`."""
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown name(s) {', '.join(bad) or repr(text)}; "
                                             f"valid names: {', '.join(valid)}")
        return names
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastops.bench", description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=comma_list(FAMILIES), default=list(FAMILIES),
                   help=f"op families, comma-separated (default all: {', '.join(FAMILIES)})")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", type=comma_list(DTYPES), default=None,
                   help="comma-separated dtypes (default: all three on cuda, float32,bfloat16 on cpu)")
    p.add_argument("--quick", action="store_true", help="a few shapes and repeats (under a minute on a small CPU)")
    p.add_argument("--repeat", type=int, default=None,
                   help=f"timed samples per measurement (default {REPEAT}, {QUICK_REPEAT} with --quick)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="plot speedup against size (needs matplotlib)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    if args.repeat is not None and args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    args.dtype = [DTYPES[d] for d in (args.dtype or DEFAULT_DTYPES[args.device].split(","))]
    args.repeat = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    return args


def _sizes(family: harness.Family, quick: bool) -> tuple[tuple, tuple]:
    """(table shapes, crossover sweep) of a family."""
    return (family.quick_shapes, family.quick_sweep) if quick else (family.shapes, family.sweep)


def _steps(family: harness.Family, args) -> int:
    """Measurements a family takes, for the progress bar."""
    shapes, sweep = _sizes(family, args.quick)
    n_providers = len(providers.providers(args.device, family.kernel_op, family.variants, family.compile))
    return len(args.dtype) * (len(shapes) * n_providers * len(family.modes) + len(sweep))


def _overhead(family: harness.Family, args) -> dict:
    try:
        return harness.measure_overhead(family, args.device, args.repeat)
    except Exception as e:  # no compiled kernel for this device: nothing to compare against
        return {"error": f"{type(e).__name__}: {e}"}


def run(args) -> dict:
    """Measures everything the arguments ask for; returns the report (the JSON document)."""
    families = [FAMILIES[name] for name in args.ops]
    fastops.set_backend("auto")  # fastops[auto] means the default, whatever FASTOPS_BACKEND says
    torch.manual_seed(0)
    report = {"machine": machine.facts(args.device), "ceilings": machine.ceilings(args.device, args.quick),
              "settings": {"ops": args.ops, "quick": args.quick, "repeat": args.repeat,
                           "dtypes": [harness.dtype_name(d) for d in args.dtype]},
              "dispatch_overhead_us": {}, "crossovers": {}, "auto_vs_torch": {}, "rows": []}
    print(output.header(report["machine"], report["ceilings"]), end="\n\n", flush=True)
    progress = harness.Progress(sum(_steps(f, args) for f in families))
    for family in families:
        shapes, sweep = _sizes(family, args.quick)
        report["dispatch_overhead_us"][family.name] = _overhead(family, args)
        report["rows"] += harness.run_family(family, args.device, args.dtype, shapes, args.repeat, progress)
        crossovers, auto_points = harness.measure_crossovers(family, args.device, args.dtype, sweep, args.repeat,
                                                             progress)
        report["crossovers"].update(crossovers)
        report["auto_vs_torch"][family.name] = auto_points
    progress.close()
    harness.add_ratios(report["rows"], report["ceilings"]["copy_gbps"])
    return report


def print_results(report: dict) -> None:
    """The table, then the dispatch overhead and crossover lines."""
    print(output.table(report["rows"]), end="\n\n")
    for name, overhead in report["dispatch_overhead_us"].items():
        print("\n".join(output.overhead_lines(name, overhead)))
    print("\n".join(output.crossover_lines(report["crossovers"])))
    print("\n".join(output.auto_lines(report["auto_vs_torch"])), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_results(report)
    if args.json:
        output.write_json(args.json, report)
    if args.plot:
        output.plot(args.plot, report["rows"])
    return 0
