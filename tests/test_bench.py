"""python -m fastops.bench, run as a user runs it: in a subprocess, without TRITON_INTERPRET."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from fastops.bench.harness import counting_compiles, crossover_numel, time_call

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench(*args, timeout=120):
    """Runs the CLI from the repository root with the test-only TRITON_INTERPRET removed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "fastops.bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "bench.json"
    proc = bench("--quick", "--ops", "softmax", "--dtype", "float32", "--json", str(out), "--repeat", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert report["ceilings"]["copy_gbps"] > 0 and report["ceilings"]["matmul_tflops"] > 0
    assert "softmax" in report["dispatch_overhead_us"]
    assert "softmax_forward[cpu]" in report["crossovers"]

    rows = report["rows"]
    keys = {"op", "shape", "dtype", "mode", "provider", "ms", "ms_p20", "ms_p80", "gbps", "tflops",
            "speedup_vs_torch", "pct_of_copy_bandwidth", "peak_mem_bytes", "error"}
    assert all(keys <= set(r) for r in rows)
    for provider in ("torch", "fastops[cpu]"):
        mine = [r for r in rows if r["provider"] == provider]
        assert {r["mode"] for r in mine} == {"fwd", "bwd", "full"}
        assert all(r["ms"] > 0 and r["error"] is None and r["gbps"] > 0 for r in mine), mine
    assert {r["provider"] for r in rows} >= {"torch.compile", "fastops[auto]"}
    assert "dispatch overhead:" in proc.stdout and "crossover softmax_forward[cpu]:" in proc.stdout


def test_unknown_op_family_lists_the_valid_ones():
    proc = bench("--ops", "softmax,nope", timeout=60)
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "softmax" in proc.stderr


def test_crossover_is_where_fastops_stays_ahead():
    # (numel, torch_ms, backend_ms)
    assert crossover_numel([(64, 1.0, 2.0), (4096, 1.0, 1.0), (65536, 2.0, 1.0)]) == 4096
    assert crossover_numel([(64, 1.0, 0.5), (4096, 1.0, 2.0), (65536, 2.0, 1.0)]) == 65536
    assert crossover_numel([(64, 1.0, 0.5), (4096, 1.0, 0.5)]) == 0
    assert crossover_numel([(64, 1.0, 0.5), (4096, 1.0, 2.0)]) is None


def test_compiles_happen_in_warm_up_never_while_timing():
    f = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    x = torch.ones(4).requires_grad_()
    with counting_compiles() as compiles:
        # the forward compiles on the first call, its backward on the first backward: both warm-up
        stats = time_call(lambda: f(x).sum().backward(), "cpu", 2)
    assert compiles[0] >= 1 and stats.ms > 0

    sizes = iter(range(1, 1000))  # a new shape, so a recompile, on every call
    with pytest.raises(RuntimeError, match="recompiles on every call"):
        time_call(lambda: f(torch.ones(next(sizes))), "cpu", 2)


@pytest.mark.cuda
def test_rnn_raw_layer_runs_on_cuda_tensors():
    """The bench's raw-kernel call (the dispatch-overhead line) takes the CUDA path on GPU tensors."""
    from fastops.bench import rnn as bench_rnn
    fam = bench_rnn.FAMILY
    inputs = fam.make_case((4, 2, 8), torch.float32, "cuda").inputs()
    torch.testing.assert_close(fam.raw_fn(*inputs), fam.torch_fn(*inputs), rtol=1e-4, atol=1e-5)
