"""python -m fastops.bench: see fastops/bench/cli.py."""
import sys

from fastops.bench.cli import main

sys.exit(main())
