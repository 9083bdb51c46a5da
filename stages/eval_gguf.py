"""Stage `eval_gguf@LEVEL`: accuracy of one GGUF level of gguf.levels, free and schema-constrained.

    python -m stages.eval_gguf Q4_K_M            # data/eval.jsonl -> metrics/eval/Q4_K_M.json

Reads params.yaml: eval; the same code as the eval stage (ecommerce_slm/evaluation.py).
"""

from __future__ import annotations

import argparse
import sys

from ecommerce_slm.cli import stage_main
from ecommerce_slm.evaluation import EvalConfig, cli_arguments, run
from ecommerce_slm.gguf_file import check_level
from ecommerce_slm.variants import resolve


@stage_main("eval_gguf")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", help="a llama.cpp quant type from gguf.levels (Q4_K_M, ...)")
    cli_arguments(parser)
    args = parser.parse_args(argv)
    return run(resolve(check_level(args.level, "level")), args, EvalConfig.load())


if __name__ == "__main__":
    sys.exit(main())
