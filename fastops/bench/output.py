"""What the benchmark prints and writes: the header, the table, the overhead and crossover lines,
the JSON report and the plot."""
from __future__ import annotations

import json
import math
from typing import Optional

COLUMNS = ("op", "shape", "dtype", "mode", "provider", "ms", "p20-p80", "GB/s|TFLOP/s", "vs torch",
           "% copy BW", "note")
BUSY_LOAD = 0.5  # 1-minute load average above which the header warns that timings are noisy


def _num(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def header(machine: dict, ceilings: dict) -> str:
    """Machine, versions and ceilings, and a warning when other processes load the machine."""
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ""
    lines = [
        f"machine: {machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads)"
        f"{gpu}, cpu_isa {machine['cpu_isa']}",
        f"versions: torch {machine['torch']}, triton {machine['triton']}, fastops {machine['fastops']}"
        f"  ({machine['timestamp']})",
        f"ceilings: copy {ceilings['copy_gbps']:.1f} GB/s [{ceilings['copy_probe']}], "
        f"matmul {ceilings['matmul_tflops']:.3f} TFLOP/s [{ceilings['matmul_probe']}]",
    ]
    load = machine["load_average"]
    if load is not None and load > BUSY_LOAD:
        lines.append(f"warning: load average {load:.1f} at start: other processes are running, "
                     f"timings will be noisy")
    return "\n".join(lines)


def _rate(r: dict) -> str:
    """GB/s of a memory-bound op, else TFLOP/s (marked TF) of a compute-bound one."""
    if r.get("gbps") is None and r.get("tflops") is not None:
        return f"{r['tflops']:.3f} TF"
    return _num(r.get("gbps"), ".1f")


def _cells(r: dict) -> tuple:
    spread = "-" if r["ms"] is None else f"{r['ms_p20']:.4f}-{r['ms_p80']:.4f}"
    return (r["op"], "x".join(map(str, r["shape"])), r["dtype"], r["mode"], r["provider"],
            _num(r["ms"], ".4f"), spread, _rate(r), _num(r["speedup_vs_torch"], ".2f"),
            _num(r["pct_of_copy_bandwidth"], ".0f"), (r["error"] or "")[:100])


def table(rows: list[dict]) -> str:
    """One line per row, a rule between cases (op, shape, dtype)."""
    cells = [COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip()  # noqa: E731
    case = lambda r: (r["op"], r["shape"], r["dtype"])  # noqa: E731
    out = [line(COLUMNS), "-" * sum(w + 2 for w in widths)]
    for i, r in enumerate(rows):
        if i and case(rows[i - 1]) != case(r):
            out.append("")
        out.append(line(cells[i + 1]))
    return "\n".join(out)


def overhead_lines(family: str, overhead: dict) -> list[str]:
    """Per-call times on the tiny tensor, then fastops' overhead over the raw kernel."""
    if "error" in overhead:
        return [f"dispatch overhead ({family}): not measured ({overhead['error']})"]
    per_call = ", ".join(f"{k} {v:.2f} us" for k, v in overhead["per_call_us"].items())
    lines = [f"per call on {family} float32{overhead['shape']}: {per_call}"]
    for name, us in overhead["over_raw_us"].items():
        lines.append(f"dispatch overhead: {us:.2f} us per call (fastops.functional as {name}) over the raw kernel")
    return lines


def crossover_lines(crossovers: dict) -> list[str]:
    """One line per kernel op and backend: the overall crossover, then the one of each dtype."""
    lines = []
    for key, c in crossovers.items():
        per = ", ".join(f"{d}: {'never' if n is None else n}" for d, n in c["per_dtype"].items())
        top = max(p["numel"] for p in c["points"])
        if c["elements"] is None:
            what = f"never (torch faster at the largest size measured, {top} elements, for some dtype)"
        elif c["elements"] == 0:
            what = "0 elements (fastops at least as fast at every size measured)"
        else:
            what = f"{c['elements']} elements (torch faster below)"
        lines.append(f"crossover {key}: {what} [{per}]")
    return lines


def auto_lines(auto_vs_torch: dict) -> list[str]:
    """fastops[auto] over torch across the sweep: the worst shape per dtype (goal: >= 0.95x)."""
    lines = []
    for op, points in auto_vs_torch.items():
        lines += _auto_lines(op, points)
    return lines


def _auto_lines(op: str, points: list[dict]) -> list[str]:
    lines = []
    for dtype in dict.fromkeys(p["dtype"] for p in points):
        mine = [p for p in points if p["dtype"] == dtype]
        worst = min(mine, key=lambda p: p["ratio"])
        lines.append(f"{op}: fastops[auto] vs torch over the sweep, {dtype}: slowest {worst['ratio']:.2f}x at "
                     f"{worst['shape']} (goal >= 0.95x); " + ", ".join(f"{p['shape']} {p['ratio']:.2f}x" for p in mine))
    return lines


def write_json(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


def plot(path: str, rows: list[dict]) -> None:
    """Speedup over torch eager against numel, one panel per mode, a line per provider and dtype."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        lines = {}
        for r in rows:
            if r["mode"] == mode and r["provider"] != "torch" and r["speedup_vs_torch"]:
                lines.setdefault((r["op"], r["provider"], r["dtype"]), []).append(
                    (math.prod(r["shape"]), r["speedup_vs_torch"]))
        for (op, provider, dtype), pts in sorted(lines.items()):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=f"{op} {provider} {dtype}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel="elements", ylabel="speedup vs torch eager", title=mode)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
