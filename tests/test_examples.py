"""Every example runs in a short mode, its loss goes down on both backends, torch and fastops agree,
and fastops' kernels are what ran (fastops.explain() in the output)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(torch|fastops)\s+first loss (\S+)\s+last loss (\S+)", re.M)

# example -> (extra arguments for a short run, ops whose fastops kernel must have run)
EXAMPLES = {
    "linear_regression.py": (["--steps", "20"], ["linear"]),
    "mlp.py": (["--steps", "20"], ["adam_step", "linear"]),
    "cnn_digits.py": (["--steps", "20"], ["adam_step", "linear"]),
    "char_lstm.py": (["--steps", "20", "--text-bytes", "50000"], ["adam_step", "linear", "rnn_layer"]),
    "tiny_transformer.py": (["--steps", "20", "--text-bytes", "50000", "--seq", "64"],
                            ["adam_step", "linear", "sdpa_forward", "sdpa_backward"]),
}


def run_example(name: str, *args: str, crossovers: str = "0") -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env["FASTOPS_CROSSOVERS"] = crossovers  # small example tensors would otherwise go to torch
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], env=env,
                          capture_output=True, text=True, timeout=600, check=True).stdout


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_trains_and_runs_fastops_kernels(name):
    args, ops = EXAMPLES[name]
    out = run_example(name, *args)
    losses = {backend: (float(first), float(last)) for backend, first, last in LINE.findall(out)}
    assert set(losses) == {"torch", "fastops"}, out
    for backend, (first, last) in losses.items():
        assert last < first, f"{backend} loss did not go down:\n{out}"
    assert losses["fastops"][0] == pytest.approx(losses["torch"][0], rel=1e-3), out
    assert losses["fastops"][1] == pytest.approx(losses["torch"][1], rel=5e-2), out
    ran = out.split("fastops kernels that ran")[1]
    for op in ops:
        assert re.search(rf"^\s+{op}: (cpu|triton|cuda) ", ran, re.M), f"{op} did not run a fastops kernel:\n{out}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_help(name):
    out = run_example(name, "--help")
    assert "--backend" in out and "--steps" in out and "--plot" in out


def test_example_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "loss.png"
    run_example("mlp.py", "--steps", "5", "--plot", str(png))
    assert png.stat().st_size > 1000


def test_softmax_dropin_example_matches_torch():
    out = run_example("softmax_dropin.py", "--steps", "3")
    last = {line.split("  first")[0].strip(): line.split("last loss ")[1].split()[0]
            for line in out.splitlines() if "last loss" in line}
    assert set(last) == {"torch", "fastops.enable()", "fastops.patch()"}, out
    assert len(set(last.values())) == 1, out  # same losses to 4 decimals
    assert "softmax_forward: cpu" in out, out
