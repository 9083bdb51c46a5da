"""Stage `eval@VARIANT` (base, merged, gptq, F16), and the CLI to evaluate any variant or model file.

    python -m stages.eval --variant merged       # the DVC stage: data/eval.jsonl -> metrics/eval/merged.json
    python -m stages.eval --variant Q4_K_M --data my_requests.jsonl --out my_metrics.json
    python -m stages.eval --model path/to/folder-or.gguf --data my_requests.jsonl --out my_metrics.json

Reads params.yaml: eval. What is measured and written: ecommerce_slm/evaluation.py. The GGUF levels
and the API baselines have their own stages, eval_gguf and eval_api.
"""

from __future__ import annotations

import argparse
import sys

from ecommerce_slm.cli import stage_main
from ecommerce_slm.evaluation import EvalConfig, cli_arguments, run
from ecommerce_slm.variants import VariantError, from_path, resolve


@stage_main("eval")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="base, merged, gptq, F16 or a GGUF level (Q4_K_M, ...)")
    which.add_argument("--model", help="any model folder or .gguf file")
    cli_arguments(parser)
    args = parser.parse_args(argv)
    variant = resolve(args.variant) if args.variant else from_path(args.model)
    if variant.engine == "api":
        raise VariantError(
            f"--variant {args.variant}: API models are evaluated by python -m stages.eval_api {variant.location}"
        )
    return run(variant, args, EvalConfig.load())


if __name__ == "__main__":
    sys.exit(main())
