"""Does keeping the free answers the grammar accepts change what the json_schema pass answers, and what does it save?

    python -m tools.schema_shortcut --variant Q4_K_M      # eval and hand-written sets -> docs/schema_shortcut.json
    python -m tools.schema_shortcut --variant merged --out my_shortcut.json

The eval stages decode json_schema mode only for the rows whose free answer the grammar would change
(`ecommerce_slm.evaluation.decode`). This decodes each set freely, then under the schema twice, every row
and with the shortcut, with one loaded engine, and reports per set the seconds of each, how many free
answers were kept, and how many answers (raw and parsed) and exact-match scores the two schema passes
share. A one-at-a-time engine (transformers, the binding) must agree on every row; llama-server's batched
kernels are not batch-invariant, so a near-tie decoded in another batch can flip either way.
Settings: params.yaml `eval:`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.evaluation import EvalConfig, catalog_products, conversations, decode, load_rows, open_engine
from ecommerce_slm.files import write_json
from ecommerce_slm.paths import EVAL_FILE, HANDWRITTEN_FILE
from ecommerce_slm.scoring import accuracy_summary, parse_answer, score_one
from ecommerce_slm.task import answer_schema
from ecommerce_slm.variants import resolve

DEFAULT_OUT = Path("docs/schema_shortcut.json")


def compare(engine, rows: list[dict], schema: dict) -> dict:
    chats = conversations(rows, None)
    seconds = {}

    def timed(name, *args):
        start = time.perf_counter()
        result = decode(engine, chats, *args)
        seconds[name] = round(time.perf_counter() - start, 1)
        return result

    free, _ = timed("free", None)
    every_row, _ = timed("schema_every_row", schema)
    shortcut, kept = timed("schema_shortcut", schema, free)

    def exact(answers: list[str]) -> float:
        return accuracy_summary(rows, [score_one(a, row) for a, row in zip(answers, rows, strict=True)])["exact_match"]

    pairs = list(zip(every_row, shortcut, strict=True))
    return {
        "rows": len(rows),
        "seconds": seconds,
        "free_answers_kept": len(kept),
        "same_raw": sum(a == b for a, b in pairs),
        "same_answer": sum(parse_answer(a).answer == parse_answer(b).answer for a, b in pairs),
        "same_raw_where_kept": sum(every_row[i] == shortcut[i] for i in kept),
        "exact_match": {"free": exact(free), "schema_every_row": exact(every_row), "schema_shortcut": exact(shortcut)},
        "differences": [
            {"every_row": a, "shortcut": b, "free_answer_kept": i in kept} for i, (a, b) in enumerate(pairs) if a != b
        ][:5],
    }


@stage_main("schema_shortcut")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, help="merged, gptq, F16 or a GGUF level (Q4_K_M, ...)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result (default: %(default)s)")
    args = parser.parse_args(argv)
    variant = resolve(args.variant)
    if variant.engine == "api" or variant.few_shot:
        raise ProjectError(f"--variant {args.variant}: a tuned local variant is expected (merged, gptq, a GGUF level)")
    cfg = EvalConfig.load()
    schema = answer_schema(catalog_products(cfg.catalog))
    result = {"variant": variant.name, "model": variant.location, "threads": cfg.threads, "sets": {}}
    with contextlib.closing(open_engine(variant, cfg)) as engine:
        result["engine"] = engine.kind
        for path in (EVAL_FILE, HANDWRITTEN_FILE):
            result["sets"][path.name] = compare(engine, load_rows(path, None, cfg.limit), schema)
    write_json(Path(args.out), result)
    lines = (
        f"{name}: schema {r['seconds']['schema_every_row']} -> {r['seconds']['schema_shortcut']} s, "
        f"{r['free_answers_kept']} of {r['rows']} kept, same answer {r['same_answer']}"
        for name, r in result["sets"].items()
    )
    return f"{variant.name} ({result['engine']}): {'; '.join(lines)} -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
