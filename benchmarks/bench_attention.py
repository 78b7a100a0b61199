"""Attention benchmark: fastops backends against torch eager and torch.compile.

    python benchmarks/bench_attention.py [--device cpu|cuda] [--dtype ...] [--quick] [--repeat N]
                                       [--json PATH] [--plot PATH.png]

The same as `python -m fastops.bench --ops attention,attention_causal` (see fastops/bench/cli.py).
"""
import pathlib
import sys

try:
    from fastops.bench.cli import main
except ImportError:  # a source checkout, not installed: use the fastops next to this folder
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from fastops.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["--ops", "attention,attention_causal", *sys.argv[1:]]))
