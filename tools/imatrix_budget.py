"""How many training requests the importance matrix needs, and whether it must be computed on the F16 file.

    python -m tools.imatrix_budget                                   # -> docs/imatrix_budget.json
    python -m tools.imatrix_budget --rows 1000,300 --source F16,Q8_0 --out my_budget.json

For each source file and row count: llama-imatrix over the first N training requests, rendered as the
imatrix stage renders them; then every level of `gguf.levels` that uses the matrix is quantized with it,
and scored by llama-perplexity's KL from the F16 file over validation requests and their answers, as
the eval stages score KL over eval rows (never an eval set here: this chooses a parameter). The plain
levels those are built on (Q3_K_M-imat -> Q3_K_M) are scored once, without a matrix, as the floor.
Everything goes to a scratch folder; models/ is only read (models/gguf/F16.gguf, the merged tokenizer).
Settings: params.yaml `gguf:` (imatrix_context, threads) and `eval:` (perplexity_rows, perplexity_context).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ecommerce_slm.cli import stage_main
from ecommerce_slm.divergence import answer_text
from ecommerce_slm.evaluation import EvalConfig
from ecommerce_slm.files import atomic_write_text, read_jsonl, write_json
from ecommerce_slm.gguf_file import GgufConfig, file_type, uses_imatrix
from ecommerce_slm.llama_tools import perplexity_kl
from ecommerce_slm.machine import cpu_info
from ecommerce_slm.params import ParamError
from ecommerce_slm.paths import F16_FILE, MERGED_DIR, TRAIN_FILE, VALIDATION_FILE
from stages.imatrix import calibration_text, compute
from stages.quantize_gguf import quantize

DEFAULT_OUT = Path("docs/imatrix_budget.json")
SOURCES = ("F16", "Q8_0")  # Q8_0: llama.cpp's usual source for big models; a faster prompt pass on CPUs


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def source_list(text: str) -> list[str]:
    values = text.split(",")
    if not set(values) <= set(SOURCES):
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(SOURCES)}, got {text!r}")
    return values


def kl(model: Path, text: str, context: int, threads: int) -> dict:
    result = perplexity_kl(F16_FILE, model, text, context, threads)
    return {k: result[k] for k in ("mean_kl", "median_kl", "same_top_token", "ppl_ratio")}


@stage_main("imatrix_budget")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int_list, default=[1000, 300, 100], help="training requests, e.g. 1000,300")
    parser.add_argument("--source", type=source_list, default=list(SOURCES), help="F16, Q8_0 or both")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    if not F16_FILE.is_file():
        raise FileNotFoundError(f"{F16_FILE}: missing F16 GGUF (run dvc repro convert_gguf)")
    gguf, ev = GgufConfig.load(), EvalConfig.load()
    levels = [level for level in gguf.levels if uses_imatrix(level)]
    if not levels:
        raise ParamError(f"params.yaml: gguf.levels: {gguf.levels} has no level that uses the importance matrix")
    tokenizer = AutoTokenizer.from_pretrained(MERGED_DIR)
    train_rows = read_jsonl(TRAIN_FILE)
    validation = read_jsonl(VALIDATION_FILE)[: ev.perplexity_rows]
    text = answer_text(validation)
    context, threads = ev.perplexity_context, gguf.threads
    result = {
        "levels": levels,
        "validation_rows": len(validation),
        "perplexity_context": context,
        "imatrix_context": gguf.imatrix_context,
        "threads": threads,
        "cpu": cpu_info(),
        "without_imatrix": {},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="imatrix-budget-") as scratch:
        scratch = Path(scratch)
        # the floor: each -imat level's own type without a matrix (IQ types and the like have none to compare)
        for plain in sorted({file_type(level) for level in levels if not uses_imatrix(file_type(level))}):
            path = scratch / f"{plain}.gguf"
            quantize(F16_FILE, path, plain, threads)
            result["without_imatrix"][plain] = kl(path, text, context, threads)
            print(f"imatrix_budget: {plain} without a matrix: {result['without_imatrix'][plain]}", flush=True)
        sources = {"F16": F16_FILE}
        if "Q8_0" in args.source:
            sources["Q8_0"] = scratch / "Q8_0.gguf"
            quantize(F16_FILE, sources["Q8_0"], "Q8_0", threads)
        calibrations = {}  # one text per row count, read by every source
        for rows in args.rows:
            calibrations[rows] = scratch / f"calibration-{rows}.txt"
            atomic_write_text(calibrations[rows], calibration_text(train_rows[:rows], tokenizer))
        for name in args.source:
            for rows in args.rows:
                matrix = scratch / f"imatrix-{name}-{rows}.gguf"
                seconds, _ = compute(sources[name], calibrations[rows], matrix, gguf.imatrix_context, threads)
                run = {"source": name, "rows": min(rows, len(train_rows)), "imatrix_seconds": round(seconds, 1)}
                for level in levels:
                    path = scratch / f"{level}-{name}-{rows}.gguf"
                    quantize(F16_FILE, path, level, threads, matrix)
                    run[level] = kl(path, text, context, threads)
                result["runs"].append(run)
                print(f"imatrix_budget: {run}", flush=True)
    write_json(args.out, result)
    return f"{len(result['runs'])} matrices x {len(levels)} levels -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
