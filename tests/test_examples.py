"""Every example runs in a short mode and prints what it promises."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_softmax_dropin_example_matches_torch():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env["FASTOPS_CROSSOVERS"] = "0"  # the example's tensors are below the CPU crossover
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "softmax_dropin.py"), "--steps", "3"],
                         env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    last = {line.split("  first")[0].strip(): line.split("last loss ")[1].split()[0]
            for line in out.splitlines() if "last loss" in line}
    assert set(last) == {"torch", "fastops.enable()", "fastops.patch()"}, out
    assert len(set(last.values())) == 1, out  # same losses to 4 decimals
    assert "softmax_forward: cpu" in out, out
