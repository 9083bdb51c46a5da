"""Stage `bench_gguf@LEVEL`: speed, memory and energy of one GGUF level of gguf.levels.

    python -m stages.bench_gguf Q4_K_M           # -> metrics/bench/Q4_K_M.json; reads params.yaml: bench

How it measures: ecommerce_slm/benchmark.py (the same code as the bench stage).
"""

from __future__ import annotations

import argparse
import sys

from ecommerce_slm.benchmark import BenchConfig, bench
from ecommerce_slm.cli import stage_main
from ecommerce_slm.gguf_file import check_level
from ecommerce_slm.variants import resolve


@stage_main("bench_gguf")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", help="a llama.cpp quant type from gguf.levels (Q4_K_M, ...)")
    args = parser.parse_args(argv)
    return bench(resolve(check_level(args.level, "level")), BenchConfig.load())


if __name__ == "__main__":
    sys.exit(main())
