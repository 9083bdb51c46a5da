"""Do llama-server's batched answers equal the binding's one-at-a-time answers on the same GGUF file?

    python -m tools.engine_agreement --variant Q4_K_M            # eval rows -> docs/engine_agreement.json
    python -m tools.engine_agreement --model some.gguf --limit 100 --out my_agreement.json

Greedy decoding through both engines, every mode of eval.decoding, with the eval prompt: per mode the
share of rows whose raw text is the same and whose parsed answer (what the score sees) is the same, and
each engine's seconds. llama.cpp's kernels are not batch-invariant (a sequence decoded beside others
goes through other matrix paths than one decoded alone), so on answers the model is unsure of the two
can differ; this measures how often. Settings: params.yaml `eval:` (threads, parallel, max_new_tokens).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ecommerce_slm.cli import ProjectError, stage_main
from ecommerce_slm.engines import LlamaCppEngine, LlamaServerEngine
from ecommerce_slm.evaluation import EvalConfig, catalog_products
from ecommerce_slm.files import read_jsonl, write_json
from ecommerce_slm.scoring import parse_answer
from ecommerce_slm.task import answer_schema, prompt_messages
from ecommerce_slm.variants import from_path, resolve

DEFAULT_OUT = Path("docs/engine_agreement.json")


def timed(engine, chats: list[list[dict]], schema: dict | None) -> tuple[list[str], float]:
    start = time.perf_counter()
    return engine.generate(chats, schema), time.perf_counter() - start


def agreement(gguf: str, texts: list[str], cfg: EvalConfig) -> dict:
    """Per decoding mode: rows, same raw text, same parsed answer, and each engine's seconds."""
    chats = [prompt_messages(text) for text in texts]
    schema = answer_schema(catalog_products(cfg.catalog))
    single = LlamaCppEngine(gguf, cfg.threads, cfg.max_new_tokens)
    batched = LlamaServerEngine(gguf, cfg.threads, cfg.max_new_tokens, cfg.parallel)
    out = {}
    try:
        for mode in cfg.decoding:
            mode_schema = schema if mode == "json_schema" else None
            alone, alone_seconds = timed(single, chats, mode_schema)
            together, together_seconds = timed(batched, chats, mode_schema)
            pairs = list(zip(alone, together, strict=True))
            same_answer = sum(parse_answer(a).answer == parse_answer(b).answer for a, b in pairs)
            out[mode] = {
                "rows": len(pairs),
                "same_raw": round(sum(a == b for a, b in pairs) / len(pairs), 4),
                "same_answer": round(same_answer / len(pairs), 4),
                "binding_seconds": round(alone_seconds, 1),
                "server_seconds": round(together_seconds, 1),
                "speedup": round(alone_seconds / together_seconds, 2),
                "first_differences": [{"binding": a, "server": b} for a, b in pairs if a != b][:3],
            }
    finally:
        batched.close()
    return out


@stage_main("engine_agreement")
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="F16 or a GGUF level (Q4_K_M, ...)")
    which.add_argument("--model", help="any .gguf file")
    parser.add_argument("--data", default="data/eval.jsonl", help="rows with text (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N rows (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result (default: %(default)s)")
    args = parser.parse_args(argv)
    variant = resolve(args.variant) if args.variant else from_path(args.model)
    if variant.engine != "llama_cpp":
        raise ProjectError(f"{variant.name}: both engines run GGUF files only")
    rows = read_jsonl(args.data)
    texts = [row["text"] for row in (rows[: args.limit] if args.limit else rows)]
    cfg = EvalConfig.load()
    result = {
        "variant": variant.name,
        "model": variant.location,
        "data": args.data,
        "threads": cfg.threads,
        "parallel": cfg.parallel,
        "by_mode": agreement(variant.location, texts, cfg),
    }
    write_json(Path(args.out), result)
    modes = ", ".join(
        f"{mode}: same answer {r['same_answer']:.1%}, raw {r['same_raw']:.1%}, {r['speedup']}x faster"
        for mode, r in result["by_mode"].items()
    )
    return f"{variant.name} on {len(texts)} rows: {modes} -> {args.out}"


if __name__ == "__main__":
    sys.exit(main())
