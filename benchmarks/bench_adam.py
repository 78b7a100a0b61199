"""Adam benchmark: fastops.optim.Adam (each backend) against torch.optim.Adam's for-loop,
foreach and fused=True steps.

    python benchmarks/bench_adam.py [--device cpu|cuda] [--dtype ...] [--quick] [--repeat N]
                                    [--json PATH] [--plot PATH.png]

The same as `python -m fastops.bench --ops adam` (see fastops/bench/cli.py and fastops/bench/adam.py).
"""
import pathlib
import sys

try:
    from fastops.bench.cli import main
except ImportError:  # a source checkout, not installed: use the fastops next to this folder
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from fastops.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["--ops", "adam", *sys.argv[1:]]))
