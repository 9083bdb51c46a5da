"""Stage `bench@VARIANT`: load time, prompt and generation speed, memory and energy of merged, gptq or F16.

    python -m stages.bench --variant merged      # -> metrics/bench/merged.json; reads params.yaml: bench

How it measures: ecommerce_slm/benchmark.py. The GGUF levels have their own stage, bench_gguf.
"""

from __future__ import annotations

import argparse
import sys

from ecommerce_slm.benchmark import BenchConfig, bench
from ecommerce_slm.cli import stage_main
from ecommerce_slm.variants import resolve


@stage_main("bench")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, help="merged, gptq, base, F16 or a GGUF level (Q4_K_M, ...)")
    parser.add_argument("--out", help="default: metrics/bench/VARIANT.json")
    args = parser.parse_args(argv)
    return bench(resolve(args.variant), BenchConfig.load(), args.out)


if __name__ == "__main__":
    sys.exit(main())
