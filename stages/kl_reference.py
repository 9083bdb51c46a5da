"""Stage `kl_reference`: the reference side of every variant's KL divergence, computed once per merged model.

    python -m stages.kl_reference     # reads params.yaml: eval (kl_examples, perplexity_rows, perplexity_context, threads, limit)

Writes models/kl_reference/: the merged model's next-token log-probabilities over the answer tokens of the
first eval.kl_examples eval requests, and llama-perplexity's saved log-probabilities of the F16 file over
the first eval.perplexity_rows requests and answers. The eval stages of gptq, F16 and each GGUF level
compare their own model with these (ecommerce_slm/divergence.py).
"""

from __future__ import annotations

import argparse
import sys
import time

from ecommerce_slm.cli import stage_main
from ecommerce_slm.divergence import build_reference
from ecommerce_slm.evaluation import EvalConfig, load_rows
from ecommerce_slm.paths import EVAL_FILE, F16_FILE, KL_REFERENCE_DIR, MERGED_DIR


@stage_main("kl_reference")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    cfg = EvalConfig.load()
    start = time.perf_counter()
    info = build_reference(load_rows(EVAL_FILE, None, cfg.limit), cfg, MERGED_DIR, F16_FILE, KL_REFERENCE_DIR)
    kl, perplexity = info["kl"] or {}, info["perplexity"] or {}
    return (
        f"{kl.get('answer_tokens', 0)} answer tokens of {kl.get('rows', 0)} requests from {MERGED_DIR}; "
        f"llama-perplexity base: {perplexity.get('tokens', perplexity.get('skipped', 'off'))} tokens of "
        f"{F16_FILE} -> {KL_REFERENCE_DIR} ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
